//! Figures as self-contained SVG documents, drawn with plotters' SVG backend: one file that
//! any browser or image viewer shows, made without a browser, a font file or a system
//! library (see Cargo.toml). Used by `cargo xtask` for the lab's report (`run --report`),
//! the benchmark's figures (from its JSON) and the steering simulator's runs.
//!
//! - [`timeline`]: time series stacked in panels over one time axis, with phases marked
//!   across all of them (calm, surge, calm), reference lines (capacity, target) and a
//!   table of checks below.
//! - [`bars`]: horizontal bar charts of named figures against a baseline and reference
//!   lines (benchmark cases against the no-op and published figures).
//! - [`table`]: the table of checks (pass/fail, what was checked, what was seen).
//!
//! The types are plain data: the caller decides what to plot; nothing here knows about
//! sites, packets or the benchmark.

pub mod bars;
mod style;
pub mod table;
pub mod timeline;

pub use bars::{Bar, BarChart, Bars};
pub use style::{Reference, Rgb, palette};
pub use table::Check;
pub use timeline::{Panel, Phase, Series, Timeline};

/// Drawing failed (plotters reports backend and layout errors as text).
#[derive(Debug, thiserror::Error)]
#[error("drawing the figure: {0}")]
pub struct PlotError(String);

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// The figure's width in pixels (every figure is this wide; heights follow the content).
pub const WIDTH: u32 = 1200;

/// The texts of an SVG document as plotters writes them (`<text ...>\nTEXT\n</text>`).
#[cfg(test)]
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_owned()))
        .collect()
}
