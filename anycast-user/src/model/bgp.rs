//! The BGP speaker's states and what it publishes (`bgp/` decides them, `api/metrics.rs`
//! exposes them).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use super::{site_signals::SiteSignals, status::BgpRouteStatus};

/// What the routers are told about one VIP. Ordered from worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    Withdraw,
    /// On the way to withdraw (RFC 8326 graceful shutdown): still exported, as before, with
    /// the GRACEFUL_SHUTDOWN community, so that routers that honour it (LOCAL_PREF 0) move
    /// to another site before the route goes. Never wanted: the speaker passes through it
    /// for `[bgp] graceful_shutdown_ms`.
    Shutdown,
    Deprefer,
    Announce,
}

impl Route {
    pub const ALL: [Route; 4] = [Route::Announce, Route::Deprefer, Route::Shutdown, Route::Withdraw];

    pub fn name(self) -> &'static str {
        match self {
            Route::Announce => "announce",
            Route::Deprefer => "deprefer",
            Route::Shutdown => "graceful_shutdown",
            Route::Withdraw => "withdraw",
        }
    }

    /// The state the signals call for, and why.
    pub fn wanted(s: &SiteSignals) -> (Route, &'static str) {
        if !s.attached {
            (Route::Withdraw, "data path not attached")
        } else if s.drained {
            (Route::Withdraw, "drained")
        } else if s.overloaded && s.no_headroom {
            (Route::Deprefer, "overloaded, no headroom at any site")
        } else {
            (Route::Announce, "healthy")
        }
    }
}

/// The speaker's state for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BgpView {
    /// Prefix → current state and transitions into each state since the start.
    pub vips: BTreeMap<String, (Route, BTreeMap<Route, u64>)>,
    /// `birdc configure` runs (or include writes) that failed.
    pub apply_failures: u64,
    /// BIRD confirmed the routes of the current states.
    pub in_sync: bool,
    /// Prefix → when its graceful shutdown ends with the withdraw.
    pub withdraw_at: BTreeMap<String, SystemTime>,
}

impl BgpView {
    /// The routes for `anycast status`.
    pub fn routes(&self, now: SystemTime) -> Vec<BgpRouteStatus> {
        self.vips
            .iter()
            .map(|(prefix, (route, _))| BgpRouteStatus {
                prefix: prefix.clone(),
                state: route.name().to_owned(),
                withdraw_in: self
                    .withdraw_at
                    .get(prefix)
                    .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO).as_secs_f64()),
            })
            .collect()
    }
}
