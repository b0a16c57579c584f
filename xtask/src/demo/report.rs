//! The lab's report: what `cargo xtask run` recorded every second, per site, drawn as one
//! SVG (the `plots` crate) with the phases of the client's ramp marked and the final checks
//! as a table, so that a person sees without reading a number that a went above its
//! capacity, shed new flows to b and c, and took them back.
//!
//! Every figure comes from the same readings as the terminal view: the data path's packet
//! counters and a's gauges (each controller's /metrics) and what the lab's own services
//! counted; rates are differences between two readings over the time between them.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use plots::{Check, Panel, Phase, Reference, Rgb, Series, Timeline, palette};
use testkit::sites::NAMES;

use super::{CAPACITY, DATAGRAMS_PER_FLOW, HIGH, LOW, NORMAL_FLOWS, Ramp, Snapshot, TARGET};

/// One second of the run, per site (index as in NAMES).
#[derive(Clone, Debug)]
struct Sample {
    /// Seconds since the client started.
    t: f64,
    /// Packets/s that routing delivered to the site's data path (kept or forwarded).
    offered: [f64; 3],
    /// Packets/s the data path handed to the site's own stack (kept + received).
    served: [f64; 3],
    /// a's view: smoothed utilisation of each site.
    load: [Option<f64>; 3],
    /// a's weights, as a share of its new flows (%).
    share: [f64; 3],
    /// New UDP flows/s each site's service served.
    new_flows: [f64; 3],
    tcp_open: [usize; 3],
    /// TCP connections that broke at each site so far.
    tcp_resets: [usize; 3],
}

/// The readings of a run, a sample per reading after the first.
#[derive(Default)]
pub(super) struct Recording {
    /// When the client started: time 0 of the report.
    start: Option<Instant>,
    last: Option<(Instant, Snapshot)>,
    samples: Vec<Sample>,
    /// The final checks, in the order they were made.
    pub checks: Vec<Check>,
}

impl Recording {
    /// The first reading, when the client starts.
    pub fn begin(&mut self, start: Instant, snap: Snapshot) {
        self.start = Some(start);
        self.last = Some((start, snap));
    }

    pub fn add(&mut self, at: Instant, snap: Snapshot) {
        if let (Some(start), Some((before, prev))) = (self.start, &self.last) {
            let secs = at.duration_since(*before).as_secs_f64().max(1e-3);
            let rate = |f: &dyn Fn(&Snapshot, usize) -> u64, i: usize| {
                f(&snap, i).saturating_sub(f(prev, i)) as f64 / secs
            };
            let offered = |s: &Snapshot, i: usize| s.local[i] + s.forwarded[i].iter().sum::<u64>();
            let served = |s: &Snapshot, i: usize| s.local[i] + s.received[i].iter().sum::<u64>();
            let datagrams = |s: &Snapshot, i: usize| s.served[i];
            let all: u64 = snap.weights.iter().sum();
            self.samples.push(Sample {
                t: at.duration_since(start).as_secs_f64(),
                offered: [0, 1, 2].map(|i| rate(&offered, i)),
                served: [0, 1, 2].map(|i| rate(&served, i)),
                load: [0, 1, 2].map(|i| snap.loads[i]),
                share: [0, 1, 2].map(|i| match all {
                    0 => 0.0,
                    _ => 100.0 * snap.weights[i] as f64 / all as f64,
                }),
                new_flows: [0, 1, 2].map(|i| rate(&datagrams, i) / f64::from(DATAGRAMS_PER_FLOW)),
                tcp_open: [0, 1, 2].map(|i| snap.tcp_open[i]),
                tcp_resets: [0, 1, 2].map(|i| snap.tcp_served[i].iter().filter(|s| !s.clean).count()),
            });
        }
        self.last = Some((at, snap));
    }

    /// Seconds since the client started, and the run's phases up to the last sample.
    fn phases(&self, ramp: &Ramp) -> Vec<Phase> {
        let end = self.samples.last().map_or(0.0, |s| s.t);
        ramp.spans(Duration::from_secs_f64(end))
            .into_iter()
            .map(|(from, to, rate)| {
                let surge = rate > NORMAL_FLOWS;
                Phase {
                    label: format!("{} ({rate} new flows/s)", if surge { "surge" } else { "calm" }),
                    from: from.as_secs_f64(),
                    to: to.as_secs_f64(),
                    shaded: surge,
                }
            })
            .collect()
    }

    fn series(&self, label: String, color: Rgb, value: impl Fn(&Sample) -> Option<f64>) -> Series {
        Series::new(label, color, self.samples.iter().filter_map(|s| Some((s.t, value(s)?))).collect())
    }

    /// The figure: a panel per site (offered and served against its capacity and target),
    /// the load ratios against the policy's thresholds, a's weights, the new flows each
    /// site served, the TCP connections, and the checks.
    pub fn timeline(&self, ramp: &Ramp, notes: Vec<String>) -> Timeline {
        let site = |i: usize| palette(i);
        let mut panels: Vec<Panel> = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let capacity = f64::from(CAPACITY[i]);
                Panel {
                    title: format!(
                        "Site {name}: packets/s routed to it (offered) and handed to its services (served)"
                    ),
                    y_label: "packets/s".into(),
                    series: vec![
                        self.series("offered: routed to this site".into(), OFFERED, |s| Some(s.offered[i])),
                        self.series(format!("served at {name}"), site(i), |s| Some(s.served[i])),
                    ],
                    references: vec![
                        Reference::new(format!("capacity of {name}"), capacity, CAPACITY_LINE),
                        Reference::new(
                            format!("target ({TARGET} × capacity)"),
                            capacity * TARGET,
                            TARGET_LINE,
                        ),
                    ],
                    ..Panel::default()
                }
            })
            .collect();
        panels.push(Panel {
            title: "Load ratio of each site as a sees it (smoothed utilisation; 1 = at capacity)".into(),
            y_label: "load / capacity".into(),
            series: (0..3)
                .map(|i| self.series(format!("load of {}", NAMES[i]), site(i), |s| s.load[i]))
                .collect(),
            references: vec![
                Reference::new("capacity (1.0)", 1.0, CAPACITY_LINE),
                Reference::new(format!("high ({HIGH}): a starts shedding"), HIGH, HIGH_LINE),
                Reference::new(format!("target ({TARGET})"), TARGET, TARGET_LINE),
                Reference::new(format!("low ({LOW}): a takes flows back"), LOW, LOW_LINE),
            ],
            ..Panel::default()
        });
        panels.push(Panel {
            title: "Weights at a: where a sends its new flows (share of its Maglev table)".into(),
            y_label: "% of new flows".into(),
            series: (0..3)
                .map(|i| self.series(format!("to {}", NAMES[i]), site(i), |s| Some(s.share[i])))
                .collect(),
            stacked: true,
            y_max: Some(100.0),
            ..Panel::default()
        });
        panels.push(Panel {
            title: "New UDP flows per second, by the site whose service got them".into(),
            y_label: "new flows/s".into(),
            series: (0..3)
                .map(|i| self.series(format!("served at {}", NAMES[i]), site(i), |s| Some(s.new_flows[i])))
                .collect(),
            ..Panel::default()
        });
        let mut tcp: Vec<Series> = (0..3)
            .map(|i| self.series(format!("open at {}", NAMES[i]), site(i), |s| Some(s.tcp_open[i] as f64)))
            .collect();
        tcp.push(self.series("reset (all sites, so far)".into(), CAPACITY_LINE, |s| {
            Some(s.tcp_resets.iter().sum::<usize>() as f64)
        }));
        panels.push(Panel {
            title: "Long-lived TCP connections: open at each site, and resets (established flows never move)"
                .into(),
            y_label: "connections".into(),
            series: tcp,
            ..Panel::default()
        });
        Timeline {
            title: "anycast lab: load-aware steering between sites a, b and c".into(),
            notes,
            x_label: "seconds since the client started".into(),
            phases: self.phases(ramp),
            panels,
            checks: self.checks.clone(),
        }
    }
}

const OFFERED: Rgb = Rgb(60, 60, 60);
const CAPACITY_LINE: Rgb = Rgb(200, 30, 30);
const HIGH_LINE: Rgb = Rgb(230, 120, 40);
const TARGET_LINE: Rgb = Rgb(0, 140, 70);
const LOW_LINE: Rgb = Rgb(120, 120, 200);

/// The report's header: what ran, when and from which commit.
pub(super) fn notes(duration: Option<Duration>) -> Vec<String> {
    let date = jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let run = match duration {
        Some(d) => format!("cargo xtask run --for {}", d.as_secs()),
        None => "cargo xtask run".to_owned(),
    };
    vec![
        format!("{run} · {date} · commit {} · Linux {}", commit(), kernel.trim()),
        format!(
            "A client opens short UDP flows ({DATAGRAMS_PER_FLOW} datagrams each) and keeps long-lived TCP connections to the VIP; routing delivers all of it to site a. \
             Capacities: a {}, b {}, c {} packets/s.",
            CAPACITY[0], CAPACITY[1], CAPACITY[2]
        ),
        format!(
            "Above {HIGH} of its capacity a forwards new flows to b and c in proportion to their headroom, down to {TARGET}; below {LOW} it takes them back. \
             Established flows stay where they are."
        ),
    ]
}

/// The workspace's commit, `+dirty` when the tree has changes; "unknown" without git.
fn commit() -> String {
    let root = crate::toolchain::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev)
            if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) =>
        {
            format!("{rev}+dirty")
        }
        Some(rev) => rev,
        None => "unknown".to_owned(),
    }
}

/// Writes the figure to `path` (creating its directory).
pub(super) fn write(path: &Path, timeline: &Timeline) -> Result<()> {
    let svg = timeline.svg().context("drawing the lab's report")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}
