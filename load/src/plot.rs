//! SVG plots of a report's series.
//!
//! Owns drawing every series of a report as one panel of a single SVG
//! (stacked vertically) with `plotters`' SVG backend. Must never read or
//! measure anything itself.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{LoadError, Result};
use crate::report::Series;

const PANEL_HEIGHT: u32 = 280;
const WIDTH: u32 = 900;

fn err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Plot(e.to_string())
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let lo = lo.min(0.0);
    if hi <= lo {
        (lo, lo + 1.0)
    } else {
        (lo, hi * 1.05)
    }
}

/// Draws `series` into `path` (one panel each; an empty list draws a note).
pub fn draw(series: &[Series], path: &Path) -> Result<()> {
    let panels = series.len().max(1) as u32;
    let root = SVGBackend::new(path, (WIDTH, PANEL_HEIGHT * panels)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((panels as usize, 1));
    for (s, area) in series.iter().zip(areas.iter()) {
        let (x0, x1) = range(s.points.iter().map(|p| p.0));
        let (y0, y1) = range(s.points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(&s.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(s.x.as_str())
            .y_desc(s.y.as_str())
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), &BLUE))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
