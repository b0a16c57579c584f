//! The steering task of the daemon: every tick it polls the sibling sites' `GET /load`,
//! probes them through the data path (`[health]`), measures the local load (`meter.rs`),
//! runs the policy (`policy.rs`, `[load]`), publishes this site's report and its view, and
//! hands the resulting weights and the set of sites that are down to the data-path owner,
//! which rewrites the Maglev tables only when something changed by more than
//! [`policy::MIN_CHANGE`] (one log line per change, never per packet).
//!
//! Health: a site is down only when its data-path probes fail (`fall` in a row), or when
//! its controller reports, authenticated, that its data path is detached. A peer API that
//! does not answer (its controller restarting, upgrading, crash-looping) makes the site's
//! load *unknown*, never down: its data path still forwards, and taking it down would
//! re-steer, and so reset, every flow pinned to it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::watch,
    time::{MissedTickBehavior, interval},
};

use super::{
    health::Tracker,
    meter::{CpuTimes, Meter, Reading},
    peers::{self, Expect, Peer, PeerKey, Published},
    policy::{self, Decision, Knobs, Sibling},
    probe::Prober,
};
use crate::{
    config::{Config, Encap, SiteKind},
    datapath::counters::Counters,
    model::{Claim, DataPathView, LoadReport, SiteView, SteeringView, WEIGHT_SCALE},
    owner::{OwnerError, actor::OwnerHandle},
    reconcile::Dynamic,
};

/// Tick when neither `[load]` nor `[health]` sets one: the load is still measured for
/// `GET /load` and `anycast_site_load_ratio`.
const DEFAULT_TICK: Duration = Duration::from_millis(500);
const DEFAULT_SMOOTHING: Duration = Duration::from_secs(1);

type TunnelAddrs = (Option<Ipv4Addr>, Option<Ipv6Addr>);

pub fn tick_of(config: &Config) -> Duration {
    match (&config.load, &config.health) {
        (Some(l), Some(h)) => l.interval.min(h.interval),
        (Some(l), None) => l.interval,
        (None, Some(h)) => h.interval,
        (None, None) => DEFAULT_TICK,
    }
}

fn stale(config: &Config) -> Duration {
    config.load.as_ref().map_or(Duration::from_secs(3), |l| l.stale)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the task works with and where it publishes.
pub struct Inputs {
    pub owner: OwnerHandle,
    pub datapath: watch::Receiver<Arc<DataPathView>>,
    pub counters: Arc<Counters>,
    /// The deployment's peer key (`[admin] peer_key_file`): signs our report, checks theirs.
    pub key: Option<PeerKey>,
    pub view: watch::Sender<Arc<SteeringView>>,
    pub report: watch::Sender<Arc<Published>>,
}

/// Runs until the owner is gone (the daemon is stopping, or the owner died: the
/// supervisor sees that first).
pub async fn run(inputs: Inputs) {
    if crate::datapath::fault::armed("steering-task") {
        panic!("fault injection: the steering task panics");
    }
    let mut s = Steering::new(&inputs.datapath.borrow());
    let mut period = tick_of(&inputs.datapath.borrow().config);
    let mut ticker = interval(period);
    // A slow tick (a peer timing out, a probe waiting) delays the next one instead of
    // bunching several up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // The config of this tick, taken after the wait: a reload during it is seen now.
        let dp = inputs.datapath.borrow().clone();
        if tick_of(&dp.config) != period {
            period = tick_of(&dp.config);
            ticker = interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        if let Err(OwnerError::Gone) = s.tick(&inputs, &dp).await {
            return;
        }
    }
}

struct Steering {
    meter: Meter,
    policy: policy::State,
    peers: BTreeMap<String, Peer>,
    health: BTreeMap<String, Tracker>,
    next_health: Instant,
    /// The prober and the tunnel addresses it was made for, or why it could not be made.
    prober: Option<(Result<Arc<Prober>, String>, TunnelAddrs)>,
    changes: u64,
    ticks: u64,
    /// This controller's start (ms since the epoch) and measurements since: the report's
    /// epoch and sequence.
    epoch: u64,
    seq: u64,
}

impl Steering {
    fn new(dp: &DataPathView) -> Steering {
        let mut policy = policy::State::default();
        // Carry on from the weights in force (adopted from a running data path).
        if let (Some(w), Some((local, _))) = (&dp.load_weights, dp.local_site()) {
            let share = |name: &str| w.get(name).map_or(0.0, |&w| w as f64 / WEIGHT_SCALE);
            let shares = remote_sites(&dp.config).map(|s| share(&s.name)).collect();
            policy = policy::State::adopted(share(local), shares);
        }
        Steering {
            meter: Meter::new(DEFAULT_SMOOTHING),
            policy,
            peers: BTreeMap::new(),
            health: BTreeMap::new(),
            next_health: Instant::now(),
            prober: None,
            changes: 0,
            ticks: 0,
            epoch: unix_ms(),
            seq: 0,
        }
    }

    async fn tick(&mut self, inputs: &Inputs, dp: &DataPathView) -> Result<(), OwnerError> {
        let config = &dp.config;
        let now = Instant::now();
        self.ticks += 1;
        self.poll_peers(config, inputs.key.as_ref(), now).await;
        match &config.health {
            Some(h) if now >= self.next_health => {
                self.next_health = now + h.interval;
                self.check_health(config, dp).await;
            }
            Some(_) => {}
            None => self.health.clear(),
        }
        let down: BTreeSet<String> =
            self.health.iter().filter(|(_, t)| !t.up()).map(|(n, _)| n.clone()).collect();

        self.meter.set_smoothing(config.load.as_ref().map_or(DEFAULT_SMOOTHING, |l| l.smoothing));
        let counters = inputs.counters.clone();
        let (sites, vips): (Vec<u32>, Vec<u32>) =
            (dp.sites.iter().map(|(_, i)| *i).collect(), dp.vips.iter().map(|(_, i)| *i).collect());
        let snapshot = tokio::task::spawn_blocking(move || counters.snapshot(sites, vips)).await;
        let reading = match snapshot {
            Ok(Ok(snapshot)) => Reading { snapshot, cpu: CpuTimes::read() },
            Ok(Err(e)) => {
                log::warn!("steering: reading the counters: {e}");
                return Ok(());
            }
            Err(e) => {
                log::warn!("steering: reading the counters: {e}");
                return Ok(());
            }
        };
        let Some(rates) = self.meter.update(reading).cloned() else { return Ok(()) };
        let Some((local_name, _)) = dp.local_site() else { return Ok(()) };
        let local_name = local_name.to_owned();
        let local_capacity = config.local_site().map_or(0.0, |s| s.capacity as f64);
        let cpu = config.load.as_ref().is_none_or(|l| l.cpu).then_some(rates.cpu).flatten();
        // VIPs that only this site serves cannot be shed.
        let fixed = config
            .vips
            .iter()
            .zip(&dp.vips)
            .filter(|(v, _)| v.sites.len() == 1 && v.sites[0] == local_name)
            .map(|(_, (_, index))| rates.vips.get(index).copied().unwrap_or(0.0))
            .sum();
        let me = policy::Local {
            smoothed: policy::Rates {
                offered: rates.offered,
                received: rates.received,
                served: rates.served,
            },
            recent: rates.recent,
            fixed,
            capacity: local_capacity,
            cpu,
        };
        let decision = config.load.as_ref().map(|l| {
            let siblings = self.siblings(config, dp, &rates.forwarded, &down, now);
            policy::decide(&Knobs::of(l), &mut self.policy, &me, &siblings)
        });
        let remote = || remote_sites(config).map(|s| s.name.as_str());
        let weights = decision.as_ref().map(|d| policy::weights(&local_name, remote(), d));
        let sends =
            |name: &str| dp.site_index(name).and_then(|i| rates.forwarded.get(&i)).copied().unwrap_or(0.0);
        let claims = decision.as_ref().map_or_else(BTreeMap::new, |d| {
            remote()
                .zip(&d.wants)
                .filter(|(_, w)| **w > 0.0)
                .map(|(n, &wants)| (n.to_owned(), Claim { wants, sends: sends(n) }))
                .collect()
        });
        let dynamic = Dynamic { weights, down };

        // Publish first: `/load` and the BGP speaker get this measurement even while the
        // owner is busy applying it.
        let (overloaded, no_headroom) =
            decision.as_ref().map_or((false, false), |d| (d.overloaded, d.no_headroom));
        self.seq += 1;
        let report = LoadReport {
            site: local_name.clone(),
            capacity: local_capacity,
            served: me.smoothed.served,
            utilisation: me.utilisation(),
            target: config.load.as_ref().map_or(1.0, |l| l.target),
            drained: dp.drained.contains(&local_name),
            attached: dp.attached,
            overloaded,
            no_headroom,
            epoch: self.epoch,
            seq: self.seq,
            measured_at: unix_ms(),
            claims,
        };
        inputs.report.send_replace(Arc::new(Published::new(report.clone(), inputs.key.as_ref())));
        self.publish(inputs, config, dp, &local_name, &me, decision.as_ref(), report, now);

        let applied = Dynamic { weights: dp.load_weights.clone(), down: dp.down.clone() };
        if differs(&dynamic, &applied) {
            match inputs.owner.apply(dynamic.clone(), dp.generation).await {
                Ok(a) => {
                    self.changes += 1;
                    log::info!("{}", describe(&dynamic, decision.as_ref(), &me, a.writes));
                }
                // A reload came in between: the next tick decides against the new config.
                Err(OwnerError::Stale(..)) => {}
                Err(OwnerError::Gone) => return Err(OwnerError::Gone),
                Err(e) => log::error!("steering: applying weights: {e}; the previous weights stay"),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        inputs: &Inputs,
        config: &Config,
        dp: &DataPathView,
        local_name: &str,
        me: &policy::Local,
        decision: Option<&Decision>,
        report: LoadReport,
        now: Instant,
    ) {
        let mut sites: BTreeMap<String, SiteView> = config
            .sites
            .iter()
            .filter(|s| s.name != local_name)
            .map(|s| {
                let report = self.peers.get(&s.name).and_then(|p| p.fresh(now, stale(config)));
                let up = self.health.get(&s.name).is_none_or(Tracker::up);
                (s.name.clone(), SiteView { up, load_ratio: report.map(|r| r.utilisation) })
            })
            .collect();
        sites.insert(local_name.to_owned(), SiteView { up: dp.attached, load_ratio: Some(me.utilisation()) });
        let refused = self
            .peers
            .iter()
            .map(|(name, p)| {
                (name.clone(), p.refused.iter().map(|(r, n)| (r.name().to_owned(), *n)).collect())
            })
            .collect();
        inputs.view.send_replace(Arc::new(SteeringView {
            overloaded: report.overloaded,
            no_headroom: report.no_headroom,
            report: Some(report),
            sites,
            keep: decision.map(|d| d.keep),
            weight_changes: self.changes,
            ticks: self.ticks,
            refused,
        }));
    }

    fn siblings(
        &self,
        config: &Config,
        dp: &DataPathView,
        forwarded: &BTreeMap<u32, f64>,
        down: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<Sibling> {
        let fresh: Vec<&LoadReport> =
            self.peers.values().filter_map(|p| p.fresh(now, stale(config))).collect();
        remote_sites(config)
            .map(|s| Sibling {
                up: !down.contains(&s.name),
                drained: dp.drained.contains(&s.name),
                cost: s.cost as f64,
                // What the other shedders want from it (their own reports say).
                others_want: fresh.iter().filter_map(|r| r.claims.get(&s.name)).map(|c| c.wants).sum(),
                others_send: fresh.iter().filter_map(|r| r.claims.get(&s.name)).map(|c| c.sends).sum(),
                ours: dp.site_index(&s.name).and_then(|i| forwarded.get(&i)).copied().unwrap_or(0.0),
                report: self
                    .peers
                    .get(&s.name)
                    .and_then(|p| p.fresh(now, stale(config)))
                    .map(policy::Report::of),
            })
            .collect()
    }

    async fn poll_peers(&mut self, config: &Config, key: Option<&PeerKey>, now: Instant) {
        let interval = tick_of(config);
        let timeout = config.load.as_ref().map_or(interval, |l| l.peer_timeout);
        let wanted: BTreeMap<&str, (std::net::SocketAddr, f64)> = config
            .sites
            .iter()
            .filter_map(|s| Some((s.name.as_str(), (s.peer?, s.capacity as f64))))
            .collect();
        self.peers.retain(|name, _| wanted.contains_key(name.as_str()));
        let mut polls = tokio::task::JoinSet::new();
        for (name, (addr, _)) in &wanted {
            if self.peers.entry((*name).to_owned()).or_default().due(now) {
                let (name, addr) = ((*name).to_owned(), *addr);
                polls.spawn(async move { (name, peers::fetch(addr, timeout).await) });
            }
        }
        while let Some(joined) = polls.join_next().await {
            let (name, fetched) = match joined {
                Ok(r) => r,
                Err(e) => {
                    log::error!("steering: a peer poll failed: {e}");
                    continue;
                }
            };
            let Some(peer) = self.peers.get_mut(&name) else { continue };
            let expect = Expect {
                site: &name,
                capacity: wanted.get(name.as_str()).map_or(0.0, |(_, c)| *c),
                key,
                now_ms: unix_ms(),
                max_age: stale(config),
            };
            let result = fetched.and_then(|f| peers::accept(&f, &expect, peer.sequence()));
            peer.record(&name, Instant::now(), interval, result);
        }
    }

    /// One round of probes of every remote site through the data path. A site whose
    /// controller reports (authenticated and fresh) a detached data path fails too.
    async fn check_health(&mut self, config: &Config, dp: &DataPathView) {
        let Some(h) = &config.health else { return };
        let targets: Vec<(String, IpAddr, Encap)> = config
            .sites
            .iter()
            .filter_map(|s| match s.kind {
                SiteKind::Remote { endpoint, encap } => Some((s.name.clone(), endpoint, encap)),
                SiteKind::Local => None,
            })
            .collect();
        self.health.retain(|name, _| targets.iter().any(|(n, ..)| n == name));
        // A site first seen starts as the data path holds it: down if it is down there (or
        // new), so that neither a restart nor a reload sends it flows before it proved up.
        for (name, ..) in &targets {
            self.health.entry(name.clone()).or_insert_with(|| Tracker::new(!dp.down.contains(name)));
        }
        let prober = match self.prober(config) {
            Ok(p) => p,
            Err(why) => {
                // Without probes nothing is known: the states stay as they are.
                log::debug!("health: cannot probe: {why}");
                return;
            }
        };
        let mut probes = tokio::task::JoinSet::new();
        for (name, endpoint, encap) in targets {
            let (prober, timeout) = (prober.clone(), h.timeout);
            probes.spawn(async move { (name, prober.probe(endpoint, encap, timeout).await) });
        }
        let now = Instant::now();
        while let Some(joined) = probes.join_next().await {
            let (name, result) = match joined {
                Ok(r) => r,
                Err(e) => {
                    log::error!("health: a probe failed: {e}");
                    continue;
                }
            };
            let detached =
                self.peers.get(&name).and_then(|p| p.fresh(now, stale(config))).is_some_and(|r| !r.attached);
            let outcome = match result {
                Err(e) => Err(format!("data-path probe: {e}")),
                Ok(_) if detached => Err("its controller reports its data path detached".to_owned()),
                Ok(_) => Ok(()),
            };
            let tracker = self.health.entry(name.clone()).or_default();
            if let Some(up) = tracker.record(outcome.is_ok(), h.rise, h.fall) {
                match outcome {
                    Ok(()) => log::info!("site {name}: up ({} good checks in a row)", h.rise),
                    Err(why) => log::warn!("site {name}: down after {} failed checks: {why}", h.fall),
                }
                debug_assert_eq!(up, tracker.up());
            }
        }
    }

    /// The prober for the configured tunnel addresses; made again only when they change
    /// (and the failure to make it logged once per change).
    fn prober(&mut self, config: &Config) -> Result<Arc<Prober>, String> {
        let addrs = (config.local.tunnel_v4, config.local.tunnel_v6);
        if self.prober.as_ref().is_none_or(|(_, a)| *a != addrs) {
            let made = Prober::new(addrs.0, addrs.1).map(Arc::new).map_err(|e| e.to_string());
            if let Err(e) = &made {
                log::error!("health: cannot probe: {e}");
            }
            self.prober = Some((made, addrs));
        }
        self.prober.as_ref().map_or(Err("no prober".into()), |(p, _)| p.clone())
    }
}

/// The remote sites in config order: the order of the policy's siblings.
fn remote_sites(config: &Config) -> impl Iterator<Item = &crate::config::Site> {
    config.sites.iter().filter(|s| matches!(s.kind, SiteKind::Remote { .. }))
}

/// Whether `next` is worth a Maglev rebuild over what is applied.
fn differs(next: &Dynamic, applied: &Dynamic) -> bool {
    if next.down != applied.down {
        return true;
    }
    match (&next.weights, &applied.weights) {
        (Some(a), Some(b)) => {
            a.len() != b.len()
                || policy::worth_applying(a.iter().map(|(n, &w)| (w, b.get(n).copied().unwrap_or(0))))
        }
        (a, b) => a.is_some() != b.is_some(),
    }
}

/// The log line of one applied change.
fn describe(d: &Dynamic, decision: Option<&Decision>, me: &policy::Local, writes: usize) -> String {
    let mut line = String::from("steering:");
    if let Some(w) = &d.weights {
        let list: Vec<String> = w.iter().map(|(n, w)| format!("{n}={w}")).collect();
        line += &format!(" weights {}", list.join(" "));
    }
    if let Some(dec) = decision {
        line += &format!(
            " (keep {:.2}; load {:.2}: served {:.0}/s of capacity {:.0}/s{}{}{})",
            dec.keep,
            me.utilisation(),
            me.smoothed.served,
            me.capacity,
            me.cpu.map(|c| format!(", cpu {c:.2}")).unwrap_or_default(),
            if dec.overloaded { ", overloaded" } else { "" },
            if dec.no_headroom { ", no headroom anywhere" } else { "" },
        );
    }
    if !d.down.is_empty() {
        line += &format!(" down: {}", d.down.iter().cloned().collect::<Vec<_>>().join(","));
    }
    line + &format!("; {writes} map writes")
}
