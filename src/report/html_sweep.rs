//! `grdr report SWEEPDIR --html`: the whole sweep on one page — every point's row (axes,
//! state, attempts, metrics, training figures, links to its files; sortable), then each
//! metric against each swept axis (the same figures as the PNG/SVG files, seeds averaged
//! with ±1 s.d. error bars).
use std::path::{Path, PathBuf};

use super::collect::{Results, DONE};
use super::columns::{Column, ColumnData};
use super::html::{self, short_number, Cell, Page};
use super::plot::Figure;
use crate::error::Result;

/// A point's files worth opening, relative to its directory (`points/<name>/`).
const POINT_FILES: [&str; 7] = [
    "config.toml",
    "state.json",
    "run/metrics.jsonl",
    "run/train.json",
    "run/eval/metrics.json",
    "run/eval/run.trec",
    "run/tb",
];

fn cell(col: &Column, i: usize) -> Cell {
    match &col.data {
        ColumnData::Int(_) | ColumnData::Float(_) => Cell::number(col.data.number(i), short_number),
        _ => match col.data.text(i) {
            Some(t) if col.name == "state" => Cell {
                html: format!("<span class=\"state-{}\">{}</span>", html::escape(&t), html::escape(&t)),
                sort: Some(t),
                numeric: false,
            },
            Some(t) => Cell::text(&t),
            None => Cell { numeric: false, ..Cell::null() },
        },
    }
}

/// Writes `out_dir/report.html` for the sweep at `sweep_dir`; returns its path.
pub fn write(
    sweep_dir: &Path,
    out_dir: &Path,
    results: &Results,
    columns: &[Column],
    figures: &[Figure],
) -> Result<PathBuf> {
    let done = results.rows.iter().filter(|r| r.state == DONE).count();
    let title = format!("Sweep {}", results.sweep);
    let meta = format!(
        "{done} of {} points done · axes: {} · <code>{}</code> · grdr {}",
        results.rows.len(),
        html::escape(&results.axes.join(", ")),
        html::escape(&sweep_dir.display().to_string()),
        crate::VERSION
    );
    let mut page = Page::new(&title, &meta);

    page.heading("Points");
    let mut heads: Vec<(String, bool)> = columns.iter().map(|c| (c.name.clone(), c.data.is_numeric())).collect();
    heads.push(("files".into(), false));
    let rows: Vec<(String, Vec<Cell>)> = results
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut cells: Vec<Cell> = columns.iter().map(|c| cell(c, i)).collect();
            let point_dir = row.run_dir.parent().unwrap_or(&row.run_dir);
            cells.push(Cell { html: html::file_links(out_dir, point_dir, &POINT_FILES), sort: None, numeric: false });
            (format!(" data-point=\"{}\"", html::escape(&row.name)), cells)
        })
        .collect();
    page.raw(&html::table("results", &heads, &rows));

    page.heading("Figures");
    if figures.is_empty() {
        page.raw("<p>Nothing to plot yet: no swept axis with two values has a metric.</p>");
    }
    page.figures_begin();
    for fig in figures {
        page.figure(fig)?;
    }
    page.figures_end();
    html::write(out_dir, &page.finish(&title))
}
