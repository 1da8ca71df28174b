//! Scaling plots: each metric against each swept axis, one line per model family, in the
//! look of the seeds' figures (metric vs. negatives / embedding dimension / model size /
//! corpus size, DR vs GR).
//!
//! When other axes vary too, a line is one (family, other axes' values) combination and
//! its legend says which, so no line ever joins points that differ in something not on
//! the x axis (axes that the family already fixes are left out of the label). Categorical axes get markers only (a line between two docid schemes would
//! suggest an order that is not there), nudged apart per series so each value reads as a
//! group. Colour is the family; a family's lines for other axes' values are its shades.
//! Every figure is drawn as PNG (for READMEs and slides) and SVG (for papers).
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::collect::Results;
use super::columns::{find, short_axis_names, Column};
use super::font::FAMILY;
use super::scale::{Scale, XAxis};
use crate::error::{Error, Result};

/// Pixels of the PNG; the SVG has the same user units.
const SIZE: (u32, u32) = (900, 600);

/// Lines with more points than this are drawn without markers.
const MAX_MARKED: usize = 40;

/// Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

#[derive(Debug, Clone)]
pub struct Series {
    pub family: String,
    pub label: String,
    /// (x, metric), sorted by x: the mean over seeds where the sweep has a seed axis.
    pub points: Vec<(f64, f64)>,
    /// Per point, the sample standard deviation over seeds (0 for a single run): drawn as
    /// an error bar of ±1 s.d.
    pub spread: Vec<f64>,
}

impl Series {
    /// A series of single runs (no error bars).
    pub fn new(family: String, label: String, points: Vec<(f64, f64)>) -> Series {
        let spread = vec![0.0; points.len()];
        Series { family, label, points, spread }
    }

    pub fn has_spread(&self) -> bool {
        self.spread.iter().any(|&s| s > 0.0)
    }
}

/// Seed axes (`train.seed`, `seed`) repeat a point, they do not move it: their points are
/// averaged into one with an error bar, never drawn as an x axis or told apart in a legend.
pub fn is_seed_axis(axis: &str) -> bool {
    axis.rsplit('.').next() == Some("seed")
}

/// Mean and sample standard deviation (0 for one value).
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// One figure: a metric against an axis.
#[derive(Debug, Clone)]
pub struct Figure {
    pub metric: String,
    /// The x title: the full axis key (`train.num_negatives`), or for a zipped axis its
    /// label, first key and the keys that move with it.
    pub axis: String,
    /// File stem: `<metric>-vs-<short axis name>`.
    pub stem: String,
    pub title: String,
    pub x: XAxis,
    pub series: Vec<Series>,
    /// A second metric on a right-hand y axis, drawn dashed (Zhang et al.'s Fig. 1 puts
    /// DR's Brier score beside its retrieval metric this way).
    pub secondary: Option<Secondary>,
}

/// The right-hand axis of a figure: its metric and its lines (the same families and
/// labels as the left-hand ones, so one legend serves both).
#[derive(Debug, Clone)]
pub struct Secondary {
    pub metric: String,
    pub series: Vec<Series>,
}

/// The calibration metric drawn on the right-hand axis of the headline metric's figures,
/// when the sweep computed it (`eval.calibration`).
pub const SECONDARY_METRIC: &str = "Brier";

/// Keeps file names portable: anything but letters, digits and `@._=+-` becomes `_`.
fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "@._=+-".contains(c) { c } else { '_' }).collect()
}

/// The figures to draw for `metrics` (those some point has a number for) × the swept
/// axes that take at least two values. What is skipped is said once, at info level.
pub fn plan(results: &Results, columns: &[Column], metrics: &[String]) -> Vec<Figure> {
    let short = short_axis_names(&results.axes);
    let n = results.rows.len();
    // Distinct displayed values per axis, in first-appearance order.
    let distinct: Vec<Vec<String>> = results
        .axes
        .iter()
        .map(|a| {
            let mut seen: Vec<String> = Vec::new();
            for t in (0..n).filter_map(|i| find(columns, a).and_then(|c| c.data.text(i))) {
                if !seen.contains(&t) {
                    seen.push(t);
                }
            }
            seen
        })
        .collect();
    // A zipped axis is plotted against its first key; the keys that move with it are
    // neither x axes nor legend labels of their own.
    let zipped = ZippedAxes::of(results);
    let varying: Vec<usize> = (0..results.axes.len())
        .filter(|&a| distinct[a].len() > 1 && !is_seed_axis(&results.axes[a]) && zipped.leads(a))
        .collect();
    for (a, axis) in results.axes.iter().enumerate() {
        if is_seed_axis(axis) {
            tracing::info!("axis {axis} repeats points: plotted as the mean with ±1 s.d. error bars");
        } else if let Some(leader) = zipped.leader_of(a) {
            tracing::info!(
                "axis {axis} moves with {} (zipped axis {}): plotted against it",
                results.axes[leader],
                zipped.label(a)
            );
        } else if !varying.contains(&a) {
            tracing::info!("axis {axis} takes one value; nothing to plot against it");
        }
    }
    let metrics: Vec<&String> = metrics
        .iter()
        .filter(|m| {
            let has = results.has_metric(m);
            if !has {
                tracing::info!("no point has a number for {m} yet; no plot of it");
            }
            has
        })
        .collect();

    let mut figures = Vec::new();
    for metric in metrics {
        for &a in &varying {
            let col = find(columns, &results.axes[a]).expect("every axis has a column");
            let x = if col.data.is_numeric() {
                XAxis::numeric(&(0..n).filter_map(|i| col.data.number(i)).collect::<Vec<_>>())
            } else {
                XAxis::categorical(distinct[a].clone())
            };
            let series = series_for(results, columns, metric, a, &varying, &short, &x);
            if series.is_empty() {
                continue;
            }
            let over_seeds = if series.iter().any(Series::has_spread) { ", mean ± s.d. over seeds" } else { "" };
            let (name, x_title) = zipped.names(a, results, &short);
            figures.push(Figure {
                metric: metric.clone(),
                axis: x_title.clone(),
                stem: file_safe(&format!("{metric}-vs-{name}")),
                title: format!("{metric} vs {name} (sweep {}{over_seeds})", results.sweep),
                x: x.clone(),
                series: series.clone(),
                secondary: None,
            });
            // The headline metric with Brier on a second axis, as Zhang et al.'s Fig. 1.
            if *metric == super::DEFAULT_METRICS[0] && results.has_metric(SECONDARY_METRIC) {
                let twin = series_for(results, columns, SECONDARY_METRIC, a, &varying, &short, &x);
                figures.push(Figure {
                    metric: metric.clone(),
                    axis: x_title,
                    stem: file_safe(&format!("{metric}+{SECONDARY_METRIC}-vs-{name}")),
                    title: format!(
                        "{metric} and {SECONDARY_METRIC} ({}) vs {name} (sweep {}{over_seeds})",
                        twin_style(&x),
                        results.sweep
                    ),
                    x,
                    series,
                    secondary: Some(Secondary { metric: SECONDARY_METRIC.into(), series: twin }),
                });
            }
        }
    }
    figures
}

/// Which axis keys belong to a zipped axis (one declared axis setting several keys).
struct ZippedAxes {
    /// Per key of `Results::axes`: (index of its group's first key, group label, group size).
    of_key: Vec<(usize, String, usize)>,
}

impl ZippedAxes {
    fn of(results: &Results) -> ZippedAxes {
        let mut of_key = Vec::with_capacity(results.axes.len());
        for g in &results.groups {
            let first = of_key.len();
            of_key.extend(g.keys.iter().map(|_| (first, g.label.clone(), g.keys.len())));
        }
        ZippedAxes { of_key }
    }

    /// Whether key `a` is plotted as an x axis: it is its axis's first key.
    fn leads(&self, a: usize) -> bool {
        self.of_key[a].0 == a
    }

    /// The first key of `a`'s zipped axis, when `a` only moves with it.
    fn leader_of(&self, a: usize) -> Option<usize> {
        (!self.leads(a)).then_some(self.of_key[a].0)
    }

    fn label(&self, a: usize) -> &str {
        &self.of_key[a].1
    }

    /// The name in file names and titles, and the x title, of the axis led by key `a`: a
    /// plain key as itself; a zipped axis by its label, its x title naming every key.
    fn names(&self, a: usize, results: &Results, short: &[String]) -> (String, String) {
        let (first, ref label, len) = self.of_key[a];
        if len == 1 {
            return (short[a].clone(), results.axes[a].clone());
        }
        let with: Vec<&str> = short[first + 1..first + len].iter().map(String::as_str).collect();
        let key = &results.axes[first];
        let lead = if short[first] == *label { key.clone() } else { format!("{label}: {key}") };
        (label.clone(), format!("{lead} (zipped with {})", with.join(", ")))
    }
}

/// Groups the points with a number for `metric` into lines by (family, the other varying
/// axes' values), in first-appearance order; points of one line at one x (runs that differ
/// only in their seed) become their mean and standard deviation.
fn series_for(
    results: &Results,
    columns: &[Column],
    metric: &str,
    axis: usize,
    varying: &[usize],
    short: &[String],
    x: &XAxis,
) -> Vec<Series> {
    let col = find(columns, &results.axes[axis]).expect("axis column");
    // An axis that the family fixes (`model.kind` when families are dr/gr) would only
    // repeat the family name in the legend.
    let others: Vec<(&String, &Column)> = varying
        .iter()
        .filter(|&&o| o != axis)
        .map(|&o| (&short[o], find(columns, &results.axes[o]).expect("axis column")))
        .filter(|(_, c)| !fixed_by_family(results, c))
        .collect();
    // (family, label) → x → the metric of each run there.
    type Runs = Vec<(f64, Vec<f64>)>;
    let mut lines: Vec<(String, String, Runs)> = Vec::new();
    for (i, row) in results.rows.iter().enumerate() {
        let xv = match &x.scale {
            Scale::Categorical(_) => col.data.text(i).and_then(|t| x.category_index(&t)),
            _ => col.data.number(i),
        };
        let (Some(xv), Some(y)) = (xv, row.metrics.get(metric).and_then(serde_json::Value::as_f64)) else {
            continue;
        };
        let mut label = row.family.clone();
        for (name, c) in &others {
            label.push_str(&format!(", {name}={}", c.data.text(i).unwrap_or_else(|| "-".into())));
        }
        let line = match lines.iter().position(|l| l.1 == label) {
            Some(k) => &mut lines[k],
            None => {
                lines.push((row.family.clone(), label, Vec::new()));
                lines.last_mut().expect("just pushed")
            }
        };
        match line.2.iter_mut().find(|(x, _)| *x == xv) {
            Some((_, ys)) => ys.push(y),
            None => line.2.push((xv, vec![y])),
        }
    }
    lines
        .into_iter()
        .map(|(family, label, mut at)| {
            at.sort_by(|a, b| a.0.total_cmp(&b.0));
            let stats: Vec<(f64, (f64, f64))> = at.iter().map(|(x, ys)| (*x, mean_sd(ys))).collect();
            Series {
                family,
                label,
                points: stats.iter().map(|&(x, (m, _))| (x, m)).collect(),
                spread: stats.iter().map(|&(_, (_, sd))| sd).collect(),
            }
        })
        .collect()
}

/// Whether every family takes a single value of this column.
fn fixed_by_family(results: &Results, col: &Column) -> bool {
    let mut seen: Vec<(&str, Option<String>)> = Vec::new();
    for (i, row) in results.rows.iter().enumerate() {
        let v = col.data.text(i);
        match seen.iter().find(|(f, _)| *f == row.family) {
            Some((_, w)) if *w != v => return false,
            Some(_) => {}
            None => seen.push((row.family.as_str(), v)),
        }
    }
    true
}

/// The y range: the data padded, with head room for the legend (more series, more room),
/// and not below 0 for metrics that cannot be negative.
fn y_range(fig: &Figure) -> (f64, f64) {
    series_y_range(&fig.series, fig.series.len())
}

/// How the right-hand metric is told apart: dashed lines, or on categories (no lines) its
/// hollow markers.
fn twin_style(x: &XAxis) -> &'static str {
    if matches!(x.scale, Scale::Categorical(_)) {
        "hollow markers"
    } else {
        "dashed"
    }
}

/// The y range of `series`, with head room for a legend of `legend_lines` lines.
fn series_y_range(series: &[Series], legend_lines: usize) -> (f64, f64) {
    // The ends of the error bars count as data.
    let ends =
        |sign: f64| series.iter().flat_map(move |s| s.points.iter().zip(&s.spread).map(move |(p, e)| p.1 + sign * e));
    let (lo, hi) = (ends(-1.0).fold(f64::INFINITY, f64::min), ends(1.0).fold(f64::NEG_INFINITY, f64::max));
    let span = if hi > lo { hi - lo } else { hi.abs().max(0.01) * 0.2 };
    let bottom = if lo >= 0.0 { (lo - span * 0.08).max(0.0) } else { lo - span * 0.08 };
    // The legend takes ~19 px a line of the ~470 px plot area; keep that fraction of the
    // height above the data (at most 60%: past that it overlaps rather than squash).
    let legend = ((19.0 * legend_lines as f64 + 20.0) / 470.0).min(0.6);
    let top = legend * (hi + span * 0.05 - bottom) / (1.0 - legend) + span * 0.05;
    (bottom, hi + top)
}

/// Upper left when the lines mostly rise (that corner is empty then), else upper right.
fn legend_position(fig: &Figure) -> SeriesLabelPosition {
    let rising: f64 =
        fig.series.iter().filter_map(|s| Some(s.points.last()?.1 - s.points.first()?.1)).map(f64::signum).sum();
    if matches!(fig.x.scale, Scale::Categorical(_)) || rising < 0.0 {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::UpperLeft
    }
}

/// One hue per family (DR vs GR reads at a glance, as in the seeds' figures); a family's
/// lines for other axes' values are shades of it, darkest first.
fn series_color(fig: &Figure, j: usize) -> RGBColor {
    let mut families: Vec<&str> = Vec::new();
    for s in &fig.series {
        if !families.contains(&s.family.as_str()) {
            families.push(&s.family);
        }
    }
    let family = &fig.series[j].family;
    let base = PALETTE[families.iter().position(|f| f == family).unwrap_or(0) % PALETTE.len()];
    let siblings: Vec<usize> = (0..fig.series.len()).filter(|&k| &fig.series[k].family == family).collect();
    let rank = siblings.iter().position(|&k| k == j).unwrap_or(0) as f64;
    // Up to 60% of the way to white for the last sibling.
    let t = if siblings.len() > 1 { 0.6 * rank / (siblings.len() - 1) as f64 } else { 0.0 };
    let lighten = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * t).round() as u8;
    RGBColor(lighten(base.0), lighten(base.1), lighten(base.2))
}

/// Categories: the series with a point at category `x` share 60% of its width, side by
/// side in series order, so each category's markers read as one group.
fn nudge(fig: &Figure, series: usize, x: f64) -> f64 {
    let here: Vec<usize> = (0..fig.series.len()).filter(|&j| fig.series[j].points.iter().any(|p| p.0 == x)).collect();
    let m = here.len() as f64;
    let rank = here.iter().position(|&j| j == series).unwrap_or(0) as f64;
    if m > 1.0 {
        (rank - (m - 1.0) / 2.0) * 0.6 / m
    } else {
        0.0
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (ylo, yhi) = y_range(fig);
    // Long titles (a twin-axis figure's, a long sweep name) get a smaller font rather than
    // run off the page: a sans-serif character is about 0.55 of the font size wide.
    let fits = (SIZE.0 as f64 - 40.0) / (0.55 * fig.title.chars().count().max(1) as f64);
    let caption = fits.clamp(11.0, 24.0);
    let mut builder = ChartBuilder::on(root);
    builder.caption(&fig.title, (FAMILY, caption)).margin(18).x_label_area_size(56).y_label_area_size(72);
    let Some(twin) = &fig.secondary else {
        let mut chart = builder.build_cartesian_2d(fig.x.clone(), ylo..yhi)?;
        draw_primary(&mut chart, fig)?;
        return finish(&mut chart, fig, root);
    };
    // The secondary coordinates first: they take the right-hand label area, so the primary
    // mesh labels the left side only.
    builder.right_y_label_area_size(72);
    let (lo, hi) = series_y_range(&twin.series, fig.series.len());
    let mut chart = builder.build_cartesian_2d(fig.x.clone(), ylo..yhi)?.set_secondary_coord(fig.x.clone(), lo..hi);
    draw_primary(&mut chart, fig)?;
    chart
        .configure_secondary_axes()
        .y_desc(format!("{} ({})", twin.metric, twin_style(&fig.x)))
        .axis_desc_style((FAMILY, 17))
        .label_style((FAMILY, 14))
        .draw()?;
    // The right-hand metric: the same colours (a line's family), dashed, hollow markers.
    let categorical = matches!(fig.x.scale, Scale::Categorical(_));
    for s in &twin.series {
        let j = fig.series.iter().position(|p| p.label == s.label).unwrap_or(0);
        let line = series_color(fig, j).stroke_width(2);
        let points = placed(fig, j, s, categorical);
        chart.draw_secondary_series(error_bars(&points, &s.spread, line))?;
        if !categorical {
            chart.draw_secondary_series(DashedLineSeries::new(points.iter().copied(), 8, 5, line))?;
        }
        chart.draw_secondary_series(points.iter().map(|&p| Circle::new(p, 5, line)))?;
    }
    // The legend lives on the primary chart (every label was given there).
    finish(&mut chart, fig, root)
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<XAxis, plotters::coord::types::RangedCoordf64>>;

/// The mesh and the left-hand metric's lines (with their legend entries).
fn draw_primary<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    fig: &Figure,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_mesh()
        .x_desc(x_title(fig))
        .y_desc(&fig.metric)
        .axis_desc_style((FAMILY, 17))
        .label_style((FAMILY, 14))
        // A grid at the ticks only, as the seeds' figures have.
        .max_light_lines(0)
        .draw()?;
    let categorical = matches!(fig.x.scale, Scale::Categorical(_));
    for (j, s) in fig.series.iter().enumerate() {
        let color = series_color(fig, j);
        let line = color.stroke_width(2);
        let points = placed(fig, j, s, categorical);
        // A dense line (a training curve) is the line alone; a sweep's few points are marked.
        let marked = points.len() <= MAX_MARKED;
        let markers = points.iter().filter(|_| marked).map(|&p| Circle::new(p, 5, color.filled()));
        chart.draw_series(error_bars(&points, &s.spread, line))?;
        // The legend shows what the plot draws: a line, or a marker alone.
        if categorical {
            chart
                .draw_series(markers)?
                .label(&s.label)
                .legend(move |(x, y)| Circle::new((x + 12, y), 5, color.filled()));
        } else {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), line))?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
            chart.draw_series(markers)?;
        }
    }
    Ok(())
}

/// ±1 s.d. error bars at the points with a spread (none for single runs).
fn error_bars<'p>(
    points: &'p [(f64, f64)],
    spread: &'p [f64],
    style: ShapeStyle,
) -> impl Iterator<Item = ErrorBar<f64, f64, plotters::element::ErrorBarOrientV<f64, f64>>> + 'p {
    let bars = points.iter().zip(spread).filter(|(_, e)| **e > 0.0);
    bars.map(move |(&(x, y), e)| ErrorBar::new_vertical(x, y - e, y, y + e, style, 10))
}

/// A series' points where they are drawn: categories nudged apart per series.
fn placed(fig: &Figure, j: usize, s: &Series, categorical: bool) -> Vec<(f64, f64)> {
    s.points.iter().map(|&(x, y)| (if categorical { x + nudge(fig, j, x) } else { x }, y)).collect()
}

/// The legend, then the page.
fn finish<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    fig: &Figure,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(legend_position(fig))
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, "cannot draw the plot", std::io::Error::other(e.to_string()))
}

/// `fig` as an SVG document (inlined by the HTML reports).
pub fn svg_string(fig: &Figure) -> Result<String> {
    let mut text = String::new();
    draw(&SVGBackend::with_string(&mut text, SIZE).into_drawing_area(), fig)
        .map_err(|e| draw_error(Path::new(&fig.stem), e))?;
    Ok(text)
}

/// The x axis title of `fig` (what the HTML reports name the figure by).
pub fn x_title(fig: &Figure) -> String {
    format!("{}{}", fig.axis, fig.x.suffix())
}

/// Draws `fig` as `dir/<stem>.png` and `.svg`, each under a temporary name first.
pub fn write_figure(dir: &Path, fig: &Figure) -> Result<[PathBuf; 2]> {
    write_png_svg(
        dir,
        &fig.stem,
        |png| draw(&BitMapBackend::new(png, SIZE).into_drawing_area(), fig).map_err(|e| e.to_string()),
        |svg| draw(&SVGBackend::with_string(svg, SIZE).into_drawing_area(), fig).map_err(|e| e.to_string()),
    )
}

/// Writes `dir/<stem>.png` (drawn by `png` into a temporary file that is renamed into place)
/// and `dir/<stem>.svg` (drawn by `svg` into a string, written atomically).
pub(crate) fn write_png_svg(
    dir: &Path,
    stem: &str,
    png: impl FnOnce(&Path) -> std::result::Result<(), String>,
    svg: impl FnOnce(&mut String) -> std::result::Result<(), String>,
) -> Result<[PathBuf; 2]> {
    let png_path = dir.join(format!("{stem}.png"));
    // The bitmap backend picks the encoder from the extension, so the temp name keeps it.
    let tmp = dir.join(format!(".{stem}.tmp-{}.png", std::process::id()));
    if let Err(e) = png(&tmp).map_err(|e| draw_error(&png_path, e)).and_then(|()| {
        std::fs::rename(&tmp, &png_path).map_err(|e| Error::io(&png_path, "cannot rename into place", e))
    }) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let svg_path = dir.join(format!("{stem}.svg"));
    let mut text = String::new();
    svg(&mut text).map_err(|e| draw_error(&svg_path, e))?;
    crate::atomic::write_file(&svg_path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
    Ok([png_path, svg_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges() {
        assert_eq!(file_safe("nDCG@10-vs-num_negatives"), "nDCG@10-vs-num_negatives");
        assert_eq!(file_safe("a/b c"), "a_b_c");
        let fig = Figure {
            metric: "R@100".into(),
            axis: "train.num_negatives".into(),
            stem: "s".into(),
            title: "t".into(),
            x: XAxis::numeric(&[1.0, 2.0]),
            series: vec![Series::new("dr".into(), "dr".into(), vec![(1.0, 0.2), (2.0, 0.6)])],
            secondary: None,
        };
        let (lo, hi) = y_range(&fig);
        assert!((0.0..0.2).contains(&lo) && hi > 0.6, "{lo} {hi}");
        assert_eq!(legend_position(&fig), SeriesLabelPosition::UpperLeft);
    }
}
