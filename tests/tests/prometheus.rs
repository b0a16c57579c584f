//! A real Prometheus server (anycast_tests::prometheus) scraping a site's controller while
//! traffic flows through it (issue 6).
//!
//! The two sites of `anycast_tests::sustained` carry a sequenced UDP stream and TCP
//! transfers to each site. Prometheus runs in A's network namespace (where A's controller
//! serves /metrics on 127.0.0.1), with its own config and storage in a temporary directory
//! and its web listener on a free loopback port there, scraping every second. Through its
//! HTTP API (`/api/v1/query`) the test checks that the target is up, that the per-site
//! series exist (one weight per site; packets kept by A, forwarded to B) and that they
//! increase between two readings while the traffic flows. The server is stopped and its
//! directory removed on every path out of the test, a failed assertion included.

use std::{thread, time::Duration};

use anycast_tests::{
    prometheus::{Prometheus, Target},
    sustained::{self, Flows, under_traffic},
};
use testkit::require::{self, Need, require};

/// Between the two readings of a series: three scrapes.
const BETWEEN: Duration = Duration::from_secs(3);

#[test]
fn prometheus_scrapes_per_site_series_that_increase_under_traffic() {
    if !require(
        "prometheus_scrapes_per_site_series_that_increase_under_traffic",
        &[Need::Kernel, require::PROMETHEUS],
    ) {
        return;
    }
    let chain = sustained::topology("prom").unwrap();
    let (a, _b) = sustained::start(&chain, None);
    let flows = Flows::pick(&a, 2);
    let series = [
        r#"anycast_site_packets_total{job="anycast",site="a",action="local"}"#,
        r#"anycast_site_packets_total{job="anycast",site="b",action="forwarded"}"#,
        r#"anycast_vip_packets_total{job="anycast",vip="udp"}"#,
        r#"anycast_vip_packets_total{job="anycast",vip="tcp"}"#,
    ];
    let mut readings = Vec::new();
    let measured = under_traffic(&chain, flows, Duration::from_secs(1), || {
        let prometheus = Prometheus::start(
            &chain.a,
            &[Target { address: testkit::daemon::ADMIN_LISTEN, host_site: None }],
        );
        prometheus.wait_up(1);
        let weights = prometheus.query(r#"anycast_site_weight{job="anycast"}"#);
        let mut sites: Vec<&str> = weights.iter().filter_map(|(m, _)| m["site"].as_str()).collect();
        sites.sort_unstable();
        assert_eq!(sites, ["a", "b"], "anycast_site_weight series: {weights:?}");
        let first: Vec<f64> = series.iter().map(|s| prometheus.one(s)).collect();
        thread::sleep(BETWEEN);
        let second: Vec<f64> = series.iter().map(|s| prometheus.one(s)).collect();
        readings = series.iter().zip(first.into_iter().zip(second)).map(|(s, (x, y))| (*s, x, y)).collect();
    });
    for (s, first, second) in &readings {
        eprintln!("{s}: {first} → {second} ({BETWEEN:?} later)");
        assert!(*first > 0.0 && second > first, "{s} did not increase: {first} → {second}");
    }
    // The traffic itself was not disturbed by being watched.
    measured.assert_clean("while Prometheus scraped");
    eprintln!("prometheus: {}", measured.summary());
}
