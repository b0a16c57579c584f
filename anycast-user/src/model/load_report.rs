//! The report every controller serves about its own site on `GET /load`.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Bumped by every measurement: a report that goes back is a replay; the same one
    /// again is no news (and does not keep the report fresh).
    #[serde(default)]
    pub seq: u64,
    /// When it was measured (ms since the Unix epoch): an old one is stale whatever its
    /// sequence number.
    #[serde(default)]
    pub measured_at: u64,
    /// What this site loads each sibling it sheds to with (what it wants there, or what its
    /// share in force sends there once the flows turn over, if more), and what it sends it
    /// now (none while it does not shed): the other shedders share that sibling's room with
    /// it in proportion. (An older build claims only what it wants: the same field, read
    /// the same way, only lower.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Claim>,
    /// In a site of several hosts: the reporting host (`[local] host`). The figures above
    /// are then the site's, as its deciding host added them up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// ... and this host's own, which the deciding host adds up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_load: Option<HostLoad>,
    /// From the deciding host: what every host of the site installs, and when — each of
    /// its decisions not installed yet, so that a host that polled it once an interval
    /// misses none even when its polls and the deciding host's ticks drift apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<SiteDecision>,
    /// In a site of several hosts: the host whose decisions the reporting host installs
    /// (itself when it decides). A host that comes back while another decides follows
    /// that one until it hands over (README, "Sites of several hosts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deciding_host: Option<String>,
}

/// Packet rates, packets/s (`policy::Rates` on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostRates {
    pub offered: f64,
    pub received: f64,
    pub served: f64,
}

/// One host's own measurement (`policy::Local` on the wire, less the capacity: the hosts
/// of a site are alike, and each knows the site's from its config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    pub smoothed: HostRates,
    pub recent: HostRates,
    pub fixed: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Packets/s it forwards to each other site (by name): the site sends the sum.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forwarded: BTreeMap<String, f64>,
}

/// The weights and the down set that the deciding host of a site decided, for every host
/// of the site to install at the same moment `at` (ms since the Unix epoch), so that their
/// Maglev tables are alike at every instant and an ECMP change moves no flow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteDecision {
    /// The deciding host, and its report's (epoch, seq) when it decided: the decision's id.
    pub by: String,
    pub epoch: u64,
    pub seq: u64,
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub down: BTreeSet<String>,
}

/// A shedder's claim on one sibling's room, packets/s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub wants: f64,
    pub sends: f64,
}
