//! N ranks ≡ 1 rank for evaluation: `grdr eval` on 2 ranks (launcher/grdr-launch, MPI) writes the same run.trec,
//! byte for byte, as on 1 rank — for DR (with calibration), ColBERT (token-pool candidates +
//! MaxSim, and over the compressed index) and GR (trie-constrained beam search), and for the rerank setting. The corpus is
//! synthetic (`grdr synth`: throughput data, not accuracy), split into 6 row groups so both
//! ranks hold several; the DR/ColBERT model is the real MiniLM, the GR model a tiny random T5
//! written here with the T5 tokenizer.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{grdr, grdr_ok, stderr};

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("launcher/grdr-launch")
}

/// `grdr eval` on `ranks` ranks (1: a plain process, no MPI).
fn eval(ranks: usize, args: &[&str]) {
    let out = if ranks == 1 {
        grdr(&[&["eval"], args].concat())
    } else {
        Command::new(launcher())
            .args(["-n", &ranks.to_string(), "--", env!("CARGO_BIN_EXE_grdr"), "eval"])
            .args(args)
            .env("CI", "true")
            .output()
            .expect("launcher runs")
    };
    assert!(out.status.success(), "eval on {ranks} ranks {args:?} failed:\n{}", stderr(&out));
}

fn synth(dir: &Path) -> PathBuf {
    synth_into(dir.join("synth"))
}

/// The small synthetic dataset every test here uses (fixed seed), written to `ds`.
fn synth_into(ds: PathBuf) -> PathBuf {
    grdr_ok(&[
        "synth",
        "--docs",
        "600",
        "--queries",
        "24",
        "--doc-words",
        "3-9",
        "--query-words",
        "3-6",
        "--row-group-rows",
        "100",
        "--seed",
        "5",
        "--output",
        ds.to_str().unwrap(),
    ]);
    ds
}

fn same_runs(dir: &Path, name: &str, args: &[&str]) -> String {
    let one = dir.join(format!("{name}-1"));
    let two = dir.join(format!("{name}-2"));
    eval(1, &[args, &["--output", one.to_str().unwrap()]].concat());
    eval(2, &[args, &["--output", two.to_str().unwrap()]].concat());
    let a = std::fs::read(one.join("run.trec")).unwrap();
    let b = std::fs::read(two.join("run.trec")).unwrap();
    assert!(!a.is_empty(), "{name}: empty run");
    assert!(a == b, "{name}: the 2-rank run.trec differs from the 1-rank one");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(two.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["ranks"], 2);
    String::from_utf8(a).unwrap()
}

#[test]
fn two_ranks_write_the_one_rank_run_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ds = synth(dir);
    let ds = ds.to_str().unwrap();
    let base = [
        "--data",
        ds,
        "--split",
        "test",
        "--k",
        "50",
        "--batch-size",
        "32",
        "--doc-max-len",
        "32",
        "--query-max-len",
        "16",
    ];

    // DR with calibration: identical runs; Brier equal up to the all-reduce's rounding.
    let dr = [&base[..], &["--model", "minilm", "--calibration", "--query-block", "7"]].concat();
    let run = same_runs(dir, "dr", &dr);
    assert_eq!(run.lines().count(), 24 * 50);
    let brier = |n: &str| -> f64 {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(n).join("metrics.json")).unwrap()).unwrap();
        m["Brier"].as_f64().unwrap()
    };
    assert!((brier("dr-1") - brier("dr-2")).abs() < 1e-9);

    // DR with embeddings spilled to disk: the same file again.
    let spill = dir.join("spill");
    eval(
        2,
        &[&dr[..], &["--spill", spill.to_str().unwrap(), "--output", dir.join("dr-spill").to_str().unwrap()]].concat(),
    );
    assert_eq!(std::fs::read(dir.join("dr-spill/run.trec")).unwrap(), run.as_bytes());

    // DR rerank of BM25's top-20 (no gold): a subset of the end-to-end scores.
    let rr = [&base[..], &["--model", "minilm", "--rerank", "--rerank-depth", "20"]].concat();
    same_runs(dir, "dr-rerank", &rr);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("dr-rerank-2/run.json")).unwrap()).unwrap();
    assert_eq!(info["rerank"]["gold_added"], false);

    // ColBERT end to end (untrained projection: only the plumbing is under test).
    let cb = [&base[..], &["--model", "minilm", "--kind", "colbert", "--token-k", "8", "--colbert-dim", "16"]].concat();
    same_runs(dir, "colbert", &cb);
    // ColBERT over the compressed index: the codec's sample, k-means, probing and the two
    // global cuts (to `ndocs` by pruned, to `rescore` by exact centroid interaction) are the
    // same on any number of ranks.
    let compressed = [&base[..], &["--model", "minilm", "--kind", "colbert", "--colbert-dim", "16"]].concat();
    let compressed = [&compressed[..], &["--compress", "--nprobe", "2", "--ndocs", "80", "--rescore", "60"]].concat();
    same_runs(dir, "colbert-compressed", &compressed);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("colbert-compressed-2/run.json")).unwrap()).unwrap();
    assert_eq!(info["compression"]["nbits"], 2);
    let stage = &info["candidate_stage"];
    assert_eq!((stage["mean_candidates"].as_f64(), stage["rescored"].as_u64()), (Some(60.0), Some(60)), "{info}");
    // The second cut keeps a subset of the first's.
    assert!(stage["recall"].as_f64().unwrap() <= stage["recall_ndocs"].as_f64().unwrap(), "{info}");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("colbert-2/run.json")).unwrap()).unwrap();
    let recall = info["candidate_stage"]["recall"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&recall));

    // Rerank (BM25 top-20 + gold, ColBERT q←d).
    let rr = [&cb[..], &["--rerank", "--rerank-depth", "20", "--rerank-add-gold", "--alignment", "d2q-soft"]].concat();
    same_runs(dir, "rerank", &rr);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rerank-2/run.json")).unwrap()).unwrap();
    assert_eq!(info["rerank"]["gold_added"], true);
    assert_eq!(info["rerank"]["candidate_recall"], 1.0);

    // GR: a tiny random T5 over the T5 vocabulary, title docids, beam 10.
    let t5 = tiny_t5(dir);
    let docids = dir.join("docids.parquet");
    grdr_ok(&["docids", "--data", ds, "--scheme", "title", "--output", docids.to_str().unwrap()]);
    let gr = [
        &base[..],
        &[
            "--model",
            t5.to_str().unwrap(),
            "--kind",
            "generative",
            "--docids",
            docids.to_str().unwrap(),
            "--beam",
            "10",
            "--beam-rows",
            "40",
            "--calibration",
        ],
    ]
    .concat();
    let run = same_runs(dir, "gr", &gr);
    assert!(run.lines().count() >= 24 * 10, "≥ 10 docs per query (docids are unique titles)");

    // SEAL: n-gram docids, the corpus's FM-index in 2 shards (row groups of ~300 docs), n-grams
    // decoded under it (beam 5, 4 tokens) and ranked by SEAL's scoring; batches of 3 queries
    // so both ranks decode several.
    let ngrams = dir.join("ngrams.parquet");
    grdr_ok(&["docids", "--data", ds, "--scheme", "ngram", "--ngram-len", "4", "--output", ngrams.to_str().unwrap()]);
    let fm = dir.join("fm");
    grdr_ok(&["index", "fm", "--data", ds, "--output", fm.to_str().unwrap(), "--shard-tokens", "6000"]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(fm.join("index.json")).unwrap()).unwrap();
    assert!(index["shards"].as_array().unwrap().len() >= 2, "{index}");
    let seal = [
        &base[..],
        &["--model", t5.to_str().unwrap(), "--kind", "generative", "--docids", ngrams.to_str().unwrap()],
        &["--fm-index", fm.to_str().unwrap(), "--ngram-len", "4", "--beam", "5", "--beam-rows", "15"],
    ]
    .concat();
    same_runs(dir, "seal", &seal);
    // (A random model's n-grams are mostly less likely than their corpus frequency, which
    // SEAL's weight clips to 0, so the run holds few documents; it must hold the same ones.)
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("seal-2/run.json")).unwrap()).unwrap();
    assert_eq!(info["seal"]["shards"], index["shards"].as_array().unwrap().len());
    assert!(info["seal"]["ngrams_per_query_rank0"].as_f64().unwrap() > 5.0, "{}", info["seal"]);
    // Wu et al.'s rerank setting: BM25 top-100 + gold, each candidate by its span score.
    let rr = [
        &base[..],
        &["--model", t5.to_str().unwrap(), "--kind", "generative", "--docids", ngrams.to_str().unwrap()],
        &["--rerank", "paper"],
    ]
    .concat();
    same_runs(dir, "seal-rerank", &rr);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("seal-rerank-2/run.json")).unwrap()).unwrap();
    assert_eq!(info["rerank"]["gold_added"], true);
    assert_eq!(info["rerank"]["candidate_recall"], 1.0);
    assert!(info["rerank"]["gr_score"].as_str().unwrap().starts_with("Wu et al."), "{}", info["rerank"]);
}

/// A random-init T5 (d_model 16, vocab = the T5 tokenizer's) exported as an HF directory.
fn tiny_t5(dir: &Path) -> PathBuf {
    use grdr::model::{T5Config, T5ForConditionalGeneration};
    tch::manual_seed(3);
    let cfg = T5Config::from_json(&serde_json::json!({
        "vocab_size": 32128, "d_model": 16, "d_kv": 4, "d_ff": 32, "num_layers": 1, "num_heads": 4,
        "feed_forward_proj": "relu", "tie_word_embeddings": true, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "model_type": "t5", "relative_attention_num_buckets": 8,
    }))
    .unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = T5ForConditionalGeneration::new(&vs.root(), cfg).unwrap();
    let tok = grdr::assets::resolve("t5-tokenizer").unwrap().join("tokenizer.json");
    let out = dir.join("tiny-t5");
    grdr::model::hf::export(&model, &vs, Some(&tok), &out, &[]).unwrap();
    out
}

#[test]
fn synth_writes_a_valid_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synth(tmp.path());
    let d = grdr::data::Dataset::open(&ds).unwrap();
    assert_eq!(d.docs().unwrap().len(), 600);
    assert_eq!(d.split_queries("test").unwrap().len(), 24);
    assert_eq!(d.manifest.row_group_rows, 100);
    // Deterministic: the same seed writes the same documents.
    let again = synth_into(tmp.path().join("again"));
    assert_eq!(grdr::data::Dataset::open(&again).unwrap().docs().unwrap(), d.docs().unwrap());
    let bad =
        grdr(&["synth", "--docs", "10", "--doc-words", "9-3", "--output", tmp.path().join("x").to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
