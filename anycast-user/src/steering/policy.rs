//! The load policy: from this site's measured load and what the sibling sites report, the
//! share of *new* flows this site keeps and how the rest is spread. Pure: no I/O, no clock;
//! `task.rs` feeds it once per `[load] interval`, and the simulator (`cargo xtask sim`)
//! runs the same function over hundreds of sites.
//!
//! Model. `offered` is the packet rate of clients arriving at this site for its VIPs (what
//! the data path counts as local + forwarded), of which `fixed` cannot be shed (VIPs no
//! other site serves); `received` what siblings send us through the tunnel (we serve it but
//! cannot steer it); `capacity` the packet rate the site serves at utilisation 1. The lever
//! is `keep`, the share of new (sheddable) flows the local site's Maglev weight claims;
//! established flows never move, so `keep` acts on the served rate as flows turn over.
//! Every figure comes twice: smoothed (an EWMA that takes a rise beyond noise at once, so
//! that a flash crowd is seen within one interval: `meter::follow`), and over the last
//! interval alone (`recent`).
//!
//! Each interval:
//! 1. Overload is judged on the smoothed utilisation (only a calm that lasts brings flows
//!    back). Shedding starts above `high`, or within [`GUARD_SIGMAS`] standard deviations of
//!    the figure's measured noise below it (a load above `high` read just below it), or an
//!    interval earlier when the load rose by more than half the band between `target` and
//!    `high` in one interval and one more such rise would pass `high` (a crowd still
//!    arriving: [`RISE`]), and ends when the load
//!    would stay below `low` with every new flow kept.
//! 2. While shedding, the wanted keep is what puts the site at `target`:
//!    `(target·C − received − fixed − E) / (offered − fixed)`, where `E` is the local load
//!    the current keep does not explain — established flows kept under an earlier, higher
//!    keep, which only time removes. Without established flows this is the feed-forward
//!    `(target·C − received − fixed) / sheddable`; with them the site sheds a little more
//!    at first and takes it back as they end, without a reversal (the correction shrinks
//!    monotonically). `E` is measured on each interval alone (the smoothed figures lag
//!    behind a change of keep) and smoothed as the meter smooths a rate: a rise beyond
//!    noise counts at once (after a cut of keep, the flows kept before it are all there),
//!    anything else is averaged over the last few intervals ([`UNEXPLAINED_WEIGHT`]):
//!    which flow lands where is random, and one interval's figure of a small site is
//!    noisy; overloaded, any higher figure of the last interval counts at once. While
//!    the offered rate still climbs beyond noise, keep does not rise: a crowd's long
//!    flows build up over their lifetime, and flows taken home now the next intervals
//!    would send away again. No integrator: nothing winds up.
//! 3. Room at a sibling is continuous: `(target − RELIEF)·C − (served − ours)` (its room
//!    at its own target less the noise allowance of step 5, counting what we already send
//!    as ours), never cut off at a threshold. A
//!    sibling down, drained or detached has none; one whose report is stale keeps what we
//!    send it now and gets no more (its controller may be restarting: its data path still
//!    serves).
//! 4. Nearest room first: siblings are filled in order of `cost`, those of equal cost in
//!    proportion to their room (with every cost equal, as by default, that is the spread
//!    in proportion to room of the whole set). Several
//!    shedders share a sibling's room in proportion to what each wants from it: every
//!    shedder publishes what it loads each sibling with (what it wants from it, or what
//!    its share in force sends it once the flows turn over, whichever is more: a share
//!    the bounded moves hold, and what spilled past a contended sibling, load it too)
//!    and what it sends it now; the
//!    sibling's room for all of them is its room for us plus what the others send it, and
//!    each takes `room × mine / (mine + others')` of it when they do not all fit; what a
//!    sibling cannot give spills to the next one.
//! 5. Bounded moves, both ways: the share of new flows moved in one interval (to or from
//!    any site) is at most `max_step`; moved away from home over the last minute, at most
//!    `max_moved_per_minute` (coming home is never held back by it); moves of keep under
//!    1 % are not made, nor moves back against the last one under 2.5 % (unless
//!    overloaded); with keep where it is, the shed share is spread anew among the siblings
//!    only when that moves 5 % or more ([`SPREAD_BAND`]); a sibling above its own target by
//!    more than 0.75 % ([`RELIEF`]), or one shared with other shedders that our share in
//!    force would take above its target once the flows turn over (our offered rate
//!    climbed, or its room shrank), gets its flows back whatever the bands — taken home
//!    (keep rises) or spread to the siblings with room (keep stays: relief never sends more
//!    away): noise (in our figures or in the siblings' reports) does not make the weights
//!    go back and forth; the weights sum to the scale exactly ([`split`]), so the local
//!    share of the table moves only with keep.
//! 6. Escalation: overloaded with no room to shed into, or overloaded for `escalate_after`
//!    while shedding (what cannot be shed), raises `no_headroom`, which the BGP speaker
//!    acts on, slowly (`bgp/`).
//! 7. CPU (optional): the busiest core's softirq share, steal excluded. It may lower keep
//!    (by `keep·target/cpu`) only while lowering keep lowers it: after [`CPU_TRIES`]
//!    decreases that did not, CPU stops driving keep down (anti-windup) and the site
//!    escalates instead.

use std::collections::{BTreeMap, VecDeque};

use crate::{
    config::Load as LoadConfig,
    model::{LoadReport, WEIGHT_SCALE},
};

/// The `[load]` knobs the policy uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knobs {
    pub target: f64,
    pub high: f64,
    pub low: f64,
    /// Largest share of new flows moved per interval.
    pub max_step: f64,
    /// Largest share of new flows moved over the last [`Knobs::window`] intervals.
    pub max_moved_per_minute: f64,
    /// Intervals in a minute.
    pub window: usize,
    /// Intervals overloaded while shedding before escalating.
    pub escalate_after: u32,
    /// Intervals from a decision to its install (a site of several hosts installs each
    /// decision on all its hosts at once, a lead time after it: `install::lead_time`); 0 for a
    /// site that installs at once.
    pub lead: f64,
}

impl Knobs {
    pub fn of(l: &LoadConfig) -> Knobs {
        let interval = l.interval.as_secs_f64().max(1e-3);
        Knobs {
            target: l.target,
            high: l.high,
            low: l.low,
            max_step: l.max_step,
            max_moved_per_minute: l.max_moved_per_minute,
            window: (60.0 / interval).round().max(1.0) as usize,
            escalate_after: (l.escalate_after.as_secs_f64() / interval).ceil().max(1.0) as u32,
            lead: 0.0,
        }
    }

    /// The interval, s: what the rates were counted over (Poisson noise).
    fn interval(&self) -> f64 {
        60.0 / self.window.max(1) as f64
    }

    /// With decisions installed `lead` after they are made, for a policy run every `tick`.
    pub fn with_lead(self, lead: std::time::Duration, tick: std::time::Duration) -> Knobs {
        Knobs { lead: lead.as_secs_f64() / tick.as_secs_f64().max(1e-3), ..self }
    }
}

/// Packet rates, packets/s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Clients' packets for our VIPs arriving here (kept or forwarded).
    pub offered: f64,
    /// Decapsulated from siblings.
    pub received: f64,
    /// Served here: kept + received (established flows included).
    pub served: f64,
}

impl Rates {
    /// The sum of several hosts' rates: a site's.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Rates>) -> Rates {
        all.into_iter().fold(Rates::default(), |a, r| Rates {
            offered: a.offered + r.offered,
            received: a.received + r.received,
            served: a.served + r.served,
        })
    }
}

/// This site.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Local {
    pub smoothed: Rates,
    /// Over the last interval, unsmoothed.
    pub recent: Rates,
    /// Offered packets/s that no other site can take (VIPs only this site serves).
    pub fixed: f64,
    /// Packets/s the site serves at utilisation 1.
    pub capacity: f64,
    /// CPU utilisation 0..1, if it counts.
    pub cpu: Option<f64>,
}

impl Local {
    /// A site's figures from its hosts': rates and capacities add up, CPU is the busiest.
    pub fn sum<'a>(hosts: impl IntoIterator<Item = &'a Local> + Clone) -> Local {
        Local {
            smoothed: Rates::sum(hosts.clone().into_iter().map(|h| &h.smoothed)),
            recent: Rates::sum(hosts.clone().into_iter().map(|h| &h.recent)),
            fixed: hosts.clone().into_iter().map(|h| h.fixed).sum(),
            capacity: hosts.clone().into_iter().map(|h| h.capacity).sum(),
            cpu: hosts.into_iter().filter_map(|h| h.cpu).reduce(f64::max),
        }
    }

    fn ratio(&self, r: &Rates) -> f64 {
        if self.capacity > 0.0 { r.served / self.capacity } else { 0.0 }
    }

    /// The smoothed load figure: served / capacity (or CPU, when it counts and is higher).
    pub fn utilisation(&self) -> f64 {
        let rate = self.ratio(&self.smoothed);
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
/// the slice it is given, which must stay the same from one call to the next (the config's
/// order); no names, so that the simulator can run it for hundreds of sites a round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sibling {
    /// Health probes say it is up (or there are no probes).
    pub up: bool,
    /// Drained here by an operator.
    pub drained: bool,
    /// What sending it a flow costs (a round trip in ms, or a configured preference):
    /// the cheapest room is filled first.
    pub cost: f64,
    /// Packets/s we forward to it now.
    pub ours: f64,
    /// Packets/s the other shedders want from it, and what they send it now (from their
    /// reports).
    pub others_want: f64,
    pub others_send: f64,
    /// `None`: stale or never heard from.
    pub report: Option<Report>,
}

impl Sibling {
    /// Packets/s of our load it may take.
    fn room(&self) -> f64 {
        if !self.up || self.drained {
            return 0.0;
        }
        match &self.report {
            None => self.ours,
            Some(r) if r.drained => 0.0,
            // Filled to RELIEF below its target: its own noise stays at or below it.
            Some(r) => ((r.target - RELIEF) * r.capacity - (r.served - self.ours)).max(0.0),
        }
    }

    fn usable(&self) -> bool {
        self.up && !self.drained && !self.report.is_some_and(|r| r.drained)
    }
}

/// After this many CPU-driven decreases of keep that did not lower the CPU, CPU no longer
/// lowers keep.
pub const CPU_TRIES: u32 = 3;

/// What the policy remembers between intervals.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub keep: f64,
    /// Shares per sibling, as last decided (empty: none yet).
    pub shares: Vec<f64>,
    /// Between crossing `high` and the load falling below `low`.
    pub shedding: bool,
    /// Consecutive intervals overloaded.
    pub overloaded_for: u32,
    /// The sign of keep's last move.
    pub direction: f64,
    /// Shares of new flows moved away from home in the last intervals (newest last).
    pub moved: VecDeque<f64>,
    /// CPU when keep was last lowered for CPU, and how many such decreases did not help.
    pub cpu_at: Option<f64>,
    pub cpu_misses: u32,
    /// The local load the keep in force does not explain, averaged (packets/s; may be
    /// negative: noise).
    pub unexplained: f64,
    /// The smoothed utilisation and offered rate at the last decision (None before the
    /// first).
    pub last_utilisation: Option<f64>,
    pub last_offered: Option<f64>,
    /// The keeps decided in the last intervals, newest last (the oldest: the keep in force
    /// before them): with a lead time, what the data path kept over the last interval.
    pub decided: VecDeque<f64>,
    /// The variance of the last interval's utilisation about the smoothed one, averaged.
    pub noise: f64,
}

impl Default for State {
    fn default() -> Self {
        State::keeping(1.0, Vec::new())
    }
}

impl State {
    /// Carrying on from the shares in force, the siblings' in their order (a restart adopts
    /// the weights the running data path steers by).
    pub fn adopted(keep: f64, shares: Vec<f64>) -> State {
        State { shedding: keep < 1.0, ..State::keeping(keep, shares) }
    }

    fn keeping(keep: f64, shares: Vec<f64>) -> State {
        State {
            keep,
            shares,
            shedding: false,
            overloaded_for: 0,
            direction: 0.0,
            moved: VecDeque::new(),
            cpu_at: None,
            cpu_misses: 0,
            unexplained: 0.0,
            last_utilisation: None,
            last_offered: None,
            decided: VecDeque::from([keep]),
            noise: 0.0,
        }
    }

    /// The share of new flows kept over the last interval: decisions reach the data path
    /// `lead` intervals after they are made, so over the interval just measured the keep in
    /// force was the one decided `lead` intervals before its end, then the next one (a
    /// site of one host: the last one decided).
    fn in_force(&self, lead: f64) -> f64 {
        let lead = lead.max(0.0);
        let (whole, part) = (lead.floor() as usize, lead.fract());
        let back = |i: usize| {
            let n = self.decided.len();
            if n == 0 { self.keep } else { self.decided[n - 1 - i.min(n - 1)] }
        };
        (1.0 - part) * back(whole) + part * back(whole + 1)
    }
}

/// Moves smaller than this share of new flows are not made: the offered rate's noise would
/// otherwise move the weights every interval.
const DEAD_BAND: f64 = 0.01;
/// Moves back against the last one smaller than this are not made (unless overloaded).
const REVERSAL_BAND: f64 = 0.025;
/// The weight of the last interval in the average of the unexplained local load.
pub const UNEXPLAINED_WEIGHT: f64 = 0.25;
/// A rise in one interval is a step, not noise, beyond this share (of a rate, or of the
/// load an unexplained figure is measured on)...
pub const STEP: f64 = 0.1;
/// ...and beyond this many standard deviations of the interval's packet count (Poisson:
/// `√n` of `n` packets, so a small site's figures need a larger rise).
pub const STEP_SIGMAS: f64 = 4.0;
/// A rise of the smoothed utilisation in one interval beyond this share of the band
/// between `target` and `high` is a crowd arriving, not noise: shedding starts as soon as
/// one more such rise would pass `high`, an interval before it does.
pub const RISE: f64 = 0.5;
/// Shedding starts once the smoothed utilisation is within this many standard deviations of
/// its measured noise below `high`: a load truly above `high` that its noisy figure reads
/// just below it would otherwise stay there until the figure crosses, seconds for a slow
/// rise (a day's peak).
pub const GUARD_SIGMAS: f64 = 2.0;
/// With keep where it is, spreading the shed share anew among the siblings moves less
/// than this share of new flows only to give a sibling above its target flows back:
/// their reports' noise moves their rooms every interval.
pub const SPREAD_BAND: f64 = 0.05;
/// A sibling above its target by more than this (of its capacity) is relieved whatever
/// the bands: below 1 %, so that one interval late it is still within 1 % of its target.
/// Siblings are filled to this much below their target: its own noise (its clients,
/// which flow lands where) then leaves it at its target, not above it half the time.
pub const RELIEF: f64 = 0.0075;

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Share of new flows kept local.
    pub keep: f64,
    /// Share of new flows per sibling, in the order of the siblings given; they sum to
    /// `1 - keep`.
    pub shares: Vec<f64>,
    /// Packets/s this site claims of each sibling's room (published, so that the other
    /// shedders can share it): what it wants there before sharing the room with them, or
    /// what its share sends there, whichever is more.
    pub wants: Vec<f64>,
    /// Utilisation above `high`.
    pub overloaded: bool,
    /// Overloaded, and shedding cannot bring the site down: no room, or not fast enough.
    pub no_headroom: bool,
    /// Share of new flows moved by this decision.
    pub moved: f64,
}

pub fn decide(knobs: &Knobs, state: &mut State, local: &Local, siblings: &[Sibling]) -> Decision {
    if state.shares.len() != siblings.len() {
        // Another set of siblings (a reload): start from "everything local"; the bounded
        // moves take it from there.
        *state = State { shares: vec![0.0; siblings.len()], ..State::default() };
    }
    let u = local.utilisation();
    let overloaded = u > knobs.high;
    let rise = state.last_utilisation.map_or(0.0, |last| u - last);
    state.last_utilisation = Some(u);
    let arriving = rise > RISE * (knobs.high - knobs.target) && u + rise > knobs.high;
    // The noise of the load figure: how far each interval's utilisation strays from the
    // smoothed one, a step (a crowd arriving or leaving, beyond `STEP`) counted as no more.
    let smoothed = local.ratio(&local.smoothed);
    let deviation = (local.ratio(&local.recent) - smoothed).clamp(-STEP * smoothed, STEP * smoothed);
    state.noise += UNEXPLAINED_WEIGHT * (deviation * deviation - state.noise);
    let near = u + GUARD_SIGMAS * state.noise.sqrt() > knobs.high;
    let offered_rise = state.last_offered.map_or(0.0, |last| (local.smoothed.offered - last).max(0.0));
    state.last_offered = Some(local.smoothed.offered);
    // What the data path kept while the figures were measured (with a lead time, not yet
    // the last keep decided: the load it leaves unexplained would be counted twice).
    let in_force = state.in_force(knobs.lead);
    // The unexplained load is smoothed like every rate (`meter::follow`): a rise beyond
    // noise counts at once — after a cut of keep, the flows kept under the earlier keep
    // are all there at once, and an average would take home, for the next intervals to
    // send away again, what they still hold (a reversal); falls are averaged: they end
    // slowly, and one interval's figure is noisy. Overloaded, any higher figure counts.
    let e = unexplained(in_force, local);
    state.unexplained = if e > state.unexplained + unexplained_noise(knobs, in_force, local) || overloaded {
        state.unexplained.max(e)
    } else {
        state.unexplained + UNEXPLAINED_WEIGHT * (e - state.unexplained)
    };
    state.overloaded_for = if overloaded { state.overloaded_for + 1 } else { 0 };
    if overloaded || arriving || near {
        state.shedding = true;
    } else if state.shedding && full_utilisation(in_force, local) < knobs.low {
        state.shedding = false;
    }

    let sheddable = (local.smoothed.offered - local.fixed).max(0.0);
    let mut cpu_stalled = false;
    let wanted = if state.shedding && sheddable > 0.0 {
        let unexplained = state.unexplained.max(0.0);
        let mut w = wanted_keep(knobs, unexplained, local, sheddable);
        if arriving {
            // A crowd still arriving is met where it will be when this decision shows in
            // the figures (the next interval, after the lead time), at its last rise.
            let ahead = sheddable + (1.0 + knobs.lead) * offered_rise;
            w = w.min(wanted_keep(knobs, unexplained, local, ahead));
        }
        if offered_rise > offered_noise(knobs, local) {
            // The offered rate still climbs beyond noise: no flows home yet. A crowd's long
            // flows build up over their lifetime, so what this interval's figures leave room
            // for, the next ones take back (a reversal).
            w = w.min(state.keep);
        }
        if let Some(c) = local.cpu.filter(|&c| c > knobs.target) {
            cpu_stalled = state.cpu_misses >= CPU_TRIES;
            if !cpu_stalled {
                w = w.min(in_force * knobs.target / c);
            }
        }
        w
    } else {
        1.0
    };

    // Where the shed share goes: nearest room first, shared with the other shedders.
    // Nothing to shed, no room to look at (most sites, most of the time: the simulator runs
    // this for hundreds of sites a round).
    let shed = (1.0 - wanted) * sheddable;
    let rooms: Vec<f64> =
        if shed > 0.0 { siblings.iter().map(Sibling::room).collect() } else { vec![0.0; siblings.len()] };
    let order = if shed > 0.0 { by_cost(siblings, &rooms) } else { Vec::new() };
    let mut wants = vec![0.0; siblings.len()];
    let mut left = shed;
    for tier in order.chunk_by(|&a, &b| siblings[a].cost == siblings[b].cost) {
        // Siblings of equal cost share the tier's part in proportion to their room.
        let room: f64 = tier.iter().map(|&j| rooms[j]).sum();
        let take = left.min(room);
        for &j in tier {
            wants[j] = take * rooms[j] / room;
        }
        left -= take;
    }
    // The room the shedders of a sibling share: its room for us plus what the others
    // already send it (our own is in our room).
    let pool = |j: usize| rooms[j] + siblings[j].others_send;
    let mut given: Vec<f64> = (0..siblings.len())
        .map(|j| {
            let (mine, others) = (wants[j], siblings[j].others_want);
            if mine == 0.0 || mine + others <= pool(j) { mine } else { pool(j) * mine / (mine + others) }
        })
        .collect();
    let mut deficit = shed - given.iter().sum::<f64>();
    for &j in &order {
        if deficit <= 0.0 {
            break;
        }
        let spare = (pool(j) - siblings[j].others_want - given[j]).max(0.0).min(rooms[j] - given[j]);
        let extra = deficit.min(spare);
        given[j] += extra;
        deficit -= extra;
    }
    let capped = overloaded && deficit > DEAD_BAND * sheddable.max(1.0);
    // A sibling other shedders share that our share in force would take above its own
    // target once the flows turn over (its room is counted at `target - RELIEF`): our
    // offered rate climbed, or its room shrank, and the bands would hold the share while
    // its load catches up with it — by as much for each shedder, so that shared, the
    // errors the bands hold add up. A sibling only we send to shows our share's creep in
    // its report as it comes and is relieved above `target + RELIEF` (below): relieving
    // it on the forecast as well made relief spread the shed share anew every few
    // intervals wherever the offered rate climbs, and bunched moves onto the siblings
    // with room (a day's demand in the simulator: one sibling 12 s above `high`).
    let overfull: Vec<bool> = (0..siblings.len())
        .map(|j| {
            let (mine, others) = (wants[j], siblings[j].others_want);
            let part = if mine + others <= pool(j) { rooms[j] } else { pool(j) * mine / (mine + others) };
            shed > 0.0
                && others > 0.0
                && siblings[j]
                    .report
                    .is_some_and(|r| state.shares[j] * sheddable > part + RELIEF * r.capacity)
        })
        .collect();
    let mut shares: Vec<f64> =
        given.iter().map(|g| if sheddable > 0.0 { g / sheddable } else { 0.0 }).collect();
    // A sibling that cannot take flows loses its share at once (health and drains are not
    // rate-limited: the data path stops sending it new flows either way).
    for (j, s) in siblings.iter().enumerate() {
        if !s.usable() {
            state.shares[j] = 0.0;
            shares[j] = 0.0;
        }
    }
    state.keep = 1.0 - state.shares.iter().sum::<f64>();
    let mut keep = 1.0 - shares.iter().sum::<f64>();

    // Bounded moves: interpolate from the shares in force towards the wanted ones.
    let moved = (keep - state.keep).abs() / 2.0
        + shares.iter().zip(&state.shares).map(|(a, b)| (a - b).abs()).sum::<f64>() / 2.0;
    // The minute's budget limits moves away from home (what could congest others); flows
    // come back home at `max_step` per interval whatever was moved before.
    let outward = keep < state.keep;
    let used: f64 = state.moved.iter().sum();
    let budget = if outward {
        knobs.max_step.min((knobs.max_moved_per_minute - used).max(0.0))
    } else {
        knobs.max_step
    };
    let returning = !state.shedding && state.keep < 1.0;
    // Turning back needs a larger move than going on: measurement noise alone then never
    // makes the weights go back and forth.
    let turning = (keep - state.keep) * state.direction < 0.0;
    let band = if turning && !overloaded { REVERSAL_BAND } else { DEAD_BAND };
    // A sibling above its own target by more than RELIEF (one filled to its target is
    // above it half the time by noise alone) gets back what it wants back, however
    // little: the bands hold noise, not an overload we caused.
    let relieves = |shares: &[f64]| {
        siblings.iter().zip(shares.iter().zip(&state.shares)).zip(&overfull).any(
            |((s, (new, old)), &over)| {
                new < old && (over || s.report.is_some_and(|r| r.served > (r.target + RELIEF) * r.capacity))
            },
        )
    };
    // Relief takes flows home (keep rises) whatever the band; it never sends more away:
    // keep falling by less than the band while relieving would only be the noise of our
    // wanted keep, and made it go up and down by tenths of a percent every few intervals.
    let mut relieving = relieves(&shares);
    // Keep where it is (its own move under the band): the shed share is spread anew only
    // if that moves enough, or relieves a sibling.
    let (mut moved, mut band) = (moved, band);
    let keep_move = (keep - state.keep).abs();
    if keep_move < band && !(returning && keep_move > 0.0) && !(relieving && keep > state.keep) {
        if keep < 1.0 {
            let scale = (1.0 - state.keep) / (1.0 - keep);
            shares.iter_mut().for_each(|s| *s *= scale);
        } else {
            shares.clone_from(&state.shares);
        }
        keep = state.keep;
        moved = shares.iter().zip(&state.shares).map(|(a, b)| (a - b).abs()).sum::<f64>() / 2.0;
        band = SPREAD_BAND;
        relieving = relieves(&shares);
    }
    let step = if moved < band && !(returning && moved > 0.0) && !relieving {
        0.0
    } else if moved > budget {
        budget / moved
    } else {
        1.0
    };
    keep = state.keep + step * (keep - state.keep);
    for (s, old) in shares.iter_mut().zip(&state.shares) {
        *s = old + step * (*s - old);
    }
    let moved = moved * step;
    state.moved.push_back(if outward { moved } else { 0.0 });
    while state.moved.len() > knobs.window {
        state.moved.pop_front();
    }
    if let Some(c) = local.cpu {
        if keep < state.keep - DEAD_BAND / 2.0 && c > knobs.target {
            // Lowered for CPU: did the last such decrease help?
            if state.cpu_at.is_some_and(|before| c >= before) {
                state.cpu_misses += 1;
            } else {
                state.cpu_misses = 0;
            }
            state.cpu_at = Some(c);
        } else if c <= knobs.target {
            state.cpu_at = None;
            state.cpu_misses = 0;
        }
    }
    if keep != state.keep {
        state.direction = (keep - state.keep).signum();
    }
    state.keep = keep;
    state.decided.push_back(keep);
    while state.decided.len() > knobs.lead.max(0.0).ceil() as usize + 2 {
        state.decided.pop_front();
    }
    state.shares.clone_from(&shares);
    let escalate = state.shedding && state.overloaded_for >= knobs.escalate_after;
    let no_headroom = overloaded && (capped || escalate || cpu_stalled);
    // Published: what we load each sibling with, not only what the tiers wanted of it. The
    // deficit spilled past contended siblings, and a share the bounded moves hold, load it
    // too; unpublished, every other shedder took that room for its own.
    for (w, s) in wants.iter_mut().zip(&shares) {
        *w = w.max(s * sheddable);
    }
    Decision { keep, shares, wants, overloaded, no_headroom, moved }
}

/// Siblings with room, from the cheapest to the dearest; among equals, the roomiest first.
fn by_cost(siblings: &[Sibling], rooms: &[f64]) -> Vec<usize> {
    // Sorted by key (the index last: the order of a stable sort), without a lookup per
    // comparison.
    let mut keyed: Vec<(f64, f64, usize)> =
        (0..siblings.len()).filter(|&j| rooms[j] > 0.0).map(|j| (siblings[j].cost, rooms[j], j)).collect();
    keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    keyed.into_iter().map(|(_, _, j)| j).collect()
}

/// The utilisation if every new flow stayed local: rate and, when it counts, CPU scaled up
/// from the share kept now.
fn full_utilisation(keep: f64, local: &Local) -> f64 {
    let s = &local.smoothed;
    let rate = if local.capacity > 0.0 { (s.offered + s.received) / local.capacity } else { 0.0 };
    local.cpu.map_or(rate, |c| rate.max(c / keep.max(DEAD_BAND)))
}

/// The keep that brings the site to `target`, in [0, 1] (step 2 of the module docs).
fn wanted_keep(knobs: &Knobs, unexplained: f64, local: &Local, sheddable: f64) -> f64 {
    let room = knobs.target * local.capacity - local.smoothed.received - local.fixed;
    ((room - unexplained) / sheddable).clamp(0.0, 1.0)
}

/// What the last interval served locally beyond what the keep in force explains.
fn unexplained(keep: f64, local: &Local) -> f64 {
    let r = &local.recent;
    let kept = (r.served - r.received - local.fixed).max(0.0);
    kept - keep * (r.offered - local.fixed).max(0.0)
}

/// How far one interval's unexplained load may rise above its average by noise alone: a
/// [`STEP`] of the local load it is measured on, or its count's Poisson noise
/// ([`STEP_SIGMAS`] standard deviations of the kept and the offered packets counted over
/// an interval), whichever is larger.
fn unexplained_noise(knobs: &Knobs, keep: f64, local: &Local) -> f64 {
    let r = &local.recent;
    let kept = (r.served - r.received).max(0.0);
    let variance = (kept + keep * keep * r.offered) / knobs.interval();
    (STEP * kept).max(STEP_SIGMAS * variance.sqrt())
}

/// How far the smoothed offered rate may rise in one interval by noise alone: the dead
/// band's share of it, or [`STEP_SIGMAS`] standard deviations of the packets counted
/// over an interval, whichever is larger.
fn offered_noise(knobs: &Knobs, local: &Local) -> f64 {
    let offered = local.smoothed.offered.max(0.0);
    (DEAD_BAND * offered).max(STEP_SIGMAS * (offered / knobs.interval()).sqrt())
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

/// A decision's Maglev weights: the local site's and each sibling's, in the order given,
/// summing to [`WEIGHT_SCALE`] exactly. The local weight is its share rounded; the rest is
/// split among the siblings by largest remainder. Rounding each share alone made the total
/// drift by a unit or two as the shed share was spread anew, and with it the local share
/// of the table (the data path weighs by the total) though keep had not moved: a move of
/// a few 1e-5 up and down, every few intervals.
pub fn split(d: &Decision) -> (u32, Vec<u32>) {
    let scale = WEIGHT_SCALE as u32;
    let shed: f64 = d.shares.iter().sum();
    if shed <= 0.0 {
        return (scale, vec![0; d.shares.len()]);
    }
    let local = weight(d.keep).min(scale);
    let rest = scale - local;
    let exact: Vec<f64> = d.shares.iter().map(|&s| s / shed * rest as f64).collect();
    let mut w: Vec<u32> = exact.iter().map(|x| x.floor() as u32).collect();
    let left = rest.saturating_sub(w.iter().sum());
    let mut by_remainder: Vec<usize> = (0..w.len()).filter(|&j| exact[j] > w[j] as f64).collect();
    by_remainder
        .sort_by(|&a, &b| (exact[b] - w[b] as f64).total_cmp(&(exact[a] - w[a] as f64)).then(a.cmp(&b)));
    for &j in by_remainder.iter().take(left as usize) {
        w[j] += 1;
    }
    (local, w)
}

/// Maglev weights from a decision, by name: `siblings` names the decision's siblings in
/// the order they were given ([`split`]).
pub fn weights<'a>(
    local_name: &str,
    siblings: impl IntoIterator<Item = &'a str>,
    d: &Decision,
) -> BTreeMap<String, u32> {
    let (local, shares) = split(d);
    let mut w: BTreeMap<String, u32> =
        siblings.into_iter().zip(shares).map(|(n, s)| (n.to_owned(), s)).collect();
    w.insert(local_name.to_owned(), local);
    w
}

#[cfg(test)]
mod tests;
