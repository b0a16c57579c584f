//! The BGP speaker's states and what it publishes (`bgp/` decides them, `api/metrics.rs`
//! exposes them).

use std::collections::BTreeMap;

use super::site_signals::SiteSignals;

/// What the routers are told about one VIP. Ordered from worst to best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    Withdraw,
    Deprefer,
    Announce,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Announce, Route::Deprefer, Route::Withdraw];

    pub fn name(self) -> &'static str {
        match self {
            Route::Announce => "announce",
            Route::Deprefer => "deprefer",
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
}
