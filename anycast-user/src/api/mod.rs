//! What the controller shows the outside world: the admin API on a Unix socket, `/metrics`
//! on TCP, `/load` for the sibling sites, and the pieces the CLI renders.

pub mod client;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod status;
pub mod top;

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

use crate::{
    datapath::counters::{Counters, Samples},
    model::{BgpView, DataPathView, NextHops, SteeringView},
    owner::actor::OwnerHandle,
    steering::peers::Published,
};

/// Everything a handler may read or ask: the published views (read without waiting), the
/// read-only counters and the way to the data-path owner (for changes).
#[derive(Clone)]
pub struct Handles {
    pub owner: OwnerHandle,
    pub datapath: watch::Receiver<Arc<DataPathView>>,
    pub steering: watch::Receiver<Arc<SteeringView>>,
    pub bgp: watch::Receiver<Option<Arc<BgpView>>>,
    pub samples: watch::Receiver<Arc<Samples>>,
    /// The neighbour keeper's last sweep.
    pub next_hops: watch::Receiver<Arc<NextHops>>,
    /// This site's load report as the peers get it (body and signature).
    pub report: watch::Receiver<Arc<Published>>,
    pub counters: Arc<Counters>,
    /// The listeners' admission (open and refused connections, for `/metrics`).
    pub gates: Vec<Arc<listener::Gate>>,
    /// The config file `POST /reload` re-reads.
    pub config_path: PathBuf,
}
