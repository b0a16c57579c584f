//! Test and lab infrastructure shared by `cargo xtask` (the demonstration lab, the test
//! runner) and the end-to-end tests, so that the two cannot drift apart. It does not depend
//! on the controller's library or on aya: xtask builds it before the XDP toolchain is
//! installed. What needs them (the pinned maps, the data-path harness) is in the tests.
//!
//! - [`require`]: what a test needs from the machine, asked of the kernel; a skip is loud
//!   locally and a failure under CI.
//! - [`netns`]: network-namespace topologies (veth, addresses, routes, static neighbours,
//!   sysctls) with unique names and guaranteed teardown; code and commands run inside one.
//! - [`frames`]: whole Ethernet frames out of an interface: one, or a bounded flood at the
//!   highest rate the machine reaches.
//! - [`daemon`]: the `anycast` binary run as a daemon inside a namespace, with its own
//!   config, pins and state, all removed on drop.
//! - [`metrics`]: a controller's HTTP endpoints, and series of its `/metrics`.
//! - [`sites`]: three sites and a client, a UDP service per site and a client opening new
//!   flows (load-aware steering).
//! - [`sequenced`]: paced, numbered UDP datagrams and a receiver that finds the lost ones.
//! - [`tcp`]: long-lived TCP transfers at a bounded rate and a sink that counts their bytes.
//! - [`teardown`]: teardown failures that the test harness cannot swallow, and the census of
//!   what tests and labs leave behind.
//! - [`serial`]: one CPU-heavy test at a time.
//! - [`wait`]: polling until a condition holds or a count is quiet, instead of fixed sleeps.
//! - [`xdp`]: a pass-everything XDP program, for a veth peer that must receive XDP_TX.

pub mod daemon;
pub mod frames;
pub mod metrics;
pub mod netns;
pub mod previous;
pub mod require;
pub mod sequenced;
pub mod serial;
pub mod sites;
pub mod tcp;
pub mod teardown;
pub mod wait;
pub mod xdp;
