//! The load and health control loop: the local load meter, the policy that turns loads into
//! Maglev weights, the sibling sites' reports and the health probes through the data path,
//! and the task that runs them every tick.

pub mod health;
pub mod install;
pub mod meter;
pub mod peers;
pub mod policy;
pub mod probe;
pub mod schedule;
pub mod task;
pub mod timing;
