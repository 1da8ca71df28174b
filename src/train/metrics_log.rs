//! What rank 0 reports: one human line per log interval on stderr (through `tracing`) and
//! one JSON object per interval in `RUNDIR/metrics.jsonl` for machines.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// One interval's record (`metrics.jsonl` line).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Record {
    pub step: u64,
    #[serde(deserialize_with = "nan_from_null")]
    pub epoch: f64,
    /// Mean global loss over the interval's steps.
    #[serde(deserialize_with = "nan_from_null")]
    pub loss: f64,
    /// Loss of the interval's last step exactly (what resume tests compare).
    #[serde(deserialize_with = "nan_from_null")]
    pub last_loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub lr: f64,
    /// Global gradient norm before clipping (last step of the interval).
    #[serde(deserialize_with = "nan_from_null")]
    pub grad_norm: f64,
    /// Global examples and tokens per second over the interval (all ranks).
    #[serde(deserialize_with = "nan_from_null")]
    pub samples_per_s: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub tokens_per_s: f64,
    /// Resident memory of rank 0 in MiB.
    #[serde(deserialize_with = "nan_from_null")]
    pub rss_mib: f64,
    /// Unix time (s) the record was made: TensorBoard's time axis, also when a resumed run
    /// replays the record (logs from before this field read as NaN).
    #[serde(default = "unmeasured", deserialize_with = "nan_from_null")]
    pub wall_time: f64,
}

fn unmeasured() -> f64 {
    f64::NAN
}

/// JSON has no NaN: serde_json writes a NaN (a figure not measured on that step, e.g. the
/// gradient norm when nothing clips it) as `null`, and this reads it back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    /// The records kept from an earlier run of the directory (a resume's first steps).
    pub kept: Vec<Record>,
}

impl MetricsLog {
    /// Opens `RUNDIR/metrics.jsonl` keeping only the records up to `resume_step` (a killed
    /// run may have logged steps its last checkpoint does not hold); a run that starts at
    /// step 0 — fresh, or `--resume` with no checkpoint — starts an empty log, so every step
    /// is logged once.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let step = resume_step.unwrap_or(0);
        let kept: Vec<(String, Record)> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Record>(l).ok().map(|r| (l.to_string(), r)))
            .filter(|(_, r)| r.step <= step)
            .collect();
        crate::atomic::write_file(&path, |w| kept.iter().try_for_each(|(l, _)| writeln!(w, "{l}")))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "cannot open", e))?;
        Ok(MetricsLog { path, file, kept: kept.into_iter().map(|(_, r)| r).collect() })
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r).expect("record serialises");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, "cannot append", e))
    }
}

/// Reads a metrics.jsonl (tests, reports).
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read", e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::input(path, crate::error::Location::Line(i + 1), "record", e.to_string()))
        })
        .collect()
}

/// The human line.
pub fn format_line(r: &Record, max_steps: u64) -> String {
    format!(
        "step {:>6}/{max_steps} | epoch {:.2} | loss {:.4} | lr {:.3e} | grad-norm {:.3} | {:.1} samples/s | {:.0} tokens/s | rss {:.0} MiB",
        r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.samples_per_s, r.tokens_per_s, r.rss_mib
    )
}

/// Resident set size of this process in MiB (Linux /proc; 0 elsewhere).
pub fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, grad_norm: f64) -> Record {
        Record {
            step,
            epoch: 0.1,
            loss: 1.0,
            last_loss: 1.0,
            lr: 1e-4,
            grad_norm,
            samples_per_s: 2.0,
            tokens_per_s: 3.0,
            rss_mib: 4.0,
            wall_time: 5.0,
        }
    }

    #[test]
    fn unmeasured_figures_round_trip_and_survive_a_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(tmp.path(), None).unwrap();
        log.write(&record(1, 0.5)).unwrap();
        log.write(&record(2, f64::NAN)).unwrap();
        log.write(&record(3, 0.7)).unwrap();
        drop(log);
        let back = read(&tmp.path().join("metrics.jsonl")).unwrap();
        assert!(back[1].grad_norm.is_nan());
        // Resuming at step 2 keeps steps 1 and 2 (the NaN line included), drops 3.
        drop(MetricsLog::open(tmp.path(), Some(2)).unwrap());
        let kept = read(&tmp.path().join("metrics.jsonl")).unwrap();
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_run_from_step_zero_starts_an_empty_log() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("metrics.jsonl"), serde_json::to_string(&record(5, 1.0)).unwrap() + "\n")
            .unwrap();
        let mut log = MetricsLog::open(tmp.path(), None).unwrap();
        log.write(&record(1, 1.0)).unwrap();
        let steps: Vec<u64> = read(&tmp.path().join("metrics.jsonl")).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [1], "a --resume without a checkpoint must not keep the old run's steps");
    }
}
