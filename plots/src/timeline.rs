//! Time series in panels that share one time axis: the phases of a run marked across every
//! panel, reference lines, a legend beside each panel and the run's checks below.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    PlotError, WIDTH, draw_err,
    style::{self, Area, FONT, GRID, MUTED, Reference, Rgb, Swatch, TEXT},
    table::{self, Check},
};

/// One line of a panel: `(time, value)` points in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, color: Rgb, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), color, points }
    }
}

/// One chart. `stacked`: the series are drawn as areas stacked on each other (shares that
/// add up to a whole); otherwise as lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub references: Vec<Reference>,
    pub stacked: bool,
    /// The top of the value axis; by default the largest value or reference, rounded up.
    pub y_max: Option<f64>,
}

/// A stretch of the run (`from`..`to` on the time axis). A `shaded` phase is filled in every
/// panel (the surge); every phase is named at the top of the first panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub label: String,
    pub from: f64,
    pub to: f64,
    pub shaded: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub title: String,
    /// Lines under the title: what ran, where, when, from which commit.
    pub notes: Vec<String>,
    pub x_label: String,
    pub phases: Vec<Phase>,
    pub panels: Vec<Panel>,
    pub checks: Vec<Check>,
}

const PANEL_HEIGHT: u32 = 220;
const LEGEND_WIDTH: u32 = 250;
/// The fill of a shaded phase.
const SHADE: RGBAColor = RGBAColor(230, 80, 60, 0.10);

impl Timeline {
    /// The figure as an SVG document.
    pub fn svg(&self) -> Result<String, PlotError> {
        let header = style::header_height(&self.notes);
        let panels = PANEL_HEIGHT * self.panels.len() as u32;
        let height = header + panels + table::height(&self.checks);
        let x = self.x_range();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            let (head, rest) = root.split_vertically(header);
            style::header(&head, &self.title, &self.notes)?;
            let (charts, checks) = rest.split_vertically(panels);
            if !self.panels.is_empty() {
                let areas = charts.split_evenly((self.panels.len(), 1));
                for (i, (area, panel)) in areas.iter().zip(&self.panels).enumerate() {
                    panel.draw(area, &self.phases, x, &self.x_label, i == 0)?;
                }
            }
            table::draw(&checks, &self.checks)?;
            root.present().map_err(draw_err)?;
        }
        Ok(svg)
    }

    /// The time axis: from the earliest to the latest point or phase bound.
    fn x_range(&self) -> (f64, f64) {
        let xs = self
            .panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|(x, _)| *x)))
            .chain(self.phases.iter().flat_map(|p| [p.from, p.to]))
            .filter(|x| x.is_finite());
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
        match lo < hi {
            true => (lo, hi),
            false if lo.is_finite() => (lo, lo + 1.0),
            false => (0.0, 1.0),
        }
    }
}

impl Panel {
    /// The points as drawn: running sums from the first series up when stacked.
    fn drawn(&self) -> Vec<Vec<(f64, f64)>> {
        if !self.stacked {
            return self.series.iter().map(|s| s.points.clone()).collect();
        }
        let mut below: Vec<(f64, f64)> = Vec::new();
        self.series
            .iter()
            .map(|s| {
                let sum: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .enumerate()
                    .map(|(i, &(x, y))| (x, y + below.get(i).map_or(0.0, |b| b.1)))
                    .collect();
                below = sum.clone();
                sum
            })
            .collect()
    }

    fn draw(
        &self,
        area: &Area<'_>,
        phases: &[Phase],
        (x0, x1): (f64, f64),
        x_label: &str,
        name_phases: bool,
    ) -> Result<(), PlotError> {
        let (plot, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
        let drawn = self.drawn();
        let top = drawn
            .iter()
            .flatten()
            .map(|p| p.1)
            .chain(self.references.iter().map(|r| r.value))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_max = self.y_max.unwrap_or_else(|| style::nice_ceiling(top * 1.08));
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, (FONT, 16).into_font().color(&TEXT))
            .margin_left(12)
            .margin_right(16)
            .margin_top(2)
            .margin_bottom(4)
            .x_label_area_size(34)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, 0.0..y_max)
            .map_err(draw_err)?;

        for phase in phases.iter().filter(|p| p.shaded) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(phase.from, 0.0), (phase.to, y_max)],
                    SHADE.filled(),
                )))
                .map_err(draw_err)?;
        }
        let tick = |v: &f64| style::tick(*v);
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .max_light_lines(0)
            .axis_style(MUTED)
            .label_style((FONT, 12).into_font().color(&TEXT))
            .axis_desc_style((FONT, 13).into_font().color(&TEXT))
            .x_desc(x_label)
            .y_desc(&self.y_label)
            .x_labels(12)
            .y_labels(5)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .draw()
            .map_err(draw_err)?;
        // Phase bounds, and their names on the first panel.
        for (i, phase) in phases.iter().enumerate() {
            if i > 0 {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(phase.from, 0.0), (phase.from, y_max)],
                        4,
                        4,
                        MUTED.stroke_width(1),
                    ))
                    .map_err(draw_err)?;
            }
            if name_phases {
                let font = (FONT, 13).into_font().color(&MUTED).pos(Pos::new(HPos::Center, VPos::Top));
                let mid = (phase.from.max(x0) + phase.to.min(x1)) / 2.0;
                chart
                    .draw_series(std::iter::once(Text::new(phase.label.clone(), (mid, y_max * 0.98), font)))
                    .map_err(draw_err)?;
            }
        }
        for r in &self.references {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x0, r.value), (x1, r.value)],
                    7,
                    5,
                    r.color.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
        if self.stacked {
            // The largest running sum first, each smaller one over it.
            for (s, points) in self.series.iter().zip(&drawn).rev() {
                chart
                    .draw_series(
                        AreaSeries::new(points.iter().copied(), 0.0, style::lighten(s.color, 0.6))
                            .border_style(s.color),
                    )
                    .map_err(draw_err)?;
            }
        } else {
            for (s, points) in self.series.iter().zip(&drawn) {
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), s.color.stroke_width(2)))
                    .map_err(draw_err)?;
            }
        }

        let mut entries: Vec<(Swatch, &str)> = self
            .series
            .iter()
            .map(|s| {
                (if self.stacked { Swatch::Filled(s.color) } else { Swatch::Line(s.color) }, s.label.as_str())
            })
            .collect();
        entries.extend(self.references.iter().map(|r| (Swatch::Dashed(r.color), r.label.as_str())));
        if name_phases {
            entries.extend(
                phases
                    .iter()
                    .filter(|p| p.shaded)
                    .map(|p| (Swatch::Shaded(SHADE.mix(2.0)), p.label.as_str())),
            );
        }
        style::legend(&legend_area, &entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline() -> Timeline {
        Timeline {
            title: "a run".into(),
            notes: vec!["on this machine".into()],
            x_label: "s".into(),
            phases: vec![
                Phase { label: "calm".into(), from: 0.0, to: 10.0, shaded: false },
                Phase { label: "surge".into(), from: 10.0, to: 20.0, shaded: true },
            ],
            panels: vec![
                Panel {
                    title: "served".into(),
                    y_label: "packets/s".into(),
                    series: vec![Series::new("site a", style::palette(0), vec![(0.0, 100.0), (19.0, 900.0)])],
                    references: vec![Reference::new("capacity of a", 800.0, style::palette(5))],
                    ..Panel::default()
                },
                Panel {
                    title: "shares".into(),
                    y_label: "%".into(),
                    series: vec![
                        Series::new("a", style::palette(0), vec![(0.0, 100.0), (19.0, 50.0)]),
                        Series::new("b", style::palette(1), vec![(0.0, 0.0), (19.0, 50.0)]),
                    ],
                    stacked: true,
                    y_max: Some(100.0),
                    ..Panel::default()
                },
            ],
            checks: vec![
                Check::new("the surge spilled", true, "up to 54 %"),
                Check::new("every packet <accounted> & counted", false, "a kept 3"),
            ],
        }
    }

    #[test]
    fn the_svg_names_every_series_reference_phase_and_check() {
        let svg = timeline().svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in
            ["a run", "on this machine", "served", "site a", "capacity of a", "calm", "surge", "shares"]
        {
            assert!(crate::texts(&svg).contains(&text.to_owned()), "{text} is not a text of the figure");
        }
        // Text is escaped, so the document stays well-formed whatever a label says.
        assert!(svg.contains("every packet &lt;accounted&gt; &amp; counted"));
        let texts = crate::texts(&svg);
        assert!(texts.contains(&"PASS".to_owned()) && texts.contains(&"FAIL".to_owned()));
    }

    #[test]
    fn stacked_series_are_running_sums() {
        let t = timeline();
        assert_eq!(t.panels[1].drawn()[1], [(0.0, 100.0), (19.0, 100.0)]);
        assert_eq!(t.panels[0].drawn()[0], t.panels[0].series[0].points);
    }

    #[test]
    fn the_time_axis_covers_points_and_phases() {
        assert_eq!(timeline().x_range(), (0.0, 20.0));
        assert_eq!(Timeline::default().x_range(), (0.0, 1.0));
        assert!(Timeline::default().svg().is_ok(), "an empty figure still draws");
    }
}
