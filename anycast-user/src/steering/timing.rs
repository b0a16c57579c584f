//! The steering loop's clocks, shared by the steering task and the installer: the tick,
//! how long a peer's report stays fresh, and the wall clock that decisions' moments and
//! reports' measurements are given in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;

/// Tick when neither `[load]` nor `[health]` sets one: the load is still measured for
/// `GET /load` and `anycast_site_load_ratio`.
const DEFAULT_TICK: Duration = Duration::from_millis(500);

pub fn tick_of(config: &Config) -> Duration {
    match (&config.load, &config.health) {
        (Some(l), Some(h)) => l.interval.min(h.interval),
        (Some(l), None) => l.interval,
        (None, Some(h)) => h.interval,
        (None, None) => DEFAULT_TICK,
    }
}

/// How long a peer's report stays fresh (`[load] stale_ms`).
pub fn stale(config: &Config) -> Duration {
    config.load.as_ref().map_or(Duration::from_secs(3), |l| l.stale)
}

/// Now, in ms since the Unix epoch (the hosts keep NTP time).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
