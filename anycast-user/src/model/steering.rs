//! What the steering task measured and decided last, for `/load`, `/metrics` and status.

use std::collections::BTreeMap;

use super::load_report::LoadReport;

/// What the steering task measured and decided last (for `/load`, `/metrics`, status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SteeringView {
    /// This site's load report, once two counter readings exist.
    pub report: Option<LoadReport>,
    /// Per site (the local one included).
    pub sites: BTreeMap<String, SiteView>,
    /// In a site of several hosts: the host that decides for it now.
    pub deciding_host: Option<String>,
    /// Share of new flows kept local, with `[load]`.
    pub keep: Option<f64>,
    pub overloaded: bool,
    pub no_headroom: bool,
    /// Weight sets applied since the start.
    pub weight_changes: u64,
    /// Ticks since the start (the watchdog checks that they advance).
    pub ticks: u64,
    /// Peer reports refused since the start: site → reason → count.
    pub refused: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiteView {
    /// Health checks pass (always true without `[health]`).
    pub up: bool,
    /// Smoothed utilisation: measured here for the local site, reported by the site's
    /// controller for the others; `None` when unknown (no peer API or stale).
    pub load_ratio: Option<f64>,
}
