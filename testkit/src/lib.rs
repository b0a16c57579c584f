//! Test and lab infrastructure shared by `cargo xtask` (the demonstration lab, the test
//! runner) and the end-to-end tests, so that the two cannot drift apart.
//!
//! - [`require`]: what a test needs from the machine, asked of the kernel; a skip is loud
//!   locally and a failure under CI.

pub mod require;
