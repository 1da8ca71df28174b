//! `RUNDIR/tb/`: the run's curves for TensorBoard (`log.tensorboard`, on by default), written
//! by rank 0 beside `metrics.jsonl` and holding the same figures.
//!
//! ```text
//! RUNDIR/tb/events.out.tfevents.<unix time>.<host>.<pid>    (tfevents.rs: the format)
//!   step 0          text  config          the resolved config.toml
//!   each interval   train/loss, train/last_loss, train/lr, train/grad_norm,
//!                   train/samples_per_s, train/tokens_per_s, train/rss_mib, train/epoch
//!   last step       eval/<metric>         end-of-run evaluation (nDCG@10, R@100, ...)
//! ```
//! The directory always holds one event file. A run (fresh or resumed) starts it afresh from
//! the records `metrics.jsonl` keeps, so a resumed run's curve continues without a repeated
//! step, and without the steps a killed run logged past its last checkpoint (which
//! TensorBoard would otherwise draw as a second, overlapping line). `tensorboard --logdir`
//! on a sweep directory lists each point's run under its point name.
use std::io::Write;
use std::path::{Path, PathBuf};

use super::metrics_log::Record;
use super::tfevents::Event;
use crate::error::{Error, Result};

pub const TB_DIR: &str = "tb";

/// What TensorBoard reads as event files: a name holding `tfevents`.
fn is_event_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().contains("tfevents"))
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| is_event_file(p)).collect();
    files.sort();
    files
}

pub fn unix_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A record's figures as scalar tags (NaN — a figure not measured that interval — is left
/// out: TensorBoard would draw it as a gap at best).
pub fn scalars(r: &Record) -> Vec<(String, f64)> {
    [
        ("loss", r.loss),
        ("last_loss", r.last_loss),
        ("lr", r.lr),
        ("grad_norm", r.grad_norm),
        ("samples_per_s", r.samples_per_s),
        ("tokens_per_s", r.tokens_per_s),
        ("rss_mib", r.rss_mib),
        ("epoch", r.epoch),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_finite())
    .map(|(k, v)| (format!("train/{k}"), v))
    .collect()
}

/// The resolved config as the text dashboard shows it (Markdown: a TOML code block).
fn config_text(config_toml: &str) -> String {
    format!("```toml\n{}\n```", config_toml.trim_end())
}

pub struct TbLog {
    path: PathBuf,
    file: std::fs::File,
}

impl TbLog {
    /// Starts `RUNDIR/tb/` afresh with the config and the `kept` records (those
    /// `metrics.jsonl` holds after a resume), replacing any earlier event file only once
    /// the new one is complete.
    pub fn open(run_dir: &Path, config_toml: &str, kept: &[Record]) -> Result<TbLog> {
        let dir = run_dir.join(TB_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "cannot create directory", e))?;
        let now = unix_time();
        let mut bytes = Vec::new();
        Event::file_version(now).append_record(&mut bytes);
        // The config's wall time is the first record's, so the relative-time axis starts at
        // the run's start rather than at the resume.
        let start = kept.first().map(|r| r.wall_time).filter(|t| t.is_finite()).unwrap_or(now);
        Event::text(start, 0, "config", &config_text(config_toml)).append_record(&mut bytes);
        for r in kept {
            let t = if r.wall_time.is_finite() { r.wall_time } else { now };
            Event::scalars(t, r.step, &scalars(r)).append_record(&mut bytes);
        }

        let old = event_files(&dir);
        let host = crate::dist::describe::hostname();
        let name = format!("events.out.tfevents.{}.{host}.{}", now as u64, std::process::id());
        let path = dir.join(name);
        // Not named `*tfevents*` until complete: TensorBoard would read it half-written.
        let tmp = dir.join(format!(".replay-{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(&path, "cannot write", e))?;
        for o in old.iter().filter(|o| **o != path) {
            std::fs::remove_file(o).map_err(|e| Error::io(o, "cannot remove the replaced event file", e))?;
        }
        TbLog::append_to(path)
    }

    fn append_to(path: PathBuf) -> Result<TbLog> {
        let file =
            std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, "cannot open", e))?;
        Ok(TbLog { path, file })
    }

    /// Reopens the run's event file for more records (end-of-run evaluation); `None` when
    /// the run writes none (`log.tensorboard = false`).
    pub fn reopen(run_dir: &Path) -> Result<Option<TbLog>> {
        event_files(&run_dir.join(TB_DIR)).pop().map(TbLog::append_to).transpose()
    }

    /// One interval's record.
    pub fn write(&mut self, r: &Record) -> Result<()> {
        let t = if r.wall_time.is_finite() { r.wall_time } else { unix_time() };
        self.append(&Event::scalars(t, r.step, &scalars(r)))
    }

    /// Evaluation figures at `step`, as `eval/<name>`.
    pub fn write_eval(&mut self, step: u64, metrics: &[(String, f64)]) -> Result<()> {
        let values: Vec<(String, f64)> =
            metrics.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (format!("eval/{k}"), *v)).collect();
        self.append(&Event::scalars(unix_time(), step, &values))
    }

    fn append(&mut self, event: &Event) -> Result<()> {
        let mut bytes = Vec::new();
        event.append_record(&mut bytes);
        // One write per record, flushed, so a reader (or a kill) sees whole records.
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, "cannot append", e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tfevents::{read_records, Kind, What};
    use super::*;

    fn record(step: u64) -> Record {
        Record {
            step,
            epoch: 0.5,
            loss: 2.0 / step as f64,
            last_loss: 1.0,
            lr: 1e-3,
            grad_norm: f64::NAN,
            samples_per_s: 10.0,
            tokens_per_s: 100.0,
            rss_mib: 50.0,
            wall_time: 1000.0 + step as f64,
        }
    }

    fn steps_of(run: &Path, tag: &str) -> Vec<(i64, f32)> {
        let files = event_files(&run.join(TB_DIR));
        assert_eq!(files.len(), 1, "{files:?}");
        let events = read_records(&std::fs::read(&files[0]).unwrap()).unwrap();
        let mut out = Vec::new();
        for e in events {
            if let Some(What::Summary(s)) = e.what {
                for v in s.value.iter().filter(|v| v.tag == tag) {
                    if let Some(Kind::SimpleValue(x)) = v.kind {
                        out.push((e.step, x));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_resumed_log_replays_the_kept_steps_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = TbLog::open(tmp.path(), "a = 1", &[]).unwrap();
        for s in 1..=3 {
            log.write(&record(s)).unwrap();
        }
        drop(log);
        // Killed after step 3 with a checkpoint at 2: the resumed run keeps steps 1-2.
        let mut log = TbLog::open(tmp.path(), "a = 1", &[record(1), record(2)]).unwrap();
        log.write(&record(3)).unwrap();
        TbLog::reopen(tmp.path()).unwrap().unwrap().write_eval(3, &[("nDCG@10".into(), 0.5)]).unwrap();
        assert_eq!(steps_of(tmp.path(), "train/loss"), [(1, 2.0), (2, 1.0), (3, 2.0 / 3.0)]);
        assert!(steps_of(tmp.path(), "train/grad_norm").is_empty(), "NaN is not a point");
        assert_eq!(steps_of(tmp.path(), "eval/nDCG@10"), [(3, 0.5)]);
    }
}
