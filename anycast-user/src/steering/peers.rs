//! Sibling sites' load. Every controller serves its own [`LoadReport`] on `GET /load` (on
//! the admin listener and on the read-only `[admin] peer_listen`); every controller polls
//! the `peer` address of each remote site once per `[load] interval`, with a timeout and
//! exponential backoff after failures. A report older than `[load] stale` is "unknown" to
//! the policy, which then treats the site conservatively (`policy.rs`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::model::LoadReport;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("GET http://{addr}/load: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("http://{addr}/load answered {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("http://{addr}/load is not a load report: {reason}")]
    Body { addr: SocketAddr, reason: String },
}

/// `GET http://addr/load`, bounded by `timeout`.
pub async fn fetch(addr: SocketAddr, timeout: Duration) -> Result<LoadReport, PeerError> {
    let http = move |reason: String| PeerError::Http { addr, reason };
    tokio::task::spawn_blocking(move || {
        // No proxy: peers are reached directly over the backbone, whatever the environment
        // says (ureq reads HTTP_PROXY by default).
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .proxy(None)
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build(),
        );
        let mut res = agent.get(&format!("http://{addr}/load")).call().map_err(|e| http(e.to_string()))?;
        let status = res.status().as_u16();
        if status != 200 {
            return Err(PeerError::Status { addr, status });
        }
        let body = res.body_mut().read_to_string().map_err(|e| http(e.to_string()))?;
        serde_json::from_str(&body).map_err(|e| PeerError::Body { addr, reason: e.to_string() })
    })
    .await
    .unwrap_or_else(|e| Err(http(e.to_string())))
}

/// What we know of one peer.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The last good report and when it came.
    pub last: Option<(Instant, LoadReport)>,
    /// Consecutive failed polls.
    pub failures: u32,
    pub next_poll: Option<Instant>,
    pub last_error: Option<String>,
}

/// Backoff after failures: the interval doubles per failure, up to 8 intervals.
const MAX_BACKOFF_DOUBLINGS: u32 = 3;

impl Peer {
    pub fn due(&self, now: Instant) -> bool {
        self.next_poll.is_none_or(|t| now >= t)
    }

    pub fn record(&mut self, now: Instant, interval: Duration, result: Result<LoadReport, PeerError>) {
        match result {
            Ok(report) => {
                if self.failures > 0 {
                    log::info!("peer {}: answering again after {} failed polls", report.site, self.failures);
                }
                self.last = Some((now, report));
                self.failures = 0;
                self.last_error = None;
                self.next_poll = Some(now + interval);
            }
            Err(e) => {
                if self.failures == 0 {
                    log::warn!("{e}");
                }
                self.failures += 1;
                self.last_error = Some(e.to_string());
                self.next_poll = Some(now + interval * (1 << self.failures.min(MAX_BACKOFF_DOUBLINGS)));
            }
        }
    }

    /// The last report if it is fresher than `stale`.
    pub fn fresh(&self, now: Instant, stale: Duration) -> Option<&LoadReport> {
        self.last.as_ref().filter(|(at, _)| now.duration_since(*at) <= stale).map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> LoadReport {
        LoadReport {
            site: "b".into(),
            capacity: 1000.0,
            served: 100.0,
            utilisation: 0.1,
            target: 0.8,
            drained: false,
            attached: true,
            overloaded: false,
            no_headroom: false,
        }
    }

    #[test]
    fn backoff_doubles_up_to_eight_intervals_and_resets_on_success() {
        let (t0, i) = (Instant::now(), Duration::from_millis(100));
        let addr: SocketAddr = "192.0.2.1:9101".parse().unwrap();
        let mut p = Peer::default();
        assert!(p.due(t0));
        let mut gaps = Vec::new();
        for _ in 0..5 {
            p.record(t0, i, Err(PeerError::Status { addr, status: 500 }));
            gaps.push(p.next_poll.unwrap() - t0);
        }
        assert_eq!(gaps, [200, 400, 800, 800, 800].map(Duration::from_millis));
        p.record(t0, i, Ok(report()));
        assert_eq!((p.failures, p.next_poll), (0, Some(t0 + i)));
    }

    #[test]
    fn reports_go_stale() {
        let t0 = Instant::now();
        let mut p = Peer::default();
        p.record(t0, Duration::from_millis(100), Ok(report()));
        assert!(p.fresh(t0 + Duration::from_secs(1), Duration::from_secs(3)).is_some());
        assert!(p.fresh(t0 + Duration::from_secs(4), Duration::from_secs(3)).is_none());
    }
}
