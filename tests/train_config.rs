//! Bad configs stop `grdr train` before any work, with exit code 2 and one message that
//! names the file and the key.
mod train_common;

use train_common::*;

fn refused(config_text: &str, sets: &[&str], want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", config_text);
    let mut extra = Vec::new();
    for s in sets {
        extra.extend(["--set", s]);
    }
    let o = train(&cfg, &dir.path().join("run"), &extra);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for w in want {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    assert!(!dir.path().join("run").join("checkpoints").exists());
}

#[test]
fn unknown_key() {
    let text = tiny_dual(dataset()).replace("max_steps = 6", "max_stepz = 6");
    refused(&text, &[], &["run.toml", "max_stepz", "unknown field"]);
}

#[test]
fn unknown_section() {
    let text = format!("{}\n[optimizer]\nlr = 1\n", tiny_dual(dataset()));
    refused(&text, &[], &["optimizer"]);
}

#[test]
fn wrong_type() {
    let text = tiny_dual(dataset()).replace("batch_size = 8", "batch_size = \"eight\"");
    refused(&text, &[], &["run.toml", "batch_size"]);
}

#[test]
fn wrong_type_in_override() {
    refused(&tiny_dual(dataset()), &["train.lr=fast"], &["--set train.lr=fast", "lr"]);
    refused(&tiny_dual(dataset()), &["train.nope=1"], &["nope"]);
}

#[test]
fn missing_data() {
    refused(&tiny_dual(std::path::Path::new("/nonexistent/ds")), &[], &["/nonexistent/ds", "grdr prepare"]);
    let text = tiny_dual(dataset()).replace(&format!("path = \"{}\"\n", dataset().display()), "");
    refused(&text, &[], &["data.path", "missing"]);
}

#[test]
fn values_that_cannot_work() {
    refused(&tiny_dual(dataset()), &["train.batch_size=0"], &["train.batch_size", "at least 1"]);
    refused(&tiny_dual(dataset()), &["model.kind=generative"], &["docids.path"]);
    refused(&tiny_dual(dataset()), &["train.device=tpu"], &["train.device"]);
}

#[test]
fn existing_run_needs_resume_or_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &tiny_dual(dataset()));
    let out = dir.path().join("run");
    ok(&train(&cfg, &out, &["--set", "train.max_steps=1"]));
    let o = train(&cfg, &out, &["--set", "train.max_steps=1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    ok(&train(&cfg, &out, &["--set", "train.max_steps=1", "--overwrite"]));
}
