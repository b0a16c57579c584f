//! A real Prometheus server (Debian's `prometheus`, installed by `cargo xtask setup`)
//! scraping a site's controller while traffic flows through it (issue 6).
//!
//! The two sites of `anycast_tests::sustained` carry a sequenced UDP stream and TCP
//! transfers to each site. Prometheus runs in A's network namespace (where A's controller
//! serves /metrics on 127.0.0.1), with its own config and storage in a temporary directory
//! and its web listener on a free loopback port there, scraping every second. Through its
//! HTTP API (`/api/v1/query`) the test checks that the target is up, that the per-site
//! series exist (one weight per site; packets kept by A, forwarded to B) and that they
//! increase between two readings while the traffic flows. The server is stopped and its
//! directory removed on every path out of the test, a failed assertion included.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anycast_tests::{
    netns::Netns,
    sustained::{self, Flows, under_traffic},
};
use testkit::require::{self, Need, require};

/// Found on PATH (the test requires it: [`require::PROMETHEUS`]).
const PROMETHEUS: &str = "prometheus";
/// Prometheus starts (opens its TSDB, replays an empty WAL) in a second or two here.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrape interval 1 s: the first scrape lands within a few seconds.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(15);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Between the two readings of a series: three scrapes.
const BETWEEN: Duration = Duration::from_secs(3);

/// A Prometheus server inside a namespace, stopped (SIGTERM, then SIGKILL) and its files
/// removed on drop.
struct Prometheus<'ns> {
    ns: &'ns Netns,
    dir: PathBuf,
    child: Child,
    listen: String,
}

impl<'ns> Prometheus<'ns> {
    /// Starts it in `ns`, scraping `target` (host:port, in `ns`) every second.
    fn start(ns: &'ns Netns, target: &str) -> Prometheus<'ns> {
        let dir = std::env::temp_dir().join(format!("anycast-test-{}-prometheus", std::process::id()));
        fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: anycast\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free port of the namespace's loopback: bound, read, released.
        let port =
            ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let listen = format!("127.0.0.1:{port}");
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // PDEATHSIG (Netns::spawn): the server dies with the test.
        let child = ns.spawn(&mut cmd).unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
        Prometheus { ns, dir, child, listen }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` with query parameters, from inside the namespace; the body of a 2xx.
    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<String, String> {
        let url = format!("http://{}{path}", self.listen);
        testkit::metrics::get(self.ns, &url, query, HTTP_TIMEOUT).map_err(|e| format!("GET {url}: {e}"))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.get("/-/ready", &[]).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant query: every series of the result with its value.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let body =
            self.get("/api/v1/query", &[("query", promql)]).unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON from the query API");
        assert_eq!(reply["status"], "success", "{promql}: {body}");
        reply["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: no result in {body}"))
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a sample value");
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that names exactly one series.
    fn one(&self, promql: &str) -> f64 {
        match self.query(promql).as_slice() {
            [(_, v)] => *v,
            other => panic!("{promql}: {} series, expected 1: {other:?}", other.len()),
        }
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            testkit::teardown::warn(format_args!("removing {}: {e}", self.dir.display()));
        }
    }
}

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
        let mut prometheus = Prometheus::start(&chain.a, testkit::daemon::ADMIN_LISTEN);
        prometheus.wait_ready();
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        while prometheus.query(r#"up{job="anycast"} == 1"#).is_empty() {
            assert!(
                Instant::now() < deadline,
                "no successful scrape in {SCRAPE_TIMEOUT:?}:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
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
