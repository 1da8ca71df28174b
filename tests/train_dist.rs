//! N ranks × batch B ≡ 1 rank × batch N·B through the real `grdr train`: 2 ranks × batch B log the losses
//! and end with the parameters of 1 rank × batch 2B (relative distance ≤ 1e-5, see
//! `param_distance` for the measure), for DR with cross-rank and BM25 hard
//! negatives, for ColBERT, and for GR (atomic docids, globally normalised token NLL) —
//! each with gradient accumulation.
mod train_common;

use grdr::train::grad_cache;
use tch::Tensor;
use train_common::*;

const TOL: f64 = 1e-5;

fn two_equal_one(text: &str, steps: u64) {
    let dir = tempfile::tempdir().unwrap();
    // Dropout off: dropout masks are drawn per rank, so they legitimately differ.
    let text = text
        .replace("d_ff = 64", "d_ff = 64\nno_dropout = true")
        .replace("max_steps = 6", &format!("max_steps = {steps}"));
    let cfg = write_config(dir.path(), "run.toml", &text);
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    ok(&train(&cfg, &one, &["--set", "train.batch_size=8", "--set", "train.grad_accum=2"]));
    ok(&train_ranks(2, &cfg, &two, &["--set", "train.batch_size=4", "--set", "train.grad_accum=2"]));
    let (rel, max_abs) = param_distance(&params(&two, steps), &params(&one, steps));
    assert!(rel <= TOL, "2 ranks vs 1 rank: relative parameter distance {rel:e}");
    assert!(max_abs <= 1e-4, "2 ranks vs 1 rank: largest parameter difference {max_abs:e}");
    // Each run records the world it ran on.
    let world = |run: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("world.json")).unwrap()).unwrap()
    };
    let (w1, w2) = (world(&one), world(&two));
    assert_eq!(
        (w1["world_size"].as_u64(), w1["backend"].as_str(), w1["launcher"].as_str()),
        (Some(1), Some("local"), Some("none"))
    );
    assert_eq!(
        (w2["world_size"].as_u64(), w2["backend"].as_str(), w2["launcher"].as_str()),
        (Some(2), Some("mpi"), Some("mpirun"))
    );
    assert_eq!(w2["nodes"], 1);
    let ranks = w2["ranks"].as_array().unwrap();
    assert_eq!(ranks.iter().map(|r| r["rank"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
    assert_ne!(ranks[0]["pid"], ranks[1]["pid"]);
    assert_eq!(ranks[0]["host"], ranks[1]["host"]);
    let (l1, l2) = (losses(&one), losses(&two));
    assert_eq!(l1.len(), l2.len(), "both runs log the same steps");
    assert!(!l1.is_empty());
    for ((s, a, _), (_, b, _)) in l1.iter().zip(&l2) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "step {s}: loss {a} vs {b}");
    }
}

#[test]
fn dual_encoder_two_ranks_equal_one() {
    two_equal_one(&tiny_dual(dataset()), 4);
}

#[test]
fn colbert_two_ranks_equal_one() {
    let text =
        tiny_dual(dataset()).replace("kind = \"dual\"", "kind = \"colbert\"\ncolbert_dim = 16\ncolbert_query_len = 8");
    two_equal_one(&text, 3);
}

#[test]
fn generative_two_ranks_equal_one() {
    let dir = tempfile::tempdir().unwrap();
    two_equal_one(&tiny_generative(dataset(), dir.path()), 3);
}

/// PAWA (prefix decoder + adaptive projection under `grdr_head.pawa`) trains on the same
/// globally normalised token NLL: 2 ranks ≡ 1 rank.
#[test]
fn generative_pawa_two_ranks_equal_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_generative(dataset(), dir.path())
        .replace("kind = \"generative\"", "kind = \"generative\"\ndecoder = \"pawa\"\npawa_rank = 4");
    two_equal_one(&text, 3);
}

/// NP decoding, ASYNC with D re-encoded before every step (so a refresh between updates is
/// part of what must agree): the entry table, the docids' entries and the model equal
/// 1 rank's.
#[test]
fn generative_np_async_two_ranks_equal_one() {
    let dir = tempfile::tempdir().unwrap();
    two_equal_one(&tiny_np(dataset(), dir.path(), 1e-4), 3);
}

/// ColBERTv1's pairwise loss (each query against its own BM25 negative only, unscaled) is
/// as independent of the rank count as the in-batch loss.
#[test]
fn colbert_pairwise_two_ranks_equal_one() {
    let text = tiny_dual(dataset())
        .replace("kind = \"dual\"", "kind = \"colbert\"\ncolbert_dim = 16\ncolbert_query_len = 8")
        .replace("[train]", "[train]\nloss = \"pairwise\"\ntemperature = 1.0");
    two_equal_one(&text, 3);
}

/// ColBERT trained with q←d (GR's soft document-to-query alignment, divided by Eq. 1's Z):
/// as independent of the rank count as q→d.
#[test]
fn colbert_d2q_soft_normalized_two_ranks_equal_one() {
    let text = tiny_dual(dataset()).replace(
        "kind = \"dual\"",
        "kind = \"colbert\"\ncolbert_dim = 16\ncolbert_query_len = 8\nalignment = \"d2q-soft\"\nalignment_normalize = true",
    );
    two_equal_one(&text, 3);
}

/// The alignment a model was trained with is the one `grdr eval` scores with (the exported
/// `grdr.json` carries it); `--alignment` changes the direction and keeps the normalisation.
#[test]
fn colbert_evaluates_with_its_trained_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset())
        .replace(
            "kind = \"dual\"",
            "kind = \"colbert\"\ncolbert_dim = 16\ncolbert_query_len = 8\nalignment = \"d2q-max\"\nalignment_normalize = true",
        )
        .replace("max_steps = 6", "max_steps = 1");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let json =
        |p: std::path::PathBuf| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let info = json(run.join("model/grdr.json"));
    assert_eq!(
        (info["model"]["alignment"].as_str(), info["model"]["alignment_normalize"].as_bool()),
        (Some("d2q-max"), Some(true))
    );
    for (flag, want) in [(None, "d2q-max/Z"), (Some("q2d"), "q2d/Z")] {
        let out = dir.path().join(format!("eval-{want}").replace('/', "_"));
        let mut args = vec!["eval", "--run", run.to_str().unwrap(), "--k", "10", "--token-k", "4"];
        args.extend(["--output", out.to_str().unwrap()]);
        if let Some(a) = flag {
            args.extend(["--alignment", a]);
        }
        ok(&std::process::Command::new(bin()).args(&args).output().unwrap());
        assert_eq!(json(out.join("run.json"))["candidate_stage"]["alignment"], want, "{flag:?}");
    }
}

/// A GR run's export (`RUNDIR/model`, whose tokenizer and embeddings already hold the docid
/// tokens) evaluates as the run does: `grdr eval --model` and `grdr eval --run` rank the
/// same documents with the same scores — the standard decoder and PAWA (its prefix decoder
/// and projection read back from `grdr_head.safetensors`).
#[test]
fn generative_export_evaluates_as_its_run() {
    let dir = tempfile::tempdir().unwrap();
    for decoder in ["standard", "pawa"] {
        let text = tiny_generative(dataset(), dir.path())
            .replace("kind = \"generative\"", &format!("kind = \"generative\"\ndecoder = \"{decoder}\"\npawa_rank = 4"))
            .replace("max_steps = 6", "max_steps = 2");
        let cfg = write_config(dir.path(), &format!("{decoder}.toml"), &text);
        let run = dir.path().join(decoder);
        ok(&train(&cfg, &run, &[]));
        let eval = |what: &[&str], out: &str| -> String {
            let out = dir.path().join(format!("{decoder}-{out}"));
            let mut args = vec!["eval", "--k", "5", "--output", out.to_str().unwrap()];
            args.extend(what);
            ok(&std::process::Command::new(bin()).args(&args).output().unwrap());
            // The run tag (last column) names the command; the rest must agree.
            let trec = std::fs::read_to_string(out.join("run.trec")).unwrap();
            trec.lines().map(|l| l.rsplit_once(' ').unwrap().0.to_string() + "\n").collect()
        };
        let model = run.join("model");
        let docids = dir.path().join("atomic.parquet");
        let by_run = eval(&["--run", run.to_str().unwrap()], "run");
        let by_model = eval(
            &[
                "--model",
                model.to_str().unwrap(),
                "--data",
                dataset().to_str().unwrap(),
                "--docids",
                docids.to_str().unwrap(),
            ],
            "model",
        );
        assert!(!by_run.is_empty());
        assert_eq!(by_model, by_run, "{decoder}: eval --model of the export differs from eval --run");
    }
}

/// A tiny dual encoder whose negatives come from a bank of the whole corpus.
fn tiny_bank(mode: &str, extra: &str) -> String {
    tiny_dual(dataset())
        .replace("hard_negatives = 1", "hard_negatives = 0")
        .replace("threads = 1", &format!("threads = 1\nnegative_bank = \"{mode}\"\nbank_refresh_steps = 2\n{extra}"))
}

#[test]
fn full_bank_two_ranks_equal_one() {
    two_equal_one(&tiny_bank("full", ""), 4);
}

#[test]
fn sampled_bank_two_ranks_equal_one() {
    two_equal_one(&tiny_bank("sampled", "num_negatives = 300"), 4);
}

#[test]
fn hard_bank_two_ranks_equal_one() {
    two_equal_one(&tiny_bank("hard", "num_negatives = 20"), 4);
}

/// A bank's loss at step 1 against the same loss written out in f64 from `grdr encode`'s
/// embeddings of every document and query: one step over all of SciFact's training pairs
/// with lr 1e-12 (AdamW then moves each parameter by ~1e-12: the exported model is, to far
/// below the tolerance, the one the loss saw). `candidates(query, positive, scores)` lists
/// the documents of a pair's softmax, the positive among them; returns the explicit loss.
fn bank_loss_equals_explicit(mode: &str, extra: &str, candidates: impl Fn(u32, u32, &[f64]) -> Vec<usize>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let ds = grdr::data::Dataset::open(dataset()).unwrap();
    let pairs = grdr::data::examples::training_pairs(&ds, "train").unwrap();
    let text = tiny_bank(mode, extra)
        .replace("d_ff = 64", "d_ff = 64\nno_dropout = true")
        .replace("max_steps = 6", "max_steps = 1")
        .replace("batch_size = 8", &format!("batch_size = {}", pairs.len()))
        .replace("lr = 1e-3", "lr = 1e-12");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let logged = losses(&run)[0].1;

    let encode = |what: &str, max_len: &str| {
        let out = dir.path().join(format!("{what}.parquet"));
        let model = run.join("model");
        ok(&std::process::Command::new(bin())
            .args(["encode", "--model", model.to_str().unwrap(), "--data", dataset().to_str().unwrap()])
            .args(["--what", what, "--max-len", max_len, "--output", out.to_str().unwrap()])
            .env("CI", "1")
            .output()
            .unwrap());
        let e = grdr::data::embeddings::read_embeddings(&out).unwrap();
        assert!(e.idx.iter().enumerate().all(|(i, &x)| x == i as i64), "{what} in dataset order");
        e.embeddings.to_kind(tch::Kind::Double)
    };
    let docs = encode("docs", "32"); // (N, d)
    let queries = encode("queries", "16"); // (all queries, d)
    let tau = 0.05;
    let mut sum = 0.0;
    for &(q, d) in &pairs {
        let scores: Vec<f64> = Vec::try_from(docs.mv(&queries.get(q as i64))).unwrap();
        let logits: Vec<f64> = candidates(q, d, &scores).iter().map(|&c| scores[c] / tau).collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
        sum += lse - scores[d as usize] / tau;
    }
    let explicit = sum / pairs.len() as f64;
    eprintln!("{mode} bank loss {logged} vs the explicit loss over {} documents {explicit}", docs.size()[0]);
    assert!((logged - explicit).abs() <= 1e-5 * explicit.abs().max(1.0), "bank loss {logged} vs explicit {explicit}");
    explicit
}

/// The full bank's loss is the softmax over every document of the corpus.
#[test]
fn full_bank_loss_is_the_softmax_over_the_whole_corpus() {
    let explicit = bank_loss_equals_explicit("full", "", |_, _, scores| (0..scores.len()).collect());
    // Not a softmax over a batch: log(corpus size) is the loss of an untrained model's
    // near-uniform scores, far above log of a batch's size.
    let ds = grdr::data::Dataset::open(dataset()).unwrap();
    let batch = grdr::data::examples::training_pairs(&ds, "train").unwrap().len();
    assert!(explicit > (batch as f64).ln() * 0.9, "{explicit}");
}

/// The hard bank's negatives are a brute-force top-K over a fresh encoding: at step 0 the
/// bank was just encoded, so the softmax runs over each positive and the K documents of
/// the highest exact score that no training qrel judges relevant to the query.
#[test]
fn hard_bank_negatives_are_the_brute_force_top_k_of_a_fresh_encoding() {
    const K: usize = 10;
    let ds = grdr::data::Dataset::open(dataset()).unwrap();
    let pairs = grdr::data::examples::training_pairs(&ds, "train").unwrap();
    let mut relevant: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for &(q, d) in &pairs {
        relevant.entry(q).or_default().push(d as usize);
    }
    bank_loss_equals_explicit("hard", &format!("num_negatives = {K}"), |q, d, scores| {
        let mut others: Vec<usize> = (0..scores.len()).filter(|c| !relevant[&q].contains(c)).collect();
        others.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        std::iter::once(d as usize).chain(others.into_iter().take(K)).collect()
    });
}

/// Each of `runs` ends with `reference`'s parameters (relative distance ≤ TOL) and logged
/// the same losses (≤ 1e-5) after `steps` steps.
fn same_training(reference: &std::path::Path, what: &str, runs: &[(&str, &std::path::PathBuf)], steps: u64) {
    for (name, run) in runs {
        let (rel, max_abs) = param_distance(&params(run, steps), &params(reference, steps));
        assert!(rel <= TOL && max_abs <= 1e-4, "{name} vs {what}: parameter distance {rel:e} (largest {max_abs:e})");
        let (a, b) = (losses(reference), losses(run));
        assert_eq!(a.len(), b.len());
        for ((s, x, _), (_, y, _)) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{name}, step {s}: loss {x} vs {what} {y}");
        }
    }
}

/// GradCache (`train.grad_cache_chunk`) computes the gradient of the whole batch: chunked
/// training on 1 rank and on 2 ranks ends with the parameters and losses of plain
/// training at the same global batch (DR with a BM25 hard negative per query, so the
/// document side has twice the rows, in chunks that do not divide the batch).
#[test]
fn grad_cache_training_equals_plain_training() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 3;
    let text = tiny_dual(dataset())
        .replace("d_ff = 64", "d_ff = 64\nno_dropout = true")
        .replace("max_steps = 6", &format!("max_steps = {steps}"));
    let cfg = write_config(dir.path(), "run.toml", &text);
    let (plain, one, two) = (dir.path().join("plain"), dir.path().join("one"), dir.path().join("two"));
    ok(&train(&cfg, &plain, &["--set", "train.batch_size=16"]));
    ok(&train(&cfg, &one, &["--set", "train.batch_size=16", "--set", "train.grad_cache_chunk=5"]));
    ok(&train_ranks(2, &cfg, &two, &["--set", "train.batch_size=8", "--set", "train.grad_cache_chunk=3"]));
    same_training(&plain, "plain", &[("1 rank, chunks of 5", &one), ("2 ranks, chunks of 3", &two)], steps);
}

/// GradCache with dropout: a chunk's second pass draws the first pass's masks, so the
/// gradient is the one of a graph built chunk by chunk under the same seeds. (Here, not in
/// the library's unit tests: torch's global RNG must not be shared with tests running in
/// parallel threads, and this file's other tests draw nothing in-process.)
#[test]
fn a_grad_cache_chunk_draws_the_same_dropout_masks_in_both_passes() {
    tch::manual_seed(0);
    let w = Tensor::randn([6, 8], (tch::Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
    let ids = Tensor::randint(6, [5, 4], (tch::Kind::Int64, tch::Device::Cpu));
    let mask = Tensor::ones([5, 4], (tch::Kind::Int64, tch::Device::Cpu));
    let encode = |ids: &Tensor, _: &Tensor| {
        let x = w.index_select(0, &ids.reshape([-1])).view([ids.size()[0], ids.size()[1], 8]);
        x.dropout(0.5, true).mean_dim(1, false, tch::Kind::Double) // (b, 8)
    };
    let seed = |side: usize, c: usize| (100 + side * 10 + c) as i64;
    let loss_of = |r: &[Tensor]| {
        (r[0].matmul(&r[0].tr()).log_softmax(-1, tch::Kind::Double)).diagonal(0, 0, 1).sum(tch::Kind::Double)
    };
    // The reference: the same chunks (batch order, 2 rows) and seeds, one graph.
    let chunks: Vec<Tensor> = (0..3)
        .map(|c| {
            tch::manual_seed(seed(0, c));
            encode(&ids.narrow(0, 2 * c as i64, (5 - 2 * c as i64).min(2)), &mask)
        })
        .collect();
    loss_of(&[Tensor::cat(&chunks, 0)]).backward();
    let expected = w.grad().copy();
    let _ = w.grad().zero_();
    let _ = grad_cache::forward_backward(
        &[grad_cache::Side { ids: &ids, mask: &mask }],
        2,
        false,
        encode,
        seed,
        |r| Ok(loss_of(r)),
        1.0,
    )
    .unwrap();
    let diff = (w.grad() - &expected).abs().max().double_value(&[]);
    assert!(diff < 1e-12, "dropout masks differ between the passes: {diff:e}");
    assert!(expected.abs().sum(tch::Kind::Double).double_value(&[]) > 0.0);
}

/// A BEIR directory cut from SciFact: its first `n` training judgements whose query and
/// document are both new, and only those documents, queries and judgements. Every query has
/// one relevant document and every document one query, so a global batch of all `n` pairs
/// holds the whole corpus as its documents.
fn one_to_one_beir(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    use std::collections::HashSet;
    let src = scifact_dir();
    let (mut queries, mut docs, mut qrels) = (Vec::new(), Vec::new(), String::from("query-id\tcorpus-id\tscore\n"));
    let (mut seen_q, mut seen_d) = (HashSet::new(), HashSet::new());
    for line in std::fs::read_to_string(src.join("qrels/train.tsv")).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if queries.len() < n && !seen_q.contains(f[0]) && !seen_d.contains(f[1]) {
            seen_q.insert(f[0].to_owned());
            seen_d.insert(f[1].to_owned());
            queries.push(f[0].to_owned());
            docs.push(f[1].to_owned());
            qrels.push_str(&format!("{}\t{}\t1\n", f[0], f[1]));
        }
    }
    assert_eq!(queries.len(), n);
    let keep = |file: &str, ids: &HashSet<String>| -> String {
        std::fs::read_to_string(src.join(file))
            .unwrap()
            .lines()
            .filter(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                ids.contains(v["_id"].as_str().unwrap())
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let out = dir.join("beir");
    std::fs::create_dir_all(out.join("qrels")).unwrap();
    std::fs::write(out.join("corpus.jsonl"), keep("corpus.jsonl", &seen_d)).unwrap();
    std::fs::write(out.join("queries.jsonl"), keep("queries.jsonl", &seen_q)).unwrap();
    std::fs::write(out.join("qrels/train.tsv"), qrels).unwrap();
    let data = dir.join("data");
    ok(&std::process::Command::new(bin())
        .args(["prepare", "beir", "--input", out.to_str().unwrap(), "--output", data.to_str().unwrap()])
        .env("CI", "1")
        .output()
        .unwrap());
    data
}

/// `negative_bank = "corpus"` is the softmax over every document with gradient through
/// each: where the global batch's documents are exactly the corpus (one document per query,
/// every query in every batch), in-batch training computes that same loss, so training
/// through the corpus, on 1 rank with chunks of 5 and on 2 ranks with chunks of 3, ends
/// with in-batch training's parameters and losses. (A bank without gradient, `full`, has
/// the same loss but not this gradient.)
#[test]
fn corpus_softmax_trains_as_in_batch_training_over_the_whole_corpus() {
    // 150 documents: chunks [0, 64) and [128, 150) on rank 0, [64, 128) on rank 1 of 2.
    const N: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let data = one_to_one_beir(dir.path(), N);
    let steps = 3;
    let text = tiny_dual(&data)
        .replace("hard_negatives = 1", "hard_negatives = 0")
        .replace("d_ff = 64", "d_ff = 64\nno_dropout = true")
        .replace("max_steps = 6", &format!("max_steps = {steps}"));
    let cfg = write_config(dir.path(), "run.toml", &text);
    let (plain, one, two) = (dir.path().join("plain"), dir.path().join("one"), dir.path().join("two"));
    let batch = |b: usize| format!("train.batch_size={b}");
    let (all, half) = (batch(N), batch(N / 2));
    let corpus = ["--set", "train.negative_bank=corpus", "--set"];
    ok(&train(&cfg, &plain, &["--set", &all]));
    ok(&train(&cfg, &one, &[&corpus[..], &["train.grad_cache_chunk=5", "--set", &all]].concat()));
    ok(&train_ranks(2, &cfg, &two, &[&corpus[..], &["train.grad_cache_chunk=3", "--set", &half]].concat()));
    same_training(&plain, "in-batch", &[("1 rank, chunks of 5", &one), ("2 ranks, chunks of 3", &two)], steps);
}
