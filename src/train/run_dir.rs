//! The run directory's life: who may use it, and `--overwrite` that never loses the old run
//! to a new one that then fails. The old run's files move into `RUNDIR/.replaced-<pid>/`
//! once the new run has checked its config, data, device and model; they are deleted when
//! the new run writes its first checkpoint, and moved back if it fails before that (a run
//! killed in between leaves them there, and the next run on the directory says so).
use std::path::{Path, PathBuf};

use super::checkpoint;
use crate::error::{Error, Result};

/// Everything a run writes at the top of its directory.
const RUN_ENTRIES: [&str; 8] =
    ["checkpoints", "model", "eval", "metrics.jsonl", "train.json", "config.toml", "world.json", "tb"];

const ASIDE_PREFIX: &str = ".replaced-";

fn aside(run_dir: &Path) -> PathBuf {
    run_dir.join(format!("{ASIDE_PREFIX}{}", std::process::id()))
}

/// Refuses a directory holding a run unless resuming or overwriting it; reports runs that
/// an interrupted `--overwrite` left aside.
pub fn check(run_dir: &Path, resume: bool, overwrite: bool) -> Result<()> {
    let used = checkpoint::dir(run_dir).exists() || run_dir.join("metrics.jsonl").exists();
    if used && !resume && !overwrite {
        return Err(Error::usage(
            "--output",
            format!("{} holds a run (pass --resume to continue it or --overwrite to replace it)", run_dir.display()),
        ));
    }
    for left in leftovers(run_dir) {
        tracing::warn!(
            "{} holds a run that an interrupted --overwrite moved aside; move its files back to restore it, \
             or delete it",
            left.display()
        );
    }
    Ok(())
}

fn leftovers(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return vec![] };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(ASIDE_PREFIX))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Moves the old run's files into `.replaced-<pid>/` (a rename each: same filesystem).
pub fn move_aside(run_dir: &Path) -> Result<()> {
    let present: Vec<&str> = RUN_ENTRIES.iter().copied().filter(|e| run_dir.join(e).exists()).collect();
    if present.is_empty() {
        return Ok(());
    }
    let dest = aside(run_dir);
    std::fs::create_dir_all(&dest).map_err(|e| Error::io(&dest, "cannot create", e))?;
    for entry in present {
        let (from, to) = (run_dir.join(entry), dest.join(entry));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&from, "cannot move the replaced run aside", e))?;
    }
    tracing::info!("--overwrite: the old run is kept in {} until this run's first checkpoint", dest.display());
    Ok(())
}

/// Deletes the run this process replaced (after the new run's first checkpoint).
pub fn discard_replaced(run_dir: &Path) -> Result<()> {
    let dir = aside(run_dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, "cannot remove the replaced run", e))?;
    }
    Ok(())
}

/// Puts the replaced run back (the new run failed before its first checkpoint). Best
/// effort: on the error path, a failure here is logged, not raised.
pub fn restore_replaced(run_dir: &Path) {
    let dir = aside(run_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let target = run_dir.join(&name);
        if target.is_dir() {
            let _ = std::fs::remove_dir_all(&target);
        } else {
            let _ = std::fs::remove_file(&target);
        }
        if let Err(e) = std::fs::rename(entry.path(), &target) {
            tracing::error!("cannot restore {}: {e}", target.display());
            return;
        }
    }
    let _ = std::fs::remove_dir(&dir);
    tracing::warn!("the new run failed before its first checkpoint: the replaced run is back in {}", run_dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_then_restore_gives_the_old_run_back() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        std::fs::create_dir_all(run.join("checkpoints/step-3")).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "old\n").unwrap();
        std::fs::write(run.join("train.json"), "{}").unwrap();
        move_aside(run).unwrap();
        assert!(!run.join("train.json").exists() && !run.join("checkpoints").exists());
        std::fs::write(run.join("metrics.jsonl"), "new\n").unwrap();
        restore_replaced(run);
        assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), "old\n");
        assert!(run.join("checkpoints/step-3").is_dir() && run.join("train.json").exists());
        assert!(leftovers(run).is_empty());
    }

    #[test]
    fn a_used_directory_needs_resume_or_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("metrics.jsonl"), "").unwrap();
        assert_eq!(check(tmp.path(), false, false).unwrap_err().exit_code(), 2);
        check(tmp.path(), true, false).unwrap();
        check(tmp.path(), false, true).unwrap();
    }
}
