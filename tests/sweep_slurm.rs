//! The sweep on a real Slurm cluster: `slurm/test-cluster` starts
//! a one-node Slurm on this machine; `grdr sweep configs/sweeps/tiny-test.toml --backend
//! slurm` submits a 2-point × 2-rank job array; one point is preempted mid-training with
//! `scancel -b -s USR1` (what `--signal=B:USR1@…` does before a time limit), checkpoints,
//! exits 75 and is requeued by its batch script; both points finish, the preempted one
//! resumed from its checkpoint, and the report job leaves results.parquet and plots.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::slurm::{self, dump_sweep, logged_steps, read_json, repo, Cluster};
use common::*;

/// The whole test's budget: a hang fails with the cluster's logs instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(420);

fn wait_for(t0: Instant, every: u64, cluster: &Cluster, sweep: &Path, what: &str, cond: impl FnMut() -> bool) {
    slurm::wait_for(t0, DEADLINE, every, what, || dump_sweep(sweep) + &cluster.dump(), cond)
}

#[test]
fn a_two_point_sweep_survives_a_preemption_on_a_real_slurm_cluster() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = prepare_scifact(dir.path(), None);
    let cluster = Cluster::start(&dir.path().join("slurm-state"), 1);
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
    let names = ["p00-corpus_docs=700", "p01-corpus_docs=1000"];
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
    assert!(preempted["attempts"].as_u64().unwrap() >= 2, "{preempted}{}", dump_sweep(&sweep) + &cluster.dump());
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
