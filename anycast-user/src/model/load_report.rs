//! The report every controller serves about its own site on `GET /load`.

use serde::{Deserialize, Serialize};

/// One site's load as its own controller sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub site: String,
    /// Packets/s the site serves at utilisation 1 (its `capacity`).
    pub capacity: f64,
    /// Packets/s it serves now (smoothed).
    pub served: f64,
    /// Its smoothed utilisation.
    pub utilisation: f64,
    /// Its `[load] target`.
    pub target: f64,
    pub drained: bool,
    pub attached: bool,
    pub overloaded: bool,
    pub no_headroom: bool,
    /// When the reporting controller started (ms since the Unix epoch): its sequence
    /// numbers start over with it.
    #[serde(default)]
    pub epoch: u64,
    /// Bumped by every measurement: a report that does not advance is a replay, or comes
    /// from a reporter that no longer measures.
    #[serde(default)]
    pub seq: u64,
    /// When it was measured (ms since the Unix epoch): an old one is stale whatever its
    /// sequence number.
    #[serde(default)]
    pub measured_at: u64,
}
