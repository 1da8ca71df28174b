//! `grdr sweep status`: where every point is. state.json says what the point itself last
//! wrote; on Slurm the scheduler knows better while a job is queued or after it died
//! without a word (time limit, node failure, scancel), so its state is asked for — `sacct`
//! when accounting is on, else `squeue` (live jobs only) — and merged in. Re-running
//! `grdr sweep` uses the same view to decide what to resubmit.
use std::collections::HashMap;
use std::process::Command;

use crate::error::Result;
use crate::sweep::layout::{PointState, State, SweepDir, SweepManifest};

/// A point's state as state.json and the scheduler together tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub state: State,
    /// The scheduler's word when it adds something (`PENDING`, `TIMEOUT`, `gone`).
    pub note: String,
    /// Whether a job of this point is queued or running (do not submit again).
    pub in_flight: bool,
}

/// Finished: evaluation metrics written, or state `done` with a finished training run
/// (`eval.at_end = false` writes no metrics).
pub fn is_done(dir: &SweepDir, name: &str) -> bool {
    dir.is_finished(name)
        || (dir.read_state(name).is_ok_and(|s| s.state == State::Done) && dir.run(name).join("train.json").exists())
}

/// Job states from the scheduler, by job id (`123_4`), and which tool answered.
#[derive(Debug, Default)]
pub struct Scheduler {
    pub states: HashMap<String, String>,
    /// `sacct` (history too) or `squeue` (live jobs only); None when neither answered.
    pub source: Option<&'static str>,
}

/// Slurm states in which a job still holds or waits for resources.
fn live(slurm_state: &str) -> bool {
    matches!(
        slurm_state,
        "PENDING"
            | "RUNNING"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
    )
}

/// Expands `123_[0-2,5%2]` (how sacct/squeue write pending array tasks) into task ids.
fn expand_ids(id: &str) -> Vec<String> {
    let Some((job, rest)) = id.split_once("_[") else { return vec![id.to_string()] };
    let inner = rest.trim_end_matches(']');
    let inner = inner.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in inner.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend((a..=b).map(|i| format!("{job}_{i}")));
                }
            }
            None if !part.is_empty() => out.push(format!("{job}_{part}")),
            None => {}
        }
    }
    out
}

/// `sacct -n -P -X … --format=JobID,State,ExitCode` or `squeue -h -r -o %i|%T` lines →
/// job id → state (`CANCELLED by 0` → `CANCELLED`).
pub fn parse_states(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('|');
        let (Some(id), Some(state)) = (f.next(), f.next()) else { continue };
        let state = state.split_whitespace().next().unwrap_or("").to_string();
        if id.trim().is_empty() || state.is_empty() {
            continue;
        }
        for id in expand_ids(id.trim()) {
            map.insert(id, state.clone());
        }
    }
    map
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asks Slurm about the array jobs behind `job_ids` (`123_4` → job 123).
pub fn query_scheduler(job_ids: &[String]) -> Scheduler {
    let mut arrays: Vec<&str> = job_ids.iter().map(|j| j.split('_').next().unwrap_or(j)).collect();
    arrays.sort_unstable();
    arrays.dedup();
    if arrays.is_empty() {
        return Scheduler::default();
    }
    let list = arrays.join(",");
    // sacct fails (or prints nothing) where accounting is off, as on the test cluster.
    if let Some(text) = output("sacct", &["-n", "-P", "-X", "-j", list.as_str(), "--format=JobID,State,ExitCode"]) {
        let states = parse_states(&text);
        if !states.is_empty() {
            return Scheduler { states, source: Some("sacct") };
        }
    }
    // squeue forgets finished jobs; an unknown job id makes it fail, so ask for all of ours.
    if let Some(text) = output("squeue", &["-h", "-r", "-o", "%i|%T", "--me"]) {
        return Scheduler { states: parse_states(&text), source: Some("squeue") };
    }
    Scheduler::default()
}

/// Merges state.json with the scheduler's view of its job.
pub fn merge(file: &PointState, done: bool, sched: &Scheduler) -> Shown {
    if done {
        return Shown { state: State::Done, note: String::new(), in_flight: false };
    }
    let job = file.job_id.as_deref();
    let slurm = job.and_then(|j| sched.states.get(j)).map(String::as_str);
    let kept = |state: State, note: &str, in_flight: bool| Shown { state, note: note.to_string(), in_flight };
    match (slurm, file.state) {
        (Some(s), State::Preempted) if live(s) => kept(State::Preempted, &format!("requeued, {s}"), true),
        // A node failed under it and Slurm requeued the job: failed, and in flight again.
        (Some(s), State::Failed) if live(s) && s != "RUNNING" => kept(State::Failed, &format!("requeued, {s}"), true),
        (Some("RUNNING" | "COMPLETING" | "CONFIGURING"), _) => kept(State::Running, "", true),
        (Some(s), _) if live(s) => kept(State::Submitted, s, true),
        // Ended: the script's own word when it had one, else the scheduler's.
        (Some(_), State::Done | State::Failed | State::Preempted) => kept(file.state, "", false),
        (Some(s), _) => kept(State::Failed, s, false),
        // squeue lists live jobs only: a queued or running point whose job is gone died
        // without writing its state (time limit, node failure).
        (None, State::Submitted | State::Running) if job.is_some() && sched.source == Some("squeue") => {
            kept(State::Failed, "job gone", false)
        }
        // No scheduler answer: trust the file, and never submit a point twice.
        (None, State::Submitted | State::Running) if job.is_some() && sched.source.is_none() => {
            kept(file.state, "scheduler not reachable", true)
        }
        (None, s) => kept(s, "", false),
    }
}

/// Every point's merged state, in sweep order.
pub fn collect(dir: &SweepDir, manifest: &SweepManifest, refresh: bool) -> Result<Vec<(PointState, Shown)>> {
    let states: Vec<PointState> = manifest.points.iter().map(|p| dir.read_state(&p.name)).collect::<Result<_>>()?;
    let sched = if refresh && manifest.backend == "slurm" {
        query_scheduler(&states.iter().filter_map(|s| s.job_id.clone()).collect::<Vec<_>>())
    } else {
        Scheduler::default()
    };
    Ok(manifest
        .points
        .iter()
        .zip(states)
        .map(|(p, s)| {
            let shown = merge(&s, is_done(dir, &p.name), &sched);
            (s, shown)
        })
        .collect())
}

/// The status table (markdown, aligned) and a one-line summary.
pub fn table(dir: &SweepDir, manifest: &SweepManifest, rows: &[(PointState, Shown)]) -> String {
    let header = ["point", "values", "family", "ranks", "state", "job", "attempts", "nDCG@10"];
    let mut cells: Vec<Vec<String>> = Vec::new();
    for (p, (file, shown)) in manifest.points.iter().zip(rows) {
        let values: Vec<String> = p
            .values
            .iter()
            .map(|(k, v)| {
                let short = k.rsplit('.').next().unwrap_or(k);
                match v {
                    serde_json::Value::String(s) => format!("{short}={s}"),
                    other => format!("{short}={other}"),
                }
            })
            .collect();
        let state = if shown.note.is_empty() {
            shown.state.as_str().to_string()
        } else {
            format!("{} ({})", shown.state.as_str(), shown.note)
        };
        cells.push(vec![
            p.name.clone(),
            values.join(" "),
            p.family.clone(),
            p.ranks.to_string(),
            state,
            file.job_id.clone().unwrap_or_else(|| "-".into()),
            file.attempts.to_string(),
            dir.ndcg10(&p.name).map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |row: Vec<String>| {
        let padded: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = vec![
        line(header.iter().map(|s| s.to_string()).collect()),
        line(widths.iter().map(|w| "-".repeat(*w)).collect()),
    ];
    out.extend(cells.into_iter().map(line));
    let mut counts: Vec<(State, usize)> = Vec::new();
    for (_, s) in rows {
        match counts.iter_mut().find(|(st, _)| *st == s.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.state, 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {}", s.as_str())).collect();
    out.push(format!(
        "\n{} ({} backend): {} point(s): {}",
        manifest.name,
        manifest.backend,
        rows.len(),
        summary.join(", ")
    ));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(state: State, job: Option<&str>) -> PointState {
        PointState { state, job_id: job.map(String::from), attempts: 1, exit_code: None, updated: 0 }
    }

    #[test]
    fn sacct_and_squeue_lines_parse() {
        let m = parse_states("12_0|COMPLETED|0:0\n12_1|CANCELLED by 0|0:15\n12_[2-3,5%2]|PENDING|0:0\n13|RUNNING\n");
        assert_eq!(m["12_0"], "COMPLETED");
        assert_eq!(m["12_1"], "CANCELLED");
        assert_eq!(m["12_3"], "PENDING");
        assert_eq!(m["12_5"], "PENDING");
        assert!(!m.contains_key("12_4"));
        assert_eq!(m["13"], "RUNNING");
    }

    #[test]
    fn the_scheduler_corrects_stale_files() {
        let sched = |pairs: &[(&str, &str)], source| Scheduler {
            states: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            source: Some(source),
        };
        let s = sched(&[("9_0", "PENDING"), ("9_1", "TIMEOUT"), ("9_2", "RUNNING")], "sacct");
        assert_eq!(merge(&file(State::Submitted, Some("9_0")), false, &s).state, State::Submitted);
        assert!(merge(&file(State::Submitted, Some("9_0")), false, &s).in_flight);
        let t = merge(&file(State::Running, Some("9_1")), false, &s);
        assert_eq!((t.state, t.note.as_str(), t.in_flight), (State::Failed, "TIMEOUT", false));
        assert_eq!(merge(&file(State::Submitted, Some("9_2")), false, &s).state, State::Running);
        let p = merge(&file(State::Preempted, Some("9_0")), false, &s);
        assert_eq!((p.state, p.in_flight), (State::Preempted, true));
        assert_eq!(merge(&file(State::Running, Some("9_0")), true, &s).state, State::Done);
        // A node failed under it and Slurm requeued it: failed, in flight (not resubmitted).
        let f = merge(&file(State::Failed, Some("9_0")), false, &s);
        assert_eq!((f.state, f.note.as_str(), f.in_flight), (State::Failed, "requeued, PENDING", true));
        // squeue: a running point whose job vanished died.
        let q = sched(&[], "squeue");
        assert_eq!(merge(&file(State::Running, Some("9_3")), false, &q).state, State::Failed);
        assert_eq!(merge(&file(State::Failed, Some("9_3")), false, &q).state, State::Failed);
        // No scheduler: never resubmit what may still run.
        assert!(merge(&file(State::Submitted, Some("9_3")), false, &Scheduler::default()).in_flight);
        assert!(!merge(&file(State::Pending, None), false, &Scheduler::default()).in_flight);
    }
}
