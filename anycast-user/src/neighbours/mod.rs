//! The neighbour keeper: every next hop towards a remote site's tunnel endpoint stays
//! resolved, and what it finds is published ([`NextHops`]) for `status` and `/metrics`.
//!
//! Why: the data path forwards through `bpf_fib_lookup`, which only *reads* the neighbour
//! table (BPF_FIB_LKUP_RET_NO_NEIGH when the entry is missing or not NUD_VALID) and never
//! resolves or confirms one. Nothing else in the host sends to those next hops, so an
//! entry would never be created, and a created one would go STALE and be collected. A
//! forward that fails for want of a neighbour drops the packets of established remote
//! flows (docs/datapath.md §5), so every hop must be resolved before it is needed.
//!
//! How: each sweep looks up the route to every remote endpoint (all paths of a multipath
//! route) and, per `[local] neighbours`, makes each next hop a managed entry (the kernel
//! then resolves it and keeps it REACHABLE itself, Linux ≥ 5.16), or asks the kernel to
//! resolve/re-confirm it (NTF_USE, older kernels), or only reads it. Static entries
//! (PERMANENT, NOARP) are an operator's and never touched. Sweeps run every
//! [`SWEEP_EVERY`] and at once (at most every [`MIN_GAP`]) when the kernel announces a
//! neighbour or route change, so a deleted entry is back within moments.

pub mod netlink;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use crate::{
    config::{Config, NeighbourMode, SiteKind},
    model::{DataPathView, NextHop, NextHops},
};
use netlink::{Changes, Hop, NetlinkError, Rtnl};

/// A sweep at least this often, changes or not.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Sweeps triggered by kernel notifications are at least this far apart (our own writes
/// cause notifications too).
pub const MIN_GAP: Duration = Duration::from_millis(500);

/// Runs until the daemon stops. Never ends on a netlink error: it is logged, reported (the
/// hops it concerns are unresolved) and retried at the next sweep.
pub async fn run(mut datapath: watch::Receiver<Arc<DataPathView>>, out: watch::Sender<Arc<NextHops>>) {
    let changes = match Changes::open().map_err(|e| e.to_string()).and_then(|c| {
        // SAFETY: `Changes` owns its netlink socket for its whole life and always returns
        // that descriptor; the AsyncFd owns the `Changes`.
        unsafe { AsyncFd::register_with_interest(c, Interest::READABLE) }.map_err(|e| e.to_string())
    }) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!(
                "neighbour keeper: not listening for neighbour changes ({e}); sweeping every {SWEEP_EVERY:?}"
            );
            None
        }
    };
    let mut keeper = Keeper::default();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        let config = datapath.borrow_and_update().config.clone();
        let (k, view) = match tokio::task::spawn_blocking(move || {
            let view = keeper.sweep(&config);
            (keeper, view)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                log::error!("neighbour keeper: a sweep panicked: {e}");
                return;
            }
        };
        keeper = k;
        out.send_replace(Arc::new(view));
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            _ = tick.tick() => {}
            changed = datapath.changed() => if changed.is_err() { return },
            _ = readable(changes.as_ref()) => {}
        }
    }
}

/// Waits until the kernel announced a change (forever without a change socket).
async fn readable(changes: Option<&AsyncFd<Changes>>) {
    let Some(fd) = changes else { return std::future::pending().await };
    loop {
        let Ok(mut guard) = fd.readable().await else { return std::future::pending().await };
        match guard.get_inner().drain() {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) => {
                log::warn!("neighbour keeper: reading neighbour changes: {e}");
                return std::future::pending().await;
            }
        }
    }
}

/// What persists between sweeps: the socket, the mode in force (managed falls back to
/// refresh once, for good, on a kernel without managed entries), and the last result of
/// every hop (to log transitions only).
#[derive(Default)]
struct Keeper {
    rtnl: Option<Rtnl>,
    /// Set when the kernel ignored a managed entry.
    no_managed: bool,
    last: BTreeMap<(String, Option<IpAddr>, String), bool>,
    sweeps: u64,
}

impl Keeper {
    /// The mode in force: the configured one, but `refresh` for `managed` once the kernel
    /// turned out to have no managed entries.
    fn mode(&self, config: &Config) -> NeighbourMode {
        match config.local.neighbours {
            NeighbourMode::Managed if self.no_managed => NeighbourMode::Refresh,
            m => m,
        }
    }

    fn sweep(&mut self, config: &Config) -> NextHops {
        self.sweeps += 1;
        let mode = self.mode(config);
        let mut hops = Vec::new();
        let rtnl = match self.rtnl.take().map_or_else(Rtnl::open, Ok) {
            Ok(r) => self.rtnl.insert(r),
            Err(e) => {
                log::warn!("neighbour keeper: {e}");
                return NextHops { mode: mode_name(mode).into(), hops, sweeps: self.sweeps };
            }
        };
        for site in &config.sites {
            let SiteKind::Remote { endpoint, .. } = site.kind else { continue };
            match rtnl.route_hops(endpoint) {
                Ok(route) => {
                    for hop in route {
                        hops.push(keep(rtnl, mode, &mut self.no_managed, &site.name, endpoint, hop));
                    }
                }
                Err(e) => hops.push(NextHop {
                    site: site.name.clone(),
                    endpoint,
                    address: None,
                    dev: "-".into(),
                    state: match e {
                        NetlinkError::NoRoute(_) => "no route".into(),
                        other => other.to_string(),
                    },
                    resolved: false,
                    managed: false,
                }),
            }
        }
        for h in &hops {
            let key = (h.site.clone(), h.address, h.dev.clone());
            let was = self.last.insert(key, h.resolved);
            match (was, h.resolved) {
                (Some(true) | None, false) => log::warn!(
                    "next hop {} of site {} on {}: {}; its forwarded flows wait (new ones are served here) until it resolves",
                    h.address.map_or("-".into(), |a| a.to_string()),
                    h.site,
                    h.dev,
                    h.state
                ),
                (Some(false), true) => log::info!(
                    "next hop {} of site {} on {}: resolved ({})",
                    h.address.map_or("-".into(), |a| a.to_string()),
                    h.site,
                    h.dev,
                    h.state
                ),
                _ => {}
            }
        }
        NextHops { mode: mode_name(self.mode(config)).into(), hops, sweeps: self.sweeps }
    }
}

/// Keeps one hop resolved per `mode` and reports it.
fn keep(
    rtnl: &mut Rtnl,
    mode: NeighbourMode,
    no_managed: &mut bool,
    site: &str,
    endpoint: IpAddr,
    hop: Hop,
) -> NextHop {
    let dev = nix::net::if_::if_indextoname(hop.ifindex)
        .map_or_else(|_| format!("ifindex {}", hop.ifindex), |n| n.to_string_lossy().into_owned());
    let report = |entry: Result<Option<netlink::Entry>, NetlinkError>| {
        let (state, resolved, managed) = match entry {
            Ok(Some(e)) => (netlink::state_name(e.state), e.resolved(), e.managed),
            Ok(None) => ("no entry".into(), false, false),
            Err(e) => (e.to_string(), false, false),
        };
        NextHop {
            site: site.to_owned(),
            endpoint,
            address: Some(hop.addr),
            dev: dev.clone(),
            state,
            resolved,
            managed,
        }
    };
    let entry = match rtnl.neighbour(hop) {
        Ok(e) => e,
        Err(e) => return report(Err(e)),
    };
    log::debug!("next hop {} of site {site} on {dev}: {entry:?} (keeping: {})", hop.addr, mode_name(mode));
    let kept = |e: &netlink::Entry| e.is_static() || (mode == NeighbourMode::Managed && e.managed);
    if mode == NeighbourMode::Off || entry.as_ref().is_some_and(kept) {
        return report(Ok(entry));
    }
    let wrote = match mode {
        NeighbourMode::Managed => rtnl.manage(hop),
        _ => rtnl.refresh(hop),
    };
    if let Err(e) = wrote {
        return report(Err(e));
    }
    let after = rtnl.neighbour(hop);
    if mode == NeighbourMode::Managed
        && let Ok(Some(e)) = &after
        && !e.managed
    {
        // The kernel dropped NDA_FLAGS_EXT (before 5.16): resolve it ourselves, now and at
        // every sweep.
        log::warn!(
            "this kernel has no managed neighbour entries (Linux ≥ 5.16): the controller resolves the next hops itself every {SWEEP_EVERY:?}"
        );
        *no_managed = true;
        if let Err(e) = rtnl.refresh(hop) {
            return report(Err(e));
        }
        return report(rtnl.neighbour(hop));
    }
    report(after)
}

fn mode_name(mode: NeighbourMode) -> &'static str {
    match mode {
        NeighbourMode::Managed => "managed",
        NeighbourMode::Refresh => "refresh",
        NeighbourMode::Off => "off",
    }
}
