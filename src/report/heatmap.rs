//! Alignment matrices drawn as heatmaps side by side (Wu et al. Fig. 5): one panel per
//! matrix, document tokens down, query tokens across, white (0) to dark blue (the panel's
//! largest weight). PNG and SVG, as every grdr figure.
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::FAMILY;
use super::plot::write_png_svg;
use crate::analysis::HeatmapPanel as Panel;
use crate::error::Result;

/// Pixels per cell, and room for the labels around each panel.
const CELL: u32 = 22;
const MARGIN_LEFT: u32 = 170;
const MARGIN_BOTTOM: u32 = 150;
const MARGIN_TOP: u32 = 70;

fn panel_size(p: &Panel) -> (u32, u32) {
    let w = MARGIN_LEFT + CELL * p.cols.len().max(1) as u32 + 40;
    let h = MARGIN_TOP + CELL * p.rows.len().max(1) as u32 + MARGIN_BOTTOM;
    (w.max(420), h)
}

fn size(panels: &[Panel]) -> (u32, u32) {
    let w = panels.iter().map(|p| panel_size(p).0).sum::<u32>().max(420);
    let h = panels.iter().map(|p| panel_size(p).1).max().unwrap_or(300) + 40;
    (w, h)
}

/// Labels are cut to 14 characters so a long token cannot push the matrix off the page.
fn short(label: &str) -> String {
    let l: String = label.chars().take(14).collect();
    if label.chars().count() > 14 {
        format!("{l}…")
    } else {
        l
    }
}

fn shade(v: f64, max: f64) -> RGBColor {
    let t = if max > 0.0 { (v / max).clamp(0.0, 1.0) } else { 0.0 };
    let mix = |dark: f64| (255.0 + (dark - 255.0) * t).round() as u8;
    RGBColor(mix(8.0), mix(48.0), mix(107.0))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (m, n) = (p.rows.len() as i32, p.cols.len() as i32);
    let max = p.values.iter().flatten().copied().fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 17))
        .margin(10)
        .x_label_area_size(MARGIN_BOTTOM - 30)
        .y_label_area_size(MARGIN_LEFT - 20)
        // An integer range's segments include its end: 0..n-1 gives the n cells.
        .build_cartesian_2d((0..n.max(1) - 1).into_segmented(), (0..m.max(1) - 1).into_segmented())?;
    let label = |names: &[String], v: &SegmentValue<i32>, flip: bool| -> String {
        match v {
            SegmentValue::CenterOf(i) => {
                let i = if flip { m - 1 - *i } else { *i };
                names.get(i as usize).map(|s| short(s)).unwrap_or_default()
            }
            _ => String::new(),
        }
    };
    // The cells first: the rotated column labels start at the plot's edge, and cells drawn
    // after them would cover their first letters.
    chart.draw_series(p.values.iter().enumerate().flat_map(|(i, row)| {
        let y = m - 1 - i as i32;
        row.iter().enumerate().map(move |(j, &v)| {
            let j = j as i32;
            Rectangle::new(
                [
                    (SegmentValue::Exact(j), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(j + 1), SegmentValue::Exact(y + 1)),
                ],
                shade(v, max).filled(),
            )
        })
    }))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n as usize)
        .y_labels(m as usize)
        // Column labels are drawn below, rotated, starting at the plot's edge.
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|v| label(&p.rows, v, true))
        .y_label_style((FAMILY, 12))
        .x_desc(&p.col_label)
        .y_desc(&p.row_label)
        .axis_desc_style((FAMILY, 14))
        .draw()?;
    let style = TextStyle::from((FAMILY, 12).into_font().transform(FontTransform::Rotate90))
        .pos(Pos::new(HPos::Left, VPos::Center));
    let base = area.get_base_pixel();
    for j in 0..n {
        let (x, y) = chart.backend_coord(&(SegmentValue::CenterOf(j), SegmentValue::Exact(0)));
        let text = label(&p.cols, &SegmentValue::CenterOf(j), false);
        area.draw(&Text::new(text, (x - base.0, y - base.1 + 6), style.clone()))?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FAMILY, 20))?;
    let mut rest = root.clone();
    for p in panels {
        let (w, h) = panel_size(p);
        let (left, right) = rest.split_horizontally(w);
        // Each panel keeps its own height (cells stay square), top-aligned.
        let (panel, _) = left.split_vertically(h);
        draw_panel(&panel, p)?;
        rest = right;
    }
    root.present()
}

/// Draws `panels` side by side as `dir/<stem>.png` and `.svg`.
pub fn write_heatmaps(dir: &Path, stem: &str, title: &str, panels: &[Panel]) -> Result<[PathBuf; 2]> {
    let dims = size(panels);
    write_png_svg(
        dir,
        stem,
        |png| draw(&BitMapBackend::new(png, dims).into_drawing_area(), title, panels).map_err(|e| e.to_string()),
        |svg| draw(&SVGBackend::with_string(svg, dims).into_drawing_area(), title, panels).map_err(|e| e.to_string()),
    )
}
