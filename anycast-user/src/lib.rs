//! The anycast controller library.
pub mod attach;
pub mod config;
pub mod controller;
pub mod ebpf_log;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod object;
pub mod overrides;
pub mod reconcile;
pub mod server;
pub mod signals;
pub mod stats;
pub mod status;
pub mod top;
