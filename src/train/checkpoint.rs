//! Checkpoints: `RUNDIR/checkpoints/step-N/` holding
//! ```text
//! model.safetensors      every variable of the model (backbone and head), by name
//! optimizer.safetensors  AdamW moments (`exp_avg.NAME`, `exp_avg_sq.NAME`) and `step`
//! config.toml            the resolved run config
//! state.json             step, epoch, data position, RNG derivation, world size, and the
//!                        sha256 and size of each file above
//! ```
//! A checkpoint is built under `.step-N.tmp-PID/` and renamed into place, so `step-N/`
//! exists only complete; on load every file is re-hashed, so a truncated or altered file is
//! an error naming it, never a silently different run. Only the newest `keep` survive.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use crate::data::manifest::sha256_file;
use crate::error::{Error, Location, Result};

pub const FORMAT: &str = "grdr-checkpoint/1";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.toml";
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    pub sha256: String,
    pub bytes: u64,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub format: String,
    pub grdr_version: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// Passes over the training examples completed (fractional).
    pub epoch: f64,
    /// Global examples consumed: the data position. The order of every epoch is a function
    /// of (seed, epoch), so this number alone puts every rank back where it was.
    pub examples_seen: u64,
    /// How random state is derived: everything is re-seeded from (seed, rank, step) at the
    /// start of each step, so no generator state needs saving (see `trainer.rs`).
    pub rng: String,
    pub seed: u64,
    pub world_size: usize,
    /// Examples per optimizer step over all ranks (ranks × batch × accumulation); a resume
    /// must keep it, as the data order is defined per global batch.
    pub global_batch: usize,
    /// The log interval's running loss sum and step count (so the resumed metrics.jsonl
    /// equals the uninterrupted one even when the checkpoint falls inside an interval).
    pub interval_loss_sum: f64,
    pub interval_steps: u64,
    /// Why it was written: `interval`, `final` or `preempted (SIGTERM)`.
    pub reason: String,
    pub files: BTreeMap<String, FileSum>,
}

/// `RUNDIR/checkpoints`.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    dir(run_dir).join(format!("step-{step}"))
}

/// Steps of the complete checkpoints in `run_dir`, ascending.
pub fn list(run_dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("step-")).and_then(|n| n.parse().ok()))
        .collect();
    steps.sort_unstable();
    steps
}

/// The newest checkpoint, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    list(run_dir).last().map(|&s| step_dir(run_dir, s))
}

/// Every variable of `vs`, names sorted (the same bytes on every rank after DDP).
pub fn model_tensors(vs: &VarStore) -> Vec<(String, tch::Tensor)> {
    let mut v: Vec<(String, tch::Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.detach())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes `step-N/` atomically (coordinator only), then removes all but the newest `keep`.
/// `state.files` is filled here.
pub fn save(
    run_dir: &Path,
    vs: &VarStore,
    optimizer: &super::optim::AdamW,
    config_toml: &str,
    mut state: TrainState,
    keep: usize,
) -> Result<PathBuf> {
    let dest = step_dir(run_dir, state.step);
    let tmp = crate::atomic::TempDir::new(&dest, true)?;
    crate::model::safetensors::write(&tmp.path().join(MODEL_FILE), &model_tensors(vs))?;
    optimizer.save(&tmp.path().join(OPTIMIZER_FILE))?;
    crate::atomic::write_file(&tmp.path().join(CONFIG_FILE), |w| std::io::Write::write_all(w, config_toml.as_bytes()))?;
    state.files.clear();
    for name in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
        let path = tmp.path().join(name);
        let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, "stat", e))?.len();
        state.files.insert(name.to_string(), FileSum { sha256: sha256_file(&path)?, bytes });
    }
    crate::atomic::write_json(&tmp.path().join(STATE_FILE), &state)?;
    let dest = tmp.commit()?;
    purge(run_dir, keep)?;
    Ok(dest)
}

/// Removes all complete checkpoints but the newest `keep`, and stale temp dirs.
pub fn purge(run_dir: &Path, keep: usize) -> Result<()> {
    let steps = list(run_dir);
    for &s in steps.iter().take(steps.len().saturating_sub(keep)) {
        let d = step_dir(run_dir, s);
        std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, "cannot remove old checkpoint", e))?;
    }
    Ok(())
}

/// Reads and verifies a checkpoint directory: state.json parses, every file it lists exists
/// with its recorded size and sha256. Returns the state.
pub fn verify(ckpt: &Path) -> Result<TrainState> {
    let state_path = ckpt.join(STATE_FILE);
    if !ckpt.is_dir() {
        return Err(Error::usage("checkpoint", format!("{} is not a checkpoint directory", ckpt.display())));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| {
        Error::input(&state_path, Location::File, "state.json", format!("checkpoint incomplete or damaged: {e}"))
    })?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| {
        Error::input(&state_path, Location::Line(e.line()), "state", format!("corrupted checkpoint state: {e}"))
    })?;
    if state.format != FORMAT {
        return Err(Error::input(
            &state_path,
            Location::File,
            "format",
            format!("is `{}`, expected `{FORMAT}`", state.format),
        ));
    }
    for name in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE] {
        let want = state
            .files
            .get(name)
            .ok_or_else(|| Error::input(&state_path, Location::File, "files", format!("{name} not listed")))?;
        let path = ckpt.join(name);
        let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, "checkpoint incomplete", e))?.len();
        if bytes != want.bytes {
            return Err(Error::input(
                &path,
                Location::File,
                "bytes",
                format!("{bytes} bytes, state.json records {}: truncated or corrupted checkpoint", want.bytes),
            ));
        }
        let sha = sha256_file(&path)?;
        if sha != want.sha256 {
            return Err(Error::input(
                &path,
                Location::File,
                "sha256",
                format!("is {sha}, state.json records {}: corrupted checkpoint", want.sha256),
            ));
        }
    }
    Ok(state)
}

/// Copies the checkpoint's model tensors into `vs` (names and shapes must match exactly).
pub fn load_model(ckpt: &Path, vs: &VarStore) -> Result<()> {
    let path = ckpt.join(MODEL_FILE);
    let mut vars = vs.variables();
    for (name, t) in crate::model::safetensors::read_all(&path)? {
        let var = vars
            .remove(&name)
            .ok_or_else(|| Error::input(&path, Location::File, &name, "not a variable of this model"))?;
        if var.size() != t.size() {
            return Err(Error::input(
                &path,
                Location::File,
                &name,
                format!("shape {:?}, model {:?}", t.size(), var.size()),
            ));
        }
        tch::no_grad(|| var.shallow_clone().copy_(&t.to_kind(var.kind())));
    }
    if let Some(name) = vars.keys().next() {
        return Err(Error::input(&path, Location::File, name, "missing from the checkpoint"));
    }
    Ok(())
}
