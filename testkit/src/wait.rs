//! Waiting for the network and the controllers without fixed sleeps: poll until a condition
//! holds, or until a count stops changing, each bounded by a deadline. A fixed sleep before
//! an exact count is either too short on a loaded machine (the count is still moving: a
//! false failure) or longer than needed everywhere else.

use std::time::{Duration, Instant};

/// How often the conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// Polls `done` until it holds or `timeout` passes; how long it took, `None` on timeout.
pub fn until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `read` until its value has not changed for `quiet`, or `timeout` passes; the last
/// value. For counts that settle once the packets in flight have arrived, whatever their
/// final value is (an exact assertion then compares it with what was sent).
pub fn quiet<T: PartialEq>(quiet: Duration, timeout: Duration, mut read: impl FnMut() -> T) -> T {
    let start = Instant::now();
    let mut last = read();
    let mut since = Instant::now();
    while since.elapsed() < quiet && start.elapsed() < timeout {
        std::thread::sleep(POLL);
        let now = read();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_reports_the_time_or_the_timeout() {
        let start = Instant::now();
        assert!(until(Duration::from_secs(5), || start.elapsed() >= Duration::from_millis(50)).is_some());
        assert_eq!(until(Duration::from_millis(50), || false), None);
    }

    #[test]
    fn quiet_returns_the_settled_value() {
        let start = Instant::now();
        let count = || (start.elapsed().as_millis() / 10).min(10);
        assert_eq!(quiet(Duration::from_millis(100), Duration::from_secs(5), count), 10);
        let moving = || start.elapsed().as_millis();
        let cut = quiet(Duration::from_millis(100), Duration::from_millis(200), moving);
        assert!(cut >= 200, "a value that never settles is read until the timeout: {cut}");
    }
}
