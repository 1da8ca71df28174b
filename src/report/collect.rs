//! Reads a sweep directory into one row per point.
//!
//! A report is often made while a sweep is still running, so a point that has not finished
//! (or finished without evaluation) is still a row, with null metrics, and one warning
//! lists such points. What is there must be well formed, though: a malformed file is an
//! error naming the file (and the line), never a silently missing number.
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Location, Result};
use crate::sweep::layout::{AxisGroup, PointEntry, PointState, SweepManifest, STATE_JSON, SWEEP_JSON};

#[derive(Debug, Default, Deserialize)]
struct TrainFile {
    #[serde(default)]
    steps: Option<i64>,
    #[serde(default)]
    world_size: Option<i64>,
    #[serde(default)]
    parameters: Option<i64>,
    #[serde(default)]
    train_seconds: Option<f64>,
}

/// `run/world.json`: what the report reads of it.
#[derive(Debug, Default, Deserialize)]
struct WorldFile {
    #[serde(default)]
    nodes: Option<i64>,
}

/// Training figures of one point; each is null when its file is not there yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Training {
    /// Trained parameters (`train.json`; runs of older versions have none).
    pub parameters: Option<i64>,
    pub steps: Option<i64>,
    pub world_size: Option<i64>,
    /// Distinct hosts the run's ranks ran on (`world.json`).
    pub nodes: Option<i64>,
    pub train_seconds: Option<f64>,
    /// The loss of the last `metrics.jsonl` record.
    pub final_loss: Option<f64>,
    /// Mean of `samples_per_s` over the logged intervals (global, all ranks).
    pub mean_samples_per_s: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct PointRow {
    pub name: String,
    pub family: String,
    /// Axis key → value; keys the point does not set are absent (null in the table).
    pub values: Map<String, Value>,
    /// From `state.json`; `pending` when the point has none (as `grdr sweep status` says).
    pub state: String,
    pub attempts: Option<i64>,
    /// `eval/metrics.json` as written (empty when not evaluated yet).
    pub metrics: Map<String, Value>,
    pub training: Training,
    /// The point's run directory (`SWEEPDIR/points/<name>/run`).
    pub run_dir: std::path::PathBuf,
}

#[derive(Debug, Clone)]
pub struct Results {
    pub sweep: String,
    pub axes: Vec<String>,
    /// The declared axes (a zipped one holds several of `axes`), covering `axes` in order.
    pub groups: Vec<AxisGroup>,
    /// Union of the metric keys over all points, in order of first appearance (so the
    /// order of `metrics.json` itself, then keys only some points have).
    pub metric_names: Vec<String>,
    pub rows: Vec<PointRow>,
}

impl Results {
    /// Rows in which `metric` is a number.
    pub fn has_metric(&self, metric: &str) -> bool {
        self.rows.iter().any(|r| r.metrics.get(metric).is_some_and(Value::is_number))
    }
}

/// The state `grdr sweep` gives a point whose run finished (training and evaluation).
pub const DONE: &str = "done";

/// Reads `sweep.json` and every point under `sweep_dir`.
pub fn collect(sweep_dir: &Path) -> Result<Results> {
    let sweep_path = sweep_dir.join(SWEEP_JSON);
    if !sweep_path.is_file() {
        return Err(Error::usage(
            "SWEEPDIR",
            format!("{} is not a sweep directory (no sweep.json)", sweep_dir.display()),
        ));
    }
    let sweep: SweepManifest = read_json(&sweep_path, "sweep")?
        .ok_or_else(|| Error::usage("SWEEPDIR", format!("{} vanished while reading", sweep_path.display())))?;
    let mut rows = Vec::with_capacity(sweep.points.len());
    let mut metric_names: Vec<String> = Vec::new();
    for spec in sweep.points {
        let row = read_point(sweep_dir, spec)?;
        for key in row.metrics.keys() {
            if !metric_names.contains(key) {
                metric_names.push(key.clone());
            }
        }
        rows.push(row);
    }
    let unfinished: Vec<String> =
        rows.iter().filter(|r| r.metrics.is_empty()).map(|r| format!("{} ({})", r.name, r.state)).collect();
    if !unfinished.is_empty() {
        tracing::warn!(
            "{} of {} points have no metrics yet; their rows have null metrics: {}",
            unfinished.len(),
            rows.len(),
            unfinished.join(", ")
        );
    }
    let groups = axis_groups(&sweep.axes, sweep.axis_groups);
    Ok(Results { sweep: sweep.name, axes: sweep.axes, groups, metric_names, rows })
}

/// The manifest's groups when they cover its keys exactly, in order; else (a sweep.json
/// written before groups existed) every key its own axis.
fn axis_groups(axes: &[String], declared: Vec<AxisGroup>) -> Vec<AxisGroup> {
    let covered: Vec<&String> = declared.iter().flat_map(|g| &g.keys).collect();
    if !declared.is_empty() && covered.len() == axes.len() && covered.iter().zip(axes).all(|(a, b)| *a == b) {
        return declared;
    }
    axes.iter()
        .map(|k| AxisGroup { label: k.rsplit('.').next().unwrap_or(k).to_owned(), keys: vec![k.clone()] })
        .collect()
}

fn read_point(sweep_dir: &Path, spec: PointEntry) -> Result<PointRow> {
    let dir = sweep_dir.join(&spec.dir);
    let run = dir.join("run");
    let state: Option<PointState> = read_json(&dir.join(STATE_JSON), "state")?;
    let (state, attempts) = match state {
        Some(s) => (s.state.as_str().to_owned(), Some(i64::from(s.attempts))),
        // As `grdr sweep status` reads it: written, never started.
        None => ("pending".to_owned(), None),
    };
    let metrics: Map<String, Value> = read_json(&run.join("eval").join("metrics.json"), "metrics")?.unwrap_or_default();
    let train: TrainFile = read_json(&run.join("train.json"), "train")?.unwrap_or_default();
    let world: WorldFile = read_json(&run.join("world.json"), "world")?.unwrap_or_default();
    // A running point may be appending its last record as we read; only a finished run's
    // log must be complete.
    let (final_loss, mean_samples_per_s) = read_log(&run.join("metrics.jsonl"), state != DONE)?;
    Ok(PointRow {
        name: spec.name,
        family: spec.family,
        values: spec.values,
        state,
        attempts,
        metrics,
        training: Training {
            parameters: train.parameters,
            steps: train.steps,
            world_size: train.world_size,
            nodes: world.nodes,
            train_seconds: train.train_seconds,
            final_loss,
            mean_samples_per_s,
        },
        run_dir: run,
    })
}

/// Reads a file that may not exist yet (`None`); any other failure is an error naming it.
fn read_text(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, "cannot read", e)),
    }
}

/// Parses a JSON file into `T`; `field` names what was expected in the error.
pub(super) fn read_json<T: DeserializeOwned>(path: &Path, field: &str) -> Result<Option<T>> {
    let Some(text) = read_text(path)? else { return Ok(None) };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::input(path, Location::Line(e.line()), field, e.to_string()))
}

/// Final loss and mean samples/s from a `metrics.jsonl` (see `train::metrics_log::Record`).
/// With `allow_partial_tail`, a last line without its newline is being written and skipped.
fn read_log(path: &Path, allow_partial_tail: bool) -> Result<(Option<f64>, Option<f64>)> {
    let Some(text) = read_text(path)? else { return Ok((None, None)) };
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    if allow_partial_tail && lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    let mut final_loss = None;
    let (mut rate_sum, mut rate_n) = (0.0, 0usize);
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let record: Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| Error::input(path, Location::Line(i + 1), "record", e.to_string()))?;
        final_loss = record.get("loss").and_then(Value::as_f64).or(final_loss);
        if let Some(rate) = record.get("samples_per_s").and_then(Value::as_f64) {
            rate_sum += rate;
            rate_n += 1;
        }
    }
    Ok((final_loss, (rate_n > 0).then(|| rate_sum / rate_n as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_figures_and_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, "{\"step\":10,\"loss\":2.0,\"samples_per_s\":100.0}\n{\"step\":20,\"loss\":1.5,\"samples_per_s\":300.0}\n{\"step\":30,\"lo").unwrap();
        assert_eq!(read_log(&path, true).unwrap(), (Some(1.5), Some(200.0)));
        let err = read_log(&path, false).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:line 3"), "{err}");
        assert_eq!(read_log(&dir.path().join("absent.jsonl"), false).unwrap(), (None, None));
    }
}
