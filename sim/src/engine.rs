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
//! - Reports: a site's report is polled over the backbone by each site every interval,
//!   arriving half a round trip old, each poll lost with probability `report_loss`; older
//!   than `stale` it is unknown, as in the daemon.
//! - Failures: a dead host loses the flows it served; its forwarded flows reach another
//!   host of the site, which steers them by *its* current table (no pin there): those whose
//!   bucket names another site now are established flows moved. Across a backbone partition
//!   nothing passes: forwarded packets are lost until the probes take the far sites down.

use std::{collections::HashMap, rc::Rc, time::Duration};

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
/// A site's published reports kept for pollers (each one interval apart).
const PUBLISHED: usize = 16;

/// The shares of new flows a host steers by: the local site's and the remote sites' (those
/// with a weight).
#[derive(Clone, Debug, Default)]
struct Table {
    keep: f64,
    shares: Vec<(usize, f64)>,
    /// Bumped by every applied change.
    epoch: u32,
}

#[derive(Clone, Copy, Default)]
struct Rates {
    offered: f64,
    local: f64,
    received: f64,
}

struct Host {
    site: usize,
    alive: bool,
    /// Step (modulo the steps per interval) at which its controller ticks.
    phase: usize,
    table: Table,
    /// `table`'s share per site (dense).
    share: Vec<f64>,
    /// The weights applied last, per site (the local site's at its own index).
    applied: Vec<u32>,
    digest: u64,
    policy: policy::State,
    decision: Option<Decision>,
    speaker: Hysteresis,
    /// Pinned flows served here, per class.
    local: [f64; C],
    /// Pinned flows forwarded to each site, per class; `active` lists the sites with any.
    fwd: Vec<[f64; C]>,
    active: Vec<usize>,
    is_active: Vec<bool>,
    /// Packets counted since the last reading, and the forwarded ones per site.
    counted: Rates,
    counted_fwd: Vec<f64>,
    read_at: f64,
    /// The meter's smoothed rates (None before the first reading), and the policy's view
    /// of them with the last interval's.
    smoothed: Option<Rates>,
    figures: Option<policy::Local>,
    smoothed_fwd: Vec<f64>,
    /// Forwarded flows' cohorts by (table epoch, site), kept for hosts whose failure the
    /// scenario schedules; with the weights of each epoch.
    cohorts: Option<Cohorts>,
}

#[derive(Default)]
struct Cohorts {
    by_epoch: HashMap<(u32, usize), [f64; C]>,
    weights: HashMap<u32, Vec<u32>>,
}

#[derive(Clone)]
struct Published {
    at: f64,
    report: Report,
    /// (site, wants, sends) of a shedder.
    claims: Vec<(usize, f64, f64)>,
}

/// Who decides: every host on its own figures (the daemon before sites of several hosts),
/// or the site's first host alive on the sum of its hosts', the others installing its
/// weights.
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
    /// Hosts of each site, as indices into `hosts`.
    site_hosts: Vec<Vec<usize>>,
    /// Per site: its reports as published (newest last), shared with the pollers that hold
    /// them.
    published: Vec<Vec<Rc<Published>>>,
    /// Per (poller, site): the report the poller holds.
    held: Vec<Option<Rc<Published>>>,
    /// Per (prober, site): the health tracker.
    health: Vec<Tracker>,
    /// Routes: as the site's speakers have them, and as the catchments follow them.
    route: Vec<Route>,
    effective: Vec<Route>,
    pending: Vec<Option<(f64, Route)>>,
    catchment: Vec<Route2>,
    /// Per site (per-site steering): the policy's state, the host deciding, and the
    /// weights it decided last (which the other hosts install).
    site_policy: Vec<policy::State>,
    leader: Vec<Option<usize>>,
    decided: Vec<Option<Vec<u32>>>,
    decay: [f64; C],
    /// `SIM_DEBUG` set: the first focus site's decisions on stderr.
    debug: bool,
    pub rec: Recorder,
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
                    alive: true,
                    phase: rng.usize(0..steps),
                    table: Table { keep: 1.0, shares: Vec::new(), epoch: 0 },
                    share: vec![0.0; n],
                    digest: digest(&applied),
                    applied,
                    policy: policy::State::default(),
                    decision: None,
                    speaker: Hysteresis::new(Route::Announce),
                    local: [0.0; C],
                    fwd: vec![[0.0; C]; n],
                    active: Vec::new(),
                    is_active: vec![false; n],
                    counted: Rates::default(),
                    counted_fwd: vec![0.0; n],
                    read_at: 0.0,
                    smoothed: None,
                    figures: None,
                    smoothed_fwd: vec![0.0; n],
                    cohorts: tracked.contains(&i).then(Cohorts::default),
                });
            }
        }
        let mut sim = Sim {
            s,
            p,
            rng,
            hosts,
            site_hosts,
            published: vec![Vec::new(); n],
            held: vec![None; n * n],
            health: vec![Tracker::default(); n * n],
            route: vec![Route::Announce; n],
            effective: vec![Route::Announce; n],
            pending: vec![None; n],
            catchment: (0..n).map(|i| [(i, 1.0), (i, 0.0)]).collect(),
            site_policy: vec![policy::State::default(); n],
            leader: vec![None; n],
            decided: vec![None; n],
            decay: CLASSES.map(|c| (-p.dt / c.lifetime).exp()),
            debug: std::env::var_os("SIM_DEBUG").is_some(),
            rec: Recorder::new(s, p),
        };
        sim.warm_up();
        sim
    }

    /// Starts every host with the flows its demand would have at steady state, all local.
    fn warm_up(&mut self) {
        for h in &mut self.hosts {
            let site = &self.s.world.sites[h.site];
            let ingress = site.home_demand * self.s.demand_factor(h.site, 0.0) / site.hosts as f64;
            for (c, class) in CLASSES.iter().enumerate() {
                h.local[c] = ingress * class.packets / class.pps;
            }
        }
    }

    pub fn run(mut self) -> Recorder {
        let steps = (self.s.duration / self.p.dt).round() as usize;
        let per_interval = steps_per(self.p.interval, self.p.dt);
        let per_health = steps_per(self.p.health_interval, self.p.dt);
        let per_bgp = steps_per(self.p.bgp_interval, self.p.dt);
        let n = self.s.world.len();
        let mut ingress = vec![0.0; n];
        let mut received = vec![0.0; n];
        let mut served = vec![0.0; n];
        let mut capacity = vec![0.0; n];
        for step in 0..steps {
            let t = step as f64 * self.p.dt;
            self.outages(t);
            self.follow_routes(t);
            self.ingress(t, &mut ingress);
            received.iter_mut().for_each(|r| *r = 0.0);
            served.iter_mut().for_each(|r| *r = 0.0);
            let part = self.s.partitioned(t);
            for h in 0..self.hosts.len() {
                self.flows(h, &ingress, part, &mut received, &mut served);
            }
            for (j, hs) in self.site_hosts.iter().enumerate() {
                let alive = hs.iter().filter(|&&h| self.hosts[h].alive).count();
                capacity[j] = alive as f64 * self.s.world.sites[j].host_capacity;
                served[j] += received[j];
                for &h in hs {
                    if self.hosts[h].alive {
                        self.hosts[h].counted.received += received[j] / alive as f64 * self.p.dt;
                    }
                }
            }
            self.rec.step(t, &served, &capacity, ingress.iter().sum());
            if step % per_interval == 0 {
                let diverged = self.site_hosts.iter().map(|hs| {
                    let mut alive =
                        hs.iter().filter(|&&h| self.hosts[h].alive).map(|&h| self.hosts[h].digest);
                    let first = alive.next();
                    alive.any(|d| Some(d) != first)
                });
                self.rec.tables(diverged);
            }
            for site in 0..n {
                // Each site polls its siblings once per interval, at its first host's tick
                // (every host of a site polls the same peers: their copies would be alike).
                if step % per_interval == self.hosts[self.site_hosts[site][0]].phase {
                    self.poll(site, t);
                }
            }
            // Controllers read the counters at the end of the step, having counted it.
            for h in 0..self.hosts.len() {
                if self.hosts[h].alive && step % per_interval == self.hosts[h].phase {
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

    /// Hosts and sites failing or coming back at `t`.
    fn outages(&mut self, t: f64) {
        let dt = self.p.dt;
        for o in self.s.outages.clone() {
            let hosts: Vec<usize> = match o.host {
                Some(k) => vec![self.site_hosts[o.site][k]],
                None => self.site_hosts[o.site].clone(),
            };
            if t >= o.from && t - dt < o.from {
                for &h in &hosts {
                    self.fail(h);
                }
            }
            if t >= o.to && t - dt < o.to {
                for &h in &hosts {
                    self.recover(h, t);
                }
            }
        }
    }

    fn fail(&mut self, h: usize) {
        let site = self.hosts[h].site;
        let alive_before = self.alive(site);
        self.hosts[h].alive = false;
        // What it served locally is gone, and so is its share of what siblings forward to
        // its site (per-host endpoints: the other hosts' flows stay where they are).
        let lost: f64 = self.hosts[h].local.iter().sum();
        self.rec.lost += lost;
        self.hosts[h].local = [0.0; C];
        if alive_before > 0 {
            let gone = 1.0 / alive_before as f64;
            for k in 0..self.hosts.len() {
                if self.hosts[k].site != site {
                    let f = &mut self.hosts[k].fwd[site];
                    self.rec.lost += f.iter().sum::<f64>() * gone;
                    f.iter_mut().for_each(|x| *x *= 1.0 - gone);
                }
            }
        }
        // Its forwarded flows now reach the site's other hosts, which have no pin for them.
        let others: Vec<usize> =
            self.site_hosts[site].iter().copied().filter(|&k| self.hosts[k].alive).collect();
        let fwd = std::mem::replace(&mut self.hosts[h].fwd, vec![[0.0; C]; self.s.world.len()]);
        let active = std::mem::take(&mut self.hosts[h].active);
        self.hosts[h].is_active.iter_mut().for_each(|a| *a = false);
        if others.is_empty() {
            self.rec.lost += active.iter().map(|&j| fwd[j].iter().sum::<f64>()).sum::<f64>();
            return;
        }
        let kept = self.kept_after_ecmp(h, &others, &fwd, &active);
        for &j in &active {
            for (c, &total) in fwd[j].iter().enumerate() {
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
    fn kept_after_ecmp(
        &self,
        h: usize,
        others: &[usize],
        fwd: &[[f64; C]],
        active: &[usize],
    ) -> HashMap<usize, f64> {
        let Some(cohorts) = &self.hosts[h].cohorts else {
            // Not tracked: judge by the tables alone, every cohort as if steered by the
            // failed host's current weights.
            return self.overlap(&[(self.hosts[h].applied.clone(), 1.0)], others, active);
        };
        let mut out = HashMap::new();
        for &j in active {
            let total: f64 = fwd[j].iter().sum();
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
        let host = &mut self.hosts[h];
        host.alive = true;
        // A fresh data path and controller: every new flow local until measured otherwise.
        host.policy = policy::State::default();
        host.decision = None;
        host.applied = vec![0; n];
        host.applied[site] = policy::weight(1.0);
        host.digest = digest(&host.applied);
        host.table = Table { keep: 1.0, shares: Vec::new(), epoch: host.table.epoch + 1 };
        host.share.iter_mut().for_each(|x| *x = 0.0);
        host.smoothed = None;
        host.figures = None;
        host.counted = Rates::default();
        host.counted_fwd.iter_mut().for_each(|x| *x = 0.0);
        host.read_at = t + self.p.dt;
        host.speaker = Hysteresis::new(Route::Announce);
        if let Some(c) = &mut host.cohorts {
            *c = Cohorts::default();
        }
    }

    fn alive(&self, site: usize) -> usize {
        self.site_hosts[site].iter().filter(|&&h| self.hosts[h].alive).count()
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
                for &j in &host.active {
                    self.rec.broken_by_bgp += host.fwd[j][c] * share;
                    host.fwd[j][c] *= 1.0 - share;
                }
            }
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
        part: Option<&[bool]>,
        received: &mut [f64],
        served: &mut [f64],
    ) {
        let dt = self.p.dt;
        let site = self.hosts[h].site;
        if !self.hosts[h].alive {
            return;
        }
        // ECMP over the site's hosts that are alive and announce the best route.
        let best = self.route[site];
        let ecmp = self.site_hosts[site]
            .iter()
            .filter(|&&k| self.hosts[k].alive && self.hosts[k].speaker.current() == best)
            .count();
        let in_ecmp = self.hosts[h].speaker.current() == best && best != Route::Withdraw;
        let arriving = if in_ecmp && ecmp > 0 { ingress[site] / ecmp as f64 } else { 0.0 };
        let decay = self.decay;
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
        for &(j, share) in &host.table.shares {
            if !host.is_active[j] {
                host.is_active[j] = true;
                host.active.push(j);
            }
            fwd_new += new_flows * share;
            distance += new_flows * share * world.rtt_ms(site, j);
        }
        let epoch = host.table.epoch;
        let mut offered = local_pps;
        let mut i = 0;
        while i < host.active.len() {
            let j = host.active[i];
            let share = host.share[j];
            let mut pps = dns * share;
            let mut flows = 0.0;
            for (c, class) in CLASSES.iter().enumerate() {
                let a = arriving * class.packets / (class.pps * class.lifetime) * dt * share;
                host.fwd[j][c] = host.fwd[j][c] * decay[c] + a;
                pps += host.fwd[j][c] * class.pps;
                flows += host.fwd[j][c];
                if let Some(co) = &mut host.cohorts
                    && a > 0.0
                {
                    co.by_epoch.entry((epoch, j)).or_default()[c] += a;
                }
            }
            offered += pps;
            host.counted_fwd[j] += pps * dt;
            if part.is_none_or(|side| side[site] == side[j]) {
                received[j] += pps;
            } else {
                self.rec.blackholed += pps * dt;
            }
            if flows < NEGLIGIBLE && share == 0.0 && host.smoothed_fwd[j] < NEGLIGIBLE {
                host.fwd[j] = [0.0; C];
                host.is_active[j] = false;
                host.active.swap_remove(i);
            } else {
                i += 1;
            }
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

    fn add_fwd(&mut self, h: usize, j: usize, c: usize, flows: f64) {
        let host = &mut self.hosts[h];
        host.fwd[j][c] += flows;
        if !host.is_active[j] {
            host.is_active[j] = true;
            host.active.push(j);
        }
    }

    /// One tick of host `h`'s controller: read its counters; then, per host, decide on its
    /// own figures, or per site, install the site's decision and, on the site's first host
    /// alive, aggregate its hosts' figures and decide for the site.
    fn tick(&mut self, h: usize, t: f64) {
        let site = self.hosts[h].site;
        let Some(local) = self.measure(h, t) else { return };
        match self.p.steering {
            Steering::PerHost => {
                let mut state = std::mem::take(&mut self.hosts[h].policy);
                let (weights, decision) = self.decide(site, h, &local, &mut state, t);
                let host = &mut self.hosts[h];
                host.policy = state;
                host.decision = Some(decision);
                if policy::worth_applying(weights.iter().copied().zip(host.applied.iter().copied())) {
                    self.apply(h, weights, t);
                }
            }
            Steering::PerSite => {
                let leader = self.site_hosts[site].iter().copied().find(|&k| self.hosts[k].alive);
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
                        .filter(|&&k| self.hosts[k].alive)
                        .filter_map(|&k| self.hosts[k].figures)
                        .collect();
                    let site_local = policy::Local::sum(&hosts);
                    let mut state = std::mem::take(&mut self.site_policy[site]);
                    let (weights, decision) = self.decide(site, h, &site_local, &mut state, t);
                    self.site_policy[site] = state;
                    for &k in &self.site_hosts[site] {
                        self.hosts[k].decision = Some(decision.clone());
                    }
                    if policy::worth_applying(
                        weights.iter().copied().zip(self.hosts[h].applied.iter().copied()),
                    ) {
                        self.decided[site] = Some(weights.clone());
                        self.apply(h, weights, t);
                    }
                } else if let Some(w) = &self.decided[site]
                    && *w != self.hosts[h].applied
                {
                    // A follower installs what its leader decided (polled at its tick).
                    let w = w.clone();
                    self.apply(h, w, t);
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
        for &j in &host.active {
            let r = host.counted_fwd[j] / elapsed;
            host.smoothed_fwd[j] = if first { r } else { ewma(host.smoothed_fwd[j], r, alpha) };
            host.counted_fwd[j] = 0.0;
        }
        host.counted = Rates::default();
        host.read_at = t;
        let rates = |r: &Rates| policy::Rates {
            offered: r.offered,
            received: r.received,
            served: r.local + r.received,
        };
        let local = policy::Local {
            smoothed: rates(s),
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
        // What the other shedders claim, from the reports this site holds.
        let (mut want, mut send) = (vec![0.0; n], vec![0.0; n]);
        let row = site * n..(site + 1) * n;
        for held in self.held[row.clone()].iter().flatten().filter(|p| t - p.at <= self.p.stale) {
            for &(j, w, s) in &held.claims {
                want[j] += w;
                send[j] += s;
            }
        }
        // What this decider sends each site: its own (per host) or its hosts' (per site).
        let deciders: Vec<usize> = match self.p.steering {
            Steering::PerHost => vec![h],
            Steering::PerSite => {
                self.site_hosts[site].iter().copied().filter(|&k| self.hosts[k].alive).collect()
            }
        };
        let ours = |j: usize| deciders.iter().map(|&k| self.hosts[k].smoothed_fwd[j]).sum::<f64>();
        let mut siblings = Vec::with_capacity(n - 1);
        for (j, (held, health)) in self.held[row.clone()].iter().zip(&self.health[row]).enumerate() {
            if j == site {
                continue;
            }
            let report = match held {
                Some(p) if t - p.at <= self.p.stale => {
                    self.rec.age(t - p.at);
                    Some(p.report)
                }
                _ => None,
            };
            siblings.push(Sibling {
                up: health.up(),
                drained: false,
                cost: self.s.world.rtt_ms(site, j),
                ours: ours(j),
                others_want: want[j],
                others_send: send[j],
                report,
            });
        }
        let decision = policy::decide(&self.p.knobs, state, local, &siblings);
        let mut weights = vec![0u32; n];
        weights[site] = policy::weight(decision.keep);
        let others = (0..n).filter(|&j| j != site);
        let mut claims = Vec::new();
        for (k, j) in others.enumerate() {
            if siblings[k].up {
                weights[j] = policy::weight(decision.shares[k]);
            }
            if decision.wants[k] > 0.0 {
                claims.push((j, decision.wants[k], siblings[k].ours));
            }
        }
        if self.debug && site == self.s.focus[0] && self.site_hosts[site][0] == h {
            eprintln!(
                "t {t:.1} keep {:.3} shed {} u {:.3} recent {:.3} off {:.0} served {:.0} cap {:.0} over {} nohead {} moved {:.3}",
                state.keep,
                state.shedding,
                local.utilisation(),
                local.recent.served / local.capacity,
                local.smoothed.offered,
                local.smoothed.served,
                local.capacity,
                decision.overloaded,
                decision.no_headroom,
                decision.moved,
            );
        }
        // The site's peer address is its first host's.
        if self.site_hosts[site][0] == h || self.p.steering == Steering::PerSite {
            let report = Report {
                utilisation: local.utilisation(),
                served: local.smoothed.served,
                capacity: local.capacity,
                target: self.p.knobs.target,
                drained: false,
            };
            let list = &mut self.published[site];
            if list.len() == PUBLISHED {
                list.remove(0);
            }
            list.push(Rc::new(Published { at: t, report, claims }));
        }
        (weights, decision)
    }

    fn apply(&mut self, h: usize, weights: Vec<u32>, t: f64) {
        let site = self.hosts[h].site;
        let total: u32 = weights.iter().sum();
        let host = &mut self.hosts[h];
        let old_keep = host.table.keep;
        let (keep, shares) = if total == 0 {
            (1.0, Vec::new())
        } else {
            let keep = weights[site] as f64 / total as f64;
            let shares = weights
                .iter()
                .enumerate()
                .filter(|&(j, &w)| j != site && w > 0)
                .map(|(j, &w)| (j, w as f64 / total as f64))
                .collect();
            (keep, shares)
        };
        host.share.iter_mut().for_each(|x| *x = 0.0);
        for &(j, x) in &shares {
            host.share[j] = x;
        }
        host.table = Table { keep, shares, epoch: host.table.epoch + 1 };
        host.digest = digest(&weights);
        if let Some(co) = &mut host.cohorts {
            co.weights.insert(host.table.epoch, weights.clone());
        }
        host.applied = weights;
        self.rec.change(site, h, t, old_keep, keep);
    }

    /// Site `site` polls every sibling: each poll brings the newest report published half a
    /// round trip ago, unless it is lost or the backbone is split between them.
    fn poll(&mut self, site: usize, t: f64) {
        let n = self.s.world.len();
        let part = self.s.partitioned(t);
        let alive = self.site_hosts[site].iter().filter(|&&h| self.hosts[h].alive).count() as u64;
        // Per host, every host polls every sibling; per site, the deciding host does, and
        // polls its site's other hosts' figures, which poll it for the weights.
        let pollers = match self.p.steering {
            Steering::PerHost => alive,
            Steering::PerSite => {
                self.rec.polls[site] += 2 * alive.saturating_sub(1);
                1
            }
        };
        for j in (0..n).filter(|&j| j != site) {
            self.rec.polls[site] += pollers;
            if part.is_some_and(|side| side[site] != side[j]) || self.rng.f64() < self.p.report_loss {
                continue;
            }
            if self.alive(j) == 0 || !self.hosts[self.site_hosts[j][0]].alive {
                continue;
            }
            let sent = t - self.s.world.rtt_ms(site, j) / 2000.0;
            if let Some(p) = self.published[j].iter().rev().find(|p| p.at <= sent) {
                self.held[site * n + j] = Some(Rc::clone(p));
            }
        }
    }

    /// One round of health probes: a site answers when one of its hosts is alive and the
    /// backbone reaches it. A site taken down has the flows pinned to it re-steered.
    fn probe(&mut self, t: f64) {
        let n = self.s.world.len();
        let part = self.s.partitioned(t);
        let alive: Vec<bool> = (0..n).map(|j| self.alive(j) > 0).collect();
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
            let host = &mut self.hosts[h];
            self.rec.lost += host.fwd[j].iter().sum::<f64>();
            host.fwd[j] = [0.0; C];
            if host.alive && host.applied[j] > 0 {
                let mut w = host.applied.clone();
                w[j] = 0;
                self.apply(h, w, t);
            }
        }
    }

    /// Every host's BGP speaker takes one step on its last decision's signals; the site's
    /// route is the best of its hosts'; catchments follow after the convergence delay.
    fn speak(&mut self, t: f64) {
        for h in 0..self.hosts.len() {
            let host = &mut self.hosts[h];
            let before = host.speaker.current();
            if !host.alive {
                // Its BGP session is gone: the routers drop its route at once.
                if before != Route::Withdraw {
                    host.speaker = Hysteresis::new(Route::Withdraw);
                }
                continue;
            }
            let (overloaded, no_headroom) =
                host.decision.as_ref().map_or((false, false), |d| (d.overloaded, d.no_headroom));
            let signals = SiteSignals { attached: true, drained: false, overloaded, no_headroom };
            let (wanted, _) = Route::wanted(&signals);
            host.speaker.step(wanted, &self.p.pacing);
        }
        for site in 0..self.s.world.len() {
            let best = self.site_hosts[site]
                .iter()
                .filter(|&&h| self.hosts[h].alive)
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
            knobs: Knobs {
                target: 0.8,
                high: 0.9,
                low: 0.7,
                max_step: 0.25,
                max_moved_per_minute: 2.0,
                window: 120,
                escalate_after: 20,
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
    fn a_failed_host_moves_the_flows_its_siblings_tables_send_elsewhere() {
        let s = Scenario::named("failure", 20, 2, 3).unwrap();
        let p = params();
        let f = Sim::new(&s, &p).run().finish(&s, &p, 200, 2, "per host");
        // The failed host served flows locally (lost) and forwarded some; the other host's
        // table differs from the ones those were steered by, so some are moved.
        assert!(f.lost_with_failures > 0.0);
        assert!(f.established_moved > 0.0, "{f:?}");
    }
}
