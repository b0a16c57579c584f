//! The scenario's figure, drawn with the shared `plots` crate: utilisation per site over
//! time (the focus sites, the highest and the median of the others) against target and
//! high, the focus sites' share of new flows kept, the event shaded, the targets
//! as the table of checks.

use plots::{Check, Panel, Phase, Reference, Rgb, Series, Timeline, palette};

use crate::{
    figures::{Figures, Recorder},
    scenario::Scenario,
};

/// The focus sites drawn one by one (the rest are summarised).
const FOCUS_LINES: usize = 5;

pub fn timeline(
    s: &Scenario,
    rec: &Recorder,
    figures: &Figures,
    dt: f64,
    target: f64,
    high: f64,
) -> Timeline {
    let mut load = Vec::new();
    let mut keep = Vec::new();
    for (k, &j) in s.focus.iter().enumerate().take(FOCUS_LINES) {
        let name = &s.world.sites[j].name;
        let points = rec.focus_series[k]
            .iter()
            .enumerate()
            .map(|(i, &u)| (i as f64 * dt, u))
            .filter(|p| p.1.is_finite());
        load.push(Series::new(name.clone(), palette(k), points.collect()));
        keep.push(Series::new(name.clone(), palette(k), rec.keep_series(j, s.duration)));
    }
    let others: Vec<usize> = (0..s.world.len()).filter(|j| !s.focus.contains(j)).collect();
    if !others.is_empty() {
        let (mut max, mut median) = (Vec::new(), Vec::new());
        for (i, &t) in rec.sample_times.iter().enumerate() {
            let mut v: Vec<f64> =
                others.iter().map(|&j| rec.samples[j][i] as f64).filter(|u| u.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            if let (Some(&m), Some(&med)) = (v.last(), v.get(v.len() / 2)) {
                max.push((t, m));
                median.push((t, med));
            }
        }
        load.push(Series::new("highest other site", palette(FOCUS_LINES), max));
        load.push(Series::new("median site", palette(FOCUS_LINES + 1), median));
    }
    let muted = Rgb(120, 120, 120);
    Timeline {
        title: format!("anycast-sim {}: {} sites x {} hosts", s.name, s.world.len(), figures.hosts),
        notes: vec![s.about.clone(), figures.knobs.clone()],
        x_label: "seconds".into(),
        phases: vec![Phase { label: "event".into(), from: s.event.0, to: s.event.1, shaded: true }],
        panels: vec![
            Panel {
                title: "utilisation (served / capacity) per site".into(),
                y_label: "utilisation".into(),
                series: load,
                references: vec![
                    Reference::new("target", target, Rgb(0, 0, 0)),
                    Reference::new("high", high, muted),
                ],
                stacked: false,
                y_max: None,
            },
            Panel {
                title: "share of new flows kept local (the site's first host)".into(),
                y_label: "keep".into(),
                series: keep,
                references: Vec::new(),
                stacked: false,
                y_max: Some(1.0),
            },
        ],
        checks: figures
            .targets
            .iter()
            .map(|c| Check::new(&c.target, c.ok, format!("{:.2}", c.value)))
            .collect(),
    }
}
