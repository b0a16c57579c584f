//! The steering simulator behind `cargo xtask sim`: hundreds of sites of several hosts, BGP
//! catchments, flows arriving and ending, reports delayed and lost, hosts, sites and the
//! backbone failing — decided by the daemon's own steering code (`anycast_user::steering`),
//! with no kernel. See `engine.rs` for the model and docs/controller.md for the figures.

pub mod engine;
pub mod figures;
pub mod plot;
pub mod scenario;
pub mod world;
