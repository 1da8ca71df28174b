//! No hang, no silent loss, for the distributed core: a rank that dies, returns an
//! error, panics or hangs ends the whole 2-rank job within 30 s, with a message naming
//! the rank. In every case rank 0 is blocked in a collective waiting for rank 1.
mod dist_common;

use std::path::Path;
use std::time::{Duration, Instant};

use grdr::dist::{self, Backend};
use tch::Device;

const MODE_ENV: &str = "GRDR_TEST_FAILURE";
const LIMIT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "worker: started by the failure tests through launcher/grdr-launch"]
fn worker_failure() {
    let out = dist_common::worker_out();
    let comm = dist::init(Backend::Auto, Device::Cpu).unwrap();
    let rank = comm.world().rank;
    comm.barrier().unwrap(); // everyone is in the job
    std::fs::write(out.join(format!("pid-{rank}")), std::process::id().to_string()).unwrap();
    if rank == 0 {
        comm.barrier().unwrap(); // waits for rank 1, which never comes
        std::fs::write(out.join("rank0-passed"), b"should not happen").unwrap();
        return;
    }
    match std::env::var(MODE_ENV).unwrap().as_str() {
        "kill" | "hang" => std::thread::sleep(Duration::from_secs(120)),
        "error" => {
            let failed: grdr::Result<()> = Err(grdr::Error::dist(rank, "simulated failure while reading a shard"));
            let _ = dist::exit_on_error(comm.as_ref(), failed);
            unreachable!("exit_on_error aborts a multi-rank job");
        }
        "panic" => panic!("simulated panic in rank 1"),
        other => panic!("unknown mode {other}"),
    }
}

fn wait_for_file(path: &Path, limit: Duration) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the 2-rank job in `mode`, optionally kills rank 1, and returns the job's output
/// after checking that it failed within the limit.
fn run_failing(mode: &str, kill_rank1: bool, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut all_env = vec![(MODE_ENV, mode)];
    all_env.extend_from_slice(env);
    let child = dist_common::spawn_worker(2, "worker_failure", dir.path(), &all_env);
    let pid1 = dir.path().join("pid-1");
    wait_for_file(&pid1, Duration::from_secs(60));
    if kill_rank1 {
        let pid = std::fs::read_to_string(&pid1).unwrap();
        let ok = std::process::Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
        assert!(ok.success());
    }
    let (status, output, elapsed) = dist_common::wait_with_limit(child, LIMIT);
    eprintln!("--- {mode}: ended after {:.1} s with {status:?}\n{output}", elapsed.as_secs_f64());
    let status = status.unwrap_or_else(|| panic!("{mode}: the job still ran after {LIMIT:?} (killed by the test)"));
    assert!(!status.success(), "{mode}: the job must fail");
    assert!(!dir.path().join("rank0-passed").exists(), "{mode}: rank 0 got past the barrier");
    output
}

#[test]
fn killed_rank_ends_the_job_and_is_named() {
    // The watchdog is set far beyond the limit: the launcher alone must end the job.
    let out = run_failing("kill", true, &[("GRDR_COLLECTIVE_TIMEOUT", "600")]);
    assert!(out.contains("rank 1"), "no message names rank 1:\n{out}");
}

#[test]
fn erroring_rank_aborts_the_job_with_its_error() {
    let out = run_failing("error", false, &[("GRDR_COLLECTIVE_TIMEOUT", "600")]);
    assert!(out.contains("rank 1/2: error: rank 1: simulated failure while reading a shard"), "{out}");
}

#[test]
fn panicking_rank_aborts_the_job() {
    let out = run_failing("panic", false, &[("GRDR_COLLECTIVE_TIMEOUT", "600")]);
    assert!(out.contains("simulated panic in rank 1") && out.contains("rank 1/2: panicked"), "{out}");
}

#[test]
fn hung_rank_is_caught_by_the_collective_watchdog() {
    let out = run_failing("hang", false, &[("GRDR_COLLECTIVE_TIMEOUT", "3")]);
    assert!(out.contains("rank 0/2: collective `barrier`") && out.contains("aborting the job"), "{out}");
}
