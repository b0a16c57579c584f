//! Known answers for the weighted Maglev table builder (`anycast_user::reconcile::maglev`),
//! from a reference implementation written here from the descriptions it claims to follow,
//! not from its code:
//!
//! - the table population of the Maglev paper (Eisenbud et al., NSDI 2016, §3.4,
//!   "Pseudocode 1"), checked against the paper's own example (its Table 1);
//! - the weights as the builder's documentation states them (a site of weight w gains w
//!   credit per round and claims a slot per `max weight` of credit), checked against a
//!   table worked out by hand;
//! - the offsets and skips from two 64-bit hashes of the site name: FNV-1a (checked against
//!   its published test vectors) with a seed folded into the offset basis, then murmur3's
//!   fmix64 finaliser. The two seeds are the builder's choice of two independent hashes
//!   (the ASCII of "maglev01" and "skipseed"); they are the only thing taken from it.
//!
//! Then the builder must produce the reference's table, slot for slot, for tables of 7 to
//! 65,537 slots and 1 to 100 sites of every kind of weight; and the running daemon must hold
//! that same table in the kernel. A distribution test checks what makes Maglev useful: the
//! shares follow the weights, each site's slots are spread along the whole table (the flow
//! hash picks a slot by its value, so a clustered site would take a range of flows), and
//! removing one site moves only that site's slots and about as many again.

use std::collections::HashMap;

use anycast_common::site::{MAGLEV_CHECK, MAGLEV_LOCAL, MAGLEV_SITE, SITE_NONE};
use anycast_tests::{
    admin::AdminApi,
    pinned::Pinned,
    topology::{LOCAL_SITE, local_site, two_sites},
};
use anycast_user::{
    model::status::Status,
    reconcile::maglev::{Backend, build},
};
use testkit::{
    daemon::Daemon,
    require::{Need, require},
};

const FNV_OFFSET: u64 = 14_695_981_039_346_656_037;
const FNV_PRIME: u64 = 1_099_511_628_211;

/// FNV-1a, 64 bits, from `basis`: for each byte, xor then multiply.
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// MurmurHash3's 64-bit finaliser.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51afd7ed558ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ceb9fe1a85ec53);
    k ^ (k >> 33)
}

fn name_hash(name: &str, seed: &[u8; 8]) -> u64 {
    fmix64(fnv1a(FNV_OFFSET ^ u64::from_be_bytes(*seed), name.as_bytes()))
}

/// One backend of the paper's pseudocode: its permutation is `(offset + j·skip) mod M`.
#[derive(Clone, Copy)]
struct Perm {
    offset: u64,
    skip: u64,
    weight: u64,
}

/// The paper's population, with weights: round after round each backend gains its weight in
/// credit, and for every `max weight` of it takes the next entry of its permutation that is
/// still empty, until all M are taken. Returns the backend (position) of every entry.
fn populate(m: u64, backends: &[Perm]) -> Vec<usize> {
    let permutation: Vec<Vec<u64>> =
        backends.iter().map(|b| (0..m).map(|j| (b.offset + j * b.skip) % m).collect()).collect();
    let max = backends.iter().map(|b| b.weight).max().expect("at least one backend");
    let mut next = vec![0usize; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut entry: Vec<Option<usize>> = vec![None; m as usize];
    let mut n = 0;
    loop {
        for i in 0..backends.len() {
            credit[i] += backends[i].weight;
            if credit[i] < max {
                continue;
            }
            credit[i] -= max;
            let mut c = permutation[i][next[i]];
            while entry[c as usize].is_some() {
                next[i] += 1;
                c = permutation[i][next[i]];
            }
            entry[c as usize] = Some(i);
            next[i] += 1;
            n += 1;
            if n == m {
                return entry.into_iter().map(|e| e.expect("every entry taken")).collect();
            }
        }
    }
}

/// The table for named, weighted sites: `(index, name, weight)`; sites of weight 0 take no
/// entry; with none left every entry is SITE_NONE. Sites are taken in the order of their
/// names, so that the table does not depend on the order of a config file.
fn reference(sites: &[Site], m: u32) -> Vec<u32> {
    let mut live: Vec<&Site> = sites.iter().filter(|s| s.2 > 0).collect();
    if live.is_empty() {
        return vec![SITE_NONE; m as usize];
    }
    live.sort_by_key(|s| s.1);
    let m64 = u64::from(m);
    let perms: Vec<Perm> = live
        .iter()
        .map(|&&(_, name, weight)| Perm {
            offset: name_hash(name, b"maglev01") % m64,
            skip: name_hash(name, b"skipseed") % (m64 - 1) + 1,
            weight: u64::from(weight),
        })
        .collect();
    populate(m64, &perms).into_iter().map(|i| live[i].0).collect()
}

/// A site as the tests give it: (data-path index, name, weight).
type Site<'a> = (u32, &'a str, u32);

fn built(sites: &[Site], m: u32) -> Vec<u32> {
    let backends: Vec<Backend> =
        sites.iter().map(|&(index, name, weight)| Backend { index, name, weight }).collect();
    build(&backends, m)
}

#[test]
fn maglev_reference_hashes_match_published_vectors() {
    // FNV-1a 64 (Fowler, Noll, Vo: the published test vectors).
    assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
    // fmix64 is a bijection that maps 0 to 0.
    assert_eq!(fmix64(0), 0);
}

#[test]
fn maglev_reference_population_matches_the_paper_and_a_hand_worked_weighting() {
    // The paper's Table 1: M = 7; B0 offset 3 skip 4, B1 offset 0 skip 2, B2 offset 3
    // skip 1; the lookup table is B1 B0 B1 B0 B2 B2 B0.
    let paper = [(3, 4), (0, 2), (3, 1)].map(|(offset, skip)| Perm { offset, skip, weight: 1 });
    assert_eq!(populate(7, &paper), [1, 0, 1, 0, 2, 2, 0]);
    // B0 of weight 2 and B1 of weight 1 on the paper's first two permutations (B0: 3 0 4 1
    // 5 2 6, B1: 0 2 4 6 1 3 5). Rounds: B0 takes 3 (B1 has 1 credit of 2); B0 takes 0, B1
    // takes 2; B0 takes 4; B0 takes 1, B1 takes 6 (0, 2, 4 taken); B0 takes 5: full.
    let weighted = [Perm { offset: 3, skip: 4, weight: 2 }, Perm { offset: 0, skip: 2, weight: 1 }];
    assert_eq!(populate(7, &weighted), [0, 0, 1, 0, 0, 0, 1]);
}

#[test]
fn maglev_builder_matches_the_reference_slot_for_slot() {
    let names: Vec<String> = (0..100).map(|i| format!("site-{i}")).collect();
    let mut cases: Vec<(String, Vec<Site>, u32)> = vec![
        ("one site".into(), vec![(4, "fra", 100)], 13),
        ("three equal".into(), vec![(0, "fra", 1), (1, "ams", 1), (2, "lhr", 1)], 7),
        ("order of the config does not matter".into(), vec![(2, "lhr", 1), (0, "fra", 1), (1, "ams", 1)], 7),
        ("weights 1:2:3".into(), vec![(0, "a", 1), (1, "b", 2), (2, "c", 3)], 251),
        ("a drained site".into(), vec![(0, "a", 100), (1, "b", 0), (2, "c", 300)], 65_537),
        ("all drained".into(), vec![(0, "a", 0), (1, "b", 0)], 13),
        ("weights far apart".into(), vec![(0, "big", 10_000), (1, "small", 1)], 65_537),
        ("names that differ in one byte".into(), vec![(0, "site-a", 1), (1, "site-b", 1)], 65_537),
        ("unicode names".into(), vec![(0, "zürich", 3), (1, "東京", 2), (2, "são-paulo", 1)], 65_537),
    ];
    for n in [5usize, 17, 100] {
        let sites =
            names[..n].iter().enumerate().map(|(i, name)| (i as u32, name.as_str(), 1 + (i as u32 * 7) % 13));
        cases.push((format!("{n} sites, mixed weights"), sites.collect(), 65_537));
    }
    cases.push(("100 sites in a small table".into(), cases.last().unwrap().1.clone(), 251));
    for (what, sites, m) in &cases {
        let want = reference(sites, *m);
        let got = built(sites, *m);
        assert_eq!(got.len(), want.len(), "{what}");
        let first = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(first, None, "{what}: first difference at slot {first:?} of {m}");
    }
}

fn counts(table: &[u32]) -> HashMap<u32, usize> {
    let mut out = HashMap::new();
    for &s in table {
        *out.entry(s).or_default() += 1;
    }
    out
}

#[test]
fn maglev_distribution_follows_the_weights_spreads_and_moves_little() {
    const M: u32 = 65_537;
    const SEGMENTS: usize = 16;
    let names: Vec<String> = (0..10).map(|i| format!("pop-{i}")).collect();
    for weights in
        [[1u32; 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [100, 100, 100, 100, 100, 100, 100, 100, 100, 1]]
    {
        let sites: Vec<Site> =
            names.iter().zip(weights).enumerate().map(|(i, (n, w))| (i as u32, n.as_str(), w)).collect();
        let table = built(&sites, M);
        let total: u32 = weights.iter().sum();
        let have = counts(&table);
        for &(index, name, weight) in &sites {
            // Shares within a slot or two per 10,000 of the weights (the credit scheme is
            // exact up to rounding of the last rounds).
            let p = f64::from(weight) / f64::from(total);
            let share = *have.get(&index).unwrap_or(&0) as f64 / f64::from(M);
            assert!((share - p).abs() < 2e-4, "{weights:?}: {name} has {share:.5}, weight {p:.5}");
            // Spread: in every sixteenth of the table the site's count is within 5 standard
            // deviations of a binomial draw with its share (a clustered site would be far off).
            let len = table.len() / SEGMENTS;
            let sd = (len as f64 * p * (1.0 - p)).sqrt();
            for (k, segment) in table.chunks(len).take(SEGMENTS).enumerate() {
                let n = segment.iter().filter(|&&s| s == index).count() as f64;
                assert!(
                    (n - len as f64 * p).abs() <= 5.0 * sd + 1.0,
                    "{weights:?}: {name} has {n} slots in segment {k}, expected {:.0} ± {:.0}",
                    len as f64 * p,
                    5.0 * sd
                );
            }
        }
        // Removing the last site: its slots change hands, and few others.
        let fewer = built(&sites[..9], M);
        let moved = table.iter().zip(&fewer).filter(|(a, b)| a != b).count() as f64 / f64::from(M);
        let gone = f64::from(weights[9]) / f64::from(total);
        assert!(
            moved >= gone - 2e-4 && moved <= 2.0 * gone + 0.01,
            "{weights:?}: {moved:.4} moved, {gone:.4} gone"
        );
    }
}

#[test]
fn maglev_daemon_holds_the_reference_table_in_the_kernel() {
    if !require("maglev_daemon_holds_the_reference_table_in_the_kernel", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("mgk");
    let mut d = Daemon::new(&site).unwrap();
    // Three sites of weights 1:2:3 (the remote ones reached through nothing: no traffic),
    // in a config order that is not the names' order.
    d.write_config(
        r#"[local]
interfaces = ["l0"]
tunnel_v4 = "10.1.0.1"

[[sites]]
name = "here"
local = true
capacity = 100
weight = 1

[[sites]]
name = "zrh"
endpoint = "10.9.0.2"
capacity = 100
weight = 3

[[sites]]
name = "ams"
endpoint = "10.9.0.3"
capacity = 100
weight = 2

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
"#,
    )
    .unwrap();
    d.start().unwrap();
    let status: Status = d.status().unwrap();
    let sites: Vec<Site> =
        status.sites.iter().map(|s| (s.index, s.name.as_str(), s.configured_weight)).collect();
    let table = d.maps().unwrap().maglev(status.vips[0].index).unwrap().expect("the VIP's table");
    assert_eq!(table.len(), 65_537);
    // A kernel entry is the site index plus flags (docs/datapath.md §6): the local site's
    // buckets say so, no other does.
    let local = status.sites.iter().find(|s| s.name == "here").unwrap().index;
    let want = reference(&sites, 65_537);
    let first = table.iter().zip(&want).position(|(g, w)| g & MAGLEV_SITE != *w);
    assert_eq!(first, None, "the kernel's table differs from the reference first at slot {first:?}");
    let flagged = table.iter().position(|e| (e & MAGLEV_LOCAL != 0) != (e & MAGLEV_SITE == local));
    assert_eq!(flagged, None, "a bucket whose local flag does not match its site");
}

/// Slot 0 (the size) and slot 1 of the inner table in VIP slot `vip` of the daemon's
/// pinned `MAGLEV`, read raw: the encoding the data path sees, which
/// `DataPathMaps::maglev` hides (it reads a one-slot whole-local table back as the table it
/// stands for).
fn installed_head(d: &Daemon, vip: u32) -> (u32, u32) {
    use aya::maps::{Array, ArrayOfMaps, Map, MapData};
    let outer = MapData::from_pin(d.pin_dir().join(anycast_common::maps::MAGLEV)).expect("the pinned MAGLEV");
    let outer: ArrayOfMaps<MapData, Array<MapData, u32>> =
        ArrayOfMaps::try_from(Map::ArrayOfMaps(outer)).expect("an array of maps");
    let inner = outer.get(&vip, 0).expect("the VIP's inner table");
    (inner.get(&0, 0).unwrap(), inner.get(&1, 0).unwrap())
}

#[test]
fn maglev_daemon_installs_a_whole_local_table_as_its_one_slot() {
    if !require("maglev_daemon_installs_a_whole_local_table_as_its_one_slot", &[Need::Kernel]) {
        return;
    }
    let (_cl, site) = local_site("mgw");
    let mut d = Daemon::started(&site, LOCAL_SITE).unwrap();
    let status: Status = d.status().unwrap();
    let (vip, here) = (status.vips[0].index, status.sites[0].index);
    let local = here | MAGLEV_LOCAL;
    // One site: every bucket local and clean, written as one slot, read back whole.
    assert_eq!(installed_head(&d, vip), (1, local));
    assert_eq!(d.maps().unwrap().maglev(vip).unwrap().expect("the VIP's table"), vec![local; 65_537]);

    let reload = |d: &mut Daemon, config: &str| {
        d.write_config(config).unwrap();
        let mark = d.log_mark();
        d.signal(libc::SIGHUP).unwrap();
        d.wait_for_log(mark, "SIGHUP: config applied", std::time::Duration::from_secs(10)).unwrap();
    };
    // A second site takes half of the buckets: slot for slot.
    reload(&mut d, &two_sites(&["here", "there"]));
    let table = d.maps().unwrap().maglev(vip).unwrap().expect("the VIP's table");
    let remote = table.iter().filter(|&&e| e & MAGLEV_LOCAL == 0).count();
    assert!((30_000..35_000).contains(&remote), "{remote} remote buckets of 65,537");
    assert_eq!(installed_head(&d, vip).0, 65_537);
    // It goes: every bucket local again, but those that were remote carry the check flag
    // (their flows may be pinned there), so the table stays slot for slot.
    reload(&mut d, LOCAL_SITE);
    let table = d.maps().unwrap().maglev(vip).unwrap().expect("the VIP's table");
    assert!(table.iter().all(|&e| e & MAGLEV_SITE == here && e & MAGLEV_LOCAL != 0));
    let flagged = table.iter().filter(|&&e| e & MAGLEV_CHECK != 0).count();
    assert_eq!(flagged, remote, "the buckets that were remote are flagged, no other");
    assert_eq!(installed_head(&d, vip).0, 65_537);
}
