//! The table of a run's checks: PASS or FAIL, what was checked, what was seen.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    PlotError, WIDTH, draw_err,
    style::{Area, FONT, GRID, MUTED, TEXT},
};

/// One check of a run and its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was seen: the figures behind the verdict.
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
        Check { name: name.into(), passed, detail: detail.into() }
    }
}

const ROW: u32 = 22;
const HEAD: u32 = 44;
const PASS: RGBColor = RGBColor(0, 140, 70);
const FAIL: RGBColor = RGBColor(200, 30, 30);
/// Where the name and the detail columns start.
const NAME_X: i32 = 80;
const DETAIL_X: i32 = 560;

/// The height the table takes (nothing for no checks).
pub(crate) fn height(checks: &[Check]) -> u32 {
    match checks.is_empty() {
        true => 0,
        false => HEAD + ROW * checks.len() as u32 + 12,
    }
}

pub(crate) fn draw(area: &Area<'_>, checks: &[Check]) -> Result<(), PlotError> {
    if checks.is_empty() {
        return Ok(());
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    let title = match failed {
        0 => format!("Checks: all {} passed", checks.len()),
        n => format!("Checks: {n} of {} failed", checks.len()),
    };
    let left = Pos::new(HPos::Left, VPos::Center);
    let text = |size: u32, style: FontStyle, color: &RGBColor| {
        (FONT, size, style).into_font().color(color).pos(left)
    };
    area.draw_text(&title, &text(16, FontStyle::Bold, &TEXT), (12, 18)).map_err(draw_err)?;
    for (i, check) in checks.iter().enumerate() {
        let y = (HEAD + ROW * i as u32) as i32;
        let mid = y + ROW as i32 / 2;
        if i % 2 == 0 {
            area.draw(&Rectangle::new([(8, y), (WIDTH as i32 - 8, y + ROW as i32)], GRID.mix(0.5).filled()))
                .map_err(draw_err)?;
        }
        let (verdict, color) = if check.passed { ("PASS", PASS) } else { ("FAIL", FAIL) };
        area.draw(&Rectangle::new([(14, y + 3), (64, y + ROW as i32 - 3)], color.filled()))
            .map_err(draw_err)?;
        area.draw_text(verdict, &text(12, FontStyle::Bold, &WHITE), (22, mid)).map_err(draw_err)?;
        area.draw_text(&check.name, &text(13, FontStyle::Normal, &TEXT), (NAME_X, mid)).map_err(draw_err)?;
        area.draw_text(&check.detail, &text(12, FontStyle::Normal, &MUTED), (DETAIL_X, mid))
            .map_err(draw_err)?;
    }
    Ok(())
}
