use super::*;
use anycast_common::site::{MAGLEV_CHECK, MAGLEV_LOCAL, MAGLEV_SITE, SITE_NONE};

const BASE: &str = r#"
[local]
interfaces = ["veth0"]
tunnel_v4 = "10.0.0.1"
gue_port = 6080

[datapath]
maglev_table_size = 251

[[sites]]
name = "a"
local = true
capacity = 10

[[sites]]
name = "b"
endpoint = "10.0.0.2"
capacity = 10

[[sites]]
name = "c"
endpoint = "10.0.0.3"
encap = "gue"
gue_port = 6081
capacity = 20

[[vips]]
address = "192.0.2.1"
port = 53
protocol = "udp"

[[vips]]
address = "192.0.2.2"
port = "any"
protocol = "tcp"
sites = ["a", "c"]
"#;

fn config(text: &str) -> Config {
    Config::parse(text, "t").unwrap()
}

/// Plans `text` against `current` and applies the diff to it, as the reconciler does.
fn step(text: &str, overrides: &Overrides, current: &mut State) -> (Plan, Vec<Op>) {
    let p = plan(&config(text), overrides, &Dynamic::default(), current, BTreeSet::from([7])).unwrap();
    let ops = diff(&p.state, current);
    for op in &ops {
        current.apply(op);
    }
    assert_eq!(*current, p.state, "applying the diff reaches the plan");
    (p, ops)
}

fn slot(p: &Plan, name: &str) -> u32 {
    p.sites.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn first_plan_writes_everything_in_a_safe_order() {
    let mut s = State::default();
    let (p, ops) = step(BASE, &Overrides::default(), &mut s);
    assert_eq!(p.sites, [("a".to_owned(), 0), ("b".to_owned(), 1), ("c".to_owned(), 2)]);
    let a = s.sites[0];
    assert_eq!(a.flags, SITE_CONFIGURED | SITE_UP | SITE_LOCAL);
    assert_eq!(a.generation, 1);
    let c = s.sites[2];
    assert_eq!(
        (c.flags, c.encap, c.gue_port),
        (SITE_CONFIGURED | SITE_UP, anycast_common::Encap::Gue as u8, 6081)
    );
    assert_eq!(&c.tunnel_addr[..4], &[10, 0, 0, 3]);
    assert_eq!(s.peers.len(), 2);
    assert_eq!(s.peers[&AddrKey::v4([10, 0, 0, 3])], 2);
    assert_eq!(s.config.flags, CONFIG_TUNNEL_V4);
    assert_eq!((s.config.tunnel_v4, s.config.gue_port), ([10, 0, 0, 1], 6080));
    let slots = s.addresses.as_ref().unwrap().slots();
    assert_eq!(slots.len(), 3, "two VIP addresses and the tunnel address: {slots:?}");
    assert_eq!(s.egress, BTreeSet::from([7]));
    // The second VIP's table only names a and c.
    let t = &s.maglev[&1];
    assert_eq!(t.len(), 251);
    assert!(!Arc::ptr_eq(t, &s.maglev[&0]), "different sites, different tables");
    assert!(t.iter().all(|&x| x == MAGLEV_LOCAL || x == 2), "local a (flagged as local), or c");
    // Order: sites and tables before the VIPs that use them, VIPs before the filter.
    let pos = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    assert!(pos(&|o| matches!(o, Op::Site(..))) < pos(&|o| matches!(o, Op::Maglev(..))));
    assert!(pos(&|o| matches!(o, Op::Maglev(..))) < pos(&|o| matches!(o, Op::Vip(..))));
    assert!(pos(&|o| matches!(o, Op::Vip(..))) < pos(&|o| matches!(o, Op::Addresses(..))));
}

#[test]
fn same_config_again_writes_nothing() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let (_, ops) = step(BASE, &Overrides::default(), &mut s);
    assert!(ops.is_empty(), "{ops:?}");
}

#[test]
fn weight_change_rewrites_only_tables() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let (p, ops) =
        step(&BASE.replace("capacity = 20", "capacity = 20\nweight = 5"), &Overrides::default(), &mut s);
    assert_eq!(p.weights["c"], 5);
    assert!(!ops.is_empty());
    assert!(ops.iter().all(|o| matches!(o, Op::Maglev(..))), "{ops:?}");
}

#[test]
fn drain_zeroes_the_weight_but_keeps_the_site_up() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let drained = Overrides { drained: BTreeSet::from(["c".to_owned()]) };
    let (p, ops) = step(BASE, &drained, &mut s);
    assert_eq!(p.weights["c"], 0);
    assert!(ops.iter().all(|o| matches!(o, Op::Maglev(..))), "{ops:?}");
    assert!(s.maglev.values().all(|t| t.iter().all(|&x| x & MAGLEV_SITE != 2)));
    assert_eq!(s.sites[2].flags & SITE_UP, SITE_UP, "established flows keep their site");
    // VIP 1 had only a and c: now all a.
    assert!(s.maglev[&1].iter().all(|&x| x & MAGLEV_SITE == 0));
}

#[test]
fn everything_drained_gives_empty_tables() {
    let mut s = State::default();
    let all = Overrides { drained: ["a", "b", "c"].map(String::from).into() };
    step(BASE, &all, &mut s);
    assert!(s.maglev.values().flat_map(|t| t.iter()).all(|&x| x == SITE_NONE));
}

#[test]
fn restart_with_reordered_config_keeps_slots_and_generations() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let before = s.clone();
    // A new controller knows no names: it finds sites by role and endpoint, VIPs by key.
    let text = r#"
[local]
interfaces = ["veth0"]
tunnel_v4 = "10.0.0.1"
gue_port = 6080
[datapath]
maglev_table_size = 251
[[sites]]
name = "c"
endpoint = "10.0.0.3"
encap = "gue"
gue_port = 6081
capacity = 20
[[sites]]
name = "b"
endpoint = "10.0.0.2"
capacity = 10
[[sites]]
name = "a"
local = true
capacity = 10
[[vips]]
address = "192.0.2.2"
port = "any"
protocol = "tcp"
sites = ["c", "a"]
[[vips]]
address = "192.0.2.1"
port = 53
protocol = "udp"
"#;
    let (p, ops) = step(text, &Overrides::default(), &mut s);
    assert!(ops.is_empty(), "{ops:?}");
    assert_eq!((slot(&p, "a"), slot(&p, "b"), slot(&p, "c")), (0, 1, 2));
    assert_eq!(s, before);
}

#[test]
fn removed_site_is_unconfigured_last_and_its_slot_reused_with_a_new_generation() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let without_b = BASE.replace("[[sites]]\nname = \"b\"\nendpoint = \"10.0.0.2\"\ncapacity = 10\n", "");
    let (_, ops) = step(&without_b, &Overrides::default(), &mut s);
    assert!(matches!(ops.last(), Some(Op::Site(1, info)) if info.flags == 0), "{ops:?}");
    assert!(ops.contains(&Op::RemovePeer(AddrKey::v4([10, 0, 0, 2]))));
    assert!(s.maglev.values().all(|t| !t.contains(&1)));
    assert_eq!(s.sites[1].generation, 1, "a cleared slot keeps its generation");

    let with_d = format!("{without_b}\n[[sites]]\nname = \"d\"\nendpoint = \"10.0.0.4\"\ncapacity = 10\n");
    let (p, _) = step(&with_d, &Overrides::default(), &mut s);
    assert_eq!(slot(&p, "d"), 1);
    assert_eq!(s.sites[1].generation, 2, "flows remembered for b do not go to d");
}

#[test]
fn vip_removal_and_addition_keep_other_indices() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let text = BASE.replace("address = \"192.0.2.1\"", "address = \"192.0.2.9\"");
    let (p, ops) = step(&text, &Overrides::default(), &mut s);
    assert_eq!(p.vips[1].1, 1, "the unchanged VIP keeps index 1");
    assert_eq!(p.vips[0].1, 2, "the new VIP does not reuse the index being vacated");
    assert!(ops.iter().any(|o| matches!(o, Op::RemoveVip(k) if k.addr[..4] == [192, 0, 2, 1])));
    assert!(ops.iter().any(|o| matches!(o, Op::Addresses(_))));
    // The vacated slot's table is released, after the VIP that used it is gone.
    let vip = ops.iter().position(|o| matches!(o, Op::RemoveVip(_))).unwrap();
    assert_eq!(ops.iter().position(|o| *o == Op::RemoveMaglev(0)).map(|t| t > vip), Some(true), "{ops:?}");
    assert!(!s.maglev.contains_key(&0) && s.maglev.contains_key(&1) && s.maglev.contains_key(&2));
}

#[test]
fn vips_with_the_same_sites_share_one_table() {
    let text = format!("{BASE}\n[[vips]]\naddress = \"192.0.2.3\"\nport = 53\nprotocol = \"udp\"\n");
    let mut s = State::default();
    step(&text, &Overrides::default(), &mut s);
    assert!(Arc::ptr_eq(&s.maglev[&0], &s.maglev[&2]));
}

#[test]
fn egress_follows_interfaces() {
    let mut s = State::default();
    step(BASE, &Overrides::default(), &mut s);
    let p = plan(&config(BASE), &Overrides::default(), &Dynamic::default(), &s, BTreeSet::from([8])).unwrap();
    assert_eq!(diff(&p.state, &s), [Op::AddEgress(8), Op::RemoveEgress(7)]);
}

/// Plans with run-time decisions on top of the config, applying the diff.
fn step_dynamic(dynamic: &Dynamic, current: &mut State) -> Plan {
    let p = plan(&config(BASE), &Overrides::default(), dynamic, current, BTreeSet::from([7])).unwrap();
    for op in diff(&p.state, current) {
        current.apply(&op);
    }
    p
}

#[test]
fn down_site_loses_its_weight_and_site_up_so_its_flows_move() {
    let mut s = State::default();
    step_dynamic(&Dynamic::default(), &mut s);
    // Down: the tables that take c's weight away are written before c loses SITE_UP, so that
    // no new flow is served here as `site_down` and then sent elsewhere by the new table.
    let dynamic = Dynamic { weights: None, down: BTreeSet::from(["c".to_owned()]) };
    let down = plan(&config(BASE), &Overrides::default(), &dynamic, &s, BTreeSet::from([7])).unwrap();
    let ops = diff(&down.state, &s);
    let table = ops.iter().rposition(|o| matches!(o, Op::Maglev(..))).expect("c's weight taken away");
    let site = ops.iter().position(|o| matches!(o, Op::Site(2, _))).expect("c's SITE_UP cleared");
    assert!(table < site, "{ops:?}");
    let p = step_dynamic(&dynamic, &mut s);
    assert_eq!((p.weights["b"], p.weights["c"]), (10, 0));
    assert_eq!(s.sites[2].flags & SITE_UP, 0, "pinned flows re-steer off a down site");
    assert_eq!(s.sites[2].flags & SITE_CONFIGURED, SITE_CONFIGURED);
    assert!(s.maglev.values().all(|t| t.iter().all(|&x| x & MAGLEV_SITE != 2)));
    // Back up: SITE_UP again, same generation (its flows may come back). The site is
    // usable before any table names it again.
    let g = s.sites[2].generation;
    let up =
        plan(&config(BASE), &Overrides::default(), &Dynamic::default(), &s, BTreeSet::from([7])).unwrap();
    let ops = diff(&up.state, &s);
    let site = ops.iter().position(|o| matches!(o, Op::Site(2, _))).expect("c's SITE_UP written");
    let table = ops.iter().position(|o| matches!(o, Op::Maglev(..))).expect("tables give c its weight");
    assert!(site < table, "{ops:?}");
    step_dynamic(&Dynamic::default(), &mut s);
    assert_eq!((s.sites[2].flags & SITE_UP, s.sites[2].generation), (SITE_UP, g));
}

#[test]
fn load_weights_override_the_configured_ones_except_for_a_vip_without_weight() {
    let mut s = State::default();
    let weights = BTreeMap::from([("a".to_owned(), 10_000), ("b".to_owned(), 0), ("c".to_owned(), 0)]);
    let p = step_dynamic(&Dynamic { weights: Some(weights), down: BTreeSet::new() }, &mut s);
    assert_eq!((p.weights["a"], p.weights["b"], p.weights["c"]), (10_000, 0, 0));
    assert!(s.maglev[&0].iter().all(|&x| x & MAGLEV_SITE == 0), "everything local");
    // A VIP that the local site does not serve keeps its configured weights rather than
    // an empty table.
    let text = BASE.replace("sites = [\"a\", \"c\"]", "sites = [\"b\", \"c\"]");
    let weights = BTreeMap::from([("a".to_owned(), 10_000), ("b".to_owned(), 0), ("c".to_owned(), 0)]);
    let dynamic = Dynamic { weights: Some(weights), down: BTreeSet::new() };
    let p = plan(&config(&text), &Overrides::default(), &dynamic, &s, BTreeSet::from([7])).unwrap();
    let t = &p.state.maglev[&1];
    let c_share = t.iter().filter(|&&x| x == 2).count() as f64 / t.len() as f64;
    assert!((c_share - 2.0 / 3.0).abs() < 0.02, "b:c = 10:20 gives c {c_share}");
}

#[test]
fn with_load_steering_a_start_keeps_every_new_flow_local() {
    let text = format!("{BASE}\n[load]\n");
    let d = Dynamic::at_start(&config(&text));
    assert_eq!(
        d.weights.unwrap().into_iter().collect::<Vec<_>>(),
        [("a".into(), 10_000), ("b".into(), 0), ("c".into(), 0)]
    );
    assert_eq!(Dynamic::at_start(&config(BASE)), Dynamic::default());
}

#[test]
fn a_restart_adopts_the_weights_the_data_path_steers_by() {
    let text = format!("{BASE}\n[load]\n");
    let mut s = State::default();
    let weights = BTreeMap::from([("a".to_owned(), 4000), ("b".to_owned(), 3500), ("c".to_owned(), 2500)]);
    let dynamic = Dynamic { weights: Some(weights.clone()), down: BTreeSet::new() };
    let p = plan(&config(&text), &Overrides::default(), &dynamic, &s, BTreeSet::from([7])).unwrap();
    for op in diff(&p.state, &s) {
        s.apply(&op);
    }
    let adopted = Dynamic::adopted(&config(&text), &p, &s).expect("a table of every site");
    for (name, w) in &weights {
        // Within a slot of this 251-slot table (0.4 %), below the steering's 1 % threshold.
        assert!(adopted[name].abs_diff(*w) <= 40, "{adopted:?} vs {weights:?}");
    }
    // Nothing running yet, or no [load]: nothing to adopt.
    assert_eq!(Dynamic::adopted(&config(&text), &p, &State::default()), None);
    assert_eq!(Dynamic::adopted(&config(BASE), &p, &s), None);
}

/// A local bucket that named another site in the table it replaces is flagged
/// `MAGLEV_CHECK`, and keeps the flag while it stays local (docs/datapath.md §6); a bucket
/// that was always local is not.
#[test]
fn local_buckets_that_were_remote_are_flagged_and_stay_flagged() {
    let mut s = State::default();
    let all_local = BTreeMap::from([("a".to_owned(), 10_000), ("b".to_owned(), 0), ("c".to_owned(), 0)]);
    let local = Dynamic { weights: Some(all_local), down: BTreeSet::new() };
    step_dynamic(&local, &mut s);
    assert!(s.maglev[&0].iter().all(|&x| x == MAGLEV_LOCAL), "always local: no flag");
    let half = BTreeMap::from([("a".to_owned(), 5_000), ("b".to_owned(), 5_000), ("c".to_owned(), 0)]);
    step_dynamic(&Dynamic { weights: Some(half), down: BTreeSet::new() }, &mut s);
    let shed: Vec<usize> = (0..s.maglev[&0].len()).filter(|&i| s.maglev[&0][i] & MAGLEV_SITE == 1).collect();
    assert!(!shed.is_empty());
    assert!(s.maglev[&0].iter().all(|&x| x & MAGLEV_CHECK == 0), "local buckets that stayed local: no flag");
    // Back home: exactly the buckets that were b's are flagged.
    step_dynamic(&local, &mut s);
    let t = s.maglev[&0].clone();
    for (i, &x) in t.iter().enumerate() {
        assert_eq!(x & MAGLEV_LOCAL, MAGLEV_LOCAL);
        assert_eq!(x & MAGLEV_CHECK != 0, shed.contains(&i), "bucket {i}");
    }
    // And they stay flagged through later tables.
    step_dynamic(&local, &mut s);
    assert_eq!(s.maglev[&0][..], t[..]);
}

/// Another hash key puts every flow in another bucket: every local bucket is flagged, since
/// a flow pinned to another site may now fall in any of them (the sweep then places the
/// pins under the new key). The same key again flags nothing.
#[test]
fn a_new_hash_key_flags_every_local_bucket() {
    let keyed = |k: &str| {
        BASE.replace("maglev_table_size = 251", &format!("maglev_table_size = 251\nhash_key = \"{k}\""))
    };
    let mut s = State::default();
    step(&keyed(&"11".repeat(16)), &Overrides::default(), &mut s);
    step(&keyed(&"11".repeat(16)), &Overrides::default(), &mut s);
    let local = |s: &State| s.maglev[&0].iter().filter(|&&x| x & MAGLEV_LOCAL != 0).count();
    let flagged = |s: &State| s.maglev[&0].iter().filter(|&&x| x & MAGLEV_CHECK != 0).count();
    assert!(local(&s) > 0 && local(&s) < 251, "a table of local and remote buckets");
    assert_eq!(flagged(&s), 0, "the same key: no flag");
    step(&keyed(&"22".repeat(16)), &Overrides::default(), &mut s);
    assert_eq!(s.config.hash_key, HashKey::from_bytes([0x22; 16]));
    assert_eq!(flagged(&s), local(&s), "another key: every local bucket flagged");
    assert!(s.maglev[&0].iter().all(|&x| x & MAGLEV_CHECK == 0 || x & MAGLEV_LOCAL != 0));
}

#[test]
fn restart_keeps_down_and_new_sites_start_down() {
    let text = format!("{BASE}\n[health]\n");
    let mut s = State::default();
    // A fresh data path: with [health], no remote site is proven up yet.
    let fresh = Dynamic::running(&config(&text), &Overrides::default(), &s, BTreeSet::from([7])).unwrap();
    assert_eq!(fresh.down, BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    // b up, c down in the maps (as a running controller left them).
    step_dynamic(&Dynamic { weights: None, down: BTreeSet::from(["c".to_owned()]) }, &mut s);
    let restarted = Dynamic::running(&config(&text), &Overrides::default(), &s, BTreeSet::from([7])).unwrap();
    assert_eq!(restarted.down, BTreeSet::from(["c".to_owned()]), "the restart forgot which site was down");
    // Planning with it writes nothing: the restart changes no map.
    let p = plan(&config(&text), &Overrides::default(), &restarted, &s, BTreeSet::from([7])).unwrap();
    assert_eq!(diff(&p.state, &s), [], "a restart with a site down rewrote the maps");
    // A site added by a reload starts down; without [health] nothing is down.
    let added = text.replacen(
        "[[vips]]",
        "[[sites]]\nname = \"d\"\nendpoint = \"10.0.0.4\"\ncapacity = 10\n\n[[vips]]",
        1,
    );
    let p = plan(&config(&added), &Overrides::default(), &restarted, &s, BTreeSet::from([7])).unwrap();
    assert_eq!(unproven(&config(&added), &p, &s), BTreeSet::from(["c".to_owned(), "d".to_owned()]));
    assert_eq!(
        Dynamic::running(&config(BASE), &Overrides::default(), &s, BTreeSet::from([7])).unwrap().down,
        BTreeSet::new()
    );
}

#[test]
fn a_site_added_under_load_gets_no_flows_until_the_policy_gives_it_some() {
    let text = format!("{BASE}\n[load]\n");
    let mut s = State::default();
    let weights = BTreeMap::from([("a".to_owned(), 6000), ("b".to_owned(), 2000), ("c".to_owned(), 2000)]);
    let dynamic = Dynamic { weights: Some(weights), down: BTreeSet::new() };
    let p = plan(&config(&text), &Overrides::default(), &dynamic, &s, BTreeSet::from([7])).unwrap();
    for op in diff(&p.state, &s) {
        s.apply(&op);
    }
    // d (capacity 10, as large as b) joins by reload; the load weights do not name it yet.
    let added = text.replacen(
        "[[vips]]",
        "[[sites]]\nname = \"d\"\nendpoint = \"10.0.0.4\"\ncapacity = 10\n\n[[vips]]",
        1,
    );
    let p = plan(&config(&added), &Overrides::default(), &dynamic, &s, BTreeSet::from([7])).unwrap();
    assert_eq!(p.weights["d"], 0, "a configured weight mixed into a table of load weights");
    let d = slot(&p, "d");
    assert!(
        p.state.maglev[&0].iter().all(|&x| x & MAGLEV_SITE != d),
        "d got new flows before the policy gave it any"
    );
    assert_eq!((p.weights["a"], p.weights["b"]), (6000, 2000));
}

#[test]
fn preview_of_a_new_site_moves_its_share_of_the_tables_that_get_it() {
    let before = config(BASE);
    let mut s = State::default();
    let (old, _) = step(BASE, &Overrides::default(), &mut s);
    // The same config: nothing to write, nothing moves.
    let again = plan(&before, &Overrides::default(), &Dynamic::default(), &s, BTreeSet::from([7])).unwrap();
    let same = preview::preview(&before, &old, &before, &again, &s);
    assert_eq!((same.writes, same.sites.len()), (0, 0), "{same:?}");
    assert!(same.vips.iter().all(|v| v.moved == 0.0), "{same:?}");
    assert!(same.render().starts_with("no change"), "{}", same.render());
    // d (capacity 40 of 80) joins the first VIP (every site) but not the second (a and c).
    let text = BASE.replacen(
        "[[vips]]",
        "[[sites]]\nname = \"d\"\nendpoint = \"10.0.0.4\"\ncapacity = 40\n\n[[vips]]",
        1,
    );
    let after = config(&text);
    let new = plan(&after, &Overrides::default(), &Dynamic::default(), &s, BTreeSet::from([7])).unwrap();
    let p = preview::preview(&before, &old, &after, &new, &s);
    assert_eq!(p.sites.len(), 1, "{p:?}");
    assert_eq!((&p.sites[0].name[..], &p.sites[0].change), ("d", &preview::Change::Added));
    // Maglev moves about d's share of the slots (a little more: the others' permutations
    // shift too), never the whole table; the VIP d does not serve moves nothing.
    let m = p.vips[0].moved;
    assert!((0.45..0.65).contains(&m), "moved {m}");
    assert_eq!((p.vips[1].moved, &p.vips[1].change), (0.0, &preview::Change::Unchanged));
    assert!(p.writes > 0);
    assert!(p.render().contains("% of new flows move"), "{}", p.render());
}
