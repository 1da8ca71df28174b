//! Resume ≡ uninterrupted. A run resumed from its step-3
//! checkpoint logs the same losses and ends with the same parameters, bit for bit, as the
//! run that never stopped; SIGUSR1 mid-run (one rank) or SIGTERM to the 2-rank launcher
//! checkpoints, exits 75, and the resumed run again ends where the uninterrupted one does. A damaged checkpoint is refused by name.
mod train_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use train_common::*;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn resume_from_a_checkpoint_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    resume_equals_uninterrupted(dir.path(), &tiny_dual(dataset()));
}

/// GR with PAWA: the prefix decoder and the adaptive projection checkpoint and resume too.
#[test]
fn pawa_resume_from_a_checkpoint_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_generative(dataset(), dir.path())
        .replace("kind = \"generative\"", "kind = \"generative\"\ndecoder = \"pawa\"\npawa_rank = 4");
    resume_equals_uninterrupted(dir.path(), &text);
}

/// GR with NP decoding (ASYNC, D re-encoded every 0.0025 epochs: at steps 0, 2, 4 and 5 of 6): the entry table and the
/// docids' entries are checkpointed, so the resumed run decodes against the D it left.
#[test]
fn np_resume_from_a_checkpoint_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    resume_equals_uninterrupted(dir.path(), &tiny_np(dataset(), dir.path(), 0.0025));
}

/// A sampled negative bank re-encoded at steps 0, 2 and 4: resumed at 3, the run continues
/// with the bank of its checkpoint (encoded at step 2) and re-encodes at 4 as the
/// uninterrupted run does.
#[test]
fn negative_bank_resume_from_a_checkpoint_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("hard_negatives = 1", "hard_negatives = 0").replace(
        "threads = 1",
        "threads = 1\nnegative_bank = \"sampled\"\nnum_negatives = 200\nbank_refresh_steps = 2",
    );
    resume_equals_uninterrupted(dir.path(), &text);
}

/// GradCache chunks (keyed dropout seeds per chunk) with a hard bank re-encoded every 2
/// steps: resumed at 3, bit for bit the uninterrupted run.
#[test]
fn grad_cache_with_a_hard_bank_resumes_to_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("hard_negatives = 1", "hard_negatives = 0").replace(
        "threads = 1",
        "threads = 1\nnegative_bank = \"hard\"\nnum_negatives = 20\nbank_refresh_steps = 2\ngrad_cache_chunk = 3",
    );
    resume_equals_uninterrupted(dir.path(), &text);
}

/// The run of config `text` resumed from its step-3 checkpoint ends bit for bit where the
/// uninterrupted one does.
fn resume_equals_uninterrupted(dir: &std::path::Path, text: &str) {
    // Dropout stays on: the per-step reseeding must make it reproducible too.
    let cfg = write_config(dir, "run.toml", &text.replace("max_steps = 6", "max_steps = 6\ncheckpoint_every = 3"));
    let full = dir.join("full");
    ok(&train(&cfg, &full, &[]));
    assert_eq!(grdr::train::checkpoint::list(&full), vec![3, 6]);

    // The same run killed after step 4 (its step-3 checkpoint survives, the log ran ahead).
    let cut = dir.join("cut");
    copy_dir(&full, &cut);
    std::fs::remove_dir_all(cut.join("checkpoints/step-6")).unwrap();
    std::fs::remove_dir_all(cut.join("model")).unwrap();
    let log = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    std::fs::write(cut.join("metrics.jsonl"), log.lines().take(4).map(|l| format!("{l}\n")).collect::<String>())
        .unwrap();
    ok(&train(&cfg, &cut, &["--resume"]));

    assert_eq!(losses(&cut), losses(&full));
    let (a, b) = (params(&cut, 6), params(&full, 6));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{n} differs after resume");
    }
    let opt = |run: &std::path::Path| std::fs::read(run.join("checkpoints/step-6/optimizer.safetensors")).unwrap();
    assert_eq!(opt(&cut), opt(&full), "optimizer state differs after resume");
}

/// Starts a 120-step run with `launch`, sends `signal` once 3 steps are logged, and checks
/// that it checkpoints, exits 75, and resumes (launched the same way) to the parameters and
/// losses of `full`, the run that never stopped.
fn preempt_and_resume(dir: &std::path::Path, full: &std::path::Path, signal: i32, launch: impl Fn(&[&str]) -> Command) {
    let run = dir.join("run");
    let out = run.to_str().unwrap();
    let mut child = launch(&["--output", out]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Signal once a few steps are logged (the handler is installed before step 1).
    let t0 = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(75), "{err}");
    let steps = grdr::train::checkpoint::list(&run);
    let stopped = *steps.last().expect("a checkpoint on the signal");
    assert!(stopped > 0 && stopped < 120, "stopped at {stopped}");
    let state = grdr::train::checkpoint::verify(&run.join(format!("checkpoints/step-{stopped}"))).unwrap();
    assert!(state.reason.contains("SIGUSR1") || state.reason.contains("SIGTERM"), "{}", state.reason);

    // Resuming needs no config: the run directory has it.
    ok(&launch(&["--output", out, "--resume"]).output().unwrap());
    let (a, b) = (params(&run, 120), params(full, 120));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{n} differs after the signal + resume");
    }
    assert_eq!(losses(&run), losses(full));
}

#[test]
fn sigusr1_checkpoints_exits_75_and_resumes_to_the_same_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 120");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let full = dir.path().join("full");
    ok(&train(&cfg, &full, &[]));
    preempt_and_resume(dir.path(), &full, libc::SIGUSR1, |args| {
        let mut c = Command::new(bin());
        c.args(["train", "--config", cfg.to_str().unwrap()]).args(args).env("CI", "1").env("OMP_NUM_THREADS", "1");
        c
    });
}

/// Two ranks under the local launcher: `kill` (SIGTERM) of launcher/grdr-launch reaches
/// both ranks as SIGUSR1 (mpirun alone would SIGKILL them), they agree on the step to stop
/// at, checkpoint, exit 75, and the resumed 2-rank run ends where the uninterrupted one does.
#[test]
fn sigterm_to_the_two_rank_launcher_checkpoints_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 120");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let full = dir.path().join("full");
    ok(&train_ranks(2, &cfg, &full, &[]));
    preempt_and_resume(dir.path(), &full, libc::SIGTERM, |args| {
        let mut c = Command::new(launcher());
        c.args(["-n", "2", "--", bin(), "train", "--config", cfg.to_str().unwrap()])
            .args(args)
            .env("CI", "1")
            .env("OMP_NUM_THREADS", "1");
        c
    });
}

#[test]
fn damaged_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 2"));
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let ckpt = run.join("checkpoints/step-2");
    assert!(grdr::train::checkpoint::verify(&ckpt).is_ok());

    // Truncated weights.
    let model = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let o = train(&cfg, &run, &["--resume", "--set", "train.max_steps=3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");

    // Same size, one byte flipped.
    let mut flipped = bytes.clone();
    let n = flipped.len() - 3;
    flipped[n] ^= 0xff;
    std::fs::write(&model, &flipped).unwrap();
    let err = grdr::train::checkpoint::verify(&ckpt).unwrap_err().to_string();
    assert!(err.contains("sha256") && err.contains("corrupted"), "{err}");

    // state.json cut short.
    std::fs::write(&model, &bytes).unwrap();
    let state = ckpt.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    let err = grdr::train::checkpoint::verify(&ckpt).unwrap_err().to_string();
    assert!(err.contains("state.json") && err.contains("corrupted"), "{err}");
}
