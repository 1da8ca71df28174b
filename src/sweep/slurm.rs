//! The Slurm backend: one job array per world size (the points with that many ranks; array
//! task id = point index, so a resubmission of some points keeps their ids), rendered from
//! `slurm/templates/train-array.sbatch`, submitted held so every state.json says
//! `submitted` before a task can start and overwrite it, then released; and a report job
//! (`grdr report SWEEPDIR`) with `--dependency=afterany` on the arrays.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sweep::launch::{shell_quote, Programs};
use crate::sweep::layout::{now, State, SweepDir, JOBS_JSON};
use crate::sweep::profile::SlurmSettings;
use crate::sweep::template;

const TRAIN_TEMPLATE: &str = include_str!("../../slurm/templates/train-array.sbatch");
const REPORT_TEMPLATE: &str = include_str!("../../slurm/templates/report.sbatch");

/// A point to submit.
#[derive(Debug, Clone)]
pub struct SlurmPoint {
    pub index: usize,
    pub name: String,
    pub ranks: usize,
}

/// One `sbatch` of this sweep, as `slurm/jobs.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// `train` or `report`.
    pub kind: String,
    pub job_id: String,
    /// Relative to SWEEPDIR.
    pub script: String,
    pub points: Vec<String>,
    pub submitted: u64,
}

/// `0-3,5,7-8%2`: the indices as ranges, with the concurrency limit.
pub fn array_spec(indices: &[usize], concurrency: Option<usize>) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    let mut s = parts.join(",");
    if let Some(c) = concurrency {
        s.push_str(&format!("%{c}"));
    }
    s
}

/// What both templates share.
struct Common {
    vars: BTreeMap<&'static str, String>,
}

fn common(name: &str, dir: &SweepDir, workdir: &Path, settings: &SlurmSettings, programs: &Programs) -> Result<Common> {
    for (what, p) in [("the sweep directory", &dir.root), ("the working directory", &workdir.to_path_buf())] {
        let s = p.display().to_string();
        if s.chars().any(|c| c.is_whitespace() || "'\"%".contains(c)) {
            return Err(Error::usage(
                "--output",
                format!("{what} {s}: #SBATCH lines cannot carry spaces, quotes or `%` in paths"),
            ));
        }
    }
    let mut optional = Vec::new();
    if let Some(p) = &settings.partition {
        optional.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(a) = &settings.account {
        optional.push(format!("#SBATCH --account={a}"));
    }
    let extra: Vec<String> = settings.sbatch.iter().map(|l| format!("#SBATCH {l}")).collect();
    let vars = BTreeMap::from([
        ("sweep_name", name.to_string()),
        ("job_name", format!("grdr-{name}")),
        ("sweep_dir", dir.root.display().to_string()),
        ("sweep_dir_q", shell_quote(&dir.root.display().to_string())),
        ("workdir", workdir.display().to_string()),
        ("grdr_q", shell_quote(&programs.grdr.display().to_string())),
        ("launcher_q", shell_quote(&programs.launcher.display().to_string())),
        ("setup", settings.setup.join("\n")),
        ("report_time", settings.report_time.clone()),
        ("optional_sbatch", [optional, extra].concat().join("\n")),
    ]);
    Ok(Common { vars })
}

/// The training array script of the points `indices` (all with `ranks` ranks); `names` are
/// every point of the sweep by index.
#[allow(clippy::too_many_arguments)]
pub fn render_train(
    name: &str,
    dir: &SweepDir,
    workdir: &Path,
    settings: &SlurmSettings,
    programs: &Programs,
    ranks: usize,
    indices: &[usize],
    names: &[String],
) -> Result<String> {
    let (nodes, per_node) = settings.layout(ranks)?;
    let mut vars = common(name, dir, workdir, settings, programs)?.vars;
    if settings.gpus_per_node > 0 {
        // One GPU per rank: a point smaller than a node leaves the other GPUs to other jobs.
        let block = vars.get_mut("optional_sbatch").expect("set");
        block.push_str(&format!("\n#SBATCH --gpus-per-node={per_node}"));
    }
    vars.extend([
        ("array", array_spec(indices, settings.concurrency)),
        ("nodes", nodes.to_string()),
        ("ntasks_per_node", per_node.to_string()),
        ("cpus_per_task", settings.cpus_per_task.to_string()),
        ("time", settings.time.clone()),
        ("signal_secs", settings.signal_secs.to_string()),
        ("ranks", ranks.to_string()),
        ("points", names.iter().map(|n| shell_quote(n)).collect::<Vec<_>>().join(" ")),
    ]);
    template::render(TRAIN_TEMPLATE, "slurm/templates/train-array.sbatch", &vars)
}

pub fn render_report(
    name: &str,
    dir: &SweepDir,
    workdir: &Path,
    settings: &SlurmSettings,
    programs: &Programs,
) -> Result<String> {
    let vars = common(name, dir, workdir, settings, programs)?.vars;
    template::render(REPORT_TEMPLATE, "slurm/templates/report.sbatch", &vars)
}

/// Runs a Slurm client command; its stdout, or an error with its stderr.
pub fn slurm_command(program: &str, args: &[String]) -> Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(|e| {
        Error::io(program, format!("cannot run `{shown}` (is this a Slurm login node with {program} on PATH?)"), e)
    })?;
    if !out.status.success() {
        return Err(Error::io(
            program,
            format!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            std::io::Error::other("slurm command failed"),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sbatch --parsable` prints `JOBID` or `JOBID;CLUSTER`.
fn parse_job_id(stdout: &str) -> Result<String> {
    let id = stdout.trim().split(';').next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::io(
            "sbatch",
            format!("unexpected output `{}`", stdout.trim()),
            std::io::Error::other("sbatch"),
        ));
    }
    Ok(id)
}

fn append_submission(dir: &SweepDir, s: Submission) -> Result<()> {
    let path = dir.slurm().join(JOBS_JSON);
    let mut all: Vec<Submission> =
        std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    all.push(s);
    crate::atomic::write_json(&path, &all)
}

/// Submits `points` and the report job, which also waits for `running_arrays` (earlier
/// arrays of this sweep still in flight); with `dry_run`, submits nothing and collects the
/// scripts and commands there instead.
#[allow(clippy::too_many_arguments)]
pub fn submit(
    name: &str,
    dir: &SweepDir,
    workdir: &Path,
    settings: &SlurmSettings,
    programs: &Programs,
    points: &[SlurmPoint],
    names: &[String],
    running_arrays: &[String],
    mut dry_run: Option<&mut Vec<String>>,
) -> Result<Vec<Submission>> {
    let mut groups: BTreeMap<usize, Vec<&SlurmPoint>> = BTreeMap::new();
    for p in points {
        groups.entry(p.ranks).or_default().push(p);
    }
    let mut subs = Vec::new();
    for (ranks, group) in &groups {
        let indices: Vec<usize> = group.iter().map(|p| p.index).collect();
        let script = render_train(name, dir, workdir, settings, programs, *ranks, &indices, names)?;
        let rel = format!("slurm/train-{ranks}ranks.sbatch");
        let path = dir.root.join(&rel);
        if let Some(plan) = dry_run.as_mut() {
            plan.push(format!("# {rel}: sbatch --parsable --hold {}\n{script}", path.display()));
            continue;
        }
        crate::atomic::write_file(&path, |w| std::io::Write::write_all(w, script.as_bytes()))?;
        let args = vec!["--parsable".to_string(), "--hold".into(), path.display().to_string()];
        let job = parse_job_id(&slurm_command("sbatch", &args)?)?;
        // Held: no task can start (and write `running`) before these states are on disk.
        for p in group {
            let mut state = dir.read_state(&p.name)?;
            state.state = State::Submitted;
            state.job_id = Some(format!("{job}_{}", p.index));
            state.exit_code = None;
            state.write(&dir.state(&p.name))?;
        }
        slurm_command("scontrol", &["release".to_string(), job.clone()])?;
        tracing::info!("submitted job array {job} ({} point(s), {ranks} rank(s) each): {rel}", group.len());
        let s = Submission {
            kind: "train".into(),
            job_id: job,
            script: rel,
            points: group.iter().map(|p| p.name.clone()).collect(),
            submitted: now(),
        };
        append_submission(dir, s.clone())?;
        subs.push(s);
    }
    if points.is_empty() {
        return Ok(subs);
    }
    let script = render_report(name, dir, workdir, settings, programs)?;
    let rel = "slurm/report.sbatch".to_string();
    let path: PathBuf = dir.root.join(&rel);
    let deps: Vec<String> = subs.iter().map(|s| s.job_id.clone()).chain(running_arrays.iter().cloned()).collect();
    let dependency = format!("--dependency=afterany:{}", deps.join(":"));
    if let Some(plan) = dry_run.as_mut() {
        plan.push(format!(
            "# {rel}: sbatch --parsable --dependency=afterany:<the arrays> {}\n{script}",
            path.display()
        ));
        return Ok(subs);
    }
    crate::atomic::write_file(&path, |w| std::io::Write::write_all(w, script.as_bytes()))?;
    let job = parse_job_id(&slurm_command("sbatch", &["--parsable".into(), dependency, path.display().to_string()])?)?;
    tracing::info!("submitted report job {job} (after the training arrays)");
    let s = Submission { kind: "report".into(), job_id: job, script: rel, points: vec![], submitted: now() };
    append_submission(dir, s.clone())?;
    subs.push(s);
    Ok(subs)
}

/// Every submission recorded in `slurm/jobs.json`.
pub fn submissions(dir: &SweepDir) -> Vec<Submission> {
    std::fs::read_to_string(dir.slurm().join(JOBS_JSON))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::profile::SlurmOptions;

    fn settings(gpus: usize) -> SlurmSettings {
        let o = SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_node: Some(gpus),
            ntasks_per_node: Some(if gpus > 0 { gpus } else { 2 }),
            concurrency: Some(2),
            signal_secs: Some(90),
            sbatch: Some(vec!["--qos=high".into()]),
            setup: Some(vec!["module load openmpi".into()]),
            ..Default::default()
        };
        SlurmOptions::default().over(&o).unwrap()
    }

    fn programs() -> Programs {
        Programs { grdr: "/opt/grdr/bin/grdr".into(), launcher: "/opt/grdr/launcher/grdr-launch".into() }
    }

    #[test]
    fn arrays_compress_indices() {
        assert_eq!(array_spec(&[0, 1, 2, 3], Some(4)), "0-3%4");
        assert_eq!(array_spec(&[5, 0, 1, 7, 8], None), "0-1,5,7-8");
        assert_eq!(parse_job_id("1234;cluster\n").unwrap(), "1234");
        assert!(parse_job_id("error").is_err());
    }

    #[test]
    fn train_script_has_the_resources_and_the_requeue() {
        let dir = SweepDir::new(Path::new("/scratch/sw"));
        let names = vec!["p00-a=1".to_string(), "p01-a=2".into(), "p02-a=3".into()];
        let s = render_train("neg", &dir, Path::new("/home/u/grdr"), &settings(4), &programs(), 8, &[0, 2], &names)
            .unwrap();
        for line in [
            "#SBATCH --array=0,2%2",
            "#SBATCH --nodes=2",
            "#SBATCH --ntasks-per-node=4",
            "#SBATCH --gpus-per-node=4",
            "#SBATCH --partition=gpu",
            "#SBATCH --qos=high",
            "#SBATCH --signal=B:USR1@90",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append",
            "#SBATCH --output=/scratch/sw/slurm/%A_%a.out",
            "module load openmpi",
            "POINTS=(p00-a=1 p01-a=2 p02-a=3)",
            "scontrol requeue \"$JOB\"",
        ] {
            assert!(s.contains(line), "missing `{line}` in\n{s}");
        }
        assert!(!s.contains("--account"), "no account line when unset");
        // #SBATCH lines must all come before the first command.
        let first_cmd = s.lines().position(|l| !l.is_empty() && !l.starts_with('#')).unwrap();
        assert!(s.lines().skip(first_cmd).all(|l| !l.starts_with("#SBATCH")));
        let small = render_train("neg", &dir, Path::new("/w"), &settings(4), &programs(), 2, &[1], &names).unwrap();
        assert!(small.contains("#SBATCH --gpus-per-node=2") && small.contains("#SBATCH --nodes=1"), "{small}");
        let cpu = render_train("neg", &dir, Path::new("/w"), &settings(0), &programs(), 2, &[1], &names).unwrap();
        assert!(!cpu.contains("--gpus-per-node") && cpu.contains("#SBATCH --ntasks-per-node=2"));
        assert!(render_train("neg", &dir, Path::new("/w"), &settings(4), &programs(), 6, &[1], &names).is_err());
        let report = render_report("neg", &dir, Path::new("/w"), &settings(4), &programs()).unwrap();
        assert!(report.contains("/opt/grdr/bin/grdr report /scratch/sw") && !report.contains("gpus"));
        assert!(render_report("neg", &SweepDir::new(Path::new("/a b")), Path::new("/w"), &settings(0), &programs())
            .is_err());
    }
}
