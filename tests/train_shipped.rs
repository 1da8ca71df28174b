//! The shipped run configs and their regression table (`configs/expected/train-scifact.json`,
//! pyserini-style: the expected scores beside the command that produces them).
//! Every config parses and validates; every entry of the table names a shipped config. The
//! README's main job — the DR config trained on 2 ranks and evaluated on SciFact test — runs
//! in CI and must reproduce the README's nDCG@10 (0.7180 ± 0.002), above BM25 and zero-shot
//! MiniLM as measured by their own tests. ColBERT's reproduction (~25 CPU-minutes a rank) is
//! `#[ignore]`d: `cargo test --test train_shipped -- --ignored`.
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
fn the_regression_table_names_shipped_configs() {
    for (name, entry) in table()["runs"].as_object().unwrap() {
        let cfg = root().join(entry["config"].as_str().unwrap());
        assert!(cfg.exists(), "{name}: {} missing", cfg.display());
    }
}

/// Trains the shipped config `name` on 2 ranks on SciFact and checks every metric recorded
/// in the regression table within its tolerance.
fn reproduces(name: &str) -> serde_json::Value {
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
    got
}

/// The README's main job: 2 ranks train the DR config on SciFact train, evaluate on test
/// (~6 minutes on 2 cores) — the README's headline number.
#[test]
fn dr_minilm_scifact_reproduces() {
    let got = reproduces("dr-minilm-scifact");
    let ndcg = got["nDCG@10"].as_f64().unwrap();
    assert!((ndcg - 0.7180).abs() <= 0.002, "fine-tuned DR nDCG@10 {ndcg}, the README says 0.7180");
}

/// ColBERT on 2 ranks (~25 CPU-minutes per rank).
#[test]
#[ignore]
fn colbert_minilm_scifact_reproduces() {
    reproduces("colbert-minilm-scifact");
}
