//! A real Prometheus server (Debian's `prometheus`, installed by `cargo xtask setup`) in a
//! test's network namespace, scraping controllers every second, and its HTTP query API.
//! Its config and storage live in a temporary directory; its web listener is on a free
//! loopback port of the namespace. The server is stopped and its directory removed on drop,
//! a failed assertion included.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Found on PATH (tests require it: `testkit::require::PROMETHEUS`).
const PROMETHEUS: &str = "prometheus";
/// Prometheus starts (opens its TSDB, replays an empty WAL) in a second or two here.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrape interval 1 s: the first scrapes land within a few seconds.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(15);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A scrape target: `host:port` as seen from the server's namespace, and the `host_site`
/// label deploy/prometheus.yml gives each controller (None: no label).
pub struct Target<'a> {
    pub address: &'a str,
    pub host_site: Option<&'a str>,
}

pub struct Prometheus<'ns> {
    ns: &'ns Netns,
    dir: PathBuf,
    child: Child,
    listen: String,
}

impl<'ns> Prometheus<'ns> {
    /// Starts it in `ns`, scraping `targets` every second (job `anycast`), and waits until
    /// it is ready.
    pub fn start(ns: &'ns Netns, targets: &[Target<'_>]) -> Prometheus<'ns> {
        let dir = std::env::temp_dir().join(format!("anycast-test-{}-prometheus", std::process::id()));
        fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        let mut text = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                        scrape_configs:\n  - job_name: anycast\n    static_configs:\n"
            .to_owned();
        for t in targets {
            text += &format!("      - targets: [\"{}\"]\n", t.address);
            if let Some(site) = t.host_site {
                text += &format!("        labels:\n          host_site: {site}\n");
            }
        }
        fs::write(&config, text).unwrap();
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
        let mut prometheus = Prometheus { ns, dir, child, listen };
        prometheus.wait_ready();
        prometheus
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` with query parameters, from inside the namespace; the body of a 2xx.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<String, String> {
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

    /// Waits until `n` targets have been scraped successfully.
    pub fn wait_up(&self, n: usize) {
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        loop {
            let up = self.query(r#"up{job="anycast"} == 1"#);
            if up.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} targets scraped after {SCRAPE_TIMEOUT:?}: {up:?}\n{}",
                up.len(),
                self.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// An instant query: every series of the result (its labels) with its value. A query
    /// Prometheus refuses (bad syntax, unknown function) panics with its answer.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        self.try_query(promql).unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// [`Prometheus::query`], with a refused query as an error.
    pub fn try_query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let body = self.get("/api/v1/query", &[("query", promql)])?;
        let reply: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{promql}: not JSON ({e}): {body}"))?;
        if reply["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        let result =
            reply["data"]["result"].as_array().ok_or_else(|| format!("{promql}: no result in {body}"))?;
        // Sample values are strings: "1", "0.5", "NaN", "+Inf".
        Ok(result
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect())
    }

    /// The value of a query that names exactly one series.
    pub fn one(&self, promql: &str) -> f64 {
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
