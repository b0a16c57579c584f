//! The anycast controller library, in folders by responsibility: `durable` (files written
//! whole, across a power loss) depends on nothing here, `model` and `config` on nothing else;
//! `datapath` touches the kernel; `reconcile` turns config and run-time decisions into map
//! contents; `owner` holds the data path; `steering`, `bgp` and `api` work through it;
//! `daemon` wires them together (ARCHITECTURE.md).
pub mod api;
pub mod bgp;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod durable;
pub mod model;
pub mod neighbours;
pub mod owner;
pub mod reconcile;
pub mod steering;
