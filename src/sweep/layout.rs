//! SWEEPDIR, the hand-off between `grdr sweep`, its jobs, `grdr sweep status` and
//! `grdr report` (a contract: change it only together with `report/`):
//!
//! ```text
//! SWEEPDIR/sweep.toml                 copy of the sweep file
//! SWEEPDIR/sweep.json                 name, spec, backend, axes, axis_groups, points (below)
//! SWEEPDIR/points/<name>/config.toml  the point's resolved run config (every default filled)
//! SWEEPDIR/points/<name>/run/         its `grdr train` run directory (eval/metrics.json when done)
//! SWEEPDIR/points/<name>/state.json   pending|submitted|running|preempted|done|failed, job id,
//!                                     attempts, exit code, updated (unix seconds)
//! SWEEPDIR/points/<name>/train.log    local backend: the point's output
//! SWEEPDIR/data/docs-<N>/             nested corpus subsamples (a `data.corpus_docs` sweep)
//! SWEEPDIR/slurm/                     rendered sbatch scripts, job logs, jobs.json (submissions)
//! ```
//!
//! state.json is written by this crate (local runs, submission) and by the sbatch script
//! (`slurm/templates/train-array.sbatch`: start, preemption, end), always by temp + rename.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};

pub const SWEEP_JSON: &str = "sweep.json";
pub const SWEEP_TOML: &str = "sweep.toml";
pub const STATE_JSON: &str = "state.json";
pub const CONFIG_TOML: &str = "config.toml";
pub const POINTS_DIR: &str = "points";
pub const DATA_DIR: &str = "data";
pub const SLURM_DIR: &str = "slurm";
pub const JOBS_JSON: &str = "jobs.json";

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepManifest {
    pub name: String,
    /// The sweep file as given to `grdr sweep` (absolute).
    pub spec: String,
    /// `local` or `slurm`: the backend of the last `grdr sweep` run.
    pub backend: String,
    /// Every axis key, in axis order.
    pub axes: Vec<String>,
    /// The axes as the sweep file declares them: a zipped axis moves several keys together
    /// and is one x axis in the report, named by its label. Absent in sweeps written
    /// before it existed: each key is then its own axis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub axis_groups: Vec<AxisGroup>,
    pub points: Vec<PointEntry>,
}

/// One declared axis: its label (in point names) and the keys it sets, first key first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AxisGroup {
    pub label: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointEntry {
    pub name: String,
    pub index: usize,
    /// Axis key → value (JSON), in axis order.
    pub values: serde_json::Map<String, serde_json::Value>,
    /// `dr`, `colbert`, `gr-<docid scheme>` (`gr` when the scheme is unknown): one line per
    /// family in the report's plots.
    pub family: String,
    pub ranks: usize,
    /// Relative to SWEEPDIR: `points/<name>`.
    pub dir: String,
}

/// Where a point is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Written, never started.
    Pending,
    /// Handed to Slurm (waiting in the queue).
    Submitted,
    Running,
    /// Stopped by a signal after a checkpoint (exit 75); requeued on Slurm, resumed next run.
    Preempted,
    Done,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Submitted => "submitted",
            State::Running => "running",
            State::Preempted => "preempted",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// `points/<name>/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointState {
    pub state: State,
    /// Slurm `ARRAYJOB_TASK` of the last submission; none for local runs.
    pub job_id: Option<String>,
    /// Training attempts started (a preempted and requeued point has ≥ 2).
    pub attempts: u32,
    pub exit_code: Option<i32>,
    /// Unix seconds of the last change.
    pub updated: u64,
}

impl PointState {
    pub fn new(state: State) -> Self {
        PointState { state, job_id: None, attempts: 0, exit_code: None, updated: now() }
    }

    pub fn read(path: &Path) -> Result<PointState> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read", e))?;
        serde_json::from_str(&text).map_err(|e| Error::input(path, Location::Line(e.line()), "state", e.to_string()))
    }

    /// Writes `self` with `updated` = now.
    pub fn write(&mut self, path: &Path) -> Result<()> {
        self.updated = now();
        crate::atomic::write_json(path, self)
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The paths of one SWEEPDIR.
#[derive(Debug, Clone)]
pub struct SweepDir {
    pub root: PathBuf,
}

impl SweepDir {
    pub fn new(root: &Path) -> Self {
        SweepDir { root: root.to_path_buf() }
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join(SWEEP_JSON)
    }
    pub fn point(&self, name: &str) -> PathBuf {
        self.root.join(POINTS_DIR).join(name)
    }
    pub fn point_rel(name: &str) -> String {
        format!("{POINTS_DIR}/{name}")
    }
    pub fn config(&self, name: &str) -> PathBuf {
        self.point(name).join(CONFIG_TOML)
    }
    pub fn run(&self, name: &str) -> PathBuf {
        self.point(name).join("run")
    }
    pub fn state(&self, name: &str) -> PathBuf {
        self.point(name).join(STATE_JSON)
    }
    pub fn metrics(&self, name: &str) -> PathBuf {
        self.run(name).join("eval").join("metrics.json")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join(DATA_DIR)
    }
    pub fn slurm(&self) -> PathBuf {
        self.root.join(SLURM_DIR)
    }

    pub fn read_manifest(&self) -> Result<SweepManifest> {
        let path = self.manifest();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::io(&path, "cannot read the sweep manifest (is this a directory made by `grdr sweep`?)", e)
        })?;
        serde_json::from_str(&text).map_err(|e| Error::input(&path, Location::Line(e.line()), "sweep", e.to_string()))
    }

    /// The point's state; a point without state.json is pending.
    pub fn read_state(&self, name: &str) -> Result<PointState> {
        let path = self.state(name);
        if path.exists() {
            PointState::read(&path)
        } else {
            Ok(PointState::new(State::Pending))
        }
    }

    /// A point is finished when its run has evaluation metrics — whatever state.json says
    /// (a job may have ended before it could write its state).
    pub fn is_finished(&self, name: &str) -> bool {
        self.metrics(name).exists()
    }

    /// nDCG@10 of a finished point.
    pub fn ndcg10(&self, name: &str) -> Option<f64> {
        let text = std::fs::read_to_string(self.metrics(name)).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?.get("nDCG@10")?.as_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_json_reads_what_the_sbatch_script_writes() {
        // The exact printf format of slurm/templates/train-array.sbatch.
        let text = r#"{"state": "preempted", "job_id": "17_1", "attempts": 1, "exit_code": 75, "updated": 1763900000}"#;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, text).unwrap();
        let s = PointState::read(&p).unwrap();
        assert_eq!(s.state, State::Preempted);
        assert_eq!(s.job_id.as_deref(), Some("17_1"));
        assert_eq!((s.attempts, s.exit_code), (1, Some(75)));
        let mut s = PointState::new(State::Pending);
        s.write(&p).unwrap();
        // The script finds the attempts with this pattern.
        let written = std::fs::read_to_string(&p).unwrap();
        assert!(written.contains("\"attempts\": 0"), "{written}");
        assert!(written.contains("\"state\": \"pending\""), "{written}");
    }
}
