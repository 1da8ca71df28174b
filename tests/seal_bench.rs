//! Benchmark harnesses behind `scripts/bench-seal` (ignored: minutes of CPU, not tests). Each
//! writes a JSON of its timings to `$GRDR_BENCH_DIR`, beside the spec the Python reference
//! (`scripts/seal_reference.py bench`) reads, so both sides run on the same corpus and queries.
//!
//!   BENCH_FM=DIR cargo test --test seal_bench -- --ignored --nocapture fm_next_token
//!   BENCH_FM=DIR BENCH_SEAL_MODEL=DIR BENCH_SEAL_DATA=DIR cargo test --test seal_bench -- --ignored --nocapture seal_decode
use std::path::{Path, PathBuf};
use std::time::Instant;

use grdr::data::synth::Rng;
use grdr::model::hf::{self, LoadOptions};
use grdr::model::{GrModel, T5ForConditionalGeneration};
use grdr::search::beam::{BeamProfile, BeamSearch};
use grdr::search::constraint::FmConstraint;
use grdr::search::fm_index::{self, FmIndex};

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| panic!("{name} is required")))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bench_dir() -> PathBuf {
    let d = env_path("GRDR_BENCH_DIR");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every shard of the index directory $BENCH_FM.
fn shards(dir: &Path) -> Vec<FmIndex> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let n_docs = index["n_docs"].as_u64().unwrap() as usize;
    fm_index::open_dir(dir, n_docs, index["tokenizer"].as_str().unwrap()).unwrap()
}

/// The documents' tokens as the index holds them, in doc order.
fn corpus(shards: &[FmIndex]) -> Vec<Vec<u32>> {
    shards.iter().flat_map(|s| (0..s.meta.n_docs as u32).map(|d| s.doc_tokens(d)).collect::<Vec<_>>()).collect()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The FM-index's next-token query — a prefix's continuations with their counts and rows —
/// timed one call at a time over $BENCH_PREFIXES prefixes drawn from the corpus (a random
/// document, position and length 1–9: the prefixes SEAL's decoder asks about), and one
/// extension step (`extend`) per prefix.
#[test]
#[ignore]
fn fm_next_token() {
    let dir = env_path("BENCH_FM");
    let shards = shards(&dir);
    let index = &shards[0];
    let n = env_usize("BENCH_PREFIXES", 20_000);
    let mut rng = Rng::new(11);
    let mut prefixes = Vec::with_capacity(n);
    while prefixes.len() < n {
        let doc = rng.range(0, index.meta.n_docs as usize - 1) as u32;
        let toks = index.doc_tokens(doc);
        if toks.len() < 2 {
            continue;
        }
        let len = rng.range(1, 9.min(toks.len() - 1));
        let at = rng.range(0, toks.len() - len);
        prefixes.push(toks[at..at + len].to_vec());
    }
    let rows: Vec<_> = prefixes.iter().map(|p| index.rows(p)).collect();
    let (mut next_us, mut extend_us, mut fanout) = (Vec::new(), Vec::new(), 0usize);
    for (p, r) in prefixes.iter().zip(&rows) {
        let t = Instant::now();
        let c = index.continuations(*r);
        next_us.push(t.elapsed().as_secs_f64() * 1e6);
        fanout += c.len();
        let t = Instant::now();
        let e = index.extend(index.all(), p[0]);
        extend_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(!e.is_empty() && !c.is_empty());
    }
    next_us.sort_by(f64::total_cmp);
    extend_us.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "index": dir.display().to_string(),
        "tokens": index.meta.n_tokens,
        "prefixes": n,
        "mean_continuations": fanout as f64 / n as f64,
        "next_token_us": {"median": quantile(&next_us, 0.5), "p90": quantile(&next_us, 0.9), "p99": quantile(&next_us, 0.99), "mean": next_us.iter().sum::<f64>() / n as f64},
        "extend_us": {"median": quantile(&extend_us, 0.5), "p90": quantile(&extend_us, 0.9)},
    });
    let dir = bench_dir();
    std::fs::write(dir.join("grdr_fm.json"), out.to_string()).unwrap();
    let spec = serde_json::json!({"docs": corpus(&shards), "eos": index.meta.eos, "prefixes": prefixes});
    std::fs::write(dir.join("fm_spec.json"), spec.to_string()).unwrap();
    eprintln!("{out}");
}

/// SEAL decoding (history on, n-grams of ≤ 10 tokens, no eos), beams 10 and 100, of the
/// first $BENCH_SEAL_QUERIES test queries of $BENCH_SEAL_DATA with the model $BENCH_SEAL_MODEL
/// (an HF directory, e.g. a run's `model/`) under the FM-index $BENCH_FM, in batches of 8,
/// batch after batch on all intra-op threads. Writes `seal_spec.json` for the reference: the
/// corpus as the index holds it, the same queries and beams.
#[test]
#[ignore]
fn seal_decode() {
    tch::manual_seed(0);
    let dir = bench_dir();
    let shards = shards(&env_path("BENCH_FM"));
    let model_dir = env_path("BENCH_SEAL_MODEL");
    let model =
        GrModel::standard(hf::load::<T5ForConditionalGeneration>(&model_dir, LoadOptions::default()).unwrap().model);
    let ds = grdr::data::Dataset::open(&env_path("BENCH_SEAL_DATA")).unwrap();
    let nq = env_usize("BENCH_SEAL_QUERIES", 32);
    let texts: Vec<String> = ds.split_queries("test").unwrap().into_iter().take(nq).map(|q| q.text).collect();
    let tok = grdr::data::text::TextTokenizer::from_path(&model_dir, 32).unwrap();
    let queries = tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let max_len = 10;
    let constraint = FmConstraint::new(&shards, max_len, false);
    let batch = 8usize;
    let threads = tch::get_num_threads();
    let mut out = serde_json::json!({"model": model_dir.display().to_string(), "queries": queries.len(), "threads": threads, "max_len": max_len});
    // Warm-up (thread pools, first allocations), as the reference does.
    let (warm, warm_mask) = tok.batch(&queries[..1], tch::Device::Cpu);
    BeamSearch::new(&model, &constraint, 10).with_history().search(&warm, &warm_mask);
    for w in [10usize, 100] {
        let search = BeamSearch::new(&model, &constraint, w).with_history();
        // Batches of 8 one after the other, all intra-op threads (as the reference runs).
        let mut prof = BeamProfile::default();
        let mut ngrams = 0usize;
        let t = Instant::now();
        for part in queries.chunks(batch) {
            let (ids, mask) = tok.batch(part, tch::Device::Cpu);
            ngrams += search.search_profiled(&ids, &mask, &mut prof).iter().map(Vec::len).sum::<usize>();
        }
        let secs = t.elapsed().as_secs_f64();
        // As `grdr eval` decodes on the CPU (`run_seal.rs`): one batch per worker, as many
        // workers as threads, libtorch single-threaded in each.
        let units: Vec<_> = queries.chunks(batch).map(|part| tok.batch(part, tch::Device::Cpu)).collect();
        let shared = grdr::parallel::Shared(&search);
        let t = Instant::now();
        grdr::parallel::parallel_map(tch::Device::Cpu, units, |(ids, mask)| shared.get().search(&ids, &mask).len());
        let eval_secs = t.elapsed().as_secs_f64();
        out[w.to_string()] = serde_json::json!({
            "seconds": secs,
            "queries_per_second": queries.len() as f64 / secs,
            "eval_queries_per_second": queries.len() as f64 / eval_secs,
            "ngrams_per_query": ngrams as f64 / queries.len() as f64,
            "profile": prof,
        });
    }
    let spec = serde_json::json!({
        "docs": corpus(&shards), "eos": shards[0].meta.eos, "queries": queries, "beams": [10, 100], "max_len": max_len,
        "threads": threads, "batch": batch,
    });
    std::fs::write(dir.join("seal_spec.json"), spec.to_string()).unwrap();
    std::fs::write(dir.join("grdr_seal.json"), out.to_string()).unwrap();
    eprintln!("{out}");
}
