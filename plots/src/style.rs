//! What every figure shares: colours, reference lines, the header, the legend beside a
//! panel, and axis ranges rounded to readable ticks.

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{PlotError, draw_err};

pub use plotters::style::RGBColor as Rgb;

/// Colours that stay apart from each other on white and for the common colour-vision
/// deficiencies (Okabe–Ito), in the order series get them.
const PALETTE: [Rgb; 8] = [
    Rgb(0, 114, 178),
    Rgb(230, 159, 0),
    Rgb(0, 158, 115),
    Rgb(204, 121, 167),
    Rgb(86, 180, 233),
    Rgb(213, 94, 0),
    Rgb(240, 228, 66),
    Rgb(0, 0, 0),
];

/// The `i`-th colour of the palette (wrapping around).
pub fn palette(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// `c` mixed with white (`keep` of the colour), opaque: stacked areas must not show
/// each other through.
pub(crate) fn lighten(c: Rgb, keep: f64) -> Rgb {
    let mix = |v: u8| (f64::from(v) * keep + 255.0 * (1.0 - keep)).round() as u8;
    Rgb(mix(c.0), mix(c.1), mix(c.2))
}

pub(crate) const TEXT: Rgb = Rgb(40, 40, 40);
pub(crate) const MUTED: Rgb = Rgb(110, 110, 110);
pub(crate) const GRID: Rgb = Rgb(232, 232, 232);
pub(crate) const FONT: &str = "sans-serif";

/// A line at a fixed value across a chart: a capacity, a target, a published figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub label: String,
    pub value: f64,
    pub color: Rgb,
}

impl Reference {
    pub fn new(label: impl Into<String>, value: f64, color: Rgb) -> Reference {
        Reference { label: label.into(), value, color }
    }
}

pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const TITLE_LINE: u32 = 34;
const NOTE_LINE: u32 = 17;

pub(crate) fn header_height(notes: &[String]) -> u32 {
    TITLE_LINE + NOTE_LINE * notes.len() as u32 + 8
}

/// The title and, under it, one line per note.
pub(crate) fn header(area: &Area<'_>, title: &str, notes: &[String]) -> Result<(), PlotError> {
    let at = |y: u32| (12, y as i32);
    area.draw_text(title, &(FONT, 22).into_font().style(FontStyle::Bold).color(&TEXT), at(8))
        .map_err(draw_err)?;
    for (i, note) in notes.iter().enumerate() {
        area.draw_text(note, &(FONT, 13).into_font().color(&MUTED), at(TITLE_LINE + NOTE_LINE * i as u32))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// How an entry of a legend is drawn.
pub(crate) enum Swatch {
    Line(Rgb),
    Dashed(Rgb),
    Filled(Rgb),
    Shaded(RGBAColor),
}

/// A legend in its own area (beside the chart, so it never hides data): one entry a line.
pub(crate) fn legend(area: &Area<'_>, entries: &[(Swatch, &str)]) -> Result<(), PlotError> {
    let font = (FONT, 13).into_font().color(&TEXT).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (swatch, label)) in entries.iter().enumerate() {
        let y = 34 + 19 * i as i32;
        let (x0, x1) = (6, 30);
        match swatch {
            Swatch::Line(c) => area.draw(&PathElement::new([(x0, y), (x1, y)], c.stroke_width(3))),
            Swatch::Dashed(c) => {
                for x in (x0..x1).step_by(8) {
                    area.draw(&PathElement::new([(x, y), ((x + 4).min(x1), y)], c.stroke_width(2)))
                        .map_err(draw_err)?;
                }
                Ok(())
            }
            Swatch::Filled(c) => {
                area.draw(&Rectangle::new([(x0, y - 6), (x1, y + 6)], lighten(*c, 0.6).filled()))
            }
            Swatch::Shaded(c) => area.draw(&Rectangle::new([(x0, y - 6), (x1, y + 6)], c.filled())),
        }
        .map_err(draw_err)?;
        area.draw_text(label, &font, (x1 + 8, y)).map_err(draw_err)?;
    }
    Ok(())
}

/// `v` rounded up to 1, 2, 2.5 or 5 times a power of ten, so that the axis ends on a tick.
pub(crate) fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    let step =
        [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|s| s * magnitude >= v * (1.0 - 1e-12)).unwrap_or(10.0);
    step * magnitude
}

/// A tick label without needless decimals: 1200, 3, 2.5, 0.75.
pub(crate) fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_end_on_a_readable_tick() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(880.0), 1000.0);
        assert_eq!(nice_ceiling(1120.0), 2000.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
    }

    #[test]
    fn ticks_drop_needless_decimals() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1200.0), "1200");
        assert_eq!(tick(3.0), "3");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.75), "0.75");
    }
}
