//! `grdr report RUNDIR --html`: one training run on one page — its curves from
//! `metrics.jsonl` (loss, learning rate, throughput, memory against the step), the end-of-run
//! metrics, the training summary, the resolved config, and links to the run's files.
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::collect::read_json;
use super::html::{self, short_number, Cell, Page};
use super::plot::{Figure, Series};
use super::scale::XAxis;
use crate::error::Result;
use crate::train::metrics_log::{self, Record};

/// The files of a run directory worth opening.
const RUN_FILES: [&str; 8] =
    ["config.toml", "metrics.jsonl", "train.json", "world.json", "eval/metrics.json", "eval/run.trec", "tb", "model"];

/// Whether `dir` looks like a `grdr train` run directory.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("metrics.jsonl").is_file() || (dir.join("config.toml").is_file() && dir.join("train.json").is_file())
}

/// One curve per figure, against the step: (stem, y title, line label, the record's figure).
type Curve = (&'static str, &'static str, &'static str, fn(&Record) -> f64);
const CURVES: [Curve; 5] = [
    ("loss", "loss", "mean over the interval", |r| r.loss),
    ("lr", "learning rate", "lr", |r| r.lr),
    ("grad_norm", "gradient norm", "before clipping", |r| r.grad_norm),
    ("samples_per_s", "samples/s", "all ranks", |r| r.samples_per_s),
    ("rss_mib", "RSS (MiB), rank 0", "rank 0", |r| r.rss_mib),
];

fn curves(run_name: &str, records: &[Record]) -> Vec<Figure> {
    let steps: Vec<f64> = records.iter().map(|r| r.step as f64).collect();
    CURVES
        .iter()
        .filter_map(|(stem, y, label, get)| {
            let points: Vec<(f64, f64)> =
                records.iter().map(|r| (r.step as f64, get(r))).filter(|p| p.1.is_finite()).collect();
            (!points.is_empty()).then(|| Figure {
                metric: y.to_string(),
                axis: "step".into(),
                stem: stem.to_string(),
                title: format!("{y} ({run_name})"),
                x: XAxis::linear(&steps),
                series: vec![Series::new("run".into(), label.to_string(), points)],
                secondary: None,
            })
        })
        .collect()
}

/// `key: value` rows of a JSON object as a two-column table.
fn object_table(id: &str, object: &Map<String, Value>) -> String {
    let rows: Vec<(String, Vec<Cell>)> = object
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Number(n) => Cell::number(n.as_f64(), short_number),
                Value::String(s) => Cell::text(s),
                Value::Null => Cell::null(),
                other => Cell::text(&other.to_string()),
            };
            (String::new(), vec![Cell::text(k), value])
        })
        .collect();
    html::table(id, &[("name".into(), false), ("value".into(), true)], &rows)
}

/// Writes `out_dir/report.html` for the run at `run_dir`; returns its path. `font`: the
/// plot font must be registered by the caller before (as for the PNG/SVG plots).
pub fn write(run_dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    let metrics_path = run_dir.join("metrics.jsonl");
    let records = if metrics_path.is_file() { metrics_log::read(&metrics_path)? } else { Vec::new() };
    let eval: Option<Map<String, Value>> = read_json(&run_dir.join("eval").join("metrics.json"), "metrics")?;
    let train: Option<Map<String, Value>> = read_json(&run_dir.join("train.json"), "train")?;
    let config = std::fs::read_to_string(run_dir.join("config.toml")).ok();
    let name = std::path::absolute(run_dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run_dir.display().to_string());

    let title = format!("Run {name}");
    let last = records.last();
    let meta = format!(
        "<code>{}</code> · {} logged intervals{} · files: {} · grdr {}",
        html::escape(&run_dir.display().to_string()),
        records.len(),
        last.map(|r| format!(", last at step {} (loss {})", r.step, short_number(r.loss))).unwrap_or_default(),
        html::file_links(out_dir, run_dir, &RUN_FILES),
        crate::VERSION
    );
    let mut page = Page::new(&title, &meta);

    page.heading("Evaluation");
    match &eval {
        Some(m) => page.raw(&object_table("metrics", m)),
        None => page.raw("<p>No end-of-run evaluation (no <code>eval/metrics.json</code>).</p>"),
    }
    page.heading("Training");
    match &train {
        Some(t) => page.raw(&object_table("training", t)),
        None => page.raw("<p>Not finished (no <code>train.json</code>).</p>"),
    }
    page.heading("Curves");
    let figures = curves(&name, &records);
    if figures.is_empty() {
        page.raw("<p>Nothing logged yet (no <code>metrics.jsonl</code> records).</p>");
    }
    page.figures_begin();
    for fig in &figures {
        page.figure(fig)?;
    }
    page.figures_end();
    page.heading("Config");
    match &config {
        Some(c) => page.preformatted(c),
        None => page.raw("<p>No <code>config.toml</code>.</p>"),
    }
    html::write(out_dir, &page.finish(&title))
}
