//! The steering task of the daemon: every tick it polls the sibling sites' `GET /load`,
//! probes them through the data path (`[health]`), measures the local load (`meter.rs`),
//! runs the policy (`policy.rs`, `[load]`) and hands the resulting weights and the set of
//! sites that are down to the controller, which rewrites the Maglev tables only when
//! something changed by more than [`MIN_CHANGE`] (one log line per change, never per packet).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    health::Tracker,
    meter::{CpuTimes, Meter, Reading},
    peers::{self, Peer},
    policy::{self, Decision, Knobs, Sibling},
    probe::Prober,
};
use crate::{
    config::{Config, Encap, SiteKind},
    model::{LoadReport, SiteView, SteeringView, WEIGHT_SCALE},
    owner::{Controller, Shared, lock},
    reconcile::Dynamic,
};

/// Weight changes below this (in [`WEIGHT_SCALE`] units: 1 %) are not applied: a
/// Maglev rebuild per tick for noise would churn nothing but CPU.
pub const MIN_CHANGE: u32 = 100;

/// Tick when neither `[load]` nor `[health]` sets one: the load is still measured for
/// `GET /load` and `anycast_site_load_ratio`.
const DEFAULT_TICK: Duration = Duration::from_millis(500);
const DEFAULT_SMOOTHING: Duration = Duration::from_secs(1);

type TunnelAddrs = (Option<Ipv4Addr>, Option<Ipv6Addr>);

fn tick_of(config: &Config) -> Duration {
    match (&config.load, &config.health) {
        (Some(l), Some(h)) => l.interval.min(h.interval),
        (Some(l), None) => l.interval,
        (None, Some(h)) => h.interval,
        (None, None) => DEFAULT_TICK,
    }
}

pub async fn run(shared: Shared) {
    let mut s = Steering::default();
    {
        let c = lock(&shared);
        s.applied = c.dynamic().clone();
        // Carry on from the weights in force (adopted from a running data path).
        if let (Some(w), Some((local, _))) = (&s.applied.weights, c.local_site()) {
            s.policy.keep = w.get(&local.name).map_or(1.0, |&w| w as f64 / WEIGHT_SCALE);
            s.policy.shedding = s.policy.keep < 1.0;
        }
    }
    loop {
        let config = lock(&shared).config().clone();
        tokio::time::sleep(tick_of(&config)).await;
        s.tick(&shared, &config).await;
    }
}

struct Steering {
    meter: Meter,
    policy: policy::State,
    peers: BTreeMap<String, Peer>,
    health: BTreeMap<String, Tracker>,
    next_health: Instant,
    /// The prober and the tunnel addresses it was made for.
    prober: Option<(Arc<Prober>, TunnelAddrs)>,
    applied: Dynamic,
    changes: u64,
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            meter: Meter::new(DEFAULT_SMOOTHING),
            policy: policy::State::default(),
            peers: BTreeMap::new(),
            health: BTreeMap::new(),
            next_health: Instant::now(),
            prober: None,
            applied: Dynamic::default(),
            changes: 0,
        }
    }
}

impl Steering {
    async fn tick(&mut self, shared: &Shared, config: &Config) {
        let now = Instant::now();
        let interval = tick_of(config);
        self.poll_peers(config, now, interval).await;
        if let Some(h) = &config.health
            && now >= self.next_health
        {
            self.next_health = now + h.interval;
            self.check_health(config).await;
        }
        let down: BTreeSet<String> =
            self.health.iter().filter(|(_, t)| !t.up()).map(|(n, _)| n.clone()).collect();

        self.meter.set_smoothing(config.load.as_ref().map_or(DEFAULT_SMOOTHING, |l| l.smoothing));
        let reading = match lock(shared).snapshot() {
            Ok(snapshot) => Reading { snapshot, cpu: CpuTimes::read() },
            Err(e) => {
                log::warn!("steering: reading the counters: {e}");
                return;
            }
        };
        let Some(rates) = self.meter.update(reading).cloned() else { return };

        let mut c = lock(shared);
        let Some((local, _)) = c.local_site() else { return };
        let local_name = local.name.clone();
        let local_capacity = local.capacity as f64;
        let signals = c.signals();
        let cpu = config.load.as_ref().is_none_or(|l| l.cpu).then_some(rates.cpu).flatten();
        let me = policy::Local {
            offered: rates.offered,
            received: rates.received,
            served: rates.served,
            capacity: local_capacity,
            cpu,
        };
        let decision = config.load.as_ref().map(|l| {
            let knobs = Knobs { target: l.target, high: l.high, low: l.low, max_step: l.max_step };
            let siblings = self.siblings(config, &c, &rates.forwarded, &down, now);
            policy::decide(&knobs, &mut self.policy, &me, &siblings)
        });
        let weights = decision.as_ref().map(|d| policy::weights(&local_name, d));
        let dynamic = Dynamic { weights, down };
        if self.differs(&dynamic) {
            match c.set_dynamic(dynamic.clone()) {
                Ok(applied) => {
                    self.changes += 1;
                    log::info!("{}", describe(&dynamic, decision.as_ref(), &me, applied.writes));
                    self.applied = dynamic;
                }
                Err(e) => log::error!("steering: applying weights: {e}; the previous weights stay"),
            }
        }

        let (overloaded, no_headroom) =
            decision.as_ref().map_or((false, false), |d| (d.overloaded, d.no_headroom));
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
        sites.insert(
            local_name.clone(),
            SiteView { up: signals.attached, load_ratio: Some(me.utilisation()) },
        );
        let report = LoadReport {
            site: local_name,
            capacity: local_capacity,
            served: me.served,
            utilisation: me.utilisation(),
            target: config.load.as_ref().map_or(1.0, |l| l.target),
            drained: signals.drained,
            attached: signals.attached,
            overloaded,
            no_headroom,
        };
        c.set_view(SteeringView {
            report: Some(report),
            sites,
            keep: decision.map(|d| d.keep),
            overloaded,
            no_headroom,
            weight_changes: self.changes,
        });
    }

    /// Whether `next` is worth a Maglev rebuild over what is applied.
    fn differs(&self, next: &Dynamic) -> bool {
        if next.down != self.applied.down {
            return true;
        }
        match (&next.weights, &self.applied.weights) {
            (Some(a), Some(b)) => {
                a.len() != b.len()
                    || a.iter().any(|(n, &w)| {
                        let old = b.get(n).copied().unwrap_or(0);
                        (w == 0) != (old == 0) || w.abs_diff(old) >= MIN_CHANGE
                    })
            }
            (a, b) => a.is_some() != b.is_some(),
        }
    }

    fn siblings(
        &self,
        config: &Config,
        c: &Controller,
        forwarded: &BTreeMap<u32, f64>,
        down: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<Sibling> {
        let total: f64 = config.sites.iter().map(|s| s.configured_weight() as f64).sum();
        config
            .sites
            .iter()
            .filter(|s| matches!(s.kind, SiteKind::Remote { .. }))
            .map(|s| Sibling {
                name: s.name.clone(),
                up: !down.contains(&s.name),
                drained: c.drained(&s.name),
                static_share: if total > 0.0 { s.configured_weight() as f64 / total } else { 0.0 },
                ours: c.site_index(&s.name).and_then(|i| forwarded.get(&i)).copied().unwrap_or(0.0),
                report: self.peers.get(&s.name).and_then(|p| p.fresh(now, stale(config))).map(|r| {
                    policy::Report {
                        utilisation: r.utilisation,
                        served: r.served,
                        capacity: r.capacity,
                        target: r.target,
                        drained: r.drained || !r.attached,
                    }
                }),
            })
            .collect()
    }

    async fn poll_peers(&mut self, config: &Config, now: Instant, interval: Duration) {
        let timeout = config.load.as_ref().map_or(interval, |l| l.peer_timeout);
        let wanted: BTreeMap<&str, std::net::SocketAddr> =
            config.sites.iter().filter_map(|s| Some((s.name.as_str(), s.peer?))).collect();
        self.peers.retain(|name, _| wanted.contains_key(name.as_str()));
        let mut polls = tokio::task::JoinSet::new();
        for (name, addr) in wanted {
            if self.peers.entry(name.to_owned()).or_default().due(now) {
                let name = name.to_owned();
                polls.spawn(async move { (name, peers::fetch(addr, timeout).await) });
            }
        }
        while let Some(Ok((name, result))) = polls.join_next().await {
            if let Some(p) = self.peers.get_mut(&name) {
                p.record(Instant::now(), interval, result);
            }
        }
    }

    /// One round of probes of every remote site: through the data path, and the peer API
    /// answering with an attached data path (when the site has a `peer`).
    async fn check_health(&mut self, config: &Config) {
        let Some(h) = &config.health else { return };
        let Some(prober) = self.prober(config) else { return };
        let targets: Vec<(String, IpAddr, Encap)> = config
            .sites
            .iter()
            .filter_map(|s| match s.kind {
                SiteKind::Remote { endpoint, encap } => Some((s.name.clone(), endpoint, encap)),
                SiteKind::Local => None,
            })
            .collect();
        self.health.retain(|name, _| targets.iter().any(|(n, ..)| n == name));
        let mut probes = tokio::task::JoinSet::new();
        for (name, endpoint, encap) in targets {
            let (prober, timeout) = (prober.clone(), h.timeout);
            probes.spawn(async move { (name, prober.probe(endpoint, encap, timeout).await) });
        }
        while let Some(Ok((name, result))) = probes.join_next().await {
            let api = match config.sites.iter().find(|s| s.name == name).and_then(|s| s.peer) {
                None => Ok(()),
                Some(_) => match self.peers.get(&name) {
                    Some(p) if p.failures == 0 && p.last.as_ref().is_some_and(|(_, r)| r.attached) => Ok(()),
                    Some(p) if p.failures == 0 && p.last.is_some() => {
                        Err("its data path is not attached".to_owned())
                    }
                    Some(p) => Err(p.last_error.clone().unwrap_or_else(|| "no answer yet".to_owned())),
                    None => Err("not polled yet".to_owned()),
                },
            };
            let outcome = match (result, api) {
                (Ok(_), Ok(())) => Ok(()),
                (Err(e), _) => Err(format!("data-path probe: {e}")),
                (Ok(_), Err(e)) => Err(format!("peer API: {e}")),
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

    fn prober(&mut self, config: &Config) -> Option<Arc<Prober>> {
        let addrs = (config.local.tunnel_v4, config.local.tunnel_v6);
        if self.prober.as_ref().is_none_or(|(_, a)| *a != addrs) {
            match Prober::new(addrs.0, addrs.1) {
                Ok(p) => self.prober = Some((Arc::new(p), addrs)),
                Err(e) => {
                    log::error!("health: cannot probe: {e}");
                    self.prober = None;
                }
            }
        }
        self.prober.as_ref().map(|(p, _)| p.clone())
    }
}

fn stale(config: &Config) -> Duration {
    config.load.as_ref().map_or(Duration::from_secs(3), |l| l.stale)
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
            me.served,
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
