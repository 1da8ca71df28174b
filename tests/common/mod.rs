//! Helpers shared by the integration tests: the real SciFact location, running the real
//! `grdr` binary, and preparing a dataset once per test binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// BEIR SciFact: `$GRDR_SCIFACT`, else `../shared/datasets/scifact` beside the checkout.
pub fn scifact_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRDR_SCIFACT") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact");
    assert!(dir.join("corpus.jsonl").exists(), "SciFact not found at {} (set GRDR_SCIFACT)", dir.display());
    dir
}

pub fn grdr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grdr")).args(args).env("CI", "true").output().expect("grdr runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs grdr and panics with its stderr unless it succeeds.
pub fn grdr_ok(args: &[&str]) -> String {
    let out = grdr(args);
    assert!(out.status.success(), "grdr {args:?} failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Prepares SciFact into `dir/scifact` (with the MiniLM tokenizer when asked).
pub fn prepare_scifact(dir: &Path, tokenizer: Option<&str>) -> PathBuf {
    let out = dir.join("scifact");
    let input = scifact_dir();
    let mut args = vec!["prepare", "beir", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()];
    if let Some(t) = tokenizer {
        args.extend(["--tokenizer", t]);
    }
    grdr_ok(&args);
    out
}

/// Runs a Python snippet in the reference venv (`launcher/setup --reference`).
pub fn reference_python(code: &str, args: &[&str]) -> String {
    let py = grdr::assets::reference_python().expect("reference python (run launcher/setup --reference)");
    let out = Command::new(py).arg("-c").arg(code).args(args).output().expect("python runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
