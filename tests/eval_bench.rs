//! Benchmark harnesses behind `scripts/bench-eval` (ignored: minutes of CPU, not tests).
//! Each writes a JSON of its timings to `$GRDR_BENCH_DIR`, next to the inputs the Python
//! reference (`scripts/bench_eval_*.py`) reads, so both sides run on the same data.
//!
//!   cargo test --test eval_bench -- --ignored --nocapture flat_search
//!   cargo test --test eval_bench -- --ignored --nocapture beam_search
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use grdr::data::synth::Rng;
use grdr::search::beam::{BeamProfile, BeamSearch};
use grdr::search::flat::{self, EmbeddingStore};
use grdr::search::trie::DocidTrie;
use tch::{Device, Kind, Tensor};

fn bench_dir() -> PathBuf {
    let d = PathBuf::from(std::env::var("GRDR_BENCH_DIR").expect("GRDR_BENCH_DIR"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The device of the GR benchmark: $BENCH_DEVICE (`cpu`, the default, or `cuda`/`cuda:N`).
fn bench_device() -> Device {
    grdr::device::parse_device(&std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()), 0, "BENCH_DEVICE")
        .unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn write_f32(path: &PathBuf, t: &Tensor) {
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.contiguous().view([-1]).copy_data(&mut v, n);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for x in v {
        f.write_all(&x.to_le_bytes()).unwrap();
    }
}

/// Exact DR search: N × D random unit vectors (N = $BENCH_DOCS, default 1M), Q queries,
/// top-k, chunks of $BENCH_CHUNK rows, all intra-op threads.
#[test]
#[ignore]
fn flat_search() {
    let (n, d, q, k) =
        (env_usize("BENCH_DOCS", 1_000_000), 384i64, env_usize("BENCH_QUERIES", 1000), env_usize("BENCH_K", 100));
    let chunk = env_usize("BENCH_CHUNK", 16384);
    let dir = bench_dir();
    tch::manual_seed(0);
    let norm = |t: Tensor| {
        let n = t.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        t / n
    };
    let docs = norm(Tensor::randn([n as i64, d], (Kind::Float, Device::Cpu)));
    let queries = norm(Tensor::randn([q as i64, d], (Kind::Float, Device::Cpu)));
    write_f32(&dir.join("docs.f32"), &docs);
    write_f32(&dir.join("queries.f32"), &queries);
    let rss0 = grdr::eval::run_eval::peak_rss_mib();
    let mut store = EmbeddingStore::new(d, Device::Cpu, None).unwrap();
    for start in (0..n).step_by(chunk) {
        let rows = chunk.min(n - start) as i64;
        store.push(start as i64, &docs.narrow(0, start as i64, rows).copy()).unwrap();
    }
    drop(docs);
    let t0 = Instant::now();
    let tops = flat::search(&store, &queries, k, 1024).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let ids: Vec<Vec<i64>> =
        tops.into_iter().map(|t| t.into_sorted_vec().iter().map(|h| h.doc_idx).collect()).collect();
    std::fs::write(dir.join("grdr_ids.json"), serde_json::to_vec(&ids).unwrap()).unwrap();
    let out = serde_json::json!({
        "docs": n, "dim": d, "queries": q, "k": k, "chunk_rows": chunk, "threads": tch::get_num_threads(),
        "seconds": secs, "queries_per_second": q as f64 / secs,
        "peak_rss_mib": grdr::eval::run_eval::peak_rss_mib(), "rss_before_store_mib": rss0,
    });
    std::fs::write(dir.join("grdr_flat.json"), out.to_string()).unwrap();
    eprintln!("{out}");
}

/// What a GR decoding benchmark runs on: the model, its HF directory (the reference loads
/// it), the docid trie and its sequences, and the queries' token ids.
struct GrBench {
    model: grdr::model::GrModel,
    /// Keeps the model's parameters alive.
    _owner: Box<dyn std::any::Any>,
    model_dir: PathBuf,
    trie: DocidTrie,
    docids: Vec<Vec<u32>>,
    queries: Vec<Vec<i64>>,
    label: String,
}

/// A random-init T5 of the shipped scratch size (d_model 256, 4 layers, 4 heads, d_ff 1024,
/// the T5 vocabulary), $BENCH_DOCIDS semantic-style docids (3 levels × 32 values, then eos)
/// and random 16-token queries. Its log-probabilities are nearly flat: beam search's worst
/// case (nothing to prune).
fn random_gr(dir: &std::path::Path, n_docids: usize, nq: usize, device: Device) -> GrBench {
    use grdr::model::{T5Config, T5ForConditionalGeneration};
    tch::manual_seed(1);
    let cfg = T5Config::from_json(&serde_json::json!({
        "vocab_size": 32128, "d_model": 256, "d_kv": 64, "d_ff": 1024, "num_layers": 4, "num_heads": 4,
        "feed_forward_proj": "relu", "tie_word_embeddings": true, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "model_type": "t5",
    }))
    .unwrap();
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let model = T5ForConditionalGeneration::new(&vs.root(), cfg).unwrap();
    let model_dir = dir.join("t5-bench");
    grdr::model::hf::export(&model, &vs, None, &model_dir, &[]).unwrap();
    // The same initial weights on every device (made on the CPU, then moved in place).
    vs.set_device(device);
    // Docids: level l uses tokens 1000 + 100·l + c (c < 32), distinct, then eos.
    let mut rng = Rng::new(5);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n_docids {
        let s: Vec<u32> = (0..3).map(|l| 1000 + 100 * l + rng.range(0, 31) as u32).chain([1]).collect();
        seen.insert(s);
    }
    let docids: Vec<Vec<u32>> = seen.into_iter().collect();
    let queries: Vec<Vec<i64>> = (0..nq).map(|_| (0..16).map(|_| rng.range(100, 32000) as i64).collect()).collect();
    let indexed: Vec<(i64, Vec<u32>)> = docids.iter().cloned().enumerate().map(|(i, s)| (i as i64, s)).collect();
    let trie = DocidTrie::build(&indexed, 1).unwrap();
    GrBench {
        model: grdr::model::GrModel::standard(model),
        _owner: Box::new(vs),
        model_dir,
        trie,
        docids,
        queries,
        label: "random-init T5 d_model 256 × 4 layers".into(),
    }
}

/// A trained GR run ($BENCH_GR_RUN, e.g. `dsi-semantic-scifact`): its newest checkpoint, its
/// docids, and the first `nq` queries of its evaluation split, tokenised as `grdr eval` does.
/// The reference loads the run's exported `model/`.
fn trained_gr(run: &std::path::Path, nq: usize, device: Device) -> GrBench {
    use grdr::model::task::{Net, Task};
    let cfg = grdr::config::RunConfig::load(&run.join("config.toml"), &[]).unwrap();
    let table = grdr::data::docid::DocidTable::read(cfg.docids.path.as_ref().expect("a GR run")).unwrap();
    let mut model_cfg = cfg.model.clone();
    model_cfg.no_dropout = true;
    let task = Task::build(&model_cfg, device, Some(&table)).unwrap();
    grdr::train::checkpoint::load_model(&grdr::train::checkpoint::latest(run).expect("a checkpoint"), &task.vs)
        .unwrap();
    let trie = grdr::eval::run_gr::build_trie(&task, &table).unwrap();
    let docids = task.targets(&table).unwrap().into_iter().map(|t| t.into_iter().map(|x| x as u32).collect()).collect();
    let ds = grdr::data::Dataset::open(&cfg.data.path).unwrap();
    let texts: Vec<String> = ds.split_queries(&cfg.eval.split).unwrap().into_iter().take(nq).map(|q| q.text).collect();
    let tok = grdr::data::text::TextTokenizer::from_path(&task.tokenizer_json, cfg.data.query_max_len).unwrap();
    let queries = tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let Net::Generative { model, .. } = task.net else { panic!("{}: not a generative run", run.display()) };
    GrBench {
        model,
        _owner: Box::new(task.vs),
        model_dir: run.join("model"),
        trie,
        docids,
        queries,
        label: format!("trained {} ({} {} queries)", run.display(), texts.len(), cfg.eval.split),
    }
}

/// Right-padded ids and mask of a batch of token-id lists (pad 0, as the reference pads).
fn padded(part: &[Vec<i64>]) -> (Tensor, Tensor) {
    let l = part.iter().map(Vec::len).max().unwrap_or(0);
    let ids: Vec<i64> =
        part.iter().flat_map(|q| q.iter().copied().chain(std::iter::repeat_n(0, l - q.len()))).collect();
    let mask: Vec<i64> = part.iter().flat_map(|q| (0..l).map(move |i| i64::from(i < q.len()))).collect();
    let shape = [part.len() as i64, l as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape))
}

/// GR decoding, beams 10 and 100, top-10 returned, on [`random_gr`] or, with $BENCH_GR_RUN,
/// [`trained_gr`]; $BENCH_GR_QUERIES queries in batches of 8. On the CPU each beam is timed
/// three ways: batch after batch with all intra-op threads, the same with one thread, and as
/// `grdr eval` runs on the CPU (one batch per single-threaded worker), with a per-part
/// profile (`BeamProfile`) of each. With $BENCH_DEVICE=cuda, batch after batch on the GPU.
#[test]
#[ignore]
fn beam_search() {
    let dir = bench_dir();
    let device = bench_device();
    let (n_docids, nq) = (env_usize("BENCH_DOCIDS", 10_000), env_usize("BENCH_GR_QUERIES", 32));
    let t0 = Instant::now();
    let bench = match std::env::var_os("BENCH_GR_RUN") {
        Some(run) => trained_gr(std::path::Path::new(&run), nq, device),
        None => random_gr(&dir, n_docids, nq, device),
    };
    let trie_secs = t0.elapsed().as_secs_f64();
    let GrBench { model, model_dir, trie, docids, queries, label, .. } = &bench;
    let nq = queries.len();
    let threads = tch::get_num_threads();
    let batch = 8usize;
    let spec = serde_json::json!({
        "docids": docids, "queries": queries, "beams": [10, 100],
        "threads": threads, "batch": batch, "k": 10, "device": format!("{device:?}"),
    });
    std::fs::write(dir.join("beam_spec.json"), spec.to_string()).unwrap();
    let on_device = |(ids, mask): (Tensor, Tensor)| (ids.to_device(device), mask.to_device(device));
    let mut out = serde_json::Map::new();
    // Warm-up (thread pools, first allocations, CUDA kernels), as the HF side does.
    let (warm, warm_mask) = on_device(padded(&queries[..1]));
    BeamSearch::new(model, trie, 10).search(&warm, &warm_mask);
    BeamSearch::new(model, trie, 100).search(&warm, &warm_mask);
    for w in [10usize, 100] {
        let search = BeamSearch::new(model, trie, w);
        // The same batches of 8 queries as the HF side, decoded one after the other with `n`
        // intra-op threads.
        let sequential = |n: i32| {
            tch::set_num_threads(n);
            let mut profile = BeamProfile::default();
            let t0 = Instant::now();
            for part in queries.chunks(batch) {
                let (ids, mask) = on_device(padded(part));
                let got = search.search_profiled(&ids, &mask, &mut profile);
                assert!(got.iter().all(|g| g.iter().all(|x| trie.is_valid(&x.tokens))));
            }
            let secs = t0.elapsed().as_secs_f64();
            tch::set_num_threads(threads);
            serde_json::json!({"seconds": secs, "queries_per_second": nq as f64 / secs, "profile": profile})
        };
        let all_threads = sequential(threads);
        if device.is_cuda() {
            out.insert(w.to_string(), serde_json::json!({"queries": nq, "search": all_threads}));
            continue;
        }
        let one_thread = sequential(1);
        // The same batches as `grdr eval` decodes them on the CPU (`run_gr.rs`): one batch per
        // worker thread, as many workers as intra-op threads, libtorch single-threaded in each.
        let units: Vec<(Tensor, Tensor)> = queries.chunks(batch).map(padded).collect();
        let shared = grdr::parallel::Shared(&search);
        let t1 = Instant::now();
        let parts = grdr::parallel::parallel_map(Device::Cpu, units, |(ids, mask)| {
            let mut p = BeamProfile::default();
            let got = shared.get().search_profiled(&ids, &mask, &mut p);
            assert!(got.iter().all(|g| g.iter().all(|x| trie.is_valid(&x.tokens))));
            p
        });
        let eval_secs = t1.elapsed().as_secs_f64();
        let mut eval_profile = BeamProfile::default();
        parts.iter().for_each(|p| eval_profile.add(p));
        out.insert(
            w.to_string(),
            serde_json::json!({
                "queries": nq,
                "search": all_threads,
                "search_1_thread": one_thread,
                "eval": {
                    "workers": threads.min(nq.div_ceil(batch) as i32), "seconds": eval_secs,
                    "queries_per_second": nq as f64 / eval_secs, "profile": eval_profile,
                },
            }),
        );
    }
    out.insert("trie".into(), serde_json::json!({"docids": trie.num_docids(), "nodes": trie.num_nodes(), "bytes": trie.memory_bytes(), "build_seconds": trie_secs}));
    out.insert("threads".into(), serde_json::json!(threads));
    out.insert("model".into(), serde_json::json!(label));
    out.insert("model_dir".into(), serde_json::json!(model_dir));
    out.insert("omp_wait_policy".into(), serde_json::json!(std::env::var("OMP_WAIT_POLICY").ok()));
    std::fs::write(dir.join("grdr_beam.json"), serde_json::Value::Object(out.clone()).to_string()).unwrap();
    eprintln!("{}", serde_json::Value::Object(out));
}
