//! The Grafana dashboard (deploy/grafana-dashboard.json) against real data: every panel's
//! PromQL is run by a real Prometheus that scrapes the controllers of three sites (the
//! lab's topology: a steering by load and checking b's and c's health, b and c serving
//! what a forwards) while a client sends them traffic, and each must return at least one
//! series carrying the labels its legend names (`{{site}}` → a `site` label, and a site of
//! this topology). A panel that returns nothing, or that Prometheus refuses, fails the test;
//! so does one whose legend names a label its result lacks. The same check run on a copy of
//! the dashboard with one panel's metric misspelt must name exactly that panel, so the
//! check cannot pass by accident.
//!
//! The dashboard's structure is checked without a server: what Grafana needs to load it
//! (unique panel ids, a type, a title and a grid position per panel, every query on the
//! `${datasource}` variable with a refId and an expression, and every `$variable` an
//! expression uses defined in `templating`).

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anycast_tests::prometheus::{Prometheus, Target};
use serde_json::Value;
use testkit::{
    daemon::Daemon,
    metrics::metric,
    require::{self, Need, require},
    sites::{FlowClient, NAMES, PEER_PORT, TUNNEL, ThreeSites, UdpService},
};

const DASHBOARD: &str = include_str!("../../deploy/grafana-dashboard.json");
/// The sites' load policy and a's health checks, as in the lab (`cargo xtask run`).
const LOAD: &str = "\n[load]\ntarget = 0.75\nhigh = 0.9\nlow = 0.6\nmax_step = 0.25\ninterval_ms = 250\n\
                    smoothing_ms = 500\ncpu = false\npeer_timeout_ms = 200\nstale_ms = 2000\n";
const HEALTH: &str = "\n[health]\ninterval_ms = 250\ntimeout_ms = 200\nrise = 2\nfall = 3\n";
const CAPACITY: [u32; 3] = [800, 1000, 1000];
/// Every controller's /metrics listener, on all of its namespace's addresses so that the
/// Prometheus in a's namespace reaches b and c over the backbone links.
const METRICS_PORT: u16 = 9100;
/// New UDP flows/s from the client (5 datagrams each: about half of a's capacity).
const FLOWS_PER_SEC: u32 = 80;
/// How long the panels may take to return data: the `[1m]`/`[5m]` rates need two scrapes.
const PANELS_TIMEOUT: Duration = Duration::from_secs(40);
/// The client stops after this long, whatever happens.
const TRAFFIC_MAX: Duration = Duration::from_secs(90);

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("deploy/grafana-dashboard.json is JSON")
}

/// One query of a panel, as Grafana would send it with every `$instance` selected.
#[derive(Debug)]
struct PanelQuery {
    panel: String,
    expr: String,
    /// The labels its legend shows (`{{site}} {{action}}` → site, action).
    labels: Vec<String>,
}

fn queries(dashboard: &Value) -> Vec<PanelQuery> {
    let all = &all_value(dashboard);
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"].as_array().into_iter().flatten().map(move |t| PanelQuery {
                panel: title.clone(),
                expr: t["expr"].as_str().unwrap_or_default().replace("$instance", all),
                labels: legend_labels(t["legendFormat"].as_str().unwrap_or_default()),
            })
        })
        .collect()
}

/// What the `instance` variable stands for when "All" is selected.
fn all_value(dashboard: &Value) -> String {
    dashboard["templating"]["list"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == "instance"))
        .and_then(|v| v["allValue"].as_str())
        .unwrap_or(".*")
        .to_owned()
}

fn legend_labels(legend: &str) -> Vec<String> {
    legend.split("{{").skip(1).filter_map(|part| Some(part.split_once("}}")?.0.trim().to_owned())).collect()
}

/// What is wrong with each query's result, one line per failing query.
fn failures(prometheus: &Prometheus, queries: &[PanelQuery]) -> Vec<String> {
    queries
        .iter()
        .filter_map(|q| {
            let problem = match prometheus.try_query(&q.expr) {
                Err(refused) => format!("refused: {refused}"),
                Ok(series) if series.is_empty() => "returns nothing".to_owned(),
                Ok(series) => {
                    let bad: Vec<String> = series
                        .iter()
                        .filter_map(|(labels, _)| {
                            let missing: Vec<&str> = q
                                .labels
                                .iter()
                                .filter(|l| labels.get(l.as_str()).is_none())
                                .map(String::as_str)
                                .collect();
                            let foreign_site = labels["site"].as_str().filter(|s| !NAMES.contains(s));
                            match (missing.is_empty(), foreign_site) {
                                (true, None) => None,
                                (false, _) => Some(format!("series {labels} lacks {missing:?}")),
                                (true, Some(site)) => {
                                    Some(format!("series {labels}: site {site} is not a, b or c"))
                                }
                            }
                        })
                        .collect();
                    match bad.is_empty() {
                        true => return None,
                        false => bad.join("; "),
                    }
                }
            };
            Some(format!("panel {:?}: {}: {problem}", q.panel, q.expr))
        })
        .collect()
}

/// The sites' daemons, b and c first (a redirects into their links, which deliver only once
/// they run XDP), each serving /metrics on all its addresses; then waits until a's health
/// checks see b and c up.
fn start(t: &ThreeSites) -> Vec<Daemon<'_>> {
    let mut daemons: Vec<Daemon> = t.sites.iter().map(|ns| Daemon::new(ns).expect("daemon")).collect();
    for me in [1, 2, 0] {
        let d = &mut daemons[me];
        d.set_peer_listen((TUNNEL[me], PEER_PORT).into());
        d.set_listen(([0, 0, 0, 0], METRICS_PORT).into());
        let extra = if me == 0 { format!("{LOAD}{HEALTH}") } else { LOAD.to_owned() };
        d.write_config(&t.config(me, CAPACITY, &extra)).expect("config");
        d.start().expect("start");
    }
    for site in [1, 2] {
        let series = format!("anycast_site_up{{site=\"{}\"}}", NAMES[site]);
        let up = testkit::wait::until(Duration::from_secs(10), || {
            metric(&daemons[0].get("/metrics").expect("a's /metrics"), &series) == Some(1)
        });
        assert!(up.is_some(), "site {} never passed a's health checks", NAMES[site]);
    }
    daemons
}

#[test]
fn dashboard_panels_return_labelled_series_from_three_live_sites() {
    if !require(
        "dashboard_panels_return_labelled_series_from_three_live_sites",
        &[Need::Kernel, require::PROMETHEUS],
    ) {
        return;
    }
    let lab = ThreeSites::new("dash").unwrap();
    let services: Vec<UdpService> = lab.sites.iter().map(|ns| UdpService::start(ns).unwrap()).collect();
    let _daemons = start(&lab);
    let addresses: Vec<String> = [std::net::Ipv4Addr::LOCALHOST, TUNNEL[1], TUNNEL[2]]
        .iter()
        .map(|ip| format!("{ip}:{METRICS_PORT}"))
        .collect();
    let targets: Vec<Target> = addresses
        .iter()
        .zip(NAMES)
        .map(|(address, site)| Target { address, host_site: Some(site) })
        .collect();

    let stop = AtomicBool::new(false);
    let client = FlowClient::new(5);
    thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < TRAFFIC_MAX {
                client.send(&lab.client, FLOWS_PER_SEC, FLOWS_PER_SEC / 10, &stop).expect("sending flows");
            }
        });
        // Whatever happens below, the client stops.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);

        let prometheus = Prometheus::start(&lab.sites[0], &targets);
        prometheus.wait_up(targets.len());
        // The dashboard's `instance` variable lists every controller.
        let instances =
            prometheus.get("/api/v1/label/instance/values", &[("match[]", "anycast_build_info")]).unwrap();
        let instances: Value = serde_json::from_str(&instances).unwrap();
        let instances: BTreeSet<&str> =
            instances["data"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(
            instances,
            addresses.iter().map(String::as_str).collect(),
            "label_values(anycast_build_info, instance)"
        );

        let panels = queries(&dashboard());
        assert!(panels.len() >= 8, "{panels:?}");
        let deadline = Instant::now() + PANELS_TIMEOUT;
        let mut failed = failures(&prometheus, &panels);
        while !failed.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_secs(1));
            failed = failures(&prometheus, &panels);
        }
        assert!(
            failed.is_empty(),
            "{} of {} panel queries fail:\n{}",
            failed.len(),
            panels.len(),
            failed.join("\n")
        );
        for q in &panels {
            eprintln!("ok: {}: {} series", q.panel, prometheus.query(&q.expr).len());
        }

        // The same check on a dashboard with one panel's metric misspelt fails, on that panel.
        let mut broken = dashboard();
        let target = &mut broken["panels"][2]["targets"][0]["expr"];
        let misspelt = target.as_str().unwrap().replace("anycast_site_weight", "anycast_site_weights");
        *target = Value::String(misspelt);
        let failed = failures(&prometheus, &queries(&broken));
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].contains("Maglev weight") && failed[0].contains("returns nothing"), "{failed:?}");
        eprintln!("a broken panel fails: {}", failed[0]);
    });
    let served: u64 = services.iter().map(UdpService::datagrams).sum();
    assert!(served > 0, "the client's traffic reached no service");
}

/// What Grafana needs to load the dashboard, and what the queries rely on.
#[test]
fn dashboard_structure_is_what_grafana_loads() {
    let d = dashboard();
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if !d[key].is_string() {
            problems.push(format!("no {key}"));
        }
    }
    if !d["schemaVersion"].is_u64() {
        problems.push("no schemaVersion".to_owned());
    }
    let variables: BTreeSet<&str> =
        d["templating"]["list"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    assert!(variables.contains("datasource") && variables.contains("instance"), "{variables:?}");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        if !p["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problems.push(format!("{title}: id missing or not unique"));
        }
        for key in ["type", "title"] {
            if p[key].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{title}: no {key}"));
            }
        }
        if !["x", "y", "w", "h"].iter().all(|k| p["gridPos"][k].is_u64()) {
            problems.push(format!("{title}: gridPos needs x, y, w, h"));
        }
        if p["gridPos"]["x"].as_u64().unwrap_or(0) + p["gridPos"]["w"].as_u64().unwrap_or(0) > 24 {
            problems.push(format!("{title}: wider than Grafana's 24 columns"));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no query"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            if t["datasource"]["uid"] != "${datasource}" && p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{title}: a query not on the ${{datasource}} variable"));
            }
            if !t["refId"].as_str().is_some_and(|r| refs.insert(r)) {
                problems.push(format!("{title}: refId missing or repeated"));
            }
            let expr = t["expr"].as_str().unwrap_or_default();
            if expr.is_empty() {
                problems.push(format!("{title}: empty expression"));
            }
            for var in expr
                .split('$')
                .skip(1)
                .map(|v| v.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or_default())
            {
                if !variables.contains(var) {
                    problems.push(format!("{title}: ${var} is not a dashboard variable"));
                }
            }
        }
    }
    // The metric names of the exceptions changed: the old one must not come back.
    for q in queries(&d) {
        if q.expr.contains("anycast_drops_total") {
            problems.push(format!("{}: anycast_drops_total no longer exists", q.panel));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboard_legend_labels_are_read_from_the_format() {
    assert_eq!(legend_labels("{{site}} {{ action }}"), ["site", "action"]);
    assert_eq!(legend_labels("spilled"), Vec::<String>::new());
}
