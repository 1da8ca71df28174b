//! Multi-node for real: `slurm/test-cluster start --nodes 2` runs two slurmd in their own UTS
//! and mount namespaces — hosts `grdr-n1` and `grdr-n2` to Slurm, PMIx and MPI — and the
//! checks run on that one cluster, started once:
//! 1. 2 nodes × 1 rank of DR training ≡ 1 node × 2 ranks ≡ 1 rank × 2× batch (parameters),
//!    `world.json` naming both hosts;
//! 2. a 2-node evaluation writes the 1-rank run file, byte for byte;
//! 3. the tiny-test sweep with the 2-node profile (`slurm/profiles/local-2node.toml`): one
//!    point is preempted across nodes (`scancel -b -s USR1`: every rank checkpoints, exit 75,
//!    requeue, resume ≡ uninterrupted), the other loses node 2 mid-run (its slurmd and every
//!    process on that host killed): the job ends within 30 s naming the node and the rank,
//!    and once the node is back the point resumes from its last checkpoint; the report's
//!    rows say `nodes = 2`.
//!
//! Outputs live under the target directory: what a job writes under /tmp stays on its node.
mod common;
mod train_common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::slurm::{self, dump_sweep, logged_steps, read_json, repo, Cluster};
use train_common::{bin, launcher, ok, param_distance, params, tiny_dual, train, write_config};

/// The whole test's budget: a hang fails with the cluster's logs instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(300);

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_nodes_train_evaluate_sweep_fail_and_preempt() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(&dir.path().join("slurm"), 2);
    eprintln!("cluster up after {:.1}s", t0.elapsed().as_secs_f64());
    let data = common::prepare_scifact(dir.path(), None);
    let salloc = |alloc: &[&str], args: &[&str]| -> Output {
        cluster.cmd("salloc").args(alloc).args(["-t", "3", path(&launcher()), "--", bin()]).args(args).output().unwrap()
    };
    let two_nodes = ["-N2", "-n2", "--ntasks-per-node=1"];

    // ---- 1. Training: 2 nodes × 1 rank ≡ 1 node × 2 ranks ≡ 1 rank × 2× batch. ----------
    let text =
        tiny_dual(&data).replace("d_ff = 64", "d_ff = 64\nno_dropout = true").replace("max_steps = 6", "max_steps = 4");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let one = dir.path().join("one-rank");
    ok(&train(&cfg, &one, &["--set", "train.batch_size=8"]));
    let node = dir.path().join("one-node");
    let nodes = dir.path().join("two-nodes");
    let half = ["--set", "train.batch_size=4"];
    ok(&salloc(&["-N1", "-n2"], &[&["train", "--config", path(&cfg), "--output", path(&node)][..], &half].concat()));
    ok(&salloc(&two_nodes, &[&["train", "--config", path(&cfg), "--output", path(&nodes)][..], &half].concat()));
    for run in [&node, &nodes] {
        let (rel, max_abs) = param_distance(&params(run, 4), &params(&one, 4));
        assert!(rel <= 1e-5 && max_abs <= 1e-4, "{}: relative distance {rel:e}, largest {max_abs:e}", run.display());
    }
    let world = read_json(&nodes.join("world.json")).unwrap();
    let hosts: Vec<&str> = world["ranks"].as_array().unwrap().iter().map(|r| r["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["grdr-n1", "grdr-n2"], "{world}");
    // Per node: the local rank (which picks the CUDA device) and the node index MPI reports.
    let placed: Vec<(u64, u64)> = world["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["node"].as_u64().unwrap(), r["local_rank"].as_u64().unwrap()))
        .collect();
    assert_eq!(placed, [(0, 0), (1, 0)], "{world}");
    assert_eq!((world["nodes"].as_u64(), world["launcher"].as_str()), (Some(2), Some("srun")), "{world}");
    let world1 = read_json(&node.join("world.json")).unwrap();
    assert_eq!((world1["nodes"].as_u64(), world1["world_size"].as_u64()), (Some(1), Some(2)), "{world1}");
    eprintln!("training equivalence at {:.1}s:\n{world:#}", t0.elapsed().as_secs_f64());

    // ---- 2. Evaluation: the 2-node run file is the 1-rank one. ---------------------------
    let e1 = dir.path().join("eval-one");
    let e2 = dir.path().join("eval-two");
    let eval = ["eval", "--run", path(&nodes), "--k", "20", "--output"];
    ok(&std::process::Command::new(bin()).args(eval).arg(&e1).output().unwrap());
    ok(&salloc(&two_nodes, &[&eval[..], &[path(&e2)]].concat()));
    let trec = |d: &Path| std::fs::read(d.join("run.trec")).unwrap();
    assert!(!trec(&e1).is_empty());
    assert!(trec(&e2) == trec(&e1), "2-node run.trec differs from the 1-rank one");
    eprintln!("evaluation equivalence at {:.1}s", t0.elapsed().as_secs_f64());

    // ---- 3. A sweep on the 2-node profile: preemption, node failure, report. ---------------
    let sweep = dir.path().join("sweep");
    let data_set = format!("data.path={}", data.display());
    let args = [
        "sweep",
        "configs/sweeps/tiny-test.toml",
        "--backend",
        "slurm",
        "--profile",
        "slurm/profiles/local-2node.toml",
        "--set",
        &data_set,
        "--set",
        "train.max_steps=400",
        "--set",
        "train.checkpoint_every=20",
        "--set",
        "model.no_dropout=true",
        "--output",
        path(&sweep),
    ];
    let submit = cluster.cmd(bin()).args(args).current_dir(repo()).output().unwrap();
    assert!(submit.status.success(), "grdr sweep failed:\n{}", String::from_utf8_lossy(&submit.stderr));
    let names = ["p00-corpus_docs=700", "p01-corpus_docs=1000"];
    let point = |name: &str| sweep.join("points").join(name);
    let state = |name: &str| read_json(&point(name).join("state.json")).unwrap_or_default();
    let dump = || dump_sweep(&sweep) + &cluster.dump();
    let wait =
        |every: u64, what: &str, cond: &mut dyn FnMut() -> bool| slurm::wait_for(t0, DEADLINE, every, what, dump, cond);
    let checkpointed = |name: &str| !grdr::train::checkpoint::list(&point(name).join("run")).is_empty();

    // Preemption of the first point, past its first checkpoint.
    let running = |name: &str| state(name)["state"] == "running" && logged_steps(&point(name).join("run")) >= 25;
    wait(20, "p00 to train past a checkpoint", &mut || running(names[0]) && checkpointed(names[0]));
    let job0 = state(names[0])["job_id"].as_str().unwrap().to_string();
    eprintln!(
        "preempting p00 (job {job0}) at {:.1}s {}",
        t0.elapsed().as_secs_f64(),
        cluster.run("scancel", &["-b", "-s", "USR1", &job0])
    );
    wait(100, "p00 to be requeued", &mut || state(names[0])["state"] == "preempted");

    // Node failure under the second point.
    wait(20, "p01 to train past a checkpoint", &mut || running(names[1]) && checkpointed(names[1]));
    let job1 = state(names[1])["job_id"].as_str().unwrap().to_string();
    let squeue = |job: &str| cluster.run("squeue", &["-h", "-r", "-j", job, "-o", "%T"]).trim().to_string();
    let killed = Instant::now();
    eprintln!(
        "killing grdr-n2 under p01 (job {job1}) at {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        cluster.script(&["kill-node", "2"])
    );
    wait(200, "p01's job to stop running", &mut || squeue(&job1) != "RUNNING");
    let ended = killed.elapsed();
    wait(200, "p01's batch script to record the failure", &mut || state(names[1])["state"] == "failed");
    eprintln!(
        "p01 ended {:.1}s after its node died: {} (squeue: {})",
        ended.as_secs_f64(),
        state(names[1]),
        squeue(&job1)
    );
    assert!(ended <= Duration::from_secs(30), "the job ran on for {ended:?} after node 2 died{}", dump());
    let log1 = std::fs::read_to_string(sweep.join("slurm").join(format!("{job1}.out"))).unwrap_or_default();
    assert!(log1.contains("node grdr-n2 failed") && log1.contains("rank(s) 1 lost"), "{log1}");
    assert_eq!(state(names[1])["exit_code"], 76, "{}", state(names[1]));
    let status = cluster.cmd(bin()).args(["sweep", "status", path(&sweep)]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(table.lines().any(|l| l.contains(names[1]) && l.contains("failed")), "{table}");

    // The node comes back. The preempted point, requeued by its own script, starts once its
    // requeue hold is lifted (as in tests/sweep_slurm.rs; lifted a few seconds after the
    // requeue, as the hold would: the old step's PMIx socket must be gone before the step id
    // is reused) and finishes from its checkpoint. Then re-running the sweep resubmits the
    // failed point (and only it), which resumes from its last checkpoint.
    eprintln!("reviving grdr-n2 at {:.1}s: {}", t0.elapsed().as_secs_f64(), cluster.script(&["start"]));
    wait(200, "p00 to be requeued and pending", &mut || squeue(&job0) == "PENDING");
    std::thread::sleep(Duration::from_secs(3));
    cluster.run("scontrol", &["update", &format!("jobid={job0}"), "StartTime=now"]);
    wait(200, "p00 to finish", &mut || state(names[0])["state"] == "done");
    let again = cluster.cmd(bin()).args(args).current_dir(repo()).output().unwrap();
    assert!(again.status.success(), "re-running grdr sweep failed:\n{}", String::from_utf8_lossy(&again.stderr));
    wait(200, "p01 to finish", &mut || state(names[1])["state"] == "done");
    assert_ne!(state(names[1])["job_id"].as_str(), Some(job1.as_str()), "p01 was resubmitted");
    eprintln!("both points done at {:.1}s", t0.elapsed().as_secs_f64());
    for n in names {
        let train = read_json(&point(n).join("run/train.json")).unwrap();
        assert!(train["resumed_at"].as_u64().unwrap() > 0, "{n} did not resume from a checkpoint: {train}");
        assert_eq!(train["world_size"], 2);
        let world = read_json(&point(n).join("run/world.json")).unwrap();
        assert_eq!(world["nodes"], 2, "{n}: {world}");
    }
    // Preempted across nodes and resumed ≡ the same point trained without interruption.
    let whole = dir.path().join("p00-uninterrupted");
    let p00_cfg = point(names[0]).join("config.toml");
    ok(&salloc(&two_nodes, &["train", "--config", path(&p00_cfg), "--output", path(&whole)]));
    let steps = read_json(&whole.join("train.json")).unwrap()["steps"].as_u64().unwrap();
    for ((name, a), (_, b)) in params(&point(names[0]).join("run"), steps).iter().zip(&params(&whole, steps)) {
        assert!(a.equal(b), "{name}: the preempted point differs from the uninterrupted run");
    }

    // The report: one row per point, both on two nodes.
    let report = sweep.join("report");
    wait(200, "the report job", &mut || report.join("results.parquet").exists());
    let file = std::fs::File::open(report.join("results.parquet")).unwrap();
    let mut nodes_col = Vec::new();
    for batch in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap()
    {
        let batch = batch.unwrap();
        let col = batch.column_by_name("nodes").expect("nodes column");
        let col = col.as_any().downcast_ref::<arrow_array::Int64Array>().expect("nodes as int64");
        nodes_col.extend((0..batch.num_rows()).map(|i| col.value(i)));
    }
    assert_eq!(nodes_col, [2, 2], "report rows: nodes");
    eprintln!("total {:.1}s", t0.elapsed().as_secs_f64());
}
