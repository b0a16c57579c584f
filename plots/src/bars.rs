//! Horizontal bar charts: one bar per named figure, a baseline measured in the same run
//! (the no-op program, the kernel's own path) and reference lines (published figures, a
//! line rate), each bar annotated with its relation to the baseline.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    PlotError, WIDTH, draw_err,
    style::{self, Area, FONT, GRID, MUTED, Reference, Rgb, Swatch, TEXT},
};

/// One figure: its name, value and what to print after the bar (e.g. "+12.3 ns over noop").
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub note: String,
    pub color: Rgb,
}

/// One chart of bars on a common value axis starting at 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarChart {
    pub title: String,
    /// The value axis: what and in which unit.
    pub unit: String,
    pub bars: Vec<Bar>,
    /// Vertical lines across the bars: the baseline first, then published figures.
    pub references: Vec<Reference>,
}

/// Several bar charts under one title, as one figure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bars {
    pub title: String,
    pub notes: Vec<String>,
    pub charts: Vec<BarChart>,
}

const BAR: u32 = 26;
/// Caption, axis and the references' legend around a chart's bars.
const FRAME: u32 = 80;
const LEGEND_ROW: u32 = 19;
const LABEL_WIDTH: u32 = 250;

impl BarChart {
    fn height(&self) -> u32 {
        FRAME + BAR * self.bars.len().max(1) as u32 + LEGEND_ROW * self.references.len() as u32
    }

    fn draw(&self, area: &Area<'_>) -> Result<(), PlotError> {
        let legend_height = LEGEND_ROW * self.references.len() as u32 + 12;
        let (chart_area, legend_area) = area.split_vertically(self.height() - legend_height);
        let n = self.bars.len().max(1);
        let top = self
            .bars
            .iter()
            .map(|b| b.value)
            .chain(self.references.iter().map(|r| r.value))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        // Room on the right for the notes after the longest bar.
        let x_max = style::nice_ceiling(top * 1.3);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.title, (FONT, 16).into_font().color(&TEXT))
            .margin_left(12)
            .margin_right(24)
            .x_label_area_size(36)
            .y_label_area_size(LABEL_WIDTH)
            .build_cartesian_2d(0.0..x_max, 0.0..n as f64)
            .map_err(draw_err)?;
        let tick = |v: &f64| style::tick(*v);
        // Bar i occupies the band n-1-i .. n-i, so the first bar is at the top.
        let names: Vec<&str> = self.bars.iter().map(|b| b.label.as_str()).collect();
        let band_name = |y: &f64| {
            let band = y.floor() as usize;
            match (y.fract() - 0.5).abs() < 1e-6 && band < n {
                true => names.get(n - 1 - band).copied().unwrap_or_default().to_owned(),
                false => String::new(),
            }
        };
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .max_light_lines(0)
            .axis_style(MUTED)
            .label_style((FONT, 12).into_font().color(&TEXT))
            .axis_desc_style((FONT, 13).into_font().color(&TEXT))
            .disable_y_mesh()
            .x_desc(&self.unit)
            .x_label_formatter(&tick)
            .y_labels(2 * n + 1)
            .y_label_formatter(&band_name)
            .draw()
            .map_err(draw_err)?;
        let note_font = (FONT, 12).into_font().color(&MUTED).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, bar) in self.bars.iter().enumerate() {
            let band = (n - 1 - i) as f64;
            let value = if bar.value.is_finite() { bar.value.max(0.0) } else { 0.0 };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, band + 0.18), (value, band + 0.82)],
                    bar.color.mix(0.85).filled(),
                )))
                .map_err(draw_err)?;
            let text = match bar.note.is_empty() {
                true => style::tick(bar.value),
                false => format!("{}  {}", style::tick(bar.value), bar.note),
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (value + x_max * 0.008, band + 0.5),
                    note_font.clone(),
                )))
                .map_err(draw_err)?;
        }
        for r in &self.references {
            chart
                .draw_series(DashedLineSeries::new(
                    [(r.value, 0.0), (r.value, n as f64)],
                    6,
                    4,
                    r.color.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
        let labels: Vec<String> =
            self.references.iter().map(|r| format!("{}: {}", r.label, style::tick(r.value))).collect();
        let entries: Vec<(Swatch, &str)> =
            self.references.iter().zip(&labels).map(|(r, l)| (Swatch::Dashed(r.color), l.as_str())).collect();
        style::legend(&legend_area.margin(0, 0, LABEL_WIDTH as i32 - 40, 0), &entries)
    }
}

impl Bars {
    /// The figure as an SVG document.
    pub fn svg(&self) -> Result<String, PlotError> {
        let header = style::header_height(&self.notes);
        let heights: Vec<u32> = self.charts.iter().map(BarChart::height).collect();
        let height = header + heights.iter().sum::<u32>();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            let (head, mut rest) = root.split_vertically(header);
            style::header(&head, &self.title, &self.notes)?;
            for (chart, h) in self.charts.iter().zip(heights) {
                let (this, below) = rest.split_vertically(h);
                chart.draw(&this)?;
                rest = below;
            }
            root.present().map_err(draw_err)?;
        }
        Ok(svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bar_and_reference_is_named_in_the_svg() {
        let figure = Bars {
            title: "bench".into(),
            notes: vec!["quick".into()],
            charts: vec![BarChart {
                title: "per packet".into(),
                unit: "ns/pkt".into(),
                bars: vec![
                    Bar { label: "noop".into(), value: 20.0, note: String::new(), color: style::palette(0) },
                    Bar {
                        label: "decap".into(),
                        value: 61.5,
                        note: "+41.5 over noop".into(),
                        color: style::palette(1),
                    },
                ],
                references: vec![Reference::new("10 GbE line rate", 67.2, style::palette(5))],
            }],
        };
        let svg = figure.svg().unwrap();
        for text in [
            "bench",
            "quick",
            "per packet",
            "noop",
            "decap",
            "61.5  +41.5 over noop",
            "10 GbE line rate: 67.2",
        ] {
            assert!(crate::texts(&svg).contains(&text.to_owned()), "{text} is not a text of the figure");
        }
    }
}
