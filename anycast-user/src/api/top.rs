//! What `anycast top` shows: per-site packet rates computed from two successive
//! [`Status`] readings (counter difference divided by the time between them), rendered as
//! a table, and under it a short history per site ([`History`]: sparklines of the last
//! minute of load and share of the steered packets), so that a person watching a surge
//! sees it without reading numbers. Pure functions; the CLI does the reading, timing and
//! screen handling.

use std::{collections::VecDeque, fmt::Write, time::Duration};

use crate::model::status::Status;

/// Exception reasons shown, highest rate first.
pub const TOP_EXCEPTIONS: usize = 5;

/// Packets per second over one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Pps {
    pub local: f64,
    pub forwarded: f64,
    pub received: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SiteRow {
    pub name: String,
    pub state: String,
    pub weight: u32,
    pub load: Option<f64>,
    /// `None` for a site absent from the previous reading (added by a reload).
    pub pps: Option<Pps>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rates {
    pub sites: Vec<SiteRow>,
    pub total: Pps,
    /// Non-zero exception rates, highest first, at most [`TOP_EXCEPTIONS`].
    pub exceptions: Vec<(String, f64)>,
}

/// Counter difference per second. A counter that went down (the data path was detached
/// and re-created between the readings) counts as 0, not as a huge wrapped value.
fn per_sec(before: u64, after: u64, secs: f64) -> f64 {
    after.saturating_sub(before) as f64 / secs
}

pub fn rates(prev: &Status, cur: &Status, interval: Duration) -> Rates {
    let secs = interval.as_secs_f64().max(1e-3);
    let sites: Vec<SiteRow> = cur
        .sites
        .iter()
        .map(|s| SiteRow {
            name: s.name.clone(),
            state: s.state.clone(),
            weight: s.weight,
            load: s.load,
            pps: prev.sites.iter().find(|p| p.name == s.name).map(|p| Pps {
                local: per_sec(p.local_packets, s.local_packets, secs),
                forwarded: per_sec(p.forwarded_packets, s.forwarded_packets, secs),
                received: per_sec(p.received_packets, s.received_packets, secs),
            }),
        })
        .collect();
    let total = sites.iter().filter_map(|s| s.pps).fold(Pps::default(), |t, p| Pps {
        local: t.local + p.local,
        forwarded: t.forwarded + p.forwarded,
        received: t.received + p.received,
    });
    let mut exceptions: Vec<(String, f64)> = cur
        .drops
        .iter()
        .map(|(reason, n)| (reason.clone(), per_sec(prev.drops.get(reason).copied().unwrap_or(0), *n, secs)))
        .filter(|(_, r)| *r > 0.0)
        .collect();
    exceptions.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    exceptions.truncate(TOP_EXCEPTIONS);
    Rates { sites, total, exceptions }
}

/// How far back the sparklines go, and how many characters wide they are.
pub const HISTORY: Duration = Duration::from_secs(60);
pub const SPARK_WIDTH: usize = 30;
const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One refresh of one site in the history.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    load: Option<f64>,
    /// The site's share of the packets this host steered (kept here or forwarded there).
    share: Option<f64>,
}

/// The last [`HISTORY`] of every site's load and share, a point per refresh.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    points: usize,
    sites: Vec<(String, VecDeque<Point>)>,
}

impl History {
    /// For refreshes every `interval`.
    pub fn new(interval: Duration) -> History {
        let points = (HISTORY.as_secs_f64() / interval.as_secs_f64().max(1e-3)).ceil().max(1.0) as usize;
        History { points, sites: Vec::new() }
    }

    /// Adds a refresh; sites gone from the config (a reload) are forgotten.
    pub fn push(&mut self, rates: &Rates) {
        let steered = rates.total.local + rates.total.forwarded;
        let mut sites = Vec::with_capacity(rates.sites.len());
        for row in &rates.sites {
            let mut points = match self.sites.iter().position(|(name, _)| *name == row.name) {
                Some(i) => self.sites.swap_remove(i).1,
                None => VecDeque::with_capacity(self.points),
            };
            let share = row.pps.filter(|_| steered > 0.0).map(|p| (p.local + p.forwarded) / steered);
            points.push_back(Point { load: row.load, share });
            while points.len() > self.points {
                points.pop_front();
            }
            sites.push((row.name.clone(), points));
        }
        self.sites = sites;
    }

    /// A line per site: its load and share over the last minute, each with its last value.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.sites.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "{:<16} {:<w$}  {:>5}   {:<w$}  {:>5}",
            format!("LAST {}s", HISTORY.as_secs()),
            "LOAD (full = 1 or the window's peak)",
            "",
            "SHARE OF STEERED PACKETS",
            "",
            w = SPARK_WIDTH
        );
        for (name, points) in &self.sites {
            let loads: Vec<Option<f64>> = points.iter().map(|p| p.load).collect();
            let shares: Vec<Option<f64>> = points.iter().map(|p| p.share).collect();
            let peak = loads.iter().flatten().copied().fold(1.0, f64::max);
            let last = |values: &[Option<f64>], show: &dyn Fn(f64) -> String| {
                values.last().copied().flatten().map_or("-".to_owned(), show)
            };
            let _ = writeln!(
                out,
                "{name:<16} {:<w$}  {:>5}   {:<w$}  {:>5}",
                sparkline(&loads, peak, SPARK_WIDTH),
                last(&loads, &|v| format!("{v:.2}")),
                sparkline(&shares, 1.0, SPARK_WIDTH),
                last(&shares, &|v| format!("{:.0}%", v * 100.0)),
                w = SPARK_WIDTH
            );
        }
        out
    }
}

/// `values` (oldest first) as at most `width` block characters, scaled so that `max` is a
/// full block; the newest values are kept and, when there are more than `width`, averaged
/// in groups. A gap (no value) is a space.
pub fn sparkline(values: &[Option<f64>], max: f64, width: usize) -> String {
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let per_cell = values.len().div_ceil(width);
    // Groups aligned on the newest value, so the rightmost cell is always the latest.
    let first = values.len() % per_cell;
    let head = (first > 0).then(|| &values[..first]);
    head.into_iter()
        .chain(values[first..].chunks(per_cell))
        .map(|cell| {
            let known: Vec<f64> = cell.iter().flatten().copied().filter(|v| v.is_finite()).collect();
            if known.is_empty() {
                return ' ';
            }
            let mean = known.iter().sum::<f64>() / known.len() as f64;
            let level = (mean / max.max(f64::MIN_POSITIVE) * BLOCKS.len() as f64).ceil() as usize;
            BLOCKS[level.clamp(1, BLOCKS.len()) - 1]
        })
        .collect()
}

/// The table for one refresh.
pub fn render(cur: &Status, rates: &Rates) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", cur.header());
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>7} {:>5} {:>12} {:>12} {:>12}",
        "SITE", "STATE", "WEIGHT", "LOAD", "LOCAL/s", "FORWARDED/s", "RECEIVED/s"
    );
    let row = |out: &mut String, name: &str, state: &str, weight: &str, load: &str, pps: Option<Pps>| {
        let _ = match pps {
            Some(p) => writeln!(
                out,
                "{name:<16} {state:<8} {weight:>7} {load:>5} {:>12.1} {:>12.1} {:>12.1}",
                p.local, p.forwarded, p.received
            ),
            None => writeln!(
                out,
                "{name:<16} {state:<8} {weight:>7} {load:>5} {:>12} {:>12} {:>12}",
                "-", "-", "-"
            ),
        };
    };
    for s in &rates.sites {
        row(&mut out, &s.name, &s.state, &s.weight.to_string(), &crate::model::status::load(s.load), s.pps);
    }
    row(&mut out, "TOTAL", "", "", "", Some(rates.total));
    if rates.exceptions.is_empty() {
        let _ = writeln!(out, "exceptions/s: none");
    } else {
        let list: Vec<String> = rates.exceptions.iter().map(|(r, v)| format!("{r} {v:.1}")).collect();
        let _ = writeln!(out, "exceptions/s: {}", list.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::status::SiteStatus;

    fn site(name: &str, state: &str, weight: u32, counters: [u64; 3]) -> SiteStatus {
        SiteStatus {
            name: name.into(),
            index: 0,
            role: "remote".into(),
            endpoint: None,
            encap: "ip".into(),
            state: state.into(),
            weight,
            configured_weight: 100,
            load: None,
            pps: 0.0,
            local_packets: counters[0],
            forwarded_packets: counters[1],
            received_packets: counters[2],
        }
    }

    fn status(sites: Vec<SiteStatus>, drops: &[(&str, u64)]) -> Status {
        Status {
            interfaces: vec!["eth0".into()],
            flow_entries: 10,
            flow_capacity: 1024,
            checked_buckets: 0,
            sites,
            vips: vec![],
            drops: drops.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect::<BTreeMap<_, _>>(),
            overloaded: false,
            no_headroom: false,
            version: String::new(),
            attached: true,
            reload: None,
            next_hops: Default::default(),
            bgp: Vec::new(),
            host: None,
            deciding_host: None,
        }
    }

    #[test]
    fn rates_are_counter_differences_over_the_interval() {
        let prev = status(
            vec![site("fra", "up", 100, [1000, 0, 50]), site("ams", "up", 80, [0, 200, 0])],
            &[("truncated", 4), ("no_site", 10)],
        );
        let cur = status(
            vec![
                site("fra", "up", 100, [1400, 0, 90]),
                site("ams", "drained", 0, [0, 260, 0]),
                site("lhr", "up", 50, [0, 999, 0]),
            ],
            &[("truncated", 4), ("no_site", 30), ("too_big", 2), ("fragment", 8)],
        );
        let r = rates(&prev, &cur, Duration::from_secs(2));
        assert_eq!(r.sites[0].pps, Some(Pps { local: 200.0, forwarded: 0.0, received: 20.0 }));
        assert_eq!(r.sites[1].pps, Some(Pps { local: 0.0, forwarded: 30.0, received: 0.0 }));
        assert_eq!((r.sites[1].state.as_str(), r.sites[1].weight), ("drained", 0));
        // New since the previous reading: no rate, and not in the total.
        assert_eq!(r.sites[2].pps, None);
        assert_eq!(r.total, Pps { local: 200.0, forwarded: 30.0, received: 20.0 });
        // Unchanged counters drop out; new ones count from 0; highest first.
        assert_eq!(
            r.exceptions,
            [("no_site".to_owned(), 10.0), ("fragment".to_owned(), 4.0), ("too_big".to_owned(), 1.0)]
        );
    }

    #[test]
    fn a_counter_that_went_down_gives_zero_and_exceptions_are_capped() {
        let many: Vec<(String, u64)> = (0..8).map(|i| (format!("r{i}"), 10 * (i + 1))).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        let prev = status(vec![site("fra", "up", 100, [500, 500, 500])], &[]);
        let cur = status(vec![site("fra", "up", 100, [100, 700, 500])], &many);
        let r = rates(&prev, &cur, Duration::from_millis(500));
        assert_eq!(r.sites[0].pps, Some(Pps { local: 0.0, forwarded: 400.0, received: 0.0 }));
        assert_eq!(r.exceptions.len(), TOP_EXCEPTIONS);
        assert_eq!(r.exceptions[0], ("r7".to_owned(), 160.0));
    }

    #[test]
    fn sparklines_scale_to_the_maximum_and_keep_the_newest_values() {
        let v = |xs: &[f64]| xs.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        assert_eq!(sparkline(&v(&[0.0, 0.5, 1.0, 2.0]), 1.0, 10), "▁▄██");
        assert_eq!(sparkline(&[Some(0.25), None, Some(1.0)], 1.0, 10), "▂ █");
        // 5 values in 2 cells of 3: the oldest two, then the newest three averaged.
        assert_eq!(sparkline(&v(&[1.0, 1.0, 0.0, 0.0, 0.75]), 1.0, 2), "█▂");
        assert_eq!(sparkline(&[], 1.0, 10), "");
        assert_eq!(sparkline(&v(&[1.0; 120]), 1.0, 30).chars().count(), 30);
    }

    #[test]
    fn history_keeps_a_minute_per_site_and_shows_load_and_share() {
        let mut h = History::new(Duration::from_secs(2));
        let row = |name: &str, load: f64, local: f64, forwarded: f64| SiteRow {
            name: name.into(),
            state: "up".into(),
            weight: 1,
            load: Some(load),
            pps: Some(Pps { local, forwarded, received: 0.0 }),
        };
        let refresh = |sites: Vec<SiteRow>| {
            let total = sites.iter().filter_map(|s| s.pps).fold(Pps::default(), |t, p| Pps {
                local: t.local + p.local,
                forwarded: t.forwarded + p.forwarded,
                received: 0.0,
            });
            Rates { sites, total, exceptions: vec![] }
        };
        for i in 0..40 {
            let surge = i >= 30;
            h.push(&refresh(vec![
                row("fra", if surge { 1.2 } else { 0.5 }, if surge { 50.0 } else { 100.0 }, 0.0),
                row("ams", 0.2, 0.0, if surge { 50.0 } else { 0.0 }),
            ]));
        }
        assert_eq!(h.sites[0].1.len(), 30, "a minute at 2 s per refresh");
        let text = h.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let fra: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(fra[0], "fra");
        // 20 calm refreshes at half of the peak load, then 10 at the peak.
        assert_eq!(fra[1], format!("{}{}", "▄".repeat(20), "█".repeat(10)));
        assert_eq!((fra[2], fra[4]), ("1.20", "50%"));
        let ams: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            ams[3],
            format!("{}{}", "▁".repeat(20), "▄".repeat(10)),
            "ams's share rises from 0 to half"
        );
        // A site removed by a reload is forgotten.
        h.push(&refresh(vec![row("fra", 0.5, 100.0, 0.0)]));
        assert_eq!(h.render().lines().count(), 2);
    }

    #[test]
    fn render_shows_each_site_the_total_and_exceptions() {
        let prev = status(vec![site("fra", "up", 100, [0, 0, 0])], &[]);
        let cur = status(
            vec![site("fra", "up", 100, [30, 15, 3]), site("ams", "drained", 0, [0, 0, 0])],
            &[("truncated", 6)],
        );
        let t = render(&cur, &rates(&prev, &cur, Duration::from_secs(3)));
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["interfaces:", "eth0", "flows:", "10", "/", "1024"], "{t}");
        assert_eq!(lines[2], ["fra", "up", "100", "-", "10.0", "5.0", "1.0"], "{t}");
        assert_eq!(lines[3], ["ams", "drained", "0", "-", "-", "-", "-"], "{t}");
        assert_eq!(lines[4], ["TOTAL", "10.0", "5.0", "1.0"], "{t}");
        assert_eq!(t.lines().last(), Some("exceptions/s: truncated 2.0"), "{t}");
        let quiet = render(&prev, &rates(&prev, &prev, Duration::from_secs(1)));
        assert!(quiet.ends_with("exceptions/s: none\n"), "{quiet}");
    }
}
