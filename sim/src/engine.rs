//! The simulation loop: a fluid model of flows between sites, stepped every `dt`, with the
//! daemon's own code deciding — `steering::policy` for the weights, `steering::health` for
//! the probes' rise/fall, `bgp::Hysteresis` and `Route::wanted` for the routes,
//! `steering::meter`'s EWMA for the load figures, `reconcile::maglev` for the tables an
//! ECMP change is judged by — and everything around it modelled:
//!
//! - Clients: each site's catchment sends its demand (packets/s) to the site its BGP
//!   routes select; a de-preferred site keeps `1 − deprefer_shift` of it, a withdrawn one
//!   none, the rest going to the nearest site that announces, `convergence` seconds after
//!   the change. Clients whose catchment moves lose their established flows.
//! - Flows: DNS-like (one packet, steered by the table, no state) and two classes of TCP
//!   flows (short and long) with exponential lifetimes, pinned where their first packet was
//!   steered: established flows never move on a weight change, as in the data path.
//! - Hosts: ECMP spreads a site's clients evenly over its hosts (resilient hashing: a host
//!   leaving moves only its own flows); each host steers new flows by its own table;
//!   forwarded traffic spreads evenly over the receiving site's hosts.
//! - Measurement: each host counts what it kept, forwarded and received, and its meter
//!   smooths the rates read once per `[load] interval`, with multiplicative noise.
//! - Reports: a site's report is polled over the backbone by each site every interval, at
//!   one of its hosts (the same while it answers, the next after a failed poll, as in the
//!   daemon), arriving half a round trip old, each poll lost with probability
//!   `report_loss`; older than `stale` it is unknown, as in the daemon.
//! - Failures: a dead host loses the flows it served; its forwarded flows reach another
//!   host of the site, which steers them by *its* current table (no pin there): those whose
//!   bucket names another site now are established flows moved. Across a backbone partition
//!   nothing passes: forwarded packets are lost until the probes take the far sites down.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Duration,
};

use anycast_user::{
    bgp::{Hysteresis, Pacing},
    model::{Route, SiteSignals},
    reconcile::maglev::{self, Backend},
    steering::{
        health::Tracker,
        meter::{ewma, follow, smoothing_factor},
        policy::{self, Decision, Knobs, Report, Sibling},
    },
};

use crate::{figures::Recorder, scenario::Scenario, world::gauss};

/// The daemon's knobs (from its config parser, so its defaults) and the model's own.
#[derive(Clone, Debug)]
pub struct Params {
    pub knobs: Knobs,
    /// Per site: how long after a decision every host of the site installs it (the
    /// daemon's `steering::install::lead_time`).
    pub lead: f64,
    pub interval: f64,
    pub smoothing: Duration,
    pub stale: f64,
    pub health_interval: f64,
    pub health_rise: u32,
    pub health_fall: u32,
    pub bgp_interval: f64,
    pub pacing: Pacing,
    /// Simulation step, s.
    pub dt: f64,
    /// Relative standard deviation of each measured rate per interval.
    pub noise: f64,
    /// Probability that a poll of a sibling's report fails.
    pub report_loss: f64,
    /// Share of a de-preferred site's catchment that moves to the nearest announcing site.
    pub deprefer_shift: f64,
    /// Seconds from a route change to the catchment following it.
    pub convergence: f64,
    pub maglev_size: u32,
    pub steering: Steering,
    pub seed: u64,
    /// The site whose decisions go to stderr, by name (`--trace`).
    pub trace: Option<String>,
}

/// A class of pinned (TCP) flows.
pub struct Class {
    pub name: &'static str,
    /// Share of the clients' packets.
    pub packets: f64,
    /// Mean lifetime, s (exponential).
    pub lifetime: f64,
    /// Packets/s of one flow.
    pub pps: f64,
}

/// Short requests and long transfers; the remaining packets are DNS-like (one packet per
/// flow, no state).
pub const CLASSES: [Class; 2] = [
    Class { name: "short-tcp", packets: 0.3, lifetime: 3.0, pps: 20.0 },
    Class { name: "long-tcp", packets: 0.3, lifetime: 60.0, pps: 20.0 },
];
const C: usize = CLASSES.len();
const DNS_SHARE: f64 = 1.0 - CLASSES[0].packets - CLASSES[1].packets;
/// Flows below this are dropped from the books.
const NEGLIGIBLE: f64 = 1e-6;
/// At least this many of a site's reports (one an interval) are kept for its pollers.
const PUBLISHED: usize = 16;

/// The local site's share of new flows a host steers by (the remote sites' are on their
/// links).
#[derive(Clone, Debug, Default)]
struct Table {
    keep: f64,
    /// Bumped by every applied change.
    epoch: u32,
}

/// A host's pinned flows forwarded to one site, and the meter's view of them.
#[derive(Clone, Debug)]
struct Link {
    site: usize,
    /// Share of new flows the host's table gives the site (0 for a parked link).
    share: f64,
    /// Pinned flows per class.
    flows: [f64; C],
    /// Packets forwarded since the last reading, and their smoothed rate.
    counted: f64,
    smoothed: f64,
    /// Steps completed when a parked link's `flows` were last brought up to date.
    as_of: usize,
}

/// Where a host keeps its link to a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    None,
    Live(u32),
    Parked(u32),
}

impl Link {
    fn new(site: usize, share: f64, now: usize) -> Link {
        Link { site, share, flows: [0.0; C], counted: 0.0, smoothed: 0.0, as_of: now }
    }

    /// Brings a parked link up to `now` steps: its flows decay by `decay` per step, and
    /// the packets they sent meanwhile are counted (a geometric sum: the same figures as
    /// stepping it).
    fn catch_up(&mut self, now: usize, decay: &Decay, dt: f64) {
        let k = now.saturating_sub(self.as_of);
        self.as_of = now;
        if k == 0 {
            return;
        }
        for (c, class) in CLASSES.iter().enumerate() {
            let (d, dk) = (decay.step[c], decay.over(k, c));
            self.counted += self.flows[c] * class.pps * dt * d * (1.0 - dk) / (1.0 - d);
            self.flows[c] *= dk;
        }
    }
}

/// Per class, the decay of pinned flows over one step, and over `k` steps, tabulated for
/// the `k` a parked link is mostly brought up to date after (an interval).
struct Decay {
    step: [f64; C],
    over: Vec<[f64; C]>,
}

impl Decay {
    /// Tabulated up to this many steps.
    const TABULATED: usize = 64;

    fn new(dt: f64) -> Decay {
        let step = CLASSES.map(|c| (-dt / c.lifetime).exp());
        let over = (0..Self::TABULATED).map(|k| step.map(|d| d.powi(k as i32))).collect();
        Decay { step, over }
    }

    fn over(&self, k: usize, c: usize) -> f64 {
        self.over.get(k).map_or_else(|| self.step[c].powi(k as i32), |x| x[c])
    }
}

#[derive(Clone, Copy, Default)]
struct Rates {
    offered: f64,
    local: f64,
    received: f64,
}

struct Host {
    site: usize,
    /// Step (modulo the steps per interval) at which its controller ticks.
    phase: usize,
    table: Table,
    /// The weights applied last, per site (the local site's at its own index).
    applied: Vec<u32>,
    digest: u64,
    policy: policy::State,
    /// Its last decision's (overloaded, no_headroom): what its BGP speaker acts on.
    signals: (bool, bool),
    speaker: Hysteresis,
    /// Pinned flows served here, per class.
    local: [f64; C],
    /// Its links to the sites it forwards to: `live` the ones its table gives a share,
    /// stepped every step; `parked` the ones it gives none, whose flows only decay: they
    /// are brought up to date when read or changed (their sum is in `parked_flows`, and in
    /// the receiving site's `Sim::parked_to`, which decay every step). Without a share a
    /// link lives on until its flows end, long after the share went (minutes for long
    /// TCP): stepping only the live ones keeps a step's work to the sites new flows go to.
    live: Vec<Link>,
    parked: Vec<Link>,
    slot: Vec<Slot>,
    parked_flows: [f64; C],
    /// Packets counted since the last reading.
    counted: Rates,
    read_at: f64,
    /// The meter's smoothed rates (None before the first reading), and the policy's view
    /// of them with the last interval's.
    smoothed: Option<Rates>,
    figures: Option<policy::Local>,
    /// Forwarded flows' cohorts by (table epoch, site), kept for hosts whose failure the
    /// scenario schedules; with the weights of each epoch.
    cohorts: Option<Cohorts>,
}

#[derive(Default)]
struct Cohorts {
    /// In order: a failure's moved flows add up the cohorts in the same order every run.
    by_epoch: BTreeMap<(u32, usize), [f64; C]>,
    weights: HashMap<u32, Vec<u32>>,
}

#[derive(Clone, Default)]
struct Published {
    /// Its sequence number (from 1) among its site's reports.
    seq: u32,
    at: f64,
    report: Option<Report>,
    /// (site, wants, sends) of a shedder.
    claims: Vec<(usize, f64, f64)>,
}

/// Every site's last reports as published, and which one each poller holds (by sequence
/// number: a decider reads all its siblings' every interval, from a few hundred kB).
struct Reports {
    /// Reports kept per site: enough that a report still held fresh is still there (a
    /// power of two: the index is a mask).
    ring: usize,
    /// Per site, its ring of reports, in one vector by ring slot (`seq % ring * n + site`):
    /// the sites publish once per interval each, so a decider reading every site's report
    /// reads them from the same slot or the next, one after the other.
    published: Vec<Published>,
    /// When each of `published` was published, by the same index (what a poll searches).
    at: Vec<f64>,
    newest: Vec<u32>,
    /// Per (poller, site): the sequence number of the report the poller holds (0: none).
    held: Vec<u32>,
}

impl Reports {
    fn new(n: usize, p: &Params) -> Reports {
        let ring = PUBLISHED.max((p.stale / p.interval).ceil() as usize + 4).next_power_of_two();
        Reports {
            ring,
            published: vec![Published::default(); n * ring],
            at: vec![0.0; n * ring],
            newest: vec![0; n],
            held: vec![0; n * n],
        }
    }

    /// Publishes `site`'s next report in the place of its oldest (whose claims' room is
    /// reused).
    fn publish(&mut self, site: usize, at: f64, report: Report, claims: &[(usize, f64, f64)]) {
        self.newest[site] += 1;
        let seq = self.newest[site];
        let i = (seq as usize & (self.ring - 1)) * self.newest.len() + site;
        self.at[i] = at;
        let p = &mut self.published[i];
        (p.seq, p.at, p.report) = (seq, at, Some(report));
        p.claims.clear();
        p.claims.extend_from_slice(claims);
    }

    fn get(&self, site: usize, seq: u32) -> Option<&Published> {
        let p = &self.published[(seq as usize & (self.ring - 1)) * self.newest.len() + site];
        (seq > 0 && p.seq == seq).then_some(p)
    }

    /// `poller` takes `site`'s newest report published at or before `sent`.
    fn poll(&mut self, poller: usize, site: usize, sent: f64) {
        let (n, newest) = (self.newest.len(), self.newest[site]);
        let oldest = newest.saturating_sub(self.ring as u32 - 1).max(1);
        // The ring holds every report from `oldest` to `newest`.
        let at = |q: u32| self.at[(q as usize & (self.ring - 1)) * n + site];
        if let Some(seq) = (oldest..=newest).rev().find(|&q| at(q) <= sent) {
            self.held[poller * self.newest.len() + site] = seq;
        }
    }

    /// The report `poller` holds from `site`, if not older than `stale` at `t`.
    fn held(&self, poller: usize, site: usize, t: f64, stale: f64) -> Option<&Published> {
        self.get(site, self.held[poller * self.newest.len() + site]).filter(|p| t - p.at <= stale)
    }
}

/// What a decision is made from, kept from one to the next (a decision reads every site).
#[derive(Default)]
struct Buffers {
    siblings: Vec<Sibling>,
    /// Per site, by its index (the decider's own unused): what the other shedders want
    /// from it and send it, by their reports held, and what the decider sends it.
    claimed: Vec<(f64, f64)>,
    ours: Vec<f64>,
    /// The decider's claims, copied into the report it publishes.
    claims: Vec<(usize, f64, f64)>,
}

/// Who decides: every host on its own figures (the daemon before sites of several hosts),
/// or the site's first host alive on the sum of its hosts', every host of the site
/// installing each decision `lead` seconds after it (as the daemon's hosts do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    PerHost,
    PerSite,
}

/// Where the clients of one catchment go: (site, share).
type Route2 = [(usize, f64); 2];

pub struct Sim<'a> {
    s: &'a Scenario,
    p: &'a Params,
    rng: fastrand::Rng,
    hosts: Vec<Host>,
    /// Per host: alive (apart from the rest of it: every poll reads it).
    alive: Vec<bool>,
    /// Hosts of each site, as indices into `hosts`.
    site_hosts: Vec<Vec<usize>>,
    reports: Reports,
    /// Per (prober, site): the health tracker.
    health: Vec<Tracker>,
    /// Routes: as the site's speakers have them, and as the catchments follow them.
    route: Vec<Route>,
    effective: Vec<Route>,
    pending: Vec<Option<(f64, Route)>>,
    catchment: Vec<Route2>,
    /// Per site (per-site steering): the policy's state, the host deciding, and its
    /// decisions not installed yet (when, what), which every host of the site installs at
    /// that moment.
    site_policy: Vec<policy::State>,
    leader: Vec<Option<usize>>,
    decided: Vec<VecDeque<(f64, Vec<u32>)>>,
    decay: Decay,
    /// Per site: the flows of the links parked towards it, per class, by the side of the
    /// backbone partition their sender is on (0 without a partition).
    parked_to: Vec<[[f64; C]; 2]>,
    side: Vec<usize>,
    /// Steps completed.
    done: usize,
    /// The site whose decisions go to stderr (`Params::trace`), if this world has it.
    trace: Option<usize>,
    buffers: Buffers,
    /// Per (poller, site): the host of the site it polls, as an index into the site's
    /// hosts. Every host of a site serves the site's report (the others relay the deciding
    /// host's), so a poller polls one, as the daemon does: the same one while it answers,
    /// the next one after a poll of it failed.
    polled: Vec<u8>,
    /// Per step of an interval: the hosts that tick at it, and the sites that poll at it
    /// (at their first host's tick), in order (the phases are fixed: a step reads only its
    /// own instead of every host's).
    ticking: Vec<Vec<usize>>,
    polling: Vec<Vec<usize>>,
    pub rec: Recorder,
}

impl Host {
    /// Removes the link in `slot` from its list (its site's slot emptied, the slot of the
    /// link moved into its place updated).
    fn unlink(&mut self, slot: Slot) -> Link {
        let (list, i, moved): (&mut Vec<Link>, usize, fn(u32) -> Slot) = match slot {
            Slot::Live(i) => (&mut self.live, i as usize, Slot::Live),
            Slot::Parked(i) => (&mut self.parked, i as usize, Slot::Parked),
            Slot::None => unreachable!("no link to remove"),
        };
        let link = list.swap_remove(i);
        if let Some(other) = list.get(i) {
            self.slot[other.site] = moved(i as u32);
        }
        self.slot[link.site] = Slot::None;
        link
    }
}

impl<'a> Sim<'a> {
    pub fn new(s: &'a Scenario, p: &'a Params) -> Sim<'a> {
        let n = s.world.len();
        let mut rng = fastrand::Rng::with_seed(p.seed ^ 0x5eed);
        let steps = steps_per(p.interval, p.dt);
        let mut hosts = Vec::new();
        let mut site_hosts = vec![Vec::new(); n];
        let tracked: Vec<usize> = s.outages.iter().filter(|o| o.host.is_some()).map(|o| o.site).collect();
        for (i, site) in s.world.sites.iter().enumerate() {
            for _ in 0..site.hosts {
                site_hosts[i].push(hosts.len());
                let mut applied = vec![0; n];
                applied[i] = policy::weight(1.0);
                hosts.push(Host {
                    site: i,
                    phase: rng.usize(0..steps),
                    table: Table { keep: 1.0, epoch: 0 },
                    digest: digest(&applied),
                    applied,
                    policy: policy::State::default(),
                    signals: (false, false),
                    speaker: Hysteresis::new(Route::Announce),
                    local: [0.0; C],
                    live: Vec::new(),
                    parked: Vec::new(),
                    slot: vec![Slot::None; n],
                    parked_flows: [0.0; C],
                    counted: Rates::default(),
                    read_at: 0.0,
                    smoothed: None,
                    figures: None,
                    cohorts: tracked.contains(&i).then(Cohorts::default),
                });
            }
        }
        let mut ticking = vec![Vec::new(); steps];
        let mut polling = vec![Vec::new(); steps];
        for (k, h) in hosts.iter().enumerate() {
            ticking[h.phase].push(k);
        }
        for (site, hs) in site_hosts.iter().enumerate() {
            polling[hosts[hs[0]].phase].push(site);
        }
        let mut sim = Sim {
            s,
            p,
            rng,
            ticking,
            polling,
            alive: vec![true; hosts.len()],
            hosts,
            site_hosts,
            reports: Reports::new(n, p),
            health: vec![Tracker::default(); n * n],
            route: vec![Route::Announce; n],
            effective: vec![Route::Announce; n],
            pending: vec![None; n],
            catchment: (0..n).map(|i| [(i, 1.0), (i, 0.0)]).collect(),
            site_policy: vec![policy::State::default(); n],
            leader: vec![None; n],
            decided: vec![VecDeque::new(); n],
            decay: Decay::new(p.dt),
            parked_to: vec![[[0.0; C]; 2]; n],
            side: (0..n).map(|i| s.partition.as_ref().map_or(0, |p| p.side[i] as usize)).collect(),
            done: 0,
            trace: p.trace.as_ref().and_then(|name| s.world.sites.iter().position(|x| &x.name == name)),
            buffers: Buffers::default(),
            polled: vec![0; n * n],
            rec: Recorder::new(s, p),
        };
        sim.start_flows();
        sim
    }

    /// Starts every host with the flows its demand would have at steady state, all local,
    /// at the run's first step (the warm-up's, if any).
    fn start_flows(&mut self) {
        let start = -self.s.warm_up;
        for h in &mut self.hosts {
            let site = &self.s.world.sites[h.site];
            let ingress = site.home_demand * self.s.demand_factor(h.site, start) / site.hosts as f64;
            for (c, class) in CLASSES.iter().enumerate() {
                h.local[c] = ingress * class.packets / class.pps;
            }
        }
    }

    pub fn run(mut self) -> Recorder {
        // The controllers' clock `t` is 0 at the warm-up's start; the scenario's (`now`:
        // demand, outages, partition, the figures) once it is over.
        let warm = (self.s.warm_up / self.p.dt).round() as usize;
        let steps = warm + (self.s.duration / self.p.dt).round() as usize;
        let per_interval = steps_per(self.p.interval, self.p.dt);
        let per_health = steps_per(self.p.health_interval, self.p.dt);
        let per_bgp = steps_per(self.p.bgp_interval, self.p.dt);
        let n = self.s.world.len();
        let mut ingress = vec![0.0; n];
        let mut received = vec![0.0; n];
        let mut served = vec![0.0; n];
        let mut capacity = vec![0.0; n];
        let mut ecmp = vec![0; n];
        for step in 0..steps {
            if step == warm && warm > 0 {
                self.rec = Recorder::new(self.s, self.p).from(t_of(warm, self.p.dt));
            }
            let t = t_of(step, self.p.dt);
            // Counted in steps from the scenario's 0 s, as `t` is from the warm-up's.
            let now = (step as f64 - warm as f64) * self.p.dt;
            self.outages(t, now);
            self.follow_routes(t);
            self.ingress(now, &mut ingress);
            received.iter_mut().for_each(|r| *r = 0.0);
            served.iter_mut().for_each(|r| *r = 0.0);
            let part = self.s.partitioned(now);
            for (j, hs) in self.site_hosts.iter().enumerate() {
                let best = self.route[j];
                ecmp[j] =
                    hs.iter().filter(|&&k| self.alive[k] && self.hosts[k].speaker.current() == best).count();
            }
            for h in 0..self.hosts.len() {
                self.flows(h, &ingress, ecmp[self.hosts[h].site], part, &mut received, &mut served);
            }
            self.parked_flows(part, &mut received);
            self.done = step + 1;
            for (j, hs) in self.site_hosts.iter().enumerate() {
                let alive = hs.iter().filter(|&&h| self.alive[h]).count();
                capacity[j] = alive as f64 * self.s.world.sites[j].host_capacity;
                served[j] += received[j];
                for &h in hs {
                    if self.alive[h] {
                        self.hosts[h].counted.received += received[j] / alive as f64 * self.p.dt;
                    }
                }
            }
            self.rec.step(now, &served, &capacity, ingress.iter().sum());
            if step % per_interval == 0 {
                let diverged = self.site_hosts.iter().map(|hs| {
                    let mut alive = hs.iter().filter(|&&h| self.alive[h]).map(|&h| self.hosts[h].digest);
                    let first = alive.next();
                    alive.any(|d| Some(d) != first)
                });
                self.rec.tables(diverged);
            }
            // Each site polls its siblings once per interval, at its first host's tick
            // (every host of a site polls the same peers: their copies would be alike).
            for i in 0..self.polling[step % per_interval].len() {
                self.poll(self.polling[step % per_interval][i], t);
            }
            self.install_due(t);
            // Controllers read the counters at the end of the step, having counted it.
            for i in 0..self.ticking[step % per_interval].len() {
                let h = self.ticking[step % per_interval][i];
                if self.alive[h] {
                    self.tick(h, t + self.p.dt);
                }
            }
            if step % per_health == 0 {
                self.probe(t);
            }
            if step % per_bgp == 0 {
                self.speak(t);
            }
        }
        self.rec
    }

    /// Hosts and sites failing or coming back at scenario time `now` (controllers' clock `t`).
    fn outages(&mut self, t: f64, now: f64) {
        let dt = self.p.dt;
        for o in self.s.outages.clone() {
            let hosts: Vec<usize> = match o.host {
                Some(k) => vec![self.site_hosts[o.site][k]],
                None => self.site_hosts[o.site].clone(),
            };
            if now >= o.from && now - dt < o.from {
                for &h in &hosts {
                    self.fail(h);
                }
            }
            if now >= o.to && now - dt < o.to {
                for &h in &hosts {
                    self.recover(h, t);
                }
            }
        }
    }

    fn fail(&mut self, h: usize) {
        let site = self.hosts[h].site;
        let alive_before = self.alive_hosts(site);
        self.alive[h] = false;
        // What it served locally is gone, and so is its share of what siblings forward to
        // its site (per-host endpoints: the other hosts' flows stay where they are).
        let lost: f64 = self.hosts[h].local.iter().sum();
        self.rec.lost += lost;
        self.hosts[h].local = [0.0; C];
        if alive_before > 0 {
            let gone = 1.0 / alive_before as f64;
            for k in 0..self.hosts.len() {
                if self.hosts[k].site != site {
                    let before = self.change_link(k, site, |f| f.iter_mut().for_each(|x| *x *= 1.0 - gone));
                    self.rec.lost += before.iter().sum::<f64>() * gone;
                }
            }
        }
        // Its forwarded flows now reach the site's other hosts, which have no pin for them.
        let others: Vec<usize> = self.site_hosts[site].iter().copied().filter(|&k| self.alive[k]).collect();
        let fwd = self.take_links(h);
        if others.is_empty() {
            self.rec.lost += fwd.iter().map(|(_, f)| f.iter().sum::<f64>()).sum::<f64>();
            return;
        }
        let kept = self.kept_after_ecmp(h, &others, &fwd);
        for &(j, flows) in &fwd {
            for (c, &total) in flows.iter().enumerate() {
                let stays = total * kept.get(&j).copied().unwrap_or(1.0);
                self.rec.moved += total - stays;
                for &k in &others {
                    self.add_fwd(k, j, c, stays / others.len() as f64);
                }
            }
        }
    }

    /// For each site the failed host forwarded to, the share of those flows that the other
    /// hosts' current tables send to the same site (the rest are moved: reset). Uses the
    /// daemon's Maglev builder on the weights each cohort was steered by.
    fn kept_after_ecmp(&self, h: usize, others: &[usize], fwd: &[(usize, [f64; C])]) -> HashMap<usize, f64> {
        let Some(cohorts) = &self.hosts[h].cohorts else {
            // Not tracked: judge by the tables alone, every cohort as if steered by the
            // failed host's current weights.
            let sites: Vec<usize> = fwd.iter().map(|&(j, _)| j).collect();
            return self.overlap(&[(self.hosts[h].applied.clone(), 1.0)], others, &sites);
        };
        let mut out = HashMap::new();
        for &(j, flows) in fwd {
            let total: f64 = flows.iter().sum();
            if total <= NEGLIGIBLE {
                continue;
            }
            let parts: Vec<(Vec<u32>, f64)> = cohorts
                .by_epoch
                .iter()
                .filter(|((_, site), _)| *site == j)
                .filter_map(|((e, _), n)| Some((cohorts.weights.get(e)?.clone(), n.iter().sum::<f64>())))
                .collect();
            let sum: f64 = parts.iter().map(|(_, n)| n).sum();
            if sum <= 0.0 {
                continue;
            }
            let weighted: Vec<(Vec<u32>, f64)> = parts.into_iter().map(|(w, n)| (w, n / sum)).collect();
            out.extend(self.overlap(&weighted, others, &[j]));
        }
        out
    }

    /// Share of flows to each site in `sites`, steered by the weighted mix of weight sets
    /// `then`, that the tables of `others` steer to the same site now.
    fn overlap(&self, then: &[(Vec<u32>, f64)], others: &[usize], sites: &[usize]) -> HashMap<usize, f64> {
        let now: Vec<Vec<u32>> = others.iter().map(|&k| self.table_of(&self.hosts[k].applied)).collect();
        let mut out: HashMap<usize, f64> = HashMap::new();
        for (weights, w) in then {
            let old = self.table_of(weights);
            for &j in sites {
                let slots: Vec<usize> = (0..old.len()).filter(|&b| old[b] == j as u32).collect();
                if slots.is_empty() {
                    continue;
                }
                let same: f64 = now
                    .iter()
                    .map(|t| slots.iter().filter(|&&b| t[b] == j as u32).count() as f64)
                    .sum::<f64>()
                    / (now.len() * slots.len()) as f64;
                *out.entry(j).or_default() += w * same;
            }
        }
        out
    }

    fn table_of(&self, weights: &[u32]) -> Vec<u32> {
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(j, &w)| Backend { index: j as u32, name: &self.s.world.sites[j].name, weight: w })
            .collect();
        maglev::build(&backends, self.p.maglev_size)
    }

    fn recover(&mut self, h: usize, t: f64) {
        let n = self.s.world.len();
        let site = self.hosts[h].site;
        self.alive[h] = true;
        let host = &mut self.hosts[h];
        // A fresh data path and controller: every new flow local until measured otherwise.
        host.policy = policy::State::default();
        host.signals = (false, false);
        host.applied = vec![0; n];
        host.applied[site] = policy::weight(1.0);
        host.digest = digest(&host.applied);
        host.table = Table { keep: 1.0, epoch: host.table.epoch + 1 };
        host.smoothed = None;
        host.figures = None;
        host.counted = Rates::default();
        host.read_at = t + self.p.dt;
        host.speaker = Hysteresis::new(Route::Announce);
        if let Some(c) = &mut host.cohorts {
            *c = Cohorts::default();
        }
    }

    fn alive_hosts(&self, site: usize) -> usize {
        self.site_hosts[site].iter().filter(|&&h| self.alive[h]).count()
    }

    /// Route changes reaching the catchments.
    fn follow_routes(&mut self, t: f64) {
        let mut changed = false;
        for i in 0..self.pending.len() {
            if let Some((at, r)) = self.pending[i]
                && t >= at
            {
                self.effective[i] = r;
                self.pending[i] = None;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let n = self.s.world.len();
        let old = self.catchment.clone();
        for i in 0..n {
            let nearest =
                |want: Route| self.s.world.nearest[i].iter().copied().find(|&k| self.effective[k] >= want);
            self.catchment[i] = match self.effective[i] {
                Route::Announce => [(i, 1.0), (i, 0.0)],
                Route::Deprefer => match nearest(Route::Announce) {
                    Some(k) => [(i, 1.0 - self.p.deprefer_shift), (k, self.p.deprefer_shift)],
                    None => [(i, 1.0), (i, 0.0)],
                },
                // Routers that honour GRACEFUL_SHUTDOWN take any other site's route first.
                Route::Shutdown => match nearest(Route::Deprefer) {
                    Some(k) => [(k, 1.0), (k, 0.0)],
                    None => [(i, 1.0), (i, 0.0)],
                },
                Route::Withdraw => match nearest(Route::Deprefer) {
                    Some(k) => [(k, 1.0), (k, 0.0)],
                    None => [(i, 0.0), (i, 0.0)],
                },
            };
        }
        // Clients whose catchment moved lose their established flows at the site they left.
        let mut ingress = vec![0.0; n];
        for (i, routes) in old.iter().enumerate() {
            let d = self.s.world.sites[i].home_demand * self.s.demand_factor(i, t);
            for &(k, f) in routes {
                ingress[k] += d * f;
            }
        }
        for (i, routes) in old.iter().enumerate() {
            let d = self.s.world.sites[i].home_demand * self.s.demand_factor(i, t);
            for &(k, f) in routes {
                let now: f64 = self.catchment[i].iter().filter(|(x, _)| *x == k).map(|(_, f)| f).sum();
                let left = (f - now).max(0.0) * d;
                if left > 0.0 && ingress[k] > 0.0 {
                    self.break_flows(k, left / ingress[k]);
                }
            }
        }
    }

    fn break_flows(&mut self, site: usize, share: f64) {
        let share = share.min(1.0);
        for &h in &self.site_hosts[site].clone() {
            let host = &mut self.hosts[h];
            for c in 0..C {
                self.rec.broken_by_bgp += host.local[c] * share;
                host.local[c] *= 1.0 - share;
                for l in &mut host.live {
                    self.rec.broken_by_bgp += l.flows[c] * share;
                    l.flows[c] *= 1.0 - share;
                }
            }
            let parked: Vec<usize> = host.parked.iter().map(|l| l.site).collect();
            for j in parked {
                let before = self.change_link(h, j, |f| f.iter_mut().for_each(|x| *x *= 1.0 - share));
                self.rec.broken_by_bgp += before.iter().sum::<f64>() * share;
            }
            let host = &mut self.hosts[h];
            if let Some(co) = &mut host.cohorts {
                co.by_epoch.values_mut().for_each(|n| n.iter_mut().for_each(|x| *x *= 1.0 - share));
            }
        }
    }

    /// Packets/s arriving at each site from its catchment and those routed to it.
    fn ingress(&self, t: f64, out: &mut [f64]) {
        out.iter_mut().for_each(|x| *x = 0.0);
        for (i, site) in self.s.world.sites.iter().enumerate() {
            let d = site.home_demand * self.s.demand_factor(i, t);
            for (k, f) in self.catchment[i] {
                out[k] += d * f;
            }
        }
    }

    /// One step of host `h`: its flows age, new ones arrive and are steered by its table,
    /// and what it keeps, forwards and serves is counted.
    fn flows(
        &mut self,
        h: usize,
        ingress: &[f64],
        ecmp: usize,
        part: Option<&[bool]>,
        received: &mut [f64],
        served: &mut [f64],
    ) {
        let dt = self.p.dt;
        let site = self.hosts[h].site;
        if !self.alive[h] {
            return;
        }
        // ECMP over the site's `ecmp` hosts that are alive and announce the best route.
        let best = self.route[site];
        let in_ecmp = self.hosts[h].speaker.current() == best && best != Route::Withdraw;
        let arriving = if in_ecmp && ecmp > 0 { ingress[site] / ecmp as f64 } else { 0.0 };
        let decay = self.decay.step;
        let world = &self.s.world;
        let host = &mut self.hosts[h];
        let keep = host.table.keep;
        let dns = arriving * DNS_SHARE;
        let mut new_flows = dns * dt;
        let mut local_pps = dns * keep;
        for (c, class) in CLASSES.iter().enumerate() {
            let a = arriving * class.packets / (class.pps * class.lifetime) * dt;
            new_flows += a;
            host.local[c] = host.local[c] * decay[c] + a * keep;
            local_pps += host.local[c] * class.pps;
        }
        let mut fwd_new = 0.0;
        let mut distance = 0.0;
        let epoch = host.table.epoch;
        let mut offered = local_pps;
        for link in &mut host.live {
            let (j, share) = (link.site, link.share);
            fwd_new += new_flows * share;
            distance += new_flows * share * world.rtt_ms(site, j);
            let mut pps = dns * share;
            for (c, class) in CLASSES.iter().enumerate() {
                let a = arriving * class.packets / (class.pps * class.lifetime) * dt * share;
                link.flows[c] = link.flows[c] * decay[c] + a;
                pps += link.flows[c] * class.pps;
                if let Some(co) = &mut host.cohorts
                    && a > 0.0
                {
                    co.by_epoch.entry((epoch, j)).or_default()[c] += a;
                }
            }
            offered += pps;
            link.counted += pps * dt;
            if part.is_none_or(|side| side[site] == side[j]) {
                received[j] += pps;
            } else {
                self.rec.blackholed += pps * dt;
            }
        }
        // The parked links only decay (`parked_flows` below counts what they deliver).
        for (c, class) in CLASSES.iter().enumerate() {
            host.parked_flows[c] *= decay[c];
            offered += host.parked_flows[c] * class.pps;
        }
        if let Some(co) = &mut host.cohorts {
            co.by_epoch.retain(|_, n| {
                for (c, x) in n.iter_mut().enumerate() {
                    *x *= decay[c];
                }
                n.iter().sum::<f64>() > NEGLIGIBLE
            });
            let live: std::collections::HashSet<u32> = co.by_epoch.keys().map(|(e, _)| *e).collect();
            co.weights.retain(|e, _| live.contains(e) || *e == epoch);
        }
        host.counted.offered += offered * dt;
        host.counted.local += local_pps * dt;
        served[site] += local_pps;
        self.rec.new_flows += new_flows;
        self.rec.new_forwarded += fwd_new;
        self.rec.forwarded_distance += distance;
    }

    /// One step of every host's parked links towards each site: their flows decay, and
    /// what they still send is received there, unless the backbone is split between the
    /// two.
    fn parked_flows(&mut self, part: Option<&[bool]>, received: &mut [f64]) {
        let dt = self.p.dt;
        for (j, by_side) in self.parked_to.iter_mut().enumerate() {
            for (side, flows) in by_side.iter_mut().enumerate() {
                let mut pps = 0.0;
                for (c, class) in CLASSES.iter().enumerate() {
                    flows[c] *= self.decay.step[c];
                    pps += flows[c] * class.pps;
                }
                if part.is_none_or(|p| p[j] as usize == side) {
                    received[j] += pps;
                } else {
                    self.rec.blackholed += pps * dt;
                }
            }
        }
    }

    /// Adds pinned flows of class `c` from host `h` to site `j` (flows moved to it from a
    /// failed host of its site).
    fn add_fwd(&mut self, h: usize, j: usize, c: usize, flows: f64) {
        let host = &mut self.hosts[h];
        if host.slot[j] == Slot::None {
            // Its table gives `j` no share (a live link has its slot): parked from now.
            host.slot[j] = Slot::Parked(host.parked.len() as u32);
            host.parked.push(Link::new(j, 0.0, self.done));
        }
        self.change_link(h, j, |f| f[c] += flows);
    }

    /// Changes the pinned flows of host `h`'s link to site `j` with `f` (a parked link's
    /// brought up to date first, its sums kept); returns them as they were.
    fn change_link(&mut self, h: usize, j: usize, f: impl FnOnce(&mut [f64; C])) -> [f64; C] {
        let (now, decay, dt) = (self.done, &self.decay, self.p.dt);
        let side = self.side[self.hosts[h].site];
        let host = &mut self.hosts[h];
        match host.slot[j] {
            Slot::None => [0.0; C],
            Slot::Live(i) => {
                let link = &mut host.live[i as usize];
                let before = link.flows;
                f(&mut link.flows);
                before
            }
            Slot::Parked(i) => {
                let link = &mut host.parked[i as usize];
                link.catch_up(now, decay, dt);
                let before = link.flows;
                f(&mut link.flows);
                for (c, was) in before.iter().enumerate() {
                    let d = link.flows[c] - was;
                    host.parked_flows[c] += d;
                    self.parked_to[j][side][c] += d;
                }
                before
            }
        }
    }

    /// Gives host `h`'s link to site `j` its table's share: a link losing its share is
    /// parked, one gaining a share is stepped again.
    fn set_share(&mut self, h: usize, j: usize, share: f64) {
        let (now, decay, dt) = (self.done, &self.decay, self.p.dt);
        let side = self.side[self.hosts[h].site];
        let host = &mut self.hosts[h];
        match (host.slot[j], share > 0.0) {
            (Slot::Live(i), true) => host.live[i as usize].share = share,
            (Slot::Live(i), false) => {
                let mut link = host.unlink(Slot::Live(i));
                link.share = 0.0;
                link.as_of = now;
                for c in 0..C {
                    host.parked_flows[c] += link.flows[c];
                    self.parked_to[j][side][c] += link.flows[c];
                }
                host.slot[j] = Slot::Parked(host.parked.len() as u32);
                host.parked.push(link);
            }
            (Slot::Parked(i), true) => {
                let mut link = host.unlink(Slot::Parked(i));
                link.catch_up(now, decay, dt);
                for c in 0..C {
                    host.parked_flows[c] -= link.flows[c];
                    self.parked_to[j][side][c] -= link.flows[c];
                }
                link.share = share;
                host.slot[j] = Slot::Live(host.live.len() as u32);
                host.live.push(link);
            }
            (Slot::None, true) => {
                host.slot[j] = Slot::Live(host.live.len() as u32);
                host.live.push(Link::new(j, share, now));
            }
            (_, false) => {}
        }
    }

    /// Takes every link of host `h` (it failed), brought up to date: (site, flows).
    fn take_links(&mut self, h: usize) -> Vec<(usize, [f64; C])> {
        let (now, decay, dt) = (self.done, &self.decay, self.p.dt);
        let side = self.side[self.hosts[h].site];
        let host = &mut self.hosts[h];
        let mut out: Vec<(usize, [f64; C])> = host.live.drain(..).map(|l| (l.site, l.flows)).collect();
        for mut link in host.parked.drain(..) {
            link.catch_up(now, decay, dt);
            for c in 0..C {
                self.parked_to[link.site][side][c] -= link.flows[c];
            }
            out.push((link.site, link.flows));
        }
        host.parked_flows = [0.0; C];
        host.slot.iter_mut().for_each(|s| *s = Slot::None);
        out
    }

    /// One tick of host `h`'s controller: read its counters; then, per host, decide on its
    /// own figures and install at once, or per site, on the site's first host alive,
    /// aggregate its hosts' figures and decide for the site, to be installed by all its
    /// hosts at the decision's moment ([`Self::install_due`]).
    fn tick(&mut self, h: usize, t: f64) {
        let site = self.hosts[h].site;
        let Some(local) = self.measure(h, t) else { return };
        match self.p.steering {
            Steering::PerHost => {
                let mut state = std::mem::take(&mut self.hosts[h].policy);
                let (weights, decision) = self.decide(site, h, &local, &mut state, t);
                let host = &mut self.hosts[h];
                host.policy = state;
                host.signals = (decision.overloaded, decision.no_headroom);
                if policy::worth_applying(weights.iter().copied().zip(host.applied.iter().copied())) {
                    self.apply(h, &weights, digest(&weights), t);
                }
            }
            Steering::PerSite => {
                let leader = self.site_hosts[site].iter().copied().find(|&k| self.alive[k]);
                if leader == Some(h) {
                    if self.leader[site] != Some(h) {
                        // A new leader carries on from the weights it installed.
                        let host = &self.hosts[h];
                        let n = self.s.world.len();
                        let share = |j: usize| host.applied[j] as f64 / policy::weight(1.0) as f64;
                        let shares = (0..n).filter(|&j| j != site).map(share).collect();
                        self.site_policy[site] = policy::State::adopted(share(site), shares);
                        self.leader[site] = Some(h);
                    }
                    let hosts: Vec<policy::Local> = self.site_hosts[site]
                        .iter()
                        .filter(|&&k| self.alive[k])
                        .filter_map(|&k| self.hosts[k].figures)
                        .collect();
                    let site_local = policy::Local::sum(&hosts);
                    let mut state = std::mem::take(&mut self.site_policy[site]);
                    let (weights, decision) = self.decide(site, h, &site_local, &mut state, t);
                    self.site_policy[site] = state;
                    for &k in &self.site_hosts[site] {
                        self.hosts[k].signals = (decision.overloaded, decision.no_headroom);
                    }
                    // Installed by every host of the site at its moment (`install_due`).
                    self.decided[site].push_back((t + self.p.lead, weights));
                }
            }
        }
    }

    /// Per site, the latest decision due at `t` (the earlier due ones are past), installed
    /// on each of its hosts alive where it differs enough from what that host applies, as
    /// the daemon's hosts install their deciding host's decisions.
    fn install_due(&mut self, t: f64) {
        for site in 0..self.decided.len() {
            let mut due = None;
            while self.decided[site].front().is_some_and(|(at, _)| *at <= t) {
                due = self.decided[site].pop_front();
            }
            let Some((_, weights)) = due else { continue };
            // The hosts of a site mostly apply the same weights (known by their digests):
            // judged once for them all; the weights applied already are not worth applying
            // (most sites, most of the time).
            let new = digest(&weights);
            let mut judged: Option<(u64, bool)> = None;
            for i in 0..self.site_hosts[site].len() {
                let k = self.site_hosts[site][i];
                let host = &self.hosts[k];
                if !self.alive[k] || host.digest == new {
                    continue;
                }
                let worth = match judged {
                    Some((applied, worth)) if applied == host.digest => worth,
                    _ => {
                        let worth =
                            policy::worth_applying(weights.iter().copied().zip(host.applied.iter().copied()));
                        judged = Some((host.digest, worth));
                        worth
                    }
                };
                if worth {
                    self.apply(k, &weights, new, t);
                }
            }
        }
    }

    /// Host `h` reads its counters: its smoothed and last-interval figures.
    fn measure(&mut self, h: usize, t: f64) -> Option<policy::Local> {
        let site = self.hosts[h].site;
        let noise = self.p.noise;
        let host = &mut self.hosts[h];
        let elapsed = t - host.read_at;
        if elapsed <= 0.0 {
            return None;
        }
        let alpha = smoothing_factor(elapsed, self.p.smoothing);
        let mut jitter = || 1.0 + noise * gauss(&mut self.rng);
        let raw = Rates {
            offered: host.counted.offered / elapsed * jitter(),
            local: host.counted.local / elapsed * jitter(),
            received: host.counted.received / elapsed * jitter(),
        };
        let first = host.smoothed.is_none();
        let s = host.smoothed.get_or_insert(raw);
        if !first {
            s.offered = follow(s.offered, raw.offered, alpha, elapsed);
            s.local = follow(s.local, raw.local, alpha, elapsed);
            s.received = follow(s.received, raw.received, alpha, elapsed);
        }
        let s = *s;
        let smooth = |link: &mut Link| {
            let r = link.counted / elapsed;
            link.smoothed = if first { r } else { ewma(link.smoothed, r, alpha) };
            link.counted = 0.0;
        };
        host.live.iter_mut().for_each(smooth);
        let (now, decay, dt, side) = (self.done, &self.decay, self.p.dt, self.side[site]);
        // The parked links kept are met in their final order (a link dropped has the last
        // one moved into its place, met next), so their sum is the same as after the loop.
        host.parked_flows = [0.0; C];
        let mut i = 0;
        while i < host.parked.len() {
            let link = &mut host.parked[i];
            link.catch_up(now, decay, dt);
            smooth(link);
            if link.flows.iter().sum::<f64>() < NEGLIGIBLE && link.smoothed < NEGLIGIBLE {
                // Its flows have ended: dropped from the books.
                let link = host.unlink(Slot::Parked(i as u32));
                for c in 0..C {
                    self.parked_to[link.site][side][c] -= link.flows[c];
                }
            } else {
                for c in 0..C {
                    host.parked_flows[c] += link.flows[c];
                }
                i += 1;
            }
        }
        host.counted = Rates::default();
        host.read_at = t;
        let rates = |r: &Rates| policy::Rates {
            offered: r.offered,
            received: r.received,
            served: r.local + r.received,
        };
        let local = policy::Local {
            smoothed: rates(&s),
            recent: rates(&raw),
            fixed: 0.0,
            capacity: self.s.world.sites[site].host_capacity,
            cpu: None,
        };
        host.figures = Some(local);
        Some(local)
    }

    /// The policy's decision for `site` on `local` (host `h`'s figures per host, the site's
    /// per site), as weights per site; publishes the report its peer address serves.
    fn decide(
        &mut self,
        site: usize,
        h: usize,
        local: &policy::Local,
        state: &mut policy::State,
        t: f64,
    ) -> (Vec<u32>, Decision) {
        let n = self.s.world.len();
        // Every site decides over every other each interval: the buffers are reused.
        let mut b = std::mem::take(&mut self.buffers);
        b.claimed.clear();
        b.claimed.resize(n, (0.0, 0.0));
        b.ours.clear();
        b.ours.resize(n, 0.0);
        // What this decider sends each site: its own (per host) or its hosts' (per site).
        let deciders = match self.p.steering {
            Steering::PerHost => std::slice::from_ref(&h),
            Steering::PerSite => &self.site_hosts[site][..],
        };
        for &k in deciders {
            if self.alive[k] {
                for link in self.hosts[k].live.iter().chain(&self.hosts[k].parked) {
                    b.ours[link.site] += link.smoothed;
                }
            }
        }
        // The reports this site holds, and what the other shedders claim in them (added
        // up by the site claimed, in the order of the claimants; this site's own unused).
        let stale = self.p.stale;
        let health = &self.health[site * n..(site + 1) * n];
        let rtt = self.s.world.rtt_row(site);
        // Written in place, field by field: building each `Sibling` on the stack copies its
        // report's padding bytes in pieces that stall the stores.
        let unknown = Sibling {
            up: true,
            drained: false,
            cost: 0.0,
            ours: 0.0,
            others_want: 0.0,
            others_send: 0.0,
            report: None,
        };
        b.siblings.resize(n - 1, unknown);
        for (sibling, j) in b.siblings.iter_mut().zip((0..n).filter(|&j| j != site)) {
            sibling.up = health[j].up();
            sibling.cost = rtt[j] as f64;
            sibling.ours = b.ours[j];
            match self.reports.held(site, j, t, stale) {
                Some(p) => {
                    self.rec.age(t - p.at);
                    for &(k, w, s) in &p.claims {
                        let c = &mut b.claimed[k];
                        c.0 += w;
                        c.1 += s;
                    }
                    sibling.report = p.report;
                }
                None => sibling.report = None,
            }
        }
        for (sibling, j) in b.siblings.iter_mut().zip((0..n).filter(|&j| j != site)) {
            (sibling.others_want, sibling.others_send) = b.claimed[j];
        }
        let siblings = &b.siblings;
        let keep_before = state.keep;
        let decision = policy::decide(&self.p.knobs, state, local, siblings);
        let mut weights = vec![0u32; n];
        let (local_weight, sibling_weights) = policy::split(&decision);
        weights[site] = local_weight;
        let others = (0..n).filter(|&j| j != site);
        b.claims.clear();
        for (k, j) in others.enumerate() {
            if siblings[k].up {
                weights[j] = sibling_weights[k];
            }
            if decision.wants[k] > 0.0 {
                b.claims.push((j, decision.wants[k], siblings[k].ours));
            }
        }
        if self.trace == Some(site) && self.site_hosts[site].iter().find(|&&k| self.alive[k]) == Some(&h) {
            self.trace_decision(site, t, keep_before, (local, state), &decision, siblings);
        }
        // Per host, a site's report is its first host alive's (what a poll of any of its
        // hosts brings); per site, the deciding host's.
        let first_alive = self.site_hosts[site].iter().find(|&&k| self.alive[k]) == Some(&h);
        if first_alive || self.p.steering == Steering::PerSite {
            let report = Report {
                utilisation: local.utilisation(),
                served: local.smoothed.served,
                capacity: local.capacity,
                target: self.p.knobs.target,
                drained: false,
            };
            self.reports.publish(site, t, report, &b.claims);
        }
        self.buffers = b;
        (weights, decision)
    }

    /// One line on stderr for a decision of the traced site: scenario time, keep before and
    /// after, the figures it decided on, and every sibling it sends new flows to, with that
    /// sibling's report as held and what the other shedders claim of it.
    fn trace_decision(
        &self,
        site: usize,
        t: f64,
        keep_before: f64,
        (local, state): (&policy::Local, &policy::State),
        decision: &Decision,
        siblings: &[Sibling],
    ) {
        let sites = &self.s.world.sites;
        let mut line = format!(
            "trace {} {:.1} s {}: keep {keep_before:.4} -> {:.4} shedding {} utilisation {:.3} offered {:.0} moved {:.4}",
            self.s.name,
            t - self.s.warm_up,
            sites[site].name,
            decision.keep,
            state.shedding,
            local.utilisation(),
            local.smoothed.offered,
            decision.moved,
        );
        let others = (0..sites.len()).filter(|&j| j != site);
        for ((sibling, &share), j) in siblings.iter().zip(&decision.shares).zip(others) {
            if share == 0.0 {
                continue;
            }
            let report =
                sibling.report.map_or("no report".into(), |r| format!("at {:.3}", r.served / r.capacity));
            line += &format!(
                "; {} {:.4} ({report}, sent {:.0}, others claim {:.0})",
                sites[j].name, share, sibling.ours, sibling.others_want,
            );
        }
        eprintln!("{line}");
    }

    /// Host `h` installs `weights` (whose digest is `digest`).
    fn apply(&mut self, h: usize, weights: &[u32], digest: u64, t: f64) {
        let site = self.hosts[h].site;
        let total: u32 = weights.iter().sum();
        let share = |w: u32| if total == 0 { 0.0 } else { w as f64 / total as f64 };
        // The sites with a weight get their share, those losing it have their live links
        // parked, in the order of the sites (a site with neither has nothing to change;
        // a change of one site's link leaves the others live or parked).
        for (j, &w) in weights.iter().enumerate() {
            if j != site && (w > 0 || matches!(self.hosts[h].slot[j], Slot::Live(_))) {
                self.set_share(h, j, share(w));
            }
        }
        let host = &mut self.hosts[h];
        let old_keep = host.table.keep;
        let keep = if total == 0 { 1.0 } else { share(weights[site]) };
        host.table = Table { keep, epoch: host.table.epoch + 1 };
        host.digest = digest;
        if let Some(co) = &mut host.cohorts {
            co.weights.insert(host.table.epoch, weights.to_vec());
        }
        host.applied.copy_from_slice(weights);
        self.rec.change(site, h, t, old_keep, keep);
    }

    /// Site `site` polls every sibling: each poll brings the newest report published half a
    /// round trip ago, unless it is lost or the backbone is split between them.
    fn poll(&mut self, site: usize, t: f64) {
        let n = self.s.world.len();
        let part = self.s.partitioned(t);
        let alive = self.site_hosts[site].iter().filter(|&&h| self.alive[h]).count() as u64;
        // Per host, every host polls every sibling; per site, the deciding host does, and
        // polls its site's other hosts' figures, which poll it for the weights.
        let pollers = match self.p.steering {
            Steering::PerHost => alive,
            Steering::PerSite => {
                self.rec.polls[site] += 2 * alive.saturating_sub(1);
                1
            }
        };
        self.rec.polls[site] += pollers * (n as u64 - 1);
        let rtt = self.s.world.rtt_row(site);
        for j in (0..n).filter(|&j| j != site) {
            let hosts = &self.site_hosts[j];
            let polled = &mut self.polled[site * n + j];
            let lost = part.is_some_and(|side| side[site] != side[j]) || self.rng.f64() < self.p.report_loss;
            if lost || !self.alive[hosts[*polled as usize]] {
                // A failed poll: the next one goes to the site's next host.
                *polled = ((*polled as usize + 1) % hosts.len()) as u8;
                continue;
            }
            let sent = t - rtt[j] as f64 / 2000.0;
            self.reports.poll(site, j, sent);
        }
    }

    /// One round of health probes: a site answers when one of its hosts is alive and the
    /// backbone reaches it. A site taken down has the flows pinned to it re-steered.
    fn probe(&mut self, t: f64) {
        let n = self.s.world.len();
        let part = self.s.partitioned(t);
        let alive: Vec<bool> = (0..n).map(|j| self.alive_hosts(j) > 0).collect();
        for i in 0..n {
            if !alive[i] {
                continue;
            }
            for j in (0..n).filter(|&j| j != i) {
                let ok = alive[j] && part.is_none_or(|side| side[i] == side[j]);
                if self.health[i * n + j].record(ok, self.p.health_rise, self.p.health_fall) == Some(false) {
                    self.site_down(i, j, t);
                }
            }
        }
    }

    /// Site `i` takes `j` down: weight 0 at once, and its pinned flows re-steered (they
    /// cannot reach `j` anyway: lost).
    fn site_down(&mut self, i: usize, j: usize, t: f64) {
        for &h in &self.site_hosts[i].clone() {
            let host = &self.hosts[h];
            if self.alive[h] && host.applied[j] > 0 {
                let mut w = host.applied.clone();
                w[j] = 0;
                self.apply(h, &w, digest(&w), t);
            }
            let before = self.change_link(h, j, |f| *f = [0.0; C]);
            self.rec.lost += before.iter().sum::<f64>();
        }
    }

    /// Every host's BGP speaker takes one step on its last decision's signals; the site's
    /// route is the best of its hosts'; catchments follow after the convergence delay.
    fn speak(&mut self, t: f64) {
        for h in 0..self.hosts.len() {
            let host = &mut self.hosts[h];
            let before = host.speaker.current();
            if !self.alive[h] {
                // Its BGP session is gone: the routers drop its route at once.
                if before != Route::Withdraw {
                    host.speaker = Hysteresis::new(Route::Withdraw);
                }
                continue;
            }
            let (overloaded, no_headroom) = host.signals;
            let signals = SiteSignals { attached: true, drained: false, overloaded, no_headroom };
            let (wanted, _) = Route::wanted(&signals);
            host.speaker.step(wanted, &self.p.pacing);
        }
        for site in 0..self.s.world.len() {
            let best = self.site_hosts[site]
                .iter()
                .filter(|&&h| self.alive[h])
                .map(|&h| self.hosts[h].speaker.current())
                .max()
                .unwrap_or(Route::Withdraw);
            if best != self.route[site] {
                // What the site's routers see change (its hosts announce the same route).
                self.rec.bgp(site, t);
                self.route[site] = best;
                self.pending[site] = Some((t + self.p.convergence, best));
            }
        }
    }
}

/// The time at the start of step `step`.
fn t_of(step: usize, dt: f64) -> f64 {
    step as f64 * dt
}

fn steps_per(period: f64, dt: f64) -> usize {
    ((period / dt).round() as usize).max(1)
}

/// A fingerprint of a weight set: hosts whose digests differ hold different tables.
fn digest(weights: &[u32]) -> u64 {
    weights.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| (h ^ w as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn params() -> Params {
        Params {
            lead: 1.5,
            knobs: Knobs {
                target: 0.8,
                high: 0.9,
                low: 0.7,
                max_step: 0.25,
                max_moved_per_minute: 2.0,
                window: 120,
                escalate_after: 20,
                lead: 0.0,
            },
            interval: 0.5,
            smoothing: Duration::from_secs(1),
            stale: 3.0,
            health_interval: 1.0,
            health_rise: 2,
            health_fall: 3,
            bgp_interval: 1.0,
            pacing: Pacing { rise: 3, fall: 2, deprefer_after: 30, hold_down: 300, graceful_shutdown: 30 },
            dt: 0.1,
            noise: 0.02,
            report_loss: 0.01,
            deprefer_shift: 0.5,
            convergence: 30.0,
            maglev_size: 4099,
            steering: Steering::PerHost,
            seed: 7,
            trace: None,
        }
    }

    #[test]
    fn a_calm_world_keeps_every_flow_home() {
        let mut s = Scenario::named("flash", 20, 2, 3).unwrap();
        s.surges.clear();
        let p = params();
        let f = Sim::new(&s, &p).run().finish(&s, &p, 200, 2, "per host");
        let busy: Vec<_> = f.per_site.iter().filter(|x| x.weight_changes > 0 || x.peak >= 0.7).collect();
        assert!(busy.is_empty(), "{busy:?}");
        assert_eq!(f.new_flows_moved_share, 0.0);
        assert!(f.per_site.iter().all(|x| x.weight_changes == 0 && x.peak < 0.7), "{:?}", f.per_site);
        assert_eq!((f.established_moved, f.lost_with_failures, f.bgp_transitions_total), (0.0, 0.0, 0));
    }

    #[test]
    fn a_flash_crowd_is_shed_without_moving_established_flows() {
        let s = Scenario::named("flash", 20, 2, 3).unwrap();
        let p = params();
        let f = Sim::new(&s, &p).run().finish(&s, &p, 200, 2, "per host");
        assert!(f.new_flows_moved_share > 0.0, "{f:?}");
        assert!(f.focus_peak > 0.9, "a 3x crowd passes high before it is shed: {}", f.focus_peak);
        assert!(f.settle_s.is_some(), "{f:?}");
        assert_eq!(f.established_moved, 0.0);
    }

    #[test]
    fn the_warm_up_runs_the_demand_before_0_s_and_records_nothing_of_it() {
        // A crowd at the focus site since 30 s before 0 s.
        let mut s = Scenario::named("flash", 20, 2, 3).unwrap();
        s.surges[0].from = -30.0;
        s.event = (0.0, s.surges[0].to);
        let p = params();
        let run = |warm_up| {
            let s = Scenario { warm_up, ..s.clone() };
            Sim::new(&s, &p).run().finish(&s, &p, 200, 2, "per host")
        };
        // Cold, the crowd's flows are all kept at 0 s; warmed up for 40 s, the crowd was shed
        // during the warm-up and the figures start from there.
        let (cold, warm) = (run(0.0), run(40.0));
        assert!(cold.focus_peak > 1.2, "a 3x crowd kept whole: {}", cold.focus_peak);
        assert!(cold.longest_above_high_s > 1.0, "{cold:?}");
        assert!(warm.focus_peak < p.knobs.high, "shed before 0 s: {}", warm.focus_peak);
        assert_eq!(warm.longest_above_high_s, 0.0, "{warm:?}");
        assert!(warm.new_flows_moved_share > 0.0, "still shedding after 0 s: {warm:?}");
    }

    #[test]
    fn a_failed_host_moves_the_flows_its_siblings_tables_send_elsewhere() {
        let s = Scenario::named("failure", 20, 2, 3).unwrap();
        let p = params();
        let f = Sim::new(&s, &p).run().finish(&s, &p, 200, 2, "per host");
        // The failed host served flows locally (lost) and forwarded some; the other host's
        // table differs from the ones those were steered by, so some are moved.
        assert!(f.lost_with_failures > 0.0);
        assert!(f.established_moved > 0.0, "{f:?}");
    }

    #[test]
    fn tracing_a_site_changes_no_figure() {
        let s = Scenario::named("flash", 20, 2, 3).unwrap();
        let focus = s.world.sites[s.focus[0]].name.clone();
        let run = |trace: Option<String>| {
            let p = Params { trace, ..params() };
            let sim = Sim::new(&s, &p);
            assert_eq!(sim.trace.is_some(), p.trace.is_some(), "the site is found in its world");
            serde_json::to_string(&sim.run().finish(&s, &p, 200, 2, "per host")).unwrap()
        };
        assert_eq!(run(Some(focus)), run(None));
    }
}
