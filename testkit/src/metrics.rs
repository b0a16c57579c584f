//! Reading a controller's HTTP endpoints (`/metrics`, `/status`, `/load`) from inside its
//! network namespace, and single series out of a Prometheus text exposition.

use std::time::Duration;

use crate::netns::Netns;

/// `GET url?query` from a thread inside `ns` (where the server's 127.0.0.1 is); the body of
/// a 2xx reply, or why there is none.
pub fn get(ns: &Netns, url: &str, query: &[(&str, &str)], timeout: Duration) -> Result<String, String> {
    ns.run(|| {
        // No proxy from the environment: the server is only reachable from here.
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder().proxy(None).timeout_global(Some(timeout)).build(),
        );
        let mut request = agent.get(url);
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        request.call().and_then(|mut reply| reply.body_mut().read_to_string()).map_err(|e| e.to_string())
    })
}

/// The value of one integer series (counters and most gauges of this project), e.g.
/// `metric(text, r#"anycast_vip_packets_total{vip="dns"}"#)`; `None` if absent or not an
/// integer.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    value(text, series)?.parse().ok()
}

/// The value of one series as a float (a ratio, say); `None` if absent.
pub fn gauge(text: &str, series: &str) -> Option<f64> {
    value(text, series)?.parse().ok()
}

fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines().find_map(|line| Some(line.strip_prefix(series)?.strip_prefix(' ')?.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_found_exactly() {
        let text = "# TYPE a_total counter\na_total{x=\"1\"} 7\na_total{x=\"10\"} 9\nb 3\nc 0.5\n";
        assert_eq!(metric(text, "a_total{x=\"1\"}"), Some(7));
        assert_eq!(metric(text, "a_total{x=\"10\"}"), Some(9));
        assert_eq!(metric(text, "b"), Some(3));
        assert_eq!(metric(text, "a_total"), None, "a prefix of a series is not the series");
        assert_eq!(metric(text, "c"), None, "not an integer");
        assert_eq!(gauge(text, "c"), Some(0.5));
        assert_eq!(gauge(text, "b"), Some(3.0));
        assert_eq!(metric(text, "d"), None);
    }
}
