//! Multi-rank test plumbing. A cargo test cannot be two MPI ranks itself, so an outer
//! test starts `launcher/grdr-launch -n N -- <this test executable> <worker> --exact
//! --ignored`; each rank runs the `#[ignore]`d worker test, which computes and writes its
//! results under `$GRDR_TEST_OUT`, and the outer test compares them with a one-process
//! computation done in-process (a world of one, no MPI).
#![allow(dead_code)]

pub mod checks;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tch::Tensor;

pub const WORKER_ENV: &str = "GRDR_TEST_WORKER";
pub const OUT_ENV: &str = "GRDR_TEST_OUT";

pub fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("launcher").join("grdr-launch")
}

/// The launcher command running `worker` of this test executable on `ranks` ranks.
pub fn worker_command(ranks: usize, worker: &str, out: &Path) -> Command {
    let exe = std::env::current_exe().expect("test executable path");
    let mut cmd = Command::new(launcher());
    cmd.arg("-n")
        .arg(ranks.to_string())
        .arg("--")
        .arg(exe)
        .args([worker, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, "1")
        .env(OUT_ENV, out)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// Runs `worker` on `ranks` ranks to completion; panics with the job's output on failure.
pub fn run_worker(ranks: usize, worker: &str, out: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = worker_command(ranks, worker, out);
    cmd.envs(env.iter().copied());
    let output = cmd.output().expect("start launcher/grdr-launch");
    if !output.status.success() {
        panic!(
            "{worker} on {ranks} ranks failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Starts `worker` without waiting, in its own process group (so the test can always
/// clean up the whole job), with stdout/stderr piped.
pub fn spawn_worker(ranks: usize, worker: &str, out: &Path, env: &[(&str, &str)]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = worker_command(ranks, worker, out);
    cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    cmd.spawn().expect("start launcher/grdr-launch")
}

/// Waits up to `limit` for `child`; on timeout kills its process group and returns None.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> (Option<std::process::ExitStatus>, String, Duration) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for launcher") {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = t0.elapsed();
    let mut text = String::new();
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    (status, text, elapsed)
}

/// Inside a worker: the output directory. A worker run on its own (`cargo test --
/// --ignored`) has no outer test to check its results, so it fails rather than pass having
/// tested nothing.
pub fn worker_out() -> PathBuf {
    let out = std::env::var_os(WORKER_ENV).and_then(|_| std::env::var_os(OUT_ENV));
    PathBuf::from(out.expect("a worker test runs only under its outer test (through launcher/grdr-launch)"))
}

pub fn save(path: &Path, named: &[(String, Tensor)]) {
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, path).expect("write safetensors");
}

pub fn load(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// max|a − b| / max|b| (0 when both are 0): relative to the tensor's scale, so tiny
/// entries of a large gradient do not dominate.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    assert_eq!(a.size(), b.size(), "shapes differ");
    let num = (&a - &b).abs().max().double_value(&[]);
    let den = b.abs().max().double_value(&[]);
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Compares two named tensor sets; returns the largest relative difference and asserts
/// it is at most `tol`.
pub fn assert_close(what: &str, got: &[(String, Tensor)], want: &[(String, Tensor)], tol: f64) -> f64 {
    let gn: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let wn: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(gn, wn, "{what}: different tensor names");
    let mut worst = 0f64;
    let mut bad = Vec::new();
    for ((n, g), (_, w)) in got.iter().zip(want) {
        let d = rel_diff(g, w);
        // NaN counts as a difference.
        if d.is_nan() || d > tol {
            bad.push(format!("`{n}` differs by {d:e}"));
        }
        worst = worst.max(d);
    }
    assert!(bad.is_empty(), "{what}: relative differences above {tol:e}: {}", bad.join(", "));
    eprintln!("{what}: max relative difference {worst:e} over {} tensors", got.len());
    worst
}
