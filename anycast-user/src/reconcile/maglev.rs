//! Weighted Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4), with weights as Katran and Cilium do them.
//!
//! Each site has a permutation of the M slots, `(offset + j * skip) mod M`, with offset and
//! skip from two independent hashes of the site's name: stable across restarts and hosts,
//! so every host of every site builds the same table from the same weights. M is prime and
//! `1 <= skip < M`, so each permutation visits every slot. Sites take turns claiming their
//! next free preferred slot until the table is full.
//!
//! Weights: in each round a site with weight w accumulates w credit and claims a slot for
//! every `max_weight` of credit (so the heaviest site claims one slot per round and a site of
//! half its weight one every other round). The shares then follow the weights to within a
//! few slots, and since each site keeps walking its own permutation, a change of one site's
//! weight or the removal of a site moves few other slots (the paper's minimal disruption).

use anycast_common::site::SITE_NONE;

/// A site as the builder sees it: the data path's site index, a stable identity to hash
/// (the site name), and the weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend<'a> {
    pub index: u32,
    pub name: &'a str,
    pub weight: u32,
}

/// Builds the table of `m` slots (m prime) for these backends. Backends of weight 0 get no
/// slot; when none has a weight every slot is [`SITE_NONE`].
pub fn build(backends: &[Backend<'_>], m: u32) -> Vec<u32> {
    let m64 = m as u64;
    let mut table = vec![SITE_NONE; m as usize];
    // Sorted by name so that the table depends on the set of sites, not on the order of the
    // config file: every host of every site builds the same table.
    let mut live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    live.sort_by(|a, b| a.name.cmp(b.name));
    let Some(max_weight) = live.iter().map(|b| b.weight as u64).max() else {
        return table;
    };
    if m == 1 {
        table[0] = live[0].index;
        return table;
    }
    // (offset, skip, next j, credit) per backend.
    let mut state: Vec<(u64, u64, u64, u64)> = live
        .iter()
        .map(|b| {
            let offset = hash(b.name.as_bytes(), 0x6d61_676c_6576_3031) % m64;
            let skip = hash(b.name.as_bytes(), 0x736b_6970_7365_6564) % (m64 - 1) + 1;
            (offset, skip, 0, 0)
        })
        .collect();
    let mut filled = 0u64;
    while filled < m64 {
        for (b, (offset, skip, next, credit)) in live.iter().zip(state.iter_mut()) {
            *credit += b.weight as u64;
            if *credit < max_weight {
                continue;
            }
            *credit -= max_weight;
            // Walk this backend's permutation to its next free slot. `next` only grows, and
            // it never exceeds m: the permutation covers every slot and the loop ends when
            // the table is full.
            let mut slot = (*offset + *next * *skip) % m64;
            while table[slot as usize] != SITE_NONE {
                *next += 1;
                slot = (*offset + *next * *skip) % m64;
            }
            table[slot as usize] = b.index;
            *next += 1;
            filled += 1;
            if filled == m64 {
                break;
            }
        }
    }
    table
}

/// 64-bit FNV-1a with a seed folded into the basis, then murmur3's fmix64 finaliser so
/// that names differing in one character land far apart (FNV alone leaves the low bits of
/// short keys correlated, which the modulo would expose).
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const M: u32 = 65_537;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("site-{i}")).collect()
    }

    fn backends<'a>(names: &'a [String], weight: impl Fn(usize) -> u32) -> Vec<Backend<'a>> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Backend { index: i as u32, name: n, weight: weight(i) })
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut out = HashMap::new();
        for &s in table {
            *out.entry(s).or_default() += 1;
        }
        out
    }

    /// Every share within `tol` (a fraction of M) of what the weights ask for.
    fn assert_weighted(table: &[u32], b: &[Backend], tol: f64) {
        let total: u64 = b.iter().map(|b| b.weight as u64).sum();
        let got = shares(table);
        assert!(!got.contains_key(&SITE_NONE));
        for b in b {
            let want = b.weight as f64 / total as f64;
            let have = *got.get(&b.index).unwrap_or(&0) as f64 / table.len() as f64;
            assert!((have - want).abs() <= tol, "{}: share {have:.5}, want {want:.5} (±{tol})", b.name);
        }
    }

    #[test]
    fn equal_weights_are_even_within_one_percent() {
        for n in [10, 25, 64, 100, 250, 500] {
            let names = names(n);
            let b = backends(&names, |_| 1);
            let table = build(&b, M);
            assert_eq!(table.len(), M as usize);
            let even = M as f64 / n as f64;
            for (site, count) in shares(&table) {
                let dev = (count as f64 - even).abs() / even;
                assert!(dev <= 0.01, "n={n} site {site}: {count} slots, even {even:.1} ({dev:.4})");
            }
        }
    }

    #[test]
    fn weights_are_honoured_within_one_percent() {
        let names = names(20);
        for weight in [
            &(|i: usize| (i as u32 % 4) + 1) as &dyn Fn(usize) -> u32,
            &|i| if i == 0 { 1000 } else { 10 },
            &|i| 100 + 37 * i as u32,
        ] {
            let b = backends(&names, weight);
            assert_weighted(&build(&b, M), &b, 0.01);
        }
    }

    #[test]
    fn zero_weight_gets_nothing_and_all_zero_is_empty() {
        let names = names(5);
        let b = backends(&names, |i| if i == 2 { 0 } else { 3 });
        let table = build(&b, M);
        assert!(!table.contains(&2));
        assert_weighted(&table, &b.iter().filter(|b| b.weight > 0).cloned().collect::<Vec<_>>(), 0.01);
        let none = backends(&names, |_| 0);
        assert!(build(&none, 7).iter().all(|&s| s == SITE_NONE));
        assert!(build(&[], 7).iter().all(|&s| s == SITE_NONE));
    }

    #[test]
    fn removing_one_site_moves_little() {
        for n in [10, 50, 200, 500] {
            let names = names(n);
            let all = backends(&names, |_| 1);
            let before = build(&all, M);
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<Backend> = all.iter().filter(|b| b.index != removed as u32).cloned().collect();
                let after = build(&rest, M);
                let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let bound = (1.0 / n as f64 + 0.01) * M as f64;
                assert!(
                    changed as f64 <= bound,
                    "n={n} removing {removed}: {changed} slots changed, bound {bound:.0}"
                );
            }
        }
    }

    #[test]
    fn reweighting_one_site_moves_little() {
        let names = names(10);
        let before = build(&backends(&names, |_| 100), M);
        let after = build(&backends(&names, |i| if i == 3 { 50 } else { 100 }), M);
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / M as f64;
        // Site 3 loses about half of its 10% share: ≈ 5% of the slots must move; Maglev
        // moves somewhat more (the paper's "minimal" is approximate), but nowhere near all.
        assert!(changed < 0.15, "{changed}");
    }

    #[test]
    fn deterministic_and_independent_of_config_order() {
        let names = names(30);
        let b = backends(&names, |i| i as u32 + 1);
        let mut reversed = b.clone();
        reversed.reverse();
        let t = build(&b, 251);
        assert_eq!(t, build(&b, 251));
        assert_eq!(t, build(&reversed, 251));
    }

    #[test]
    fn tiny_tables() {
        let names = names(3);
        let b = backends(&names, |_| 1);
        assert_eq!(build(&b, 1).len(), 1);
        let t = build(&b, 3);
        let mut sorted = t.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2]);
    }
}
