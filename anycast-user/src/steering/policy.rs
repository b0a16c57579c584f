//! The load policy: from this site's measured load and what the sibling sites report, the
//! share of *new* flows this site keeps and how the rest is spread. Pure: no I/O, no clock;
//! `task.rs` feeds it once per `[load] interval`.
//!
//! Model. `offered` is the packet rate of clients arriving at this site for its VIPs (what
//! the data path counts as local + forwarded), `received` what siblings send us through the
//! tunnel (we serve it but cannot steer it), `capacity` the packet rate the site serves at
//! utilisation 1. Utilisation `u = max((kept + received) / capacity, cpu)`, smoothed by the
//! caller (EWMA). The lever is `keep`, the fraction of new flows the local site's Maglev
//! weight claims; established flows never move (the flow table pins them), so `keep` acts on
//! the served rate as flows turn over.
//!
//! Each interval:
//! 1. `wanted` is the keep that would put us at `target`: by rate
//!    `(target * capacity - received) / offered`, and when CPU counts, the current keep scaled
//!    by `target / cpu` (CPU taken as proportional to the traffic we keep); the smaller wins.
//! 2. Hysteresis: shedding starts when `u` passes `high` and ends when the load would stay
//!    below `low` with every new flow kept (`offered + received < low * capacity`). While
//!    shedding, keep follows `wanted`, so the site sits at `target`; otherwise it returns
//!    to 1. Each move is at most `max_step`, and moves under 1 % are not made. Shedding
//!    starts and stops at different loads, so a load near one watermark does not flip it
//!    back and forth; and `wanted` depends on the offered rate, not on what keep did to the
//!    served rate, so following it does not feed back into itself.
//! 3. Headroom: a sibling may take `target_i * capacity_i - (served_i - ours_i)` packets/s
//!    from us (its room at its own target, counting what we already send it as ours to
//!    keep). A sibling that is down, drained, at or above its target gets nothing. One
//!    whose report is stale or missing is "unknown": it gets at most its static share (its
//!    configured weight's share) of our offered rate. What we shed never exceeds the total
//!    room: the remainder stays local, and if nothing can be shed while overloaded, the
//!    `no_headroom` flag is raised (the BGP speaker de-prefers the VIP on it).
//! 4. The shed share is spread over the siblings in proportion to their room.

use std::collections::BTreeMap;

use crate::model::{LoadReport, WEIGHT_SCALE};

/// The `[load]` knobs the policy uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knobs {
    pub target: f64,
    pub high: f64,
    pub low: f64,
    pub max_step: f64,
}

/// This site, smoothed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Local {
    /// Packets/s for our VIPs arriving from clients (kept or forwarded).
    pub offered: f64,
    /// Packets/s decapsulated from siblings.
    pub received: f64,
    /// Packets/s served here: kept + received, measured (established flows included, so
    /// it follows `keep` with the flows' turnover).
    pub served: f64,
    /// Packets/s the site serves at utilisation 1.
    pub capacity: f64,
    /// Host CPU utilisation 0..1, if it counts.
    pub cpu: Option<f64>,
}

impl Local {
    /// The load figure the watermarks compare with.
    pub fn utilisation(&self) -> f64 {
        let rate = if self.capacity > 0.0 { self.served / self.capacity } else { 0.0 };
        self.cpu.map_or(rate, |c| rate.max(c))
    }
}

/// What a sibling site told us (its `GET /load`), if anything recent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    pub utilisation: f64,
    pub served: f64,
    pub capacity: f64,
    pub target: f64,
    pub drained: bool,
}

impl Report {
    /// What the policy reads from a sibling's load report: a site whose data path is not
    /// attached takes nothing, as a drained one.
    pub fn of(r: &LoadReport) -> Report {
        Report {
            utilisation: r.utilisation,
            served: r.served,
            capacity: r.capacity,
            target: r.target,
            drained: r.drained || !r.attached,
        }
    }
}

/// A sibling site as the policy sees it. The policy knows siblings by their position in
/// the slice it is given (no names: the simulator runs it for hundreds of sites a round).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sibling {
    /// Health probes say it is up (or there are no probes).
    pub up: bool,
    /// Drained here by an operator.
    pub drained: bool,
    /// Its configured weight's share of all configured weights: the most an unknown
    /// sibling gets from us.
    pub static_share: f64,
    /// Packets/s we forward to it now.
    pub ours: f64,
    /// `None`: stale or never heard from.
    pub report: Option<Report>,
}

impl Sibling {
    /// Packets/s of our offered load it may take.
    fn room(&self, offered: f64) -> f64 {
        if !self.up || self.drained {
            return 0.0;
        }
        match &self.report {
            None => self.static_share * offered,
            Some(r) if r.drained || r.utilisation >= r.target => 0.0,
            Some(r) => (r.target * r.capacity - (r.served - self.ours)).max(0.0),
        }
    }
}

/// What the policy remembers between intervals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct State {
    pub keep: f64,
    /// Between crossing `high` and the load falling below `low`.
    pub shedding: bool,
}

impl Default for State {
    fn default() -> Self {
        State { keep: 1.0, shedding: false }
    }
}

/// Moves of `keep` smaller than this are not made: the offered rate's noise would otherwise
/// move the weights every interval.
const KEEP_DEAD_BAND: f64 = 0.01;

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Share of new flows kept local.
    pub keep: f64,
    /// Share of new flows per sibling, in the order of the siblings given; they sum to
    /// `1 - keep`.
    pub shares: Vec<f64>,
    /// Smoothed utilisation above `high`.
    pub overloaded: bool,
    /// Overloaded and the siblings cannot take what we would shed.
    pub no_headroom: bool,
}

pub fn decide(knobs: &Knobs, state: &mut State, local: &Local, siblings: &[Sibling]) -> Decision {
    let u = local.utilisation();
    let overloaded = u > knobs.high;
    if overloaded {
        state.shedding = true;
    } else if state.shedding && full_utilisation(state.keep, local) < knobs.low {
        state.shedding = false;
    }
    let wanted = if state.shedding { wanted_keep(knobs, state.keep, local) } else { 1.0 };
    let mut keep = state.keep;
    if (wanted - keep).abs() >= KEEP_DEAD_BAND || (wanted == 1.0 && keep != 1.0) {
        keep = wanted.clamp(keep - knobs.max_step, keep + knobs.max_step);
    }

    let rooms: Vec<f64> = siblings.iter().map(|s| s.room(local.offered)).collect();
    let room: f64 = rooms.iter().sum();
    // The least we can keep when the siblings take all the room they have.
    let floor = if local.offered > 0.0 { 1.0 - room / local.offered } else { 1.0 };
    let capped = keep < floor;
    if capped {
        keep = floor;
    }
    state.keep = keep;
    let no_headroom = overloaded && capped;
    let shares = rooms.iter().map(|r| if room > 0.0 { (1.0 - keep) * r / room } else { 0.0 }).collect();
    Decision { keep, shares, overloaded, no_headroom }
}

/// The utilisation if every new flow stayed local: rate and, when it counts, CPU scaled up
/// from the share kept now.
fn full_utilisation(keep: f64, local: &Local) -> f64 {
    let rate = if local.capacity > 0.0 { (local.offered + local.received) / local.capacity } else { 0.0 };
    local.cpu.map_or(rate, |c| rate.max(c / keep.max(KEEP_DEAD_BAND)))
}

/// The keep that brings the utilisation to `target`, in [0, 1].
fn wanted_keep(knobs: &Knobs, keep: f64, local: &Local) -> f64 {
    let by_rate = if local.offered > 0.0 {
        (knobs.target * local.capacity - local.received) / local.offered
    } else {
        1.0
    };
    let by_cpu = local.cpu.filter(|&c| c > 0.0).map_or(f64::INFINITY, |c| keep * knobs.target / c);
    by_rate.min(by_cpu).clamp(0.0, 1.0)
}

/// Weight changes below this (in [`WEIGHT_SCALE`] units: 1 %) are not applied: a Maglev
/// rebuild per interval for noise would churn nothing but CPU.
pub const MIN_CHANGE: u32 = 100;

/// Whether new weights are worth a Maglev rebuild over the applied ones, given as
/// `(new, applied)` pairs per site: a site that gains or loses its last slot, or a weight
/// that moves by [`MIN_CHANGE`] or more.
pub fn worth_applying(pairs: impl IntoIterator<Item = (u32, u32)>) -> bool {
    pairs.into_iter().any(|(w, old)| (w == 0) != (old == 0) || w.abs_diff(old) >= MIN_CHANGE)
}

/// A share as a Maglev weight: scaled to an integer ([`WEIGHT_SCALE`]).
pub fn weight(share: f64) -> u32 {
    (share * WEIGHT_SCALE).round() as u32
}

/// Maglev weights from a decision, by name: `siblings` names the decision's siblings in
/// the order they were given.
pub fn weights<'a>(
    local_name: &str,
    siblings: impl IntoIterator<Item = &'a str>,
    d: &Decision,
) -> BTreeMap<String, u32> {
    let mut w: BTreeMap<String, u32> =
        siblings.into_iter().zip(&d.shares).map(|(n, &s)| (n.to_owned(), weight(s))).collect();
    w.insert(local_name.to_owned(), weight(d.keep));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOBS: Knobs = Knobs { target: 0.8, high: 0.9, low: 0.7, max_step: 0.25 };

    fn sibling(report: Option<Report>) -> Sibling {
        Sibling { up: true, drained: false, static_share: 1.0 / 3.0, ours: 0.0, report }
    }

    fn idle(capacity: f64) -> Option<Report> {
        Some(Report { utilisation: 0.1, served: 0.1 * capacity, capacity, target: 0.8, drained: false })
    }

    /// The site with `offered` pps at 1,000 pps capacity, serving what `keep` keeps.
    fn at(offered: f64, keep: f64) -> Local {
        Local { offered, received: 0.0, served: keep * offered, capacity: 1000.0, cpu: None }
    }

    /// Runs the policy for `n` intervals, feeding back the load each keep produces.
    fn run(offered: f64, siblings: &[Sibling], state: &mut State, n: usize) -> Vec<Decision> {
        (0..n).map(|_| decide(&KNOBS, state, &at(offered, state.keep), siblings)).collect()
    }

    #[test]
    fn normal_load_keeps_everything_local() {
        let mut state = State::default();
        let d = decide(&KNOBS, &mut state, &at(500.0, 1.0), &[sibling(idle(1000.0)), sibling(idle(1000.0))]);
        assert_eq!(d.keep, 1.0);
        assert!(d.shares.iter().all(|&s| s == 0.0));
        assert!(!d.overloaded && !d.no_headroom);
    }

    #[test]
    fn overload_sheds_to_target_in_bounded_steps() {
        // 2,000 pps offered to a 1,000 pps site: keep 0.4 puts it at 800 = target.
        let siblings = [sibling(idle(1000.0)), sibling(idle(1000.0))];
        let mut state = State::default();
        let ds = run(2000.0, &siblings, &mut state, 20);
        let keeps: Vec<f64> = ds.iter().map(|d| d.keep).collect();
        assert_eq!(&keeps[..4], &[0.75, 0.5, 0.4, 0.4]);
        assert!((at(2000.0, state.keep).utilisation() - KNOBS.target).abs() < 1e-9);
        // Equal room: equal shares, summing to 1 - keep.
        let last = ds.last().unwrap();
        assert!((last.shares[0] - 0.3).abs() < 1e-9 && (last.shares[1] - 0.3).abs() < 1e-9);
        assert!(!last.overloaded && !last.no_headroom);
    }

    #[test]
    fn shares_follow_room_and_skip_full_down_or_drained_siblings() {
        let local = at(2000.0, 0.4);
        let mut full = sibling(idle(1000.0));
        full.report.as_mut().unwrap().utilisation = 0.85;
        let mut down = sibling(idle(1000.0));
        down.up = false;
        let mut drained = sibling(idle(1000.0));
        drained.drained = true;
        let big = sibling(idle(3000.0)); // room 2400 - 300 = 2100
        let small = sibling(idle(1000.0)); // room 800 - 100 = 700
        let mut state = State { keep: 0.4, shedding: true };
        let d = decide(&KNOBS, &mut state, &local, &[full, down, drained, big, small]);
        assert_eq!(d.shares[0] + d.shares[1] + d.shares[2], 0.0);
        assert!((d.shares[3] / d.shares[4] - 3.0).abs() < 1e-9);
        assert!((d.shares.iter().sum::<f64>() + d.keep - 1.0).abs() < 1e-9);
    }

    #[test]
    fn what_we_already_send_counts_as_ours_to_keep() {
        // b serves 700 of which 600 are ours: its room for us is 800 - 100 = 700, not 100.
        let local = at(1600.0, 0.625);
        let mut b = sibling(Some(Report {
            utilisation: 0.7,
            served: 700.0,
            capacity: 1000.0,
            target: 0.8,
            drained: false,
        }));
        b.ours = 600.0;
        let mut state = State { keep: 0.625, shedding: true };
        let d = decide(&KNOBS, &mut state, &local, &[b]);
        // 1600 * 0.5 = 800 wanted local; shedding 800 exceeds the room of 700: keep 1 - 700/1600.
        assert!((d.keep - (1.0 - 700.0 / 1600.0)).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn no_headroom_anywhere_keeps_traffic_local_and_raises_the_flag() {
        let local = at(2000.0, 1.0);
        let mut b = sibling(idle(1000.0));
        b.report.as_mut().unwrap().utilisation = 0.95;
        let mut c = sibling(idle(1000.0));
        c.up = false;
        let mut state = State::default();
        let d = decide(&KNOBS, &mut state, &local, &[b, c]);
        assert_eq!(d.keep, 1.0);
        assert!(d.overloaded && d.no_headroom);
    }

    #[test]
    fn unknown_sibling_gets_at_most_its_static_share() {
        let local = at(4000.0, 0.3);
        let unknown = sibling(None); // static share 1/3 of 4000
        let mut state = State { keep: 0.3, shedding: true };
        let d = decide(&KNOBS, &mut state, &local, &[unknown]);
        assert!((d.shares[0] - 1.0 / 3.0).abs() < 1e-9, "{d:?}");
        assert!(d.no_headroom);
    }

    #[test]
    fn falling_load_returns_flows_without_oscillating() {
        // Siblings with room for all of the surge (2 x 1,400 pps).
        let siblings = [sibling(idle(2000.0)), sibling(idle(2000.0))];
        let mut state = State::default();
        let mut keeps = Vec::new();
        // Load ramps up to 2.5x capacity and back down to half, 10 intervals per step.
        for offered in [500.0, 1200.0, 2500.0, 1800.0, 1000.0, 500.0] {
            keeps.extend(run(offered, &siblings, &mut state, 10).iter().map(|d| d.keep));
            let u = at(offered, state.keep).utilisation();
            assert!(u <= KNOBS.high + 1e-9, "offered {offered}: settled at u = {u}");
        }
        assert_eq!(state.keep, 1.0, "all flows back home at half load");
        let changes = keeps.windows(2).filter(|w| w[0] != w[1]).count();
        let reversals = keeps.windows(3).filter(|w| (w[1] - w[0]) * (w[2] - w[1]) < 0.0).count();
        assert!(changes <= 12, "{changes} changes: {keeps:?}");
        assert!(reversals <= 2, "{reversals} direction changes: {keeps:?}");
    }

    #[test]
    fn shedding_starts_above_high_and_ends_only_below_low() {
        let siblings = [sibling(idle(2000.0))];
        let mut state = State::default();
        // 880 pps: below high, nothing happens.
        run(880.0, &siblings, &mut state, 5);
        assert_eq!((state.keep, state.shedding), (1.0, false));
        // 950: above high, shed to target.
        run(950.0, &siblings, &mut state, 5);
        assert!(state.shedding && (state.keep - 800.0 / 950.0).abs() < 1e-9, "{state:?}");
        // 750 (between low and target): everything fits at target again, but shedding stays
        // armed, so a return to 880 sheds at once instead of waiting for high.
        run(750.0, &siblings, &mut state, 5);
        assert_eq!((state.keep, state.shedding), (1.0, true));
        run(880.0, &siblings, &mut state, 5);
        assert!((state.keep - 800.0 / 880.0).abs() < 1e-9, "{state:?}");
        // 650: below low with everything kept: shedding ends.
        run(650.0, &siblings, &mut state, 5);
        assert_eq!((state.keep, state.shedding), (1.0, false));
    }

    #[test]
    fn cpu_bound_site_sheds_by_cpu() {
        let local = Local { cpu: Some(0.95), ..at(100.0, 1.0) };
        let mut state = State::default();
        let d = decide(&KNOBS, &mut state, &local, &[sibling(idle(1000.0))]);
        assert!((d.keep - 0.8 / 0.95).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn weights_scale_the_shares() {
        let d = Decision { keep: 0.4, shares: vec![0.45, 0.15], overloaded: true, no_headroom: false };
        let w = weights("a", ["b", "c"], &d);
        assert_eq!(w, [("a".to_owned(), 4000), ("b".to_owned(), 4500), ("c".to_owned(), 1500)].into());
    }
}
