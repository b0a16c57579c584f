//! What `anycast top` shows: per-site packet rates computed from two successive
//! [`Status`] readings (counter difference divided by the time between them), rendered as
//! a table. Pure functions; the CLI does the reading, timing and screen handling.

use std::{fmt::Write, time::Duration};

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
            sites,
            vips: vec![],
            drops: drops.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect::<BTreeMap<_, _>>(),
            overloaded: false,
            no_headroom: false,
            version: String::new(),
            attached: true,
            reload: None,
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
