//! The sweep on a real Slurm cluster: `slurm/test-cluster` starts
//! a one-node Slurm on this machine; `grdr sweep configs/sweeps/tiny-test.toml --backend
//! slurm` submits a 2-point × 2-rank job array; one point is preempted mid-training with
//! `scancel -b -s USR1` (what `--signal=B:USR1@…` does before a time limit), checkpoints,
//! exits 75 and is requeued by its batch script; both points finish, the preempted one
//! resumed from its checkpoint, and the report job leaves results.parquet and plots.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The whole test's budget: a hang fails with the cluster's logs instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(420);

/// A running test cluster; stopped on drop (also when the test panics).
struct Cluster {
    state: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(state: &Path) -> Cluster {
        // Ports of our own, so a cluster someone left running elsewhere does not collide.
        let port = 20000 + (std::process::id() % 5000) * 2;
        let o = Command::new(repo().join("slurm/test-cluster"))
            .arg("start")
            .arg(state)
            .env("GRDR_SLURMCTLD_PORT", port.to_string())
            .env("GRDR_SLURMD_PORT", (port + 1).to_string())
            .output()
            .expect("slurm/test-cluster runs");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "test-cluster start failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .unwrap_or_else(|| panic!("no SLURM_CONF in: {stdout}"))
            .trim()
            .to_string();
        Cluster { state: state.to_path_buf(), conf }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf).env("CI", "true");
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let o = self.cmd(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("slurm/test-cluster")).arg("stop").arg(&self.state).output();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Everything that tells why a wait failed: job logs, states, the queue, daemon logs.
fn dump(cluster: &Cluster, sweep: &Path) -> String {
    let mut s = String::new();
    if let Ok(entries) = std::fs::read_dir(sweep.join("slurm")) {
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "out")) {
            s += &format!("\n==== {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default());
        }
    }
    if let Ok(entries) = std::fs::read_dir(sweep.join("points")) {
        for e in entries {
            let p = e.unwrap().path().join("state.json");
            s += &format!("\n==== {}\n{}", p.display(), std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    s += &format!("\n==== squeue\n{}", cluster.run("squeue", &["-r", "-o", "%i %T %r %S"]));
    for log in ["slurmctld.log", "slurmd.log"] {
        let text = std::fs::read_to_string(cluster.state.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        s += &format!("\n==== {log} (tail)\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
    }
    s
}

/// Polls `cond` every `every` until it holds; past the deadline, panics with `what` and the dump.
fn wait_for(t0: Instant, every: u64, cluster: &Cluster, sweep: &Path, what: &str, mut cond: impl FnMut() -> bool) {
    while !cond() {
        if t0.elapsed() > DEADLINE {
            panic!("timed out after {:?} waiting for {what}{}", t0.elapsed(), dump(cluster, sweep));
        }
        std::thread::sleep(Duration::from_millis(every));
    }
}

fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn a_two_point_sweep_survives_a_preemption_on_a_real_slurm_cluster() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_scifact(dir.path(), None);
    let cluster = Cluster::start(&dir.path().join("slurm-state"));
    eprintln!("cluster up after {:.1}s", t0.elapsed().as_secs_f64());
    let sweep = dir.path().join("sweep");
    let data_set = format!("data.path={}", data.display());
    let args = [
        "sweep",
        "configs/sweeps/tiny-test.toml",
        "--backend",
        "slurm",
        "--profile",
        "slurm/profiles/local-test.toml",
        "--set",
        &data_set,
        "--output",
        sweep.to_str().unwrap(),
    ];
    let grdr_bin = env!("CARGO_BIN_EXE_grdr");
    let submit = cluster.cmd(grdr_bin).args(args).current_dir(repo()).output().unwrap();
    assert!(submit.status.success(), "grdr sweep failed:\n{}", stderr(&submit));
    let names = ["p00-corpus_docs=500", "p01-corpus_docs=1000"];
    let state = |name: &str| read_json(&sweep.join("points").join(name).join("state.json")).unwrap_or_default();

    // Preempt whichever point trains first, a few steps in.
    let mut victim = String::new();
    // Polled often: on a fast machine a tiny point trains its 60 steps in a second or two.
    wait_for(t0, 20, &cluster, &sweep, "a point to train a few steps", || {
        match names
            .iter()
            .find(|n| state(n)["state"] == "running" && logged_steps(&sweep.join("points").join(n).join("run")) >= 3)
        {
            Some(n) => {
                victim = n.to_string();
                true
            }
            None => false,
        }
    });
    let job = state(&victim)["job_id"].as_str().unwrap().to_string();
    let out = cluster.run("scancel", &["-b", "-s", "USR1", &job]);
    eprintln!("preempting {victim} (job {job}) at {:.1}s {out}", t0.elapsed().as_secs_f64());
    wait_for(t0, 200, &cluster, &sweep, "the preempted point to be requeued", || {
        let s = state(&victim);
        assert_ne!(s["state"], "done", "{victim} finished before USR1 reached it: raise max_steps in tiny-test.toml");
        s["state"] == "preempted"
    });
    // Slurm holds a requeued job back for its credential lifetime (BeginTime, ~2 min); a
    // real cluster waits, the test moves its start to now once the job is pending again.
    wait_for(t0, 200, &cluster, &sweep, "the requeued task to be pending", || {
        let q = cluster.run("squeue", &["-h", "-r", "-j", &job, "-o", "%T"]);
        q.contains("PENDING") || state(&victim)["attempts"].as_u64() >= Some(2)
    });
    cluster.run("scontrol", &["update", &format!("jobid={job}"), "StartTime=now"]);

    // Both points finish; the report job runs after them.
    wait_for(t0, 200, &cluster, &sweep, "both points to finish", || names.iter().all(|n| state(n)["state"] == "done"));
    let report = sweep.join("report");
    let plots = ["nDCG@10-vs-corpus_docs.png", "nDCG@10-vs-corpus_docs.svg", "R@100-vs-corpus_docs.png"];
    wait_for(t0, 200, &cluster, &sweep, "the report job", || {
        report.join("results.csv").exists() && plots.iter().all(|p| report.join(p).exists())
    });
    eprintln!("sweep finished at {:.1}s", t0.elapsed().as_secs_f64());

    for n in names {
        let s = state(n);
        assert_eq!(s["exit_code"], 0, "{n}: {s}");
        let metrics = read_json(&sweep.join("points").join(n).join("run/eval/metrics.json")).expect("metrics.json");
        assert!(metrics["nDCG@10"].as_f64().is_some(), "{n}: {metrics}");
    }
    // The report's table: one row per point, the points' own metrics.
    let file = std::fs::File::open(report.join("results.parquet")).unwrap();
    let batches: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let mut rows: Vec<(String, f64)> = Vec::new();
    for batch in &batches {
        let points = batch.column_by_name("point").expect("point column");
        let points = points.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        let ndcg = batch.column_by_name("nDCG@10").expect("nDCG@10 column");
        let ndcg = ndcg.as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
        rows.extend((0..batch.num_rows()).map(|i| (points.value(i).to_string(), ndcg.value(i))));
    }
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (point, ndcg) in &rows {
        let m = read_json(&sweep.join("points").join(point).join("run/eval/metrics.json")).unwrap();
        assert!((ndcg - m["nDCG@10"].as_f64().unwrap()).abs() < 1e-12, "{point}: {ndcg} vs {m}");
    }
    for p in plots {
        assert!(std::fs::metadata(report.join(p)).unwrap().len() > 1000, "{p} is empty");
    }
    let preempted = state(&victim);
    assert!(preempted["attempts"].as_u64().unwrap() >= 2, "{preempted}{}", dump(&cluster, &sweep));
    let train = read_json(&sweep.join("points").join(&victim).join("run/train.json")).unwrap();
    assert!(train["resumed_at"].as_u64().unwrap() > 0, "{victim} did not resume from a checkpoint: {train}");
    assert_eq!(train["world_size"], 2, "2 ranks per point");
    let log = std::fs::read_to_string(sweep.join("slurm").join(format!("{}.out", job))).unwrap_or_default();
    assert!(log.contains("preempted (exit 75), requeueing"), "{log}");

    // Status reads it all back; a re-run submits nothing.
    let status = cluster.cmd(grdr_bin).args(["sweep", "status", sweep.to_str().unwrap()]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && table.matches("| done").count() == 2, "{table}{}", stderr(&status));
    let jobs = std::fs::read_to_string(sweep.join("slurm/jobs.json")).unwrap();
    let again = cluster.cmd(grdr_bin).args(args).current_dir(repo()).output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(sweep.join("slurm/jobs.json")).unwrap(), jobs, "nothing resubmitted");
    eprintln!("total {:.1}s", t0.elapsed().as_secs_f64());
}
