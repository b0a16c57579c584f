//! What the data-path owner holds, published after every change: the other tasks and the
//! HTTP handlers read the latest value instead of asking the owner, so they never wait for
//! a reconcile.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct DataPathView {
    /// Bumped by every reload: a run-time decision computed against an older config is
    /// refused (it may not know the sites a reload added).
    pub generation: u64,
    pub config: Arc<Config>,
    /// Site name → slot, in config order.
    pub sites: Vec<(String, u32)>,
    /// VIP name → slot, in config order.
    pub vips: Vec<(String, u32)>,
    /// Effective Maglev weight of every site.
    pub weights: BTreeMap<String, u32>,
    /// Load-derived weights in force (`[load]`).
    pub load_weights: Option<BTreeMap<String, u32>>,
    /// Sites down (failing their data-path probes): weight 0, SITE_UP cleared.
    pub down: BTreeSet<String>,
    /// Sites drained by an operator.
    pub drained: BTreeSet<String>,
    /// The program runs on every configured interface.
    pub attached: bool,
    pub pin_dir: PathBuf,
    pub flow_capacity: u64,
    /// Local Maglev buckets flagged `MAGLEV_CHECK` (their mid-flow TCP packets look up the
    /// flow table), over every VIP.
    pub checked_buckets: u64,
    /// The outcome of the last reload since the start.
    pub reload: Option<ReloadOutcome>,
}

impl DataPathView {
    /// The local site's name and slot.
    pub fn local_site(&self) -> Option<(&str, u32)> {
        let name = &self.config.local_site()?.name;
        self.sites.iter().find(|(n, _)| n == name).map(|(n, i)| (n.as_str(), *i))
    }

    pub fn site_index(&self, name: &str) -> Option<u32> {
        self.sites.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }
}

/// What a reload (SIGHUP or `anycast reload`) did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    /// The problems (config errors with their lines) or what was applied.
    pub message: String,
}
