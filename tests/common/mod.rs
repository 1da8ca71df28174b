//! Helpers shared by the integration tests: the real SciFact location, running the real
//! `grdr` binary, and preparing a dataset once per test binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod slurm;

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

/// Runs `scripts/<script>`'s `parity` mode (HF transformers' constrained `generate`, the
/// beam engine's reference) with the reference Python `py` on the HF model `model` and
/// `spec`; returns its output JSON.
pub fn hf_parity(py: &Path, script: &str, model: &Path, spec: &serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (spec_path, out_path) = (dir.path().join("spec.json"), dir.path().join("out.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(script))
        .args(["parity", "--model", model.to_str().unwrap()])
        .args(["--spec", spec_path.to_str().unwrap(), "--out", out_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    serde_json::from_slice(&std::fs::read(out_path).unwrap()).unwrap()
}

/// The sequences HF returned for beam `w` and query `q` of a [`hf_parity`] output, with their
/// Σ log p; HF pads short result lists with never-valid beams scored ≈ −1e9: dropped.
pub fn hf_hypotheses(hf: &serde_json::Value, w: usize, q: usize) -> Vec<(Vec<u32>, f64)> {
    hf[w.to_string()][q]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (serde_json::from_value(h["tokens"].clone()).unwrap(), h["score"].as_f64().unwrap()))
        .filter(|(_, s)| *s > -1e8)
        .collect()
}

/// `b` random queries of `l` tokens over ids 2..vocab (0 = pad/start, 1 = eos).
pub fn random_queries(rng: &mut grdr::data::synth::Rng, b: usize, l: usize, vocab: usize) -> Vec<Vec<i64>> {
    (0..b).map(|_| (0..l).map(|_| rng.range(2, vocab - 1) as i64).collect()).collect()
}

/// Equal-length queries as one batch: input ids (B, L) and an all-ones mask (B, L).
pub fn query_batch(queries: &[Vec<i64>]) -> (tch::Tensor, tch::Tensor) {
    let l = queries[0].len() as i64;
    let ids = tch::Tensor::from_slice(&queries.concat()).view([-1, l]);
    (ids.shallow_clone(), ids.ones_like().to_kind(tch::Kind::Int64))
}

/// The `[set]` keys of a sweep of tiny dual encoders (BERT from scratch, seconds a point on
/// 2 cores); tests append their own length, logging and axes.
pub const TINY_DUAL_SWEEP_SET: &str = r#"[set]
data.query_max_len = 16
data.doc_max_len = 32
model.init = "scratch"
model.arch = "bert"
model.tokenizer = "minilm"
model.d_model = 32
model.num_layers = 1
model.num_heads = 2
model.d_ff = 64
train.batch_size = 8
train.warmup_steps = 2
train.threads = 1
eval.doc_max_len = 32
log.progress = false
"#;
