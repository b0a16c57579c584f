//! When a local bucket's `MAGLEV_CHECK` may go (docs/datapath.md §6, "The check flag").
//!
//! The flag makes the mid-flow TCP packets of a local bucket that was remote look at the
//! flow and embryonic tables, because a flow of that bucket may be pinned to another site
//! or be mid-handshake towards one. It may go once neither can be true any more:
//!
//! 1. the bucket has been local for `check_grace` (an embryo written while it was remote
//!    can only be promoted by a handshake that is still in progress; none lasts that long);
//! 2. no pin of a TCP flow of that bucket to another site may still be alive. A pin is
//!    over when the data path saw its client send FIN or RST (the closing bit of its
//!    `FLOWS` value's state) and nothing of the flow since for `check_grace`; or when it
//!    names a site slot that no longer holds the site it was made for (the data path
//!    re-steers it anyway). Any other pin may be alive, however long it has been idle: an
//!    idle TCP connection is legal for hours, and a half-closed one still needs its
//!    client's ACKs forwarded. A pin an older build wrote reads "not closing": alive.
//!
//! Pure: the owner reads the maps, calls [`sweep`], and writes the tables it returns.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use anycast_common::{
    FlowKey, FlowValue, HashKey, SiteInfo, VipInfo, VipKey,
    flow::{STATE_TIME_MASK, closing_age, closing_since, maglev_slot},
    flow_hash,
    site::{MAGLEV_CHECK, MAGLEV_LOCAL, SITE_CONFIGURED, SITE_LOCAL},
    wire::IPPROTO_TCP,
};

/// Units a pin's time may be ahead of the sweep's `now` and still be taken for "just now"
/// rather than for 2^15 units ago (a ~39 h silence is then counted as a few units less
/// than that: alive, the safe side).
const AHEAD: u64 = 2;

/// What a sweep reads.
pub struct Input<'a> {
    pub hash_key: &'a HashKey,
    pub vips: &'a HashMap<VipKey, VipInfo>,
    pub sites: &'a [SiteInfo],
    /// VIP index → table (entries as the data path reads them, without the size slot).
    pub tables: &'a BTreeMap<u32, Arc<[u32]>>,
    pub flows: &'a [(FlowKey, FlowValue)],
    /// Now, in the units of a flow's state (`CLOCK_MONOTONIC_COARSE` >>
    /// [`anycast_common::flow::STATE_UNIT_SHIFT`], not wrapped), read after `flows`.
    pub now: u64,
    /// No entry counts as older than this (the controller's start: it cannot tell how
    /// long a flow was silent before it watched).
    pub floor: u64,
    /// `check_grace` in the same units, rounded up and one more (a state's time is the
    /// start of its unit: [`closing_age`]).
    pub grace: u64,
}

/// What a sweep found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Per distinct table (by the VIPs that share it): the slots whose flag may go.
    pub clear: Vec<Clear>,
    /// Flagged buckets kept because a pin in them may be alive (over every VIP).
    pub kept_by_pins: usize,
}

/// The slots of one table whose flag may go; `table` is the table swept (the owner writes
/// only if the VIPs still hold it).
#[derive(Debug, PartialEq, Eq)]
pub struct Clear {
    pub vips: Vec<u32>,
    pub table: Arc<[u32]>,
    pub slots: Vec<u32>,
}

impl Clear {
    /// The table without the flag on the cleared slots.
    pub fn cleared(&self) -> Arc<[u32]> {
        let mut t = self.table.to_vec();
        for &s in &self.slots {
            t[s as usize] &= !MAGLEV_CHECK;
        }
        t.into()
    }
}

/// The VIP a flow belongs to: `(dst, dport, proto)`, then the any-port entry (§4).
fn vip_of(vips: &HashMap<VipKey, VipInfo>, k: &FlowKey) -> Option<u32> {
    let mut vk = VipKey { addr: k.dst, port: k.dport, proto: k.proto, family: k.family };
    if let Some(v) = vips.get(&vk) {
        return Some(v.index);
    }
    vk.port = 0;
    vips.get(&vk).map(|v| v.index)
}

/// Whether a pin may still be alive and needs its bucket's flag (see the module's rules).
fn may_be_alive(input: &Input, k: &FlowKey, v: &FlowValue) -> bool {
    // Fragments (no ports) and UDP look at the flow table whatever the flag says.
    if k.proto != IPPROTO_TCP || (k.sport == 0 && k.dport == 0) {
        return false;
    }
    let Some(site) = input.sites.get(usize::from(v.site)) else { return false };
    if site.flags & SITE_CONFIGURED == 0 || site.generation != v.generation || site.flags & SITE_LOCAL != 0 {
        return false;
    }
    match closing_since(v.state) {
        // Its age modulo the state's wrap (which only makes it younger), and no more than
        // the controller has watched. A time a unit or two after `now` (a clock that lags
        // the data path's: read before the pin was refreshed) wraps to just under 2^15: alive.
        Some(at) => {
            let age = closing_age(at, input.now);
            age > u64::from(STATE_TIME_MASK) - AHEAD
                || age.min(input.now.saturating_sub(input.floor)) < input.grace
        }
        None => true,
    }
}

/// Which flagged buckets may lose their flag. `home_since(vip, slot)`: whether that bucket
/// has been local for `check_grace` (the owner knows when each came home).
pub fn sweep(input: &Input, home_long_enough: impl Fn(u32, u32) -> bool) -> Swept {
    // Flagged buckets with a pin that may be alive, per VIP.
    let mut kept: HashMap<u32, Vec<u32>> = HashMap::new();
    for (k, v) in input.flows {
        if !may_be_alive(input, k, v) {
            continue;
        }
        let hash = flow_hash(k, input.hash_key);
        let Some(vip) = vip_of(input.vips, k) else { continue };
        let Some(table) = input.tables.get(&vip) else { continue };
        let slot = maglev_slot(hash, table.len() as u32);
        if table.get(slot as usize).is_some_and(|e| e & MAGLEV_CHECK != 0) {
            kept.entry(vip).or_default().push(slot);
        }
    }
    // VIPs that share a table are cleared together: a slot goes only if none keeps it.
    let mut shared: BTreeMap<usize, (Vec<u32>, Arc<[u32]>)> = BTreeMap::new();
    for (&vip, table) in input.tables {
        let e = shared
            .entry(Arc::as_ptr(table) as *const u32 as usize)
            .or_insert_with(|| (vec![], table.clone()));
        e.0.push(vip);
    }
    let mut out = Swept::default();
    for (vips, table) in shared.into_values() {
        let mut keep = vec![false; table.len()];
        for vip in &vips {
            for &s in kept.get(vip).into_iter().flatten() {
                keep[s as usize] = true;
            }
        }
        let flagged = |s: usize| table[s] & (MAGLEV_CHECK | MAGLEV_LOCAL) == MAGLEV_CHECK | MAGLEV_LOCAL;
        out.kept_by_pins += (0..table.len()).filter(|&s| flagged(s) && keep[s]).count() * vips.len();
        let slots: Vec<u32> = (0..table.len())
            .filter(|&s| flagged(s) && !keep[s])
            .map(|s| s as u32)
            .filter(|&s| vips.iter().all(|&v| home_long_enough(v, s)))
            .collect();
        if !slots.is_empty() {
            out.clear.push(Clear { vips, table, slots });
        }
    }
    out
}

/// Flagged buckets of a table.
pub fn flagged(table: &[u32]) -> usize {
    table.iter().filter(|&&e| e & MAGLEV_CHECK != 0).count()
}

/// The flagged buckets of the tables the data path holds, over every VIP (a table shared
/// by several VIPs counted once per VIP, read once), kept up to date where the tables are
/// written rather than counted on every read: counting 64 tables of 65,537 entries on each
/// owner command cost ~4 ms a command. A written table never changes (a change is a new
/// `Arc`), so a table's count is known by its identity; the `Arc` held here keeps that
/// identity from being reused by another table.
#[derive(Default)]
pub struct FlaggedCount {
    /// Table address → the table and its flagged buckets.
    tables: HashMap<usize, (Arc<[u32]>, usize)>,
    total: usize,
}

impl FlaggedCount {
    /// Counts `tables` (VIP → table), reading only the tables it has not seen.
    pub fn update(&mut self, tables: &BTreeMap<u32, Arc<[u32]>>) {
        let mut seen = HashMap::with_capacity(self.tables.len());
        self.total = 0;
        for table in tables.values() {
            let id = Arc::as_ptr(table) as *const u32 as usize;
            let (_, n) = seen.entry(id).or_insert_with(|| {
                self.tables.remove(&id).unwrap_or_else(|| (table.clone(), flagged(table)))
            });
            self.total += *n;
        }
        self.tables = seen;
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// When each local bucket last came home (remote → local), per VIP, in whole seconds of the
/// controller's watch: one number per bucket, for the VIPs that had a bucket come home
/// within the grace, each VIP's shared with a sweep by reference. A site drained and
/// undrained brings nearly every bucket of every VIP home at once (64 VIPs × 65,537), which
/// a map of (VIP, slot) held as ~4 M entries (~130 MB) and copied on every sweep.
#[derive(Clone, Default)]
pub struct CameHome {
    /// VIP → per bucket the second it came home (rounded up; 0: not since the start).
    vips: HashMap<u32, Arc<[u32]>>,
}

impl CameHome {
    /// Records `slots` of `vip`'s table of `len` buckets as home at second `at`, which is
    /// rounded up (≥ 1): a bucket is never taken for home longer than it is.
    pub fn note(&mut self, vip: u32, len: usize, slots: &[u32], at: u32) {
        if slots.is_empty() {
            return;
        }
        let times = self.vips.entry(vip).or_insert_with(|| vec![0; len].into());
        if times.len() != len {
            *times = vec![0; len].into();
        }
        // In place, unless a sweep still reads this VIP's times (then a copy).
        let times = Arc::make_mut(times);
        for &s in slots {
            times[s as usize] = at.max(1);
        }
    }

    /// Forgets the VIPs none of whose buckets came home within `grace` seconds of `now`.
    pub fn prune(&mut self, now: u32, grace: u32) {
        self.vips.retain(|_, t| t.iter().any(|&at| at != 0 && now.saturating_sub(at) < grace));
    }

    /// Whether bucket `slot` of `vip` came home less than `grace` seconds before `now`
    /// (rounded down).
    pub fn lately(&self, vip: u32, slot: u32, now: u32, grace: u32) -> bool {
        self.vips
            .get(&vip)
            .and_then(|t| t.get(slot as usize))
            .is_some_and(|&at| at != 0 && now.saturating_sub(at) < grace)
    }
}

/// The slots of `new` that came home: local now, not local in `old` (a table of another
/// size, or none: every local slot).
pub fn came_home(old: Option<&[u32]>, new: &[u32]) -> Vec<u32> {
    new.iter()
        .enumerate()
        .filter(|&(s, &e)| {
            e & MAGLEV_LOCAL != 0
                && match old {
                    Some(o) if o.len() == new.len() => o[s] & MAGLEV_LOCAL == 0,
                    _ => true,
                }
        })
        .map(|(s, _)| s as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use anycast_common::{
        addr::Family,
        site::{SITE_CONFIGURED, SITE_LOCAL, SITE_UP},
    };

    use super::*;

    const KEY: HashKey = HashKey { k0: 0x0706_0504_0302_0100, k1: 0x0f0e_0d0c_0b0a_0908 };
    const LOCAL: u32 = 0;
    const REMOTE: u32 = 1;
    const M: u32 = 7;
    const NOW: u64 = 100_000;
    const GRACE: u64 = 10;

    fn vip_key() -> VipKey {
        VipKey {
            addr: [10, 200, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 80,
            proto: 6,
            family: Family::V4 as u8,
        }
    }

    fn flow(sport: u16) -> FlowKey {
        let v = vip_key();
        FlowKey {
            src: [192, 168, 1, sport as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: v.addr,
            sport,
            dport: 80,
            proto: 6,
            family: v.family,
            pad: [0; 2],
        }
    }

    fn slot_of(k: &FlowKey) -> u32 {
        maglev_slot(flow_hash(k, &KEY), M)
    }

    /// Flows of distinct buckets, `n` of them.
    fn flows(n: usize) -> Vec<FlowKey> {
        let mut out: Vec<FlowKey> = Vec::new();
        for sport in 1000.. {
            let k = flow(sport);
            if out.iter().all(|o| slot_of(o) != slot_of(&k)) {
                out.push(k);
            }
            if out.len() == n {
                return out;
            }
        }
        unreachable!()
    }

    struct World {
        vips: HashMap<VipKey, VipInfo>,
        sites: Vec<SiteInfo>,
        tables: BTreeMap<u32, Arc<[u32]>>,
        pins: Vec<(FlowKey, FlowValue)>,
        floor: u64,
    }

    /// Every bucket local and flagged; `pins` pinned to the remote site.
    fn world(pins: &[FlowKey]) -> World {
        let mut sites = vec![SiteInfo::default(); 2];
        sites[LOCAL as usize] =
            SiteInfo { flags: SITE_CONFIGURED | SITE_UP | SITE_LOCAL, generation: 1, ..Default::default() };
        sites[REMOTE as usize] =
            SiteInfo { flags: SITE_CONFIGURED | SITE_UP, generation: 3, ..Default::default() };
        let table: Arc<[u32]> = vec![LOCAL | MAGLEV_LOCAL | MAGLEV_CHECK; M as usize].into();
        World {
            vips: HashMap::from([(vip_key(), VipInfo { index: 0, flags: 0 })]),
            sites,
            tables: BTreeMap::from([(0, table.clone()), (1, table)]),
            pins: pins
                .iter()
                .map(|k| (*k, FlowValue { site: REMOTE as u16, state: 0, generation: 3 }))
                .collect(),
            floor: 0,
        }
    }

    impl World {
        /// The pin of `k` closed and was last seen at `at` (in units): its state as
        /// docs/datapath.md §6 spells it, bit 15 ‖ the time's low 15 bits.
        fn closed(&mut self, k: &FlowKey, at: u64) {
            let pin = self.pins.iter_mut().find(|(p, _)| p == k).expect("a pin of that flow");
            pin.1.state = 0x8000 | (at % 32768) as u16;
        }

        fn sweep(&self, home: impl Fn(u32, u32) -> bool) -> Swept {
            let input = Input {
                hash_key: &KEY,
                vips: &self.vips,
                sites: &self.sites,
                tables: &self.tables,
                flows: &self.pins,
                now: NOW,
                floor: self.floor,
                grace: GRACE,
            };
            sweep(&input, home)
        }

        /// The slots the sweep clears (VIPs 0 and 1 share their table: one clear).
        fn cleared(&self) -> Vec<u32> {
            let s = self.sweep(|_, _| true);
            assert!(s.clear.len() <= 1, "{s:?}");
            s.clear
                .first()
                .map(|c| {
                    assert_eq!(c.vips, vec![0, 1]);
                    c.slots.clone()
                })
                .unwrap_or_default()
        }
    }

    fn all_but(slots: &[u32]) -> Vec<u32> {
        (0..M).filter(|s| !slots.contains(s)).collect()
    }

    /// A pin keeps its bucket's flag unless its client closed and it has been silent for the
    /// grace: idle, half-closed but busy, and older builds' pins (state 0) all keep it.
    #[test]
    fn only_closed_and_silent_pins_release_their_bucket() {
        let f = flows(6);
        let mut w = world(&f);
        // f[0]: never closed (state 0, as an idle pin, or one an older build wrote): alive
        w.closed(&f[1], NOW - GRACE); // closed, silent for the grace: over
        w.closed(&f[2], NOW - 2); // closed, seen lately (a half-closed transfer): alive
        w.closed(&f[3], NOW - 32768 - 2); // closed 2^15 + 2 units ago: the wrap makes it look lately seen, alive
        w.closed(&f[4], NOW - 32765); // closed 2^15 - 3 units ago: over (any later looks ahead of now)
        w.closed(&f[5], NOW - GRACE + 1); // closed, silent not quite the grace
        let keep: Vec<u32> = [0, 2, 3, 5].iter().map(|&i| slot_of(&f[i])).collect();
        assert_eq!(w.cleared(), all_but(&keep));
        assert_eq!(w.sweep(|_, _| true).kept_by_pins, 2 * keep.len(), "over both VIPs");
    }

    /// A pin refreshed after the sweep's clock was read carries a time ahead of it, which
    /// wraps to just under 2^15 units ago: alive, not long over.
    #[test]
    fn a_pin_seen_after_the_sweeps_clock_is_alive() {
        let f = flows(4);
        let mut w = world(&f);
        w.closed(&f[0], NOW + 1);
        w.closed(&f[1], NOW + 2);
        w.closed(&f[2], NOW + 3); // as far ahead as no sweep's clock lags: 2^15 - 3 units ago, over
        w.closed(&f[3], NOW - GRACE); // over
        assert_eq!(w.cleared(), all_but(&[slot_of(&f[0]), slot_of(&f[1])]));
    }

    /// No pin counts as silent for longer than the controller has watched.
    #[test]
    fn a_closed_pin_is_silent_only_since_the_controller_started() {
        let f = flows(2);
        let mut w = world(&f);
        w.closed(&f[0], NOW - 5000);
        w.closed(&f[1], NOW - 5000);
        w.floor = NOW - GRACE + 1;
        assert_eq!(w.cleared(), all_but(&[slot_of(&f[0]), slot_of(&f[1])]));
        w.floor = NOW - GRACE;
        assert_eq!(w.cleared(), all_but(&[]));
    }

    /// What does not need the flag: pins to a slot reused (another generation) or
    /// unconfigured, UDP pins and fragments (they look at the flow table anyway), pins of a
    /// VIP without a table.
    #[test]
    fn pins_the_data_path_ignores_keep_nothing() {
        let f = flows(4);
        let mut w = world(&f);
        w.pins[0].1.generation = 2;
        w.sites.push(SiteInfo::default());
        w.pins[1].1.site = 2;
        w.pins[2].0.proto = 17;
        w.pins[3].0.sport = 0;
        w.pins[3].0.dport = 0;
        assert_eq!(w.cleared(), all_but(&[]));
        // A site down may come back up with its pins: they keep the flag.
        let mut w = world(&f[..1]);
        w.sites[REMOTE as usize].flags &= !SITE_UP;
        assert_eq!(w.cleared(), all_but(&[slot_of(&f[0])]));
    }

    /// A bucket not home for the grace keeps its flag; a table shared by two VIPs is
    /// cleared where both may clear it; only local flagged buckets are candidates.
    #[test]
    fn buckets_home_lately_and_remote_buckets_stay() {
        let mut w = world(&[]);
        let s = w.sweep(|vip, slot| !(vip == 1 && slot == 3));
        assert_eq!(s.clear[0].slots, all_but(&[3]));
        let mut t = w.tables[&0].to_vec();
        t[2] = REMOTE;
        t[4] = LOCAL | MAGLEV_LOCAL;
        w.tables = BTreeMap::from([(0, t.into())]);
        let s = w.sweep(|_, _| true);
        assert_eq!(s.clear[0].slots, all_but(&[2, 4]));
        let cleared = s.clear[0].cleared();
        assert_eq!(flagged(&cleared), 0);
        assert_eq!(cleared[2], REMOTE);
    }

    /// The count follows the tables as they are written: a table shared by two VIPs counts
    /// for both, a rewritten table (a new `Arc`, even with the same entries) is counted anew,
    /// a table no VIP holds any more counts for nothing.
    #[test]
    fn flagged_count_follows_the_written_tables() {
        let c = LOCAL | MAGLEV_LOCAL | MAGLEV_CHECK;
        let l = LOCAL | MAGLEV_LOCAL;
        let shared: Arc<[u32]> = vec![c, c, REMOTE, l].into();
        let own: Arc<[u32]> = vec![c, l, REMOTE].into();
        let mut tables = BTreeMap::from([(0, shared.clone()), (1, shared.clone()), (2, own)]);
        let mut n = FlaggedCount::default();
        n.update(&tables);
        assert_eq!(n.total(), 2 + 2 + 1);
        tables.insert(2, vec![l, l, REMOTE].into());
        n.update(&tables);
        assert_eq!(n.total(), 4);
        tables.insert(1, vec![c, l, REMOTE, l].into());
        n.update(&tables);
        assert_eq!(n.total(), 2 + 1);
        tables.remove(&0);
        n.update(&tables);
        assert_eq!(n.total(), 1);
        n.update(&BTreeMap::new());
        assert_eq!(n.total(), 0);
    }

    /// A bucket is home lately until `grace` whole seconds after it came home; a VIP's record
    /// goes once none of its buckets is; a table of another size starts afresh.
    #[test]
    fn came_home_is_kept_per_bucket_for_the_grace() {
        let mut c = CameHome::default();
        c.note(0, 4, &[1, 2], 10);
        c.note(0, 4, &[2], 15);
        c.note(1, 4, &[], 15);
        assert!(c.lately(0, 1, 19, 10) && !c.lately(0, 1, 20, 10));
        assert!(c.lately(0, 2, 24, 10) && !c.lately(0, 2, 25, 10));
        assert!(!c.lately(0, 0, 11, 10) && !c.lately(1, 0, 16, 10) && !c.lately(0, 9, 11, 10));
        c.prune(24, 10);
        assert!(c.lately(0, 2, 24, 10), "pruned while a bucket is home lately");
        c.prune(25, 10);
        assert!(!c.lately(0, 2, 24, 10), "kept after every bucket's grace");
        c.note(2, 4, &[3], 30);
        c.note(2, 8, &[5], 31);
        assert!(!c.lately(2, 3, 31, 10) && c.lately(2, 5, 31, 10), "another size: afresh");
        // A sweep's copy is not changed by what comes home after it.
        let held = c.clone();
        c.note(2, 8, &[6], 40);
        assert!(c.lately(2, 6, 40, 10) && !held.lately(2, 6, 40, 10));
    }

    #[test]
    fn came_home_is_remote_to_local() {
        let l = LOCAL | MAGLEV_LOCAL;
        assert_eq!(came_home(Some(&[REMOTE, l, REMOTE, l]), &[l, l, REMOTE, REMOTE]), vec![0]);
        assert_eq!(came_home(None, &[l, REMOTE]), vec![0]);
        assert_eq!(came_home(Some(&[REMOTE]), &[l, REMOTE]), vec![0]);
    }
}
