//! Plain data shared by the controller's parts: what each task publishes and what the
//! outside world is told. No behaviour beyond small pure helpers, and no dependency on the
//! rest of the crate but `config`, so that every other module can use it without a cycle.

pub mod bgp;
pub mod datapath_view;
pub mod load_report;
pub mod next_hops;
pub mod site_signals;
pub mod status;
pub mod steering;

pub use bgp::{BgpView, Route};
pub use datapath_view::{DataPathView, ReloadOutcome};
pub use load_report::{Claim, HostLoad, HostRates, LoadReport, SiteDecision};
pub use next_hops::{NextHop, NextHops};
pub use site_signals::SiteSignals;
pub use steering::{SiteView, SteeringView};

/// The unit of run-time Maglev weights (load-derived shares scaled to integers). 10,000
/// keeps the rounding (0.01 %) far below the Maglev table's own granularity (1/65537 per
/// slot ≈ 0.0015 %, but weights are met to within a few slots).
pub const WEIGHT_SCALE: f64 = 10_000.0;
