//! The shipped run configs and their regression table (`configs/expected/train-scifact.json`,
//! pyserini-style: the expected scores beside the command that produces them).
//! Fast checks: every config parses and validates; the table names shipped configs, and the
//! DR result it records beats BM25 (`bm25-scifact-test.json`) and zero-shot MiniLM.
//! The full reproduction (train + eval on real SciFact, minutes) is `#[ignore]`d:
//! `cargo test --test train_shipped -- --ignored`.
mod train_common;

use std::path::Path;

use grdr::config::RunConfig;
use train_common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn table() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("configs/expected/train-scifact.json")).unwrap()).unwrap()
}

#[test]
fn every_shipped_config_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("configs/runs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            RunConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 4);
}

#[test]
fn the_regression_table_names_shipped_configs_and_dr_beats_the_baselines() {
    let t = table();
    let bm25: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("configs/expected/bm25-scifact-test.json")).unwrap())
            .unwrap();
    let bm25_ndcg = bm25["metrics"]["nDCG@10"].as_f64().unwrap();
    for (name, entry) in t["runs"].as_object().unwrap() {
        let cfg = root().join(entry["config"].as_str().unwrap());
        assert!(cfg.exists(), "{name}: {} missing", cfg.display());
    }
    let dr = &t["runs"]["dr-minilm-scifact"];
    let ndcg = dr["metrics"]["nDCG@10"].as_f64().unwrap();
    let zero_shot = dr["baselines"]["zero-shot all-MiniLM-L6-v2 (published)"]["nDCG@10"].as_f64().unwrap();
    assert!(ndcg > zero_shot, "recorded DR nDCG@10 {ndcg} does not beat zero-shot {zero_shot}");
    assert!(ndcg > bm25_ndcg, "recorded DR nDCG@10 {ndcg} does not beat BM25 {bm25_ndcg}");
}

/// Trains the shipped config `name` on 2 ranks on SciFact and checks every metric recorded
/// in the regression table within its tolerance.
fn reproduces(name: &str) {
    let t = table();
    let want = &t["runs"][name];
    let dir = tempfile::tempdir().unwrap();
    let cfg = root().join(want["config"].as_str().unwrap());
    let out = dir.path().join("run");
    let data = format!("data.path={}", dataset().display());
    let o = std::process::Command::new(launcher())
        .args(["-n", "2", "--", bin(), "train", "--config", cfg.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .args(["--set", &data, "--set", "log.progress=false"])
        .output()
        .unwrap();
    ok(&o);
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/metrics.json")).unwrap()).unwrap();
    let tol = want["tolerance"].as_f64().unwrap();
    for (k, v) in want["metrics"].as_object().unwrap() {
        let (g, w) = (got[k].as_f64().unwrap(), v.as_f64().unwrap());
        assert!((g - w).abs() <= tol, "{name} {k}: {g} vs expected {w} (±{tol})");
    }
}

/// The README's main job: 2 ranks train the DR config on SciFact train, evaluate on test.
#[test]
#[ignore]
fn dr_minilm_scifact_reproduces() {
    reproduces("dr-minilm-scifact");
}

/// ColBERT on 2 ranks (~25 CPU-minutes per rank).
#[test]
#[ignore]
fn colbert_minilm_scifact_reproduces() {
    reproduces("colbert-minilm-scifact");
}
