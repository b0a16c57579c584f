//! The steering task of the daemon: every tick it polls the sibling sites' `GET /load`,
//! probes them through the data path (`[health]`), measures the local load (`meter.rs`),
//! runs the policy (`policy.rs`, `[load]`), publishes this site's report and its view, and
//! hands the resulting weights and the set of sites that are down to the installer
//! (`install.rs`), which has the data-path owner rewrite the Maglev tables only when
//! something changed by more than [`policy::MIN_CHANGE`] (one log line per change, never
//! per packet).
//!
//! A site of several hosts (`hosts` in its [[sites]] entry, `[local] host`): its hosts
//! poll each other's `GET /load` for their own figures; the first host in config order
//! whose report is fresh and attached (or this one) *decides*, on the sum of the hosts'
//! figures, and publishes its decision with a moment to install it
//! ([`install::lead_time`] ahead: the others poll it more often than the tick, and have
//! it by then); every host of the site (it included) installs each decision at that
//! moment (`install.rs`), so that their Maglev tables are alike at every instant and an
//! ECMP change at the site's routers moves no flow. The others
//! relay the deciding host's site figures in their own reports, so that other sites may
//! poll any host of the site: they poll one (the first that answers), not all.
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
    time::{Duration, Instant},
};

use tokio::{
    sync::watch,
    time::{MissedTickBehavior, interval},
};

use super::{
    health::Tracker,
    install::{self, Command, Leader},
    meter::{CpuTimes, Meter, Reading},
    peers::{self, Expect, Peer, PeerKey, Published},
    policy::{self, Decision, Knobs, Sibling},
    probe::Prober,
    timing::{stale, tick_of, unix_ms},
};
use crate::{
    config::{Config, Encap, Site, SiteKind},
    datapath::counters::Counters,
    model::{
        Claim, DataPathView, HostLoad, HostRates, LoadReport, SiteDecision, SiteView, SteeringView,
        WEIGHT_SCALE,
    },
    reconcile::Dynamic,
};

const DEFAULT_SMOOTHING: Duration = Duration::from_secs(1);

/// The tunnel addresses, and where the probes' replies go.
type TunnelAddrs = (Option<Ipv4Addr>, Option<Ipv6Addr>, Option<IpAddr>);

/// The installer is gone: the daemon is stopping (or the installer died: the supervisor
/// sees that first).
struct Gone;

/// What the task works with and where it publishes.
pub struct Inputs {
    /// The installer's channels: every weight change goes through it.
    pub installer: install::Handle,
    pub datapath: watch::Receiver<Arc<DataPathView>>,
    pub counters: Arc<Counters>,
    /// The deployment's peer key (`[admin] peer_key_file`): signs our report, checks theirs.
    pub key: Option<PeerKey>,
    pub view: watch::Sender<Arc<SteeringView>>,
    pub report: watch::Sender<Arc<Published>>,
}

/// Runs until the installer is gone.
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
        if s.tick(&inputs, &dp).await.is_err() {
            return;
        }
    }
}

/// Where a site's (or one of its hosts') report is kept in [`Steering::peers`].
fn peer_key(site: &str, host: Option<&str>) -> String {
    host.map_or_else(|| site.to_owned(), |h| format!("{site}/{h}"))
}

/// This host's name, if the local site has several.
fn this_host(config: &Config) -> Option<&str> {
    config.local_site().filter(|s| !s.hosts.is_empty()).and(config.local.host.as_deref())
}

fn host_load(l: &policy::Local, forwarded: &BTreeMap<String, f64>) -> HostLoad {
    let rates = |r: &policy::Rates| HostRates { offered: r.offered, received: r.received, served: r.served };
    HostLoad {
        smoothed: rates(&l.smoothed),
        recent: rates(&l.recent),
        fixed: l.fixed,
        cpu: l.cpu,
        forwarded: forwarded.clone(),
    }
}

fn local_of(h: &HostLoad, capacity: f64) -> policy::Local {
    let rates = |r: &HostRates| policy::Rates { offered: r.offered, received: r.received, served: r.served };
    policy::Local {
        smoothed: rates(&h.smoothed),
        recent: rates(&h.recent),
        fixed: h.fixed,
        capacity,
        cpu: h.cpu,
    }
}

/// The policy's state carried on from the weights in force.
fn adopted(dp: &DataPathView) -> policy::State {
    match (&dp.load_weights, dp.local_site()) {
        (Some(w), Some((local, _))) => {
            let share = |name: &str| w.get(name).map_or(0.0, |&w| w as f64 / WEIGHT_SCALE);
            let shares = remote_sites(&dp.config).map(|s| share(&s.name)).collect();
            policy::State::adopted(share(local), shares)
        }
        _ => policy::State::default(),
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
    ticks: u64,
    /// This controller's start (ms since the epoch) and measurements since: the report's
    /// epoch and sequence.
    epoch: u64,
    seq: u64,
    /// In a site of several hosts: whether this one decided at the last tick (`None`
    /// before its first decision or follow: it polls the other sites, as a deciding host
    /// does, and yields to a host that says it decides), and its decisions not installed
    /// yet (its report carries them).
    deciding: Option<bool>,
    pending: Vec<SiteDecision>,
    /// What this host decided last for its site of several hosts.
    effective: Option<Dynamic>,
}

impl Steering {
    fn new(dp: &DataPathView) -> Steering {
        Steering {
            meter: Meter::new(DEFAULT_SMOOTHING),
            // Carry on from the weights in force (adopted from a running data path).
            policy: adopted(dp),
            peers: BTreeMap::new(),
            health: BTreeMap::new(),
            next_health: Instant::now(),
            prober: None,
            ticks: 0,
            epoch: unix_ms(),
            seq: 0,
            deciding: None,
            pending: Vec::new(),
            effective: None,
        }
    }

    /// The freshest report of a remote site (from any of its hosts).
    fn site_report(&self, site: &Site, now: Instant, stale: Duration) -> Option<&LoadReport> {
        let keys: Vec<String> = if site.hosts.is_empty() {
            vec![peer_key(&site.name, None)]
        } else {
            site.hosts.iter().map(|h| peer_key(&site.name, Some(&h.name))).collect()
        };
        keys.iter().filter_map(|k| self.peers.get(k)?.fresh(now, stale)).max_by_key(|r| r.measured_at)
    }

    /// The local site's deciding host, and its report unless it is this host: the first
    /// host in config order that is this one, or whose report is fresh and attached —
    /// except that this host, come back while a later one decides (it took over), follows
    /// that one until it hands over: it stops deciding as soon as it sees this host fresh,
    /// and says so in its report. This host then carries on from the weights installed
    /// meanwhile, instead of deciding from its own, older ones while the other still does.
    fn deciding_host<'c>(
        &self,
        site: &'c Site,
        me: &'c str,
        now: Instant,
        stale: Duration,
    ) -> (&'c str, Option<&LoadReport>) {
        let mate = |h: &crate::config::Host| {
            self.peers
                .get(&peer_key(&site.name, Some(&h.name)))
                .and_then(|p| p.fresh(now, stale))
                .filter(|r| r.attached)
        };
        for h in &site.hosts {
            if h.name == me {
                let deciding = site.hosts.iter().filter(|m| m.name != me).find_map(|m| {
                    mate(m).filter(|r| r.deciding_host.as_deref() == Some(&m.name)).map(|r| (&m.name, r))
                });
                return match deciding {
                    // Not while this one decides (two claims at once: the later host yields).
                    Some((name, r)) if self.deciding != Some(true) => (name.as_str(), Some(r)),
                    _ => (&h.name, None),
                };
            }
            if let Some(r) = mate(h) {
                return (&h.name, Some(r));
            }
        }
        (me, None)
    }

    /// Err: the installer is gone (the daemon is stopping).
    async fn tick(&mut self, inputs: &Inputs, dp: &DataPathView) -> Result<(), Gone> {
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
        let Some(site) = config.local_site() else { return Ok(()) };
        let host = this_host(config);
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
            capacity: site.host_capacity(),
            cpu,
        };

        // Who decides for the site: this host alone, or the site's deciding host.
        let stale = stale(config);
        let (decider, leader) = match host {
            Some(me_host) => self.deciding_host(site, me_host, now, stale),
            None => (local_name.as_str(), None),
        };
        let decider = decider.to_owned();
        let leader = leader.cloned();
        let deciding = leader.is_none();
        if deciding && self.deciding == Some(false) {
            // Taking over from another host: carry on from the weights it installed.
            self.policy = adopted(dp);
        }
        self.deciding = Some(deciding);
        let follow = leader.as_ref().and(site.hosts.iter().find(|h| h.name == decider)).map(|h| Leader {
            site: local_name.clone(),
            host: h.name.clone(),
            addr: h.peer,
            capacity: site.capacity as f64,
        });
        inputs.installer.leader.send_if_modified(|l| {
            let changed = *l != follow;
            *l = follow.clone();
            changed
        });
        // The site's figures: this host's and, in a site of several, the others' that are
        // fresh and attached; what it forwards to each site, by name.
        let forwarded: BTreeMap<String, f64> = remote_sites(config)
            .filter_map(|s| Some((s.name.clone(), *rates.forwarded.get(&dp.site_index(&s.name)?)?)))
            .collect();
        let mates: Vec<&HostLoad> = match host {
            Some(me_host) if deciding => site
                .hosts
                .iter()
                .filter(|h| h.name != me_host)
                .filter_map(|h| self.peers.get(&peer_key(&site.name, Some(&h.name)))?.fresh(now, stale))
                .filter(|r| r.attached)
                .filter_map(|r| r.host_load.as_ref())
                .collect(),
            _ => Vec::new(),
        };
        let mut site_forwarded = forwarded.clone();
        for (name, f) in mates.iter().flat_map(|m| &m.forwarded) {
            *site_forwarded.entry(name.clone()).or_default() += f;
        }
        let mates: Vec<policy::Local> = mates.iter().map(|l| local_of(l, site.host_capacity())).collect();
        let whole = policy::Local::sum(std::iter::once(&me).chain(&mates));

        let decision = if deciding {
            config.load.as_ref().map(|l| {
                let siblings = self.siblings(config, dp, &site_forwarded, &down, now);
                // A site of several hosts installs each decision a lead time after it.
                let knobs = match host {
                    Some(_) => Knobs::of(l).with_lead(install::lead_time(config), tick_of(config)),
                    None => Knobs::of(l),
                };
                policy::decide(&knobs, &mut self.policy, &whole, &siblings)
            })
        } else {
            None
        };
        let remote = || remote_sites(config).map(|s| s.name.as_str());
        let weights = decision.as_ref().map(|d| policy::weights(&local_name, remote(), d));
        let sends = |name: &str| site_forwarded.get(name).copied().unwrap_or(0.0);
        let claims = decision.as_ref().map_or_else(BTreeMap::new, |d| {
            remote()
                .zip(&d.wants)
                .filter(|(_, w)| **w > 0.0)
                .map(|(n, &wants)| (n.to_owned(), Claim { wants, sends: sends(n) }))
                .collect()
        });

        // Publish first: `/load` and the BGP speaker get this measurement even while the
        // owner is busy applying it.
        self.seq += 1;
        let measured_at = unix_ms();
        // Deciding for a site of several hosts: this decision is installed (here too) at
        // its moment, and the report carries every decision still to be installed.
        let decisions = match (host, &leader) {
            (Some(h), None) => {
                // Every host installs a decision exactly: this host judges here whether a
                // change is worth a rebuild (against what it decided last, or at a
                // takeover what is installed), and else decides the same again.
                let next = Dynamic { weights: weights.clone(), down: down.clone() };
                let last = self
                    .effective
                    .take()
                    .unwrap_or_else(|| Dynamic { weights: dp.load_weights.clone(), down: dp.down.clone() });
                let effective = if install::worth(&next, &last) { next } else { last };
                self.effective = Some(effective.clone());
                let decision = SiteDecision {
                    by: h.to_owned(),
                    epoch: self.epoch,
                    seq: self.seq,
                    at: measured_at + install::lead_time(config).as_millis() as u64,
                    // A site missing from the weights gets 0: the body stays small whatever
                    // the number of sites.
                    weights: effective.weights.map(|w| w.into_iter().filter(|(_, w)| *w > 0).collect()),
                    down: effective.down,
                };
                self.pending.retain(|d| d.at > measured_at);
                self.pending.push(decision.clone());
                inputs.installer.commands.send(Command::Decided(decision)).await.map_err(|_| Gone)?;
                self.pending.clone()
            }
            _ => {
                self.effective = None;
                Vec::new()
            }
        };
        let report = match &leader {
            // Not deciding: the site's figures as its deciding host published them.
            Some(l) => LoadReport {
                epoch: self.epoch,
                seq: self.seq,
                measured_at,
                drained: dp.drained.contains(&local_name),
                attached: dp.attached,
                host: host.map(str::to_owned),
                host_load: Some(host_load(&me, &forwarded)),
                decisions: Vec::new(),
                deciding_host: Some(decider.clone()),
                ..l.clone()
            },
            None => {
                let (overloaded, no_headroom) =
                    decision.as_ref().map_or((false, false), |d| (d.overloaded, d.no_headroom));
                LoadReport {
                    site: local_name.clone(),
                    capacity: whole.capacity,
                    served: whole.smoothed.served,
                    utilisation: whole.utilisation(),
                    target: config.load.as_ref().map_or(1.0, |l| l.target),
                    drained: dp.drained.contains(&local_name),
                    attached: dp.attached,
                    overloaded,
                    no_headroom,
                    epoch: self.epoch,
                    seq: self.seq,
                    measured_at,
                    claims,
                    host: host.map(str::to_owned),
                    host_load: host.map(|_| host_load(&me, &forwarded)),
                    decisions,
                    deciding_host: host.map(str::to_owned),
                }
            }
        };
        inputs.report.send_replace(Arc::new(Published::new(report.clone(), inputs.key.as_ref())));
        let keep = decision.as_ref().map(|d| d.keep);
        self.publish(inputs, config, dp, &local_name, &decider, keep, report.clone(), now);

        let send = |c| inputs.installer.commands.send(c);
        match host {
            // A site of one host installs what it decided at once.
            None => {
                let note = describe_decision(decision.as_ref(), &whole);
                send(Command::Now { dynamic: Dynamic { weights, down }, note }).await.map_err(|_| Gone)
            }
            // The deciding host's decisions, as this tick's poll got them (the installer
            // polls it more often).
            Some(_) => {
                for d in leader.map(|l| l.decisions).unwrap_or_default() {
                    send(Command::Decided(d)).await.map_err(|_| Gone)?;
                }
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        inputs: &Inputs,
        config: &Config,
        dp: &DataPathView,
        local_name: &str,
        decider: &str,
        keep: Option<f64>,
        report: LoadReport,
        now: Instant,
    ) {
        let mut sites: BTreeMap<String, SiteView> = remote_sites(config)
            .map(|s| {
                let report = self.site_report(s, now, stale(config));
                let up = self.health.get(&s.name).is_none_or(Tracker::up);
                (s.name.clone(), SiteView { up, load_ratio: report.map(|r| r.utilisation) })
            })
            .collect();
        sites.insert(
            local_name.to_owned(),
            SiteView { up: dp.attached, load_ratio: Some(report.utilisation) },
        );
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
            deciding_host: report.host.is_some().then(|| decider.to_owned()),
            report: Some(report),
            sites,
            keep,
            weight_changes: *inputs.installer.changes.borrow(),
            ticks: self.ticks,
            refused,
        }));
    }

    fn siblings(
        &self,
        config: &Config,
        dp: &DataPathView,
        forwarded: &BTreeMap<String, f64>,
        down: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<Sibling> {
        // One report per remote site: the other sites' claims, never this site's (which its
        // other hosts relay).
        let fresh: Vec<&LoadReport> =
            remote_sites(config).filter_map(|s| self.site_report(s, now, stale(config))).collect();
        remote_sites(config)
            .map(|s| Sibling {
                up: !down.contains(&s.name),
                drained: dp.drained.contains(&s.name),
                cost: s.cost as f64,
                // What the other shedders want from it (their own reports say).
                others_want: fresh.iter().filter_map(|r| r.claims.get(&s.name)).map(|c| c.wants).sum(),
                others_send: fresh.iter().filter_map(|r| r.claims.get(&s.name)).map(|c| c.sends).sum(),
                // What this site (all its hosts) sends it now.
                ours: forwarded.get(&s.name).copied().unwrap_or(0.0),
                report: self.site_report(s, now, stale(config)).map(policy::Report::of),
            })
            .collect()
    }

    /// Polls each remote site's report — at one of its hosts, the first that answers, for
    /// a site of several — and every other host of the local site.
    async fn poll_peers(&mut self, config: &Config, key: Option<&PeerKey>, now: Instant) {
        let interval = tick_of(config);
        let timeout = config.load.as_ref().map_or(interval, |l| l.peer_timeout);
        let me = this_host(config);
        // key → (site, host, address, the site's capacity)
        let mut wanted: BTreeMap<String, (&str, Option<&str>, std::net::SocketAddr, f64)> = BTreeMap::new();
        let mut due = Vec::new();
        // The other hosts of our site are polled every interval whatever failed before:
        // a poll skipped by a backoff would be a decision missed.
        let mut mates = Vec::new();
        for s in &config.sites {
            // A site's report is served at its `peer`, or at each of its hosts (ours: the others).
            let targets: Vec<(String, Option<&str>, std::net::SocketAddr)> = match s.peer {
                Some(peer) => vec![(peer_key(&s.name, None), None, peer)],
                None => s
                    .hosts
                    .iter()
                    .filter(|h| Some(h.name.as_str()) != me)
                    .map(|h| (peer_key(&s.name, Some(&h.name)), Some(h.name.as_str()), h.peer))
                    .collect(),
            };
            for (k, host, addr) in &targets {
                wanted.insert(k.clone(), (&s.name, *host, *addr, s.capacity as f64));
            }
            let keys: Vec<String> = targets.into_iter().map(|(k, ..)| k).collect();
            let answering = |k: &&String| self.peers.get(*k).is_none_or(|p| p.failures == 0);
            match (&s.kind, keys.iter().find(answering)) {
                // The others of our own site: each, for its own figures.
                (SiteKind::Local, _) => mates.extend(keys),
                // Only the deciding host of a site reads the other sites' reports (after a
                // takeover it has them within an interval: meanwhile they are unknown).
                (SiteKind::Remote { .. }, _) if self.deciding == Some(false) => {}
                (SiteKind::Remote { .. }, Some(first)) => due.push(first.clone()),
                // None answers: try each again (as its backoff allows) until one does.
                (SiteKind::Remote { .. }, None) => due.extend(keys),
            }
        }
        self.peers.retain(|k, _| wanted.contains_key(k));
        let mut polls = tokio::task::JoinSet::new();
        for (k, mate) in due.into_iter().map(|k| (k, false)).chain(mates.into_iter().map(|k| (k, true))) {
            let Some(&(_, _, addr, _)) = wanted.get(&k) else { continue };
            if self.peers.entry(k.clone()).or_default().due(now) || mate {
                polls.spawn(async move { (k, peers::fetch(addr, timeout).await) });
            }
        }
        while let Some(joined) = polls.join_next().await {
            let (k, fetched) = match joined {
                Ok(r) => r,
                Err(e) => {
                    log::error!("steering: a peer poll failed: {e}");
                    continue;
                }
            };
            let (Some(peer), Some(&(site, host, _, capacity))) = (self.peers.get_mut(&k), wanted.get(&k))
            else {
                continue;
            };
            let expect = Expect { site, host, capacity, key, now_ms: unix_ms(), max_age: stale(config) };
            let result = fetched.and_then(|f| peers::accept(&f, &expect, peer.sequence()));
            peer.record(&k, Instant::now(), interval, result);
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
            let site = config.sites.iter().find(|s| s.name == name);
            let detached =
                site.and_then(|s| self.site_report(s, now, stale(config))).is_some_and(|r| !r.attached);
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
        // In a site of several hosts, the replies come to this host's own address.
        let reply_to = this_host(config)
            .and_then(|me| config.local_site()?.hosts.iter().find(|h| h.name == me))
            .map(|h| h.peer.ip());
        let addrs = (config.local.tunnel_v4, config.local.tunnel_v6, reply_to);
        if self.prober.as_ref().is_none_or(|(_, a)| *a != addrs) {
            let made = Prober::new(addrs.0, addrs.1, addrs.2).map(Arc::new).map_err(|e| e.to_string());
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

/// What a site of one host decided, for the log line of its change.
fn describe_decision(decision: Option<&Decision>, me: &policy::Local) -> String {
    match decision {
        None => String::new(),
        Some(dec) => format!(
            " (keep {:.2}; load {:.2}: served {:.0}/s of capacity {:.0}/s{}{}{})",
            dec.keep,
            me.utilisation(),
            me.smoothed.served,
            me.capacity,
            me.cpu.map(|c| format!(", cpu {c:.2}")).unwrap_or_default(),
            if dec.overloaded { ", overloaded" } else { "" },
            if dec.no_headroom { ", no headroom anywhere" } else { "" },
        ),
    }
}
