//! `grdr encode` end to end: a small BEIR collection of the fixture's SciFact texts is
//! prepared, its queries and documents encoded with all-MiniLM-L6-v2, and the Parquet output
//! equals sentence-transformers' embeddings (cosine ≥ 0.9999 on every text), in dataset order.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use grdr::data::embeddings::read_embeddings;
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

/// Copies the JSONL records with the wanted `_id`s, in the wanted order.
fn subset(src: &Path, dest: &Path, ids: &[String]) {
    let mut by_id = HashMap::new();
    for line in std::fs::read_to_string(src).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        by_id.insert(v["_id"].as_str().unwrap().to_string(), line.to_string());
    }
    let out: Vec<&str> = ids.iter().map(|id| by_id[id].as_str()).collect();
    std::fs::write(dest, out.join("\n") + "\n").unwrap();
}

fn grdr(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_grdr")).args(args).output().unwrap();
    assert!(out.status.success(), "grdr {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn encode_equals_sentence_transformers() {
    // Fails (never skips) without SciFact: the comparison is on real texts.
    let scifact = common::scifact_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("minilm").join("ids.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<String> {
        meta[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    let (qids, dids) = (ids("query_ids"), ids("doc_ids"));
    let tmp = tempfile::tempdir().unwrap();
    let beir = tmp.path().join("beir");
    std::fs::create_dir_all(beir.join("qrels")).unwrap();
    subset(&scifact.join("queries.jsonl"), &beir.join("queries.jsonl"), &qids);
    subset(&scifact.join("corpus.jsonl"), &beir.join("corpus.jsonl"), &dids);
    let qrels: String = qids.iter().zip(&dids).map(|(q, d)| format!("{q}\t{d}\t1\n")).collect();
    std::fs::write(beir.join("qrels/test.tsv"), format!("query-id\tcorpus-id\tscore\n{qrels}")).unwrap();
    let ds = tmp.path().join("ds");
    grdr(&["-q", "prepare", "beir", "--input", beir.to_str().unwrap(), "--output", ds.to_str().unwrap()]);

    let expected: HashMap<String, Tensor> =
        grdr::model::safetensors::read_all(&fixture("minilm").join("embeddings.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (what, want_ids, key) in [("queries", &qids, "queries"), ("docs", &dids, "docs")] {
        let out = tmp.path().join(format!("{what}.parquet"));
        let mut args = vec!["-q", "encode", "--model", "minilm", "--data", ds.to_str().unwrap(), "--what", what];
        args.extend(["--output", out.to_str().unwrap(), "--batch-size", "8"]);
        if what == "queries" {
            args.extend(["--split", "test"]);
        }
        grdr(&args);
        let e = read_embeddings(&out).unwrap();
        assert_eq!(&e.ids, want_ids, "{what}: rows in dataset order");
        assert_eq!(e.idx, (0..want_ids.len() as i64).collect::<Vec<_>>());
        assert_eq!(e.meta["max_len"], 256);
        assert_eq!(e.meta["dim"], 384);
        let want = &expected[key];
        let cos = (&e.embeddings * want).sum_dim_intlist(-1, false, Kind::Double)
            / (e.embeddings.norm_scalaropt_dim(2, [-1i64].as_slice(), false)
                * want.norm_scalaropt_dim(2, [-1i64].as_slice(), false));
        let m = cos.min().double_value(&[]);
        let max_abs = (&e.embeddings - want).abs().max().double_value(&[]);
        eprintln!("grdr encode {what}: min cosine {m:.8}, max |Δ| {max_abs:.2e}");
        assert!(m >= 0.9999, "{what}: min cosine {m}");
        assert!(max_abs <= 1e-4, "{what}: max |Δ| {max_abs:e}");
    }
}
