//! What a run measured: the figures the issue asks for, per scenario and per site, the
//! targets checked against them, and the time series the plot draws.

use serde::Serialize;

use crate::{engine::Params, scenario::Scenario};

/// Utilisation above target by at most this counts as settled.
pub const SETTLE_SLACK: f64 = 0.05;
/// The plot's resolution for the aggregate lines, s.
const SAMPLE: f64 = 0.5;
/// Staleness histogram: 1 ms buckets up to this many.
const AGE_BUCKETS: usize = 20_000;

/// Wire bytes of one poll besides the report itself: a TCP connection per poll (SYN,
/// SYN-ACK, ACK, request, ACK, response, FIN and ACK both ways: 10 segments of 52 bytes of
/// IPv4 + TCP headers with timestamps), the request's line and headers, the response's
/// status line and headers.
pub const POLL_OVERHEAD: usize = 10 * 52 + 100 + 110;

pub struct Recorder {
    n: usize,
    target: f64,
    high: f64,
    dt: f64,
    event: (f64, f64),
    focus: Vec<usize>,
    /// Per site: peak, time above target / high, current and longest streak above high.
    peak: Vec<f64>,
    above_target: Vec<f64>,
    above_high: Vec<f64>,
    streak: Vec<f64>,
    longest: Vec<f64>,
    /// Full-resolution utilisation of the focus sites; every site's at SAMPLE.
    pub focus_series: Vec<Vec<f64>>,
    pub samples: Vec<Vec<f32>>,
    pub sample_times: Vec<f64>,
    /// Per host: applied changes and reversals of the local share's direction; per site the
    /// log of (time, keep) of its first host's changes.
    changes: Vec<u32>,
    reversals: Vec<u32>,
    direction: Vec<f64>,
    keep_log: Vec<Vec<(f64, f64)>>,
    host_site: Vec<usize>,
    first_host: Vec<usize>,
    /// The controllers' time at the scenario's 0 s (after the warm-up).
    start: f64,
    bgp: Vec<u32>,
    pub polls: Vec<u64>,
    ages: Vec<u64>,
    /// Site samples whose alive hosts held different tables, of all site samples.
    diverged: u64,
    site_samples: u64,
    overload: f64,
    demand: f64,
    pub new_flows: f64,
    pub new_forwarded: f64,
    pub forwarded_distance: f64,
    pub moved: f64,
    pub lost: f64,
    pub broken_by_bgp: f64,
    pub blackholed: f64,
}

impl Recorder {
    pub fn new(s: &Scenario, p: &Params) -> Recorder {
        let n = s.world.len();
        let host_site = s
            .world
            .sites
            .iter()
            .enumerate()
            .flat_map(|(i, x)| std::iter::repeat_n(i, x.hosts))
            .collect::<Vec<_>>();
        let hosts = host_site.len();
        let first_host = (0..n).map(|j| host_site.iter().position(|&s| s == j).unwrap_or(0)).collect();
        Recorder {
            n,
            target: p.knobs.target,
            high: p.knobs.high,
            dt: p.dt,
            event: s.event,
            focus: s.focus.clone(),
            peak: vec![0.0; n],
            above_target: vec![0.0; n],
            above_high: vec![0.0; n],
            streak: vec![0.0; n],
            longest: vec![0.0; n],
            focus_series: vec![Vec::new(); s.focus.len()],
            samples: vec![Vec::new(); n],
            sample_times: Vec::new(),
            changes: vec![0; hosts],
            reversals: vec![0; hosts],
            direction: vec![0.0; hosts],
            keep_log: vec![Vec::new(); n],
            host_site,
            first_host,
            start: 0.0,
            bgp: vec![0; n],
            polls: vec![0; n],
            ages: vec![0; AGE_BUCKETS + 1],
            diverged: 0,
            site_samples: 0,
            overload: 0.0,
            demand: 0.0,
            new_flows: 0.0,
            new_forwarded: 0.0,
            forwarded_distance: 0.0,
            moved: 0.0,
            lost: 0.0,
            broken_by_bgp: 0.0,
            blackholed: 0.0,
        }
    }

    /// A recorder whose changes are logged in the time of a scenario that starts at the
    /// controllers' `start` (the warm-up before it recorded nowhere).
    pub fn from(self, start: f64) -> Recorder {
        Recorder { start, ..self }
    }

    /// One step: every site's served packets/s and the capacity of its hosts alive (0:
    /// the site is down, and not counted).
    pub fn step(&mut self, t: f64, served: &[f64], capacity: &[f64], demand: f64) {
        let dt = self.dt;
        self.demand += demand * dt;
        let sample =
            (t / SAMPLE).fract() < dt / SAMPLE / 2.0 || (t / SAMPLE).fract() > 1.0 - dt / SAMPLE / 2.0;
        if sample {
            self.sample_times.push(t);
        }
        for j in 0..self.n {
            let u = if capacity[j] > 0.0 { served[j] / capacity[j] } else { f64::NAN };
            if sample {
                self.samples[j].push(u as f32);
            }
            if u.is_nan() {
                self.streak[j] = 0.0;
                continue;
            }
            self.overload += (served[j] - capacity[j]).max(0.0) * dt;
            self.peak[j] = self.peak[j].max(u);
            if u > self.target {
                self.above_target[j] += dt;
            }
            if u > self.high {
                self.above_high[j] += dt;
                self.streak[j] += dt;
                self.longest[j] = self.longest[j].max(self.streak[j]);
            } else {
                self.streak[j] = 0.0;
            }
        }
        for (k, &j) in self.focus.iter().enumerate() {
            let u = if capacity[j] > 0.0 { served[j] / capacity[j] } else { f64::NAN };
            self.focus_series[k].push(u);
        }
    }

    /// Whether the alive hosts of each site held the same table, at a sample.
    pub fn tables(&mut self, diverged: impl Iterator<Item = bool>) {
        for d in diverged {
            self.site_samples += 1;
            self.diverged += d as u64;
        }
    }

    pub fn change(&mut self, site: usize, host: usize, t: f64, old_keep: f64, keep: f64) {
        self.changes[host] += 1;
        let d = keep - old_keep;
        if d != 0.0 {
            if self.direction[host] * d < 0.0 {
                self.reversals[host] += 1;
            }
            self.direction[host] = d.signum();
        }
        if self.first_host[site] == host {
            self.keep_log[site].push((t - self.start, keep));
        }
    }

    /// The local share of new flows of site `j`'s first host over time, as steps.
    pub fn keep_series(&self, j: usize, end: f64) -> Vec<(f64, f64)> {
        let mut points = vec![(0.0, 1.0)];
        let mut last = 1.0;
        for &(t, k) in &self.keep_log[j] {
            points.push((t, last));
            points.push((t, k));
            last = k;
        }
        points.push((end, last));
        points
    }

    pub fn bgp(&mut self, site: usize, _t: f64) {
        self.bgp[site] += 1;
    }

    pub fn age(&mut self, age: f64) {
        self.ages[((age * 1000.0) as usize).min(AGE_BUCKETS)] += 1;
    }

    fn age_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.ages.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        self.ages
            .iter()
            .position(|&c| {
                acc += c;
                acc >= want
            })
            .map(|ms| ms as f64)
    }

    /// The first time after the event's start from which every focus site stays at or
    /// below target + slack until the event ends, as seconds after the start.
    fn settle(&self) -> Option<f64> {
        let (from, to) = self.event;
        let first = (from / self.dt).round() as usize;
        let last = ((to / self.dt).round() as usize).min(self.focus_series.first().map_or(0, Vec::len));
        let limit = self.target + SETTLE_SLACK;
        let mut settled_at = None;
        for step in first..last {
            // A down site (NaN) counts as settled.
            let ok = self.focus_series.iter().all(|s| s[step].is_nan() || s[step] <= limit);
            match (ok, settled_at) {
                (true, None) => settled_at = Some(step),
                (false, Some(_)) => settled_at = None,
                _ => {}
            }
        }
        settled_at.map(|s| (s - first) as f64 * self.dt)
    }

    /// Per site, the largest of a per-host count over its hosts.
    fn worst_host(&self, per_host: &[u32]) -> Vec<u32> {
        let mut out = vec![0; self.n];
        for (h, &x) in per_host.iter().enumerate() {
            out[self.host_site[h]] = out[self.host_site[h]].max(x);
        }
        out
    }

    pub fn finish(
        &self,
        s: &Scenario,
        p: &Params,
        report_bytes: usize,
        hosts: usize,
        steering: &str,
    ) -> Figures {
        let minutes = s.duration / 60.0;
        let settle = self.settle();
        let per_site_changes = self.worst_host(&self.changes);
        let per_site_reversals = self.worst_host(&self.reversals);
        // Reversals of the focus sites' first hosts after settling, before the event ends.
        let after = settle.map_or(f64::INFINITY, |x| self.event.0 + x);
        let reversals_after_settle: u32 = self
            .focus
            .iter()
            .map(|&j| {
                let log: Vec<f64> = std::iter::once(0.0)
                    .chain(
                        self.keep_log[j]
                            .iter()
                            .filter(|(t, _)| *t >= after && *t < self.event.1)
                            .map(|(_, k)| *k),
                    )
                    .collect();
                let steps: Vec<f64> =
                    log.windows(2).skip(1).map(|w| w[1] - w[0]).filter(|d| *d != 0.0).collect();
                steps.windows(2).filter(|w| w[0] * w[1] < 0.0).count() as u32
            })
            .sum();
        let polls: u64 = self.polls.iter().sum();
        let polls_per_site_s = polls as f64 / self.n as f64 / s.duration;
        let bytes = (report_bytes + POLL_OVERHEAD) as f64;
        let longest = self.longest.iter().copied().fold(0.0, f64::max);
        let over_2s = self.longest.iter().filter(|&&x| x > 2.0).count();
        let bgp_max = self.bgp.iter().copied().max().unwrap_or(0);
        let focus_peak = self.focus.iter().map(|&j| self.peak[j]).fold(0.0, f64::max);
        let exchange = Exchange {
            how: "every site polls every other site's GET /load each interval".into(),
            messages_per_site_s: 2.0 * polls_per_site_s,
            bytes_per_site_s: polls_per_site_s * bytes,
            bytes_per_poll: bytes,
            staleness_p50_ms: self.age_quantile(0.5),
            staleness_p99_ms: self.age_quantile(0.99),
        };
        let mut targets = Vec::new();
        let mut check = |name: &str, target: String, value: f64, ok: bool| {
            targets.push(Check { name: name.into(), target, value, ok });
        };
        if matches!(s.name, "flash") {
            check(
                "settle",
                format!("focus site <= target + {SETTLE_SLACK} within 2 s"),
                settle.unwrap_or(f64::INFINITY),
                settle.is_some_and(|x| x <= 2.0),
            );
        }
        if s.capacity_suffices {
            check("above high", "no site above high for more than 2 s".into(), longest, longest <= 2.0);
        }
        check(
            "reversals",
            "no weight reversal after settling".into(),
            reversals_after_settle as f64,
            reversals_after_settle == 0,
        );
        check("moved", "0 established flows moved".into(), self.moved, self.moved < 0.5);
        check("bgp", "<= 2 BGP transitions per site".into(), bgp_max as f64, bgp_max <= 2);
        if s.name == "shared-sibling" {
            let b = self.peak[s.focus[0]];
            check(
                "shared sibling",
                "the sibling shared by two shedders stays at or below its target (+1 % for noise)".into(),
                b,
                b <= self.target + 0.01,
            );
        }
        let per_site = (0..self.n)
            .map(|j| SiteFigures {
                name: s.world.sites[j].name.clone(),
                peak: self.peak[j],
                above_target_s: self.above_target[j],
                above_high_s: self.above_high[j],
                longest_above_high_s: self.longest[j],
                weight_changes: per_site_changes[j],
                reversals: per_site_reversals[j],
                bgp_transitions: self.bgp[j],
            })
            .collect();
        Figures {
            scenario: s.name.into(),
            about: s.about.clone(),
            sites: self.n,
            hosts,
            steering: steering.into(),
            duration_s: s.duration,
            warm_up_s: s.warm_up,
            focus: s.focus.iter().map(|&j| s.world.sites[j].name.clone()).collect(),
            settle_s: settle,
            focus_peak,
            longest_above_high_s: longest,
            sites_above_high_over_2s: over_2s,
            new_flows_moved_share: if self.new_flows > 0.0 {
                self.new_forwarded / self.new_flows
            } else {
                0.0
            },
            forwarded_rtt_ms: if self.new_forwarded > 0.0 {
                self.forwarded_distance / self.new_forwarded
            } else {
                0.0
            },
            weight_changes_per_min_mean: per_site_changes.iter().map(|&c| c as f64).sum::<f64>()
                / self.n as f64
                / minutes,
            weight_changes_per_min_max: per_site_changes.iter().copied().max().unwrap_or(0) as f64 / minutes,
            reversals_total: per_site_reversals.iter().map(|&r| r as u64).sum(),
            reversals_max_site: per_site_reversals.iter().copied().max().unwrap_or(0),
            reversals_after_settle,
            established_moved: self.moved,
            lost_with_failures: self.lost,
            broken_by_bgp: self.broken_by_bgp,
            blackholed_packets: self.blackholed,
            overload_loss_share: if self.demand > 0.0 { self.overload / self.demand } else { 0.0 },
            bgp_transitions_total: self.bgp.iter().map(|&b| b as u64).sum(),
            bgp_transitions_max_site: bgp_max,
            sites_over_2_bgp_transitions: self.bgp.iter().filter(|&&b| b > 2).count(),
            tables_diverged_share: if self.site_samples > 0 {
                self.diverged as f64 / self.site_samples as f64
            } else {
                0.0
            },
            exchange,
            targets,
            per_site,
            knobs: format!(
                "target {:.2} high {:.2} low {:.2} max_step {:.2} interval {} s smoothing {} s stale {} s; report loss {}, noise {}",
                p.knobs.target,
                p.knobs.high,
                p.knobs.low,
                p.knobs.max_step,
                p.interval,
                p.smoothing.as_secs_f64(),
                p.stale,
                p.report_loss,
                p.noise
            ),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub target: String,
    pub value: f64,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Exchange {
    pub how: String,
    pub messages_per_site_s: f64,
    pub bytes_per_site_s: f64,
    pub bytes_per_poll: f64,
    pub staleness_p50_ms: Option<f64>,
    pub staleness_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteFigures {
    pub name: String,
    pub peak: f64,
    pub above_target_s: f64,
    pub above_high_s: f64,
    pub longest_above_high_s: f64,
    pub weight_changes: u32,
    pub reversals: u32,
    pub bgp_transitions: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub scenario: String,
    pub about: String,
    pub sites: usize,
    pub hosts: usize,
    pub steering: String,
    pub duration_s: f64,
    /// Simulated seconds before 0 s, recorded nowhere ([`Scenario::warm_up`]).
    pub warm_up_s: f64,
    pub knobs: String,
    pub focus: Vec<String>,
    /// Seconds from the event's start until the focus sites stay at or below target + 5 %.
    pub settle_s: Option<f64>,
    pub focus_peak: f64,
    pub longest_above_high_s: f64,
    pub sites_above_high_over_2s: usize,
    /// New flows steered to another site than the one their client reached, of all.
    pub new_flows_moved_share: f64,
    /// Mean round trip between the two sites of a forwarded new flow.
    pub forwarded_rtt_ms: f64,
    pub weight_changes_per_min_mean: f64,
    pub weight_changes_per_min_max: f64,
    pub reversals_total: u64,
    pub reversals_max_site: u32,
    pub reversals_after_settle: u32,
    /// Established flows that reached a site other than their own (reset).
    pub established_moved: f64,
    /// Flows whose host or site failed, or whose site the backbone cut off.
    pub lost_with_failures: f64,
    /// Flows of clients whose catchment moved with a route change.
    pub broken_by_bgp: f64,
    pub blackholed_packets: f64,
    /// Packets above the sites' capacity, of all demand.
    pub overload_loss_share: f64,
    pub bgp_transitions_total: u64,
    pub bgp_transitions_max_site: u32,
    pub sites_over_2_bgp_transitions: usize,
    /// Share of the time a site's alive hosts held different tables.
    pub tables_diverged_share: f64,
    pub exchange: Exchange,
    pub targets: Vec<Check>,
    pub per_site: Vec<SiteFigures>,
}

impl Figures {
    /// The lines `cargo xtask sim` prints for this scenario.
    pub fn summary(&self) -> String {
        let opt = |x: Option<f64>, unit: &str| x.map_or("never".to_owned(), |v| format!("{v:.1}{unit}"));
        let mut out = format!(
            "== {} ({} sites x {} hosts, {} steering): {}\n",
            self.scenario, self.sites, self.hosts, self.steering, self.about
        );
        out += &format!(
            "   settle {}  focus peak {:.2}  longest above high {:.1} s ({} sites > 2 s)  overload loss {:.2} %\n",
            opt(self.settle_s, " s"),
            self.focus_peak,
            self.longest_above_high_s,
            self.sites_above_high_over_2s,
            100.0 * self.overload_loss_share
        );
        out += &format!(
            "   new flows moved {:.1} % (mean RTT to their site {:.0} ms)  weight changes/min mean {:.1} max {:.1}  \
             reversals {} (max/site {}, after settling {})\n",
            100.0 * self.new_flows_moved_share,
            self.forwarded_rtt_ms,
            self.weight_changes_per_min_mean,
            self.weight_changes_per_min_max,
            self.reversals_total,
            self.reversals_max_site,
            self.reversals_after_settle
        );
        out += &format!(
            "   established flows moved {:.0}  lost with failures {:.0}  broken by BGP {:.0}  \
             BGP transitions total {} max/site {} ({} sites > 2)  tables differ {:.1} % of the time\n",
            self.established_moved,
            self.lost_with_failures,
            self.broken_by_bgp,
            self.bgp_transitions_total,
            self.bgp_transitions_max_site,
            self.sites_over_2_bgp_transitions,
            100.0 * self.tables_diverged_share
        );
        out += &format!(
            "   load exchange: {:.0} messages/s and {:.0} kB/s sent per site, staleness p50 {} p99 {}\n",
            self.exchange.messages_per_site_s,
            self.exchange.bytes_per_site_s / 1000.0,
            opt(self.exchange.staleness_p50_ms, " ms"),
            opt(self.exchange.staleness_p99_ms, " ms"),
        );
        for c in &self.targets {
            out += &format!("   [{}] {}: {:.2}\n", if c.ok { "ok" } else { "MISSED" }, c.target, c.value);
        }
        out
    }
}
