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
    pub epoch: f64,
    /// Mean global loss over the interval's steps.
    pub loss: f64,
    /// Loss of the interval's last step exactly (what resume tests compare).
    pub last_loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping (last step of the interval).
    pub grad_norm: f64,
    /// Global examples and tokens per second over the interval (all ranks).
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    /// Resident memory of rank 0 in MiB.
    pub rss_mib: f64,
}

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `RUNDIR/metrics.jsonl`; on resume at `resume_step` drops records after it (a
    /// killed run may have logged steps its last checkpoint does not hold).
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let Some(step) = resume_step {
            let kept: Vec<String> = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| serde_json::from_str::<Record>(l).map(|r| r.step <= step).unwrap_or(false))
                .map(|l| l.to_string())
                .collect();
            crate::atomic::write_file(&path, |w| kept.iter().try_for_each(|l| writeln!(w, "{l}")))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "cannot open", e))?;
        Ok(MetricsLog { path, file })
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
