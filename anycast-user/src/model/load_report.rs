//! The report every controller serves about its own site on `GET /load`.

use std::collections::BTreeMap;

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
    /// What this site wants from each sibling it sheds to, and sends it now (none while it
    /// does not shed): the other shedders share that sibling's room with it in proportion.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Claim>,
}

/// A shedder's claim on one sibling's room, packets/s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub wants: f64,
    pub sends: f64,
}
