//! The benchmark's output: the JSON document of issue 7 (names kept stable) and the table
//! printed on stdout.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub cases: Vec<Case>,
    pub throughput: Vec<Throughput>,
    pub control: Control,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    /// UTC, RFC 3339.
    pub date: String,
    /// `quick` or `full`.
    pub mode: &'static str,
    /// How each figure was obtained, where it matters for reading it.
    pub notes: Vec<String>,
}

impl Machine {
    pub fn read(mode: &'static str) -> Machine {
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_owned()))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            kernel,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            date: jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
            mode,
            notes: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Case {
    pub name: &'static str,
    pub ns_per_pkt: f64,
    pub ns_over_noop: f64,
}

/// A forwarding rate, or the ratio of the two.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Throughput {
    Pps { name: &'static str, pps: f64 },
    Ratio { name: &'static str, ratio: f64 },
}

#[derive(Debug, Serialize)]
pub struct Control {
    pub maglev_build_ms: MaglevBuild,
    pub weight_apply_ms: f64,
    pub metrics_render_ms: f64,
    pub rss_bytes: u64,
    /// `GET /load` latency of the running controller; `None` without its binary.
    pub load_ms: Option<LoadLatency>,
    /// An owner round trip's latency while the check flags are swept; `None` without the
    /// controller's binary.
    pub command_ms: Option<CommandLatency>,
}

/// `GET /load` (a sibling's poll) latency, ms: with the controller idle (the baseline), and
/// while it walks a full flow table and reconciles 256 sites × 64 VIPs again and again.
#[derive(Debug, Serialize)]
pub struct LoadLatency {
    pub idle_p50: f64,
    pub idle_p99: f64,
    pub busy_p50: f64,
    pub busy_p99: f64,
    /// busy_p99 / idle_p99.
    pub busy_over_idle_p99: f64,
}

/// An owner round trip (an operator's command), ms: before any sweep (the baseline: the same
/// tables and full flow table), and while it sweeps the check flags of that 2^20-entry flow
/// table every second.
#[derive(Debug, Serialize)]
pub struct CommandLatency {
    pub idle_p50: f64,
    pub idle_p99: f64,
    pub sweeping_p50: f64,
    pub sweeping_p99: f64,
    /// sweeping_p99 / idle_p99.
    pub sweeping_over_idle_p99: f64,
    /// Sweeps that ran while the round trips were measured, and the median ms each took to
    /// read the flow table (off the owner's thread).
    pub sweeps: usize,
    pub sweep_read_ms: f64,
}

/// ms to build a 65537-slot table, by site count.
#[derive(Debug, Serialize)]
pub struct MaglevBuild {
    #[serde(rename = "8")]
    pub sites_8: f64,
    #[serde(rename = "64")]
    pub sites_64: f64,
    #[serde(rename = "512")]
    pub sites_512: f64,
}

/// `v` rounded to `digits` decimals (the figures are not more precise than that).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

impl Report {
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "anycast bench ({}) — {} · {} × {} · {}",
            m.mode, m.kernel, m.cpus, m.cpu_model, m.date
        );
        let _ = writeln!(t, "\n{:<26} {:>12} {:>14}", "per packet (BPF_PROG_RUN)", "ns/pkt", "ns over noop");
        for c in &self.cases {
            let _ = writeln!(t, "{:<26} {:>12.1} {:>14.1}", c.name, c.ns_per_pkt, c.ns_over_noop);
        }
        let _ = writeln!(t, "\n{:<26} {:>12}", "throughput (veth, live)", "");
        for x in &self.throughput {
            match x {
                Throughput::Pps { name, pps } => {
                    let _ = writeln!(t, "{name:<26} {:>12.3} Mpps", pps / 1e6);
                }
                Throughput::Ratio { name, ratio } => {
                    let _ = writeln!(t, "{name:<26} {ratio:>12.2} ×");
                }
            }
        }
        let c = &self.control;
        let _ = writeln!(t, "\ncontrol plane");
        let b = &c.maglev_build_ms;
        for (sites, ms) in [(8, b.sites_8), (64, b.sites_64), (512, b.sites_512)] {
            let _ = writeln!(t, "{:<26} {ms:>12.2} ms", format!("maglev build 65537×{sites}"));
        }
        let _ = writeln!(t, "{:<26} {:>12.2} ms", "weight change → data path", c.weight_apply_ms);
        let _ = writeln!(t, "{:<26} {:>12.3} ms", "/metrics render 256×64", c.metrics_render_ms);
        let _ =
            writeln!(t, "{:<26} {:>12.1} MiB", "controller peak RSS", c.rss_bytes as f64 / (1 << 20) as f64);
        if let Some(l) = &c.load_ms {
            let _ = writeln!(t, "{:<26} {:>12.2} ms", "GET /load p99 idle", l.idle_p99);
            let _ = writeln!(
                t,
                "{:<26} {:>12.2} ms ({:.1} × idle)",
                "GET /load p99 busy", l.busy_p99, l.busy_over_idle_p99
            );
        }
        if let Some(c) = &c.command_ms {
            let _ = writeln!(t, "{:<26} {:>12.2} ms", "owner round trip p99 idle", c.idle_p99);
            let _ = writeln!(
                t,
                "{:<26} {:>12.2} ms ({:.1} × idle; {} sweeps, each read {:.0} ms)",
                "  … while sweeping", c.sweeping_p99, c.sweeping_over_idle_p99, c.sweeps, c.sweep_read_ms
            );
        }
        if !m.notes.is_empty() {
            let _ = writeln!(t, "\nnotes");
            for n in &m.notes {
                let _ = writeln!(t, "- {n}");
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names issue 7 fixes, as the JSON shows them.
    #[test]
    fn json_has_the_issue_7_schema() {
        let r = Report {
            machine: Machine::read("quick"),
            cases: vec![Case { name: "noop", ns_per_pkt: 60.0, ns_over_noop: 0.0 }],
            throughput: vec![
                Throughput::Pps { name: "anycast_xdp_forward", pps: 1e6 },
                Throughput::Ratio { name: "anycast_over_kernel", ratio: 3.0 },
            ],
            control: Control {
                maglev_build_ms: MaglevBuild { sites_8: 1.0, sites_64: 2.0, sites_512: 3.0 },
                weight_apply_ms: 30.0,
                metrics_render_ms: 0.5,
                rss_bytes: 1 << 20,
                load_ms: Some(LoadLatency {
                    idle_p50: 0.2,
                    idle_p99: 0.5,
                    busy_p50: 0.3,
                    busy_p99: 2.0,
                    busy_over_idle_p99: 4.0,
                }),
                command_ms: None,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        for key in ["kernel", "cpus", "cpu_model", "date"] {
            assert!(v["machine"].get(key).is_some(), "machine.{key}");
        }
        assert!(!v["machine"]["kernel"].as_str().unwrap().is_empty());
        assert_eq!(v["cases"][0]["name"], "noop");
        assert!(v["cases"][0]["ns_per_pkt"].is_number() && v["cases"][0]["ns_over_noop"].is_number());
        assert_eq!(v["throughput"][0]["pps"], 1e6);
        assert_eq!(v["throughput"][1]["ratio"], 3.0);
        for key in ["8", "64", "512"] {
            assert!(v["control"]["maglev_build_ms"][key].is_number(), "maglev_build_ms.{key}");
        }
        for key in ["weight_apply_ms", "metrics_render_ms", "rss_bytes"] {
            assert!(v["control"][key].is_number(), "control.{key}");
        }
        assert_eq!(v["control"]["load_ms"]["busy_p99"], 2.0);
        assert!(r.table().contains("anycast_over_kernel"));
        assert!(r.table().contains("GET /load p99 busy"));
    }

    #[test]
    fn round_to_decimals() {
        assert_eq!(round(1.2345, 1), 1.2);
        assert_eq!(round(2.5, 0), 3.0);
        assert_eq!(round(-0.04, 1), -0.0);
    }
}
