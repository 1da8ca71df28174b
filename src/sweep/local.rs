//! The local backend: the points one after another on this machine, each through
//! `launcher/grdr-launch` (mpirun), its output appended to `points/<name>/train.log`.
//! Finished points are skipped, so re-running a sweep continues where it stopped; a point
//! stopped by a signal (exit 75, checkpointed) stops the sweep and resumes on the next run.
//! SIGTERM/SIGUSR1 to `grdr sweep` itself reach the running point the same way.
use std::fs::OpenOptions;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{exit_code, Error, Result};
use crate::sweep::launch::{shell_quote, Programs};
use crate::sweep::layout::{State, SweepDir};
use crate::sweep::status::is_done;

pub const TRAIN_LOG: &str = "train.log";

/// One point to run: name and world size.
pub struct LocalPoint {
    pub name: String,
    pub ranks: usize,
}

/// A dry run: nothing runs; each point's command line is collected in `plan`. Points in
/// `restarted` (their config changed: the real run resets them) are not reported done.
pub struct DryRun<'a> {
    pub plan: &'a mut Vec<String>,
    pub restarted: &'a [String],
}

/// Runs every unfinished point; fails (after trying them all) when any point failed.
pub fn run(dir: &SweepDir, points: &[LocalPoint], programs: &Programs, mut dry_run: Option<DryRun>) -> Result<()> {
    let mut failed = Vec::new();
    for p in points {
        let restarted = dry_run.as_ref().is_some_and(|d| d.restarted.contains(&p.name));
        if restarted {
            tracing::info!("{}: its config changed: would restart (--overwrite)", p.name);
        } else if is_done(dir, &p.name) {
            tracing::info!("{}: done, skipped", p.name);
            continue;
        }
        let argv = programs.train_argv(dir, &p.name, p.ranks);
        if let Some(d) = dry_run.as_mut() {
            d.plan.push(argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "));
            continue;
        }
        let log_path = dir.point(&p.name).join(TRAIN_LOG);

        let state_path = dir.state(&p.name);
        let mut state = dir.read_state(&p.name)?;
        state.state = State::Running;
        state.attempts += 1;
        state.job_id = None;
        state.exit_code = None;
        state.write(&state_path)?;
        tracing::info!(
            "{}: training on {} rank(s), attempt {} (log: {})",
            p.name,
            p.ranks,
            state.attempts,
            log_path.display()
        );

        let t0 = Instant::now();
        let status = run_logged(&argv, &log_path)?;
        // A rank killed by a signal has no code: the shell's 128 + signal.
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        state.exit_code = Some(code);
        state.state = match code {
            0 => State::Done,
            c if c == exit_code::PREEMPTED as i32 => State::Preempted,
            _ => State::Failed,
        };
        state.write(&state_path)?;
        let secs = t0.elapsed().as_secs_f64();
        match state.state {
            State::Done => {
                let ndcg = dir.ndcg10(&p.name).map(|x| format!(", nDCG@10 {x:.4}")).unwrap_or_default();
                tracing::info!("{}: done in {secs:.0}s{ndcg}", p.name);
            }
            State::Preempted => {
                return Err(Error::io(
                    &log_path,
                    format!(
                        "{}: stopped by a signal after a checkpoint; run the same `grdr sweep` again to resume",
                        p.name
                    ),
                    std::io::Error::other("interrupted"),
                ));
            }
            _ => {
                tracing::error!("{}: failed (exit {code}) after {secs:.0}s:\n{}", p.name, tail(&log_path, 15));
                failed.push(p.name.clone());
            }
        }
    }
    if !failed.is_empty() {
        return Err(Error::io(
            dir.root.join("points"),
            format!(
                "{} point(s) failed: {} (see points/<name>/{TRAIN_LOG}; re-run to retry them)",
                failed.len(),
                failed.join(", ")
            ),
            std::io::Error::other("training failed"),
        ));
    }
    Ok(())
}

/// Runs `argv` with stdout and stderr appended to `log_path`, waiting as
/// [`wait_forwarding_signals`] does.
pub fn run_logged(argv: &[String], log_path: &std::path::Path) -> Result<std::process::ExitStatus> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| Error::io(log_path, "cannot open the log", e))?;
    let err_log = log.try_clone().map_err(|e| Error::io(log_path, "cannot open the log", e))?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .spawn()
        .map_err(|e| Error::io(&argv[0], "cannot start", e))?;
    wait_forwarding_signals(&mut child).map_err(|e| Error::io(&argv[0], "waiting", e))
}

/// Waits for the launcher; a SIGTERM or SIGUSR1 to `grdr sweep` (a batch system's time
/// limit, `kill`) is passed on as SIGUSR1, which the launcher forwards to every rank: the
/// point checkpoints and exits 75 instead of dying with the sweep.
fn wait_forwarding_signals(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    let _handlers = crate::train::signal::install();
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if !forwarded && crate::train::signal::received().is_some() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
            forwarded = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The last `n` lines of a log, for the error message.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
