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
}
