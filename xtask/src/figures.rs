//! The benchmark's figures, drawn from the JSON `cargo xtask bench --out FILE.json` writes
//! (tests/src/bench/report.rs), with the `plots` crate: whatever cases and throughput
//! entries the file holds, each against the baseline of the same run and the reference
//! figures of the brief. `cargo xtask bench --out FILE.json` writes FILE.svg beside it;
//! `cargo xtask figures FILE.json` draws them again from a saved file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plots::{Bar, BarChart, Bars, Reference, Rgb, palette};
use serde_json::Value;

/// Cost over the no-op of the best open XDP load balancer on this VM kind, with the same
/// frames and harness (../shared/anchor-packets.md), by the case that times the same frame.
const ANCHOR_NS_OVER_NOOP: &[(&str, f64)] =
    [("non_vip_pass", 49.0), ("vip_forward_established", 102.0), ("vip_forward_new", 262.0)].as_slice();
/// Per-packet time budgets of one core at line rate with minimum-size frames (14.88 Mpps at
/// 10 GbE, 37.2 Mpps at 25 GbE) and the published cost of an XDP drop (24 Mpps/core).
const LINE_RATE_10G_NS: f64 = 67.2;
const LINE_RATE_25G_NS: f64 = 26.9;
const XDP_DROP_NS: f64 = 41.6;
const LINE_RATE_10G_MPPS: f64 = 14.88;

const BASELINE: Rgb = Rgb(120, 120, 120);
const REFERENCE: Rgb = Rgb(200, 30, 30);
const BUDGET: Rgb = Rgb(230, 120, 40);
const PUBLISHED: Rgb = Rgb(120, 120, 200);

/// Where the figures of `json` go by default: beside it, `.svg` for `.json`.
pub fn beside(json: &Path) -> PathBuf {
    json.with_extension("svg")
}

/// Reads the benchmark's JSON at `json`, writes its figures to `svg`.
pub fn bench(json: &Path, svg: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let report: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    let figure = bench_figure(&report).with_context(|| format!("{}", json.display()))?;
    let drawn = figure.svg().context("drawing the benchmark's figures")?;
    std::fs::write(svg, drawn).with_context(|| format!("writing {}", svg.display()))
}

fn bench_figure(report: &Value) -> Result<Bars> {
    let Some(cases) = report["cases"].as_array() else {
        bail!("no \"cases\" array: not the benchmark's JSON");
    };
    let m = &report["machine"];
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let mut notes = vec![format!(
        "cargo xtask bench ({}) · {} · Linux {} · {} × {}",
        text(&m["mode"]),
        text(&m["date"]),
        text(&m["kernel"]),
        m["cpus"].as_u64().unwrap_or(0),
        text(&m["cpu_model"])
    )];
    let mut charts = vec![per_packet(cases)?];
    if let Some(throughput) = report["throughput"].as_array() {
        let (chart, ratios) = throughput_chart(throughput);
        notes.extend(ratios);
        charts.push(chart);
    }
    if report["control"].is_object() {
        charts.push(control(&report["control"]));
    }
    Ok(Bars { title: "anycast benchmark".into(), notes, charts })
}

/// Every case's time per packet, against the no-op of the same run and the budgets.
fn per_packet(cases: &[Value]) -> Result<BarChart> {
    let named: Vec<(&str, f64, f64)> = cases
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?, c["ns_per_pkt"].as_f64()?, c["ns_over_noop"].as_f64()?)))
        .collect();
    if named.len() != cases.len() {
        bail!("a case lacks its name, ns_per_pkt or ns_over_noop");
    }
    let noop = named.iter().find(|(n, ..)| *n == "noop").map(|c| c.1);
    let bars = named
        .iter()
        .enumerate()
        .map(|(i, &(name, ns, over))| {
            let anchor = ANCHOR_NS_OVER_NOOP.iter().find(|(n, _)| *n == name);
            let note = match (name, anchor) {
                ("noop", _) => "baseline: the no-op program through the same harness".to_owned(),
                (_, Some((_, a))) => format!("+{over:.1} over no-op; anchor +{a:.0}"),
                _ => format!("+{over:.1} over no-op"),
            };
            let color = if name == "noop" { BASELINE } else { palette(i) };
            Bar { label: name.to_owned(), value: ns, note, color }
        })
        .collect();
    let mut references = Vec::new();
    references.extend(noop.map(|v| Reference::new("no-op, same run (baseline)", v, BASELINE)));
    references.push(Reference::new(
        "10 GbE line rate, 64-byte frames (budget per core)",
        LINE_RATE_10G_NS,
        REFERENCE,
    ));
    references.push(Reference::new(
        "25 GbE line rate, 64-byte frames (budget per core)",
        LINE_RATE_25G_NS,
        BUDGET,
    ));
    references.push(Reference::new("XDP drop, published (24 Mpps/core)", XDP_DROP_NS, PUBLISHED));
    Ok(BarChart {
        title: "Per packet: ns/pkt through BPF_PROG_RUN behind the reset harness (median)".into(),
        unit: "ns per packet".into(),
        bars,
        references,
    })
}

/// Forwarding rates (Mpps) against the platform's ceiling (an entry whose name says
/// `ceiling`, drawn as a line) and 10 GbE line rate; ratios go to the notes.
fn throughput_chart(entries: &[Value]) -> (BarChart, Vec<String>) {
    let mut ratios = Vec::new();
    let mut rates = Vec::new();
    for e in entries {
        let name = e["name"].as_str().unwrap_or("?");
        match (e["pps"].as_f64(), e["ratio"].as_f64()) {
            (Some(pps), _) => rates.push((name, pps / 1e6)),
            (None, Some(ratio)) => ratios.push(format!("throughput: {name} = {ratio:.2} ×")),
            (None, None) => {}
        }
    }
    let ceiling = rates.iter().find(|(n, _)| n.contains("ceiling")).copied();
    let bars = rates
        .iter()
        .filter(|(n, _)| !n.contains("ceiling"))
        .enumerate()
        .map(|(i, &(name, mpps))| Bar {
            label: name.to_owned(),
            value: mpps,
            note: ceiling.map_or(String::new(), |(_, c)| format!("{:.0} % of the ceiling", 100.0 * mpps / c)),
            color: palette(i),
        })
        .collect();
    let mut references: Vec<Reference> = ceiling
        .map(|(name, c)| Reference::new(format!("{name} (same run)"), c, REFERENCE))
        .into_iter()
        .collect();
    references.push(Reference::new("10 GbE line rate, 64-byte frames", LINE_RATE_10G_MPPS, BUDGET));
    let chart = BarChart {
        title: "Throughput: forwarded packets per second on one CPU (veth, live frames)".into(),
        unit: "Mpps".into(),
        bars,
        references,
    };
    (chart, ratios)
}

fn control(c: &Value) -> BarChart {
    let mut bars: Vec<(String, f64)> = c["maglev_build_ms"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(sites, ms)| Some((format!("Maglev build, 65537 slots × {sites} sites"), ms.as_f64()?)))
        .collect();
    bars.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(a.0.cmp(&b.0)));
    for (key, label) in [
        ("weight_apply_ms", "weight change → data path"),
        ("metrics_render_ms", "/metrics render, 256 sites × 64 VIPs"),
    ] {
        bars.extend(c[key].as_f64().map(|v| (label.to_owned(), v)));
    }
    BarChart {
        title: "Control plane (ms)".into(),
        unit: "milliseconds".into(),
        bars: bars
            .into_iter()
            .enumerate()
            .map(|(i, (label, value))| Bar { label, value, note: String::new(), color: palette(i) })
            .collect(),
        references: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report as the benchmark writes it, with cases and entries it may add later.
    const REPORT: &str = r#"{
        "machine": {"kernel": "6.18", "cpus": 2, "cpu_model": "EPYC", "date": "2026-12-01T00:00:00Z", "mode": "quick", "notes": []},
        "cases": [
            {"name": "noop", "ns_per_pkt": 21.0, "ns_over_noop": 0.0},
            {"name": "non_vip_pass", "ns_per_pkt": 25.0, "ns_over_noop": 4.0},
            {"name": "vip_forward_new_evicting", "ns_per_pkt": 1240.0, "ns_over_noop": 1219.0}
        ],
        "throughput": [
            {"name": "anycast_xdp_forward", "pps": 1180000},
            {"name": "kernel_forward", "pps": 390000},
            {"name": "platform_ceiling", "pps": 5400000},
            {"name": "anycast_over_kernel", "ratio": 3.03}
        ],
        "control": {"maglev_build_ms": {"8": 2.1, "64": 2.9, "512": 3.2}, "weight_apply_ms": 30.0, "metrics_render_ms": 0.5, "rss_bytes": 1048576}
    }"#;

    #[test]
    fn every_case_and_rate_becomes_a_bar_against_its_baselines() {
        let figure = bench_figure(&serde_json::from_str(REPORT).unwrap()).unwrap();
        let [cases, rates, control] = figure.charts.as_slice() else { panic!("{figure:?}") };
        let labels = |c: &BarChart| c.bars.iter().map(|b| b.label.clone()).collect::<Vec<_>>();
        assert_eq!(labels(cases), ["noop", "non_vip_pass", "vip_forward_new_evicting"]);
        assert_eq!(cases.bars[1].note, "+4.0 over no-op; anchor +49");
        assert_eq!(cases.references[0].value, 21.0, "the no-op of the same run is the baseline");
        assert_eq!(labels(rates), ["anycast_xdp_forward", "kernel_forward"]);
        assert_eq!(rates.references[0].value, 5.4, "the ceiling is a line, not a bar");
        assert_eq!(rates.bars[0].note, "22 % of the ceiling");
        assert!(figure.notes.iter().any(|n| n.contains("anycast_over_kernel = 3.03")));
        assert_eq!(
            labels(control)[..3],
            [
                "Maglev build, 65537 slots × 8 sites",
                "Maglev build, 65537 slots × 64 sites",
                "Maglev build, 65537 slots × 512 sites"
            ]
        );
        assert!(figure.svg().is_ok());
    }

    #[test]
    fn a_file_that_is_not_the_benchmarks_is_refused() {
        assert!(bench_figure(&serde_json::json!({"series": []})).is_err());
        assert!(bench_figure(&serde_json::json!({"cases": [{"name": "x"}]})).is_err());
    }
}
