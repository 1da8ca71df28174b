//! BERT equals HF transformers on the committed tiny fixture; all-MiniLM-L6-v2 embeddings of
//! real SciFact texts equal sentence-transformers'; a tiny BERT dual encoder overfits an
//! in-batch contrastive batch with AdamW.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use grdr::data::text::TextTokenizer;
use grdr::model::dual::{DualConfig, DualEncoder, DualHead};
use grdr::model::encoder::{l2_normalize, pool, Pooling};
use grdr::model::gemm_choice::{with_backend, Backend};
use grdr::model::hf::{self, LoadOptions};
use grdr::model::{BertModel, Encoder};
use tch::{nn, nn::OptimizerConfig, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

#[test]
fn bert_matches_transformers() {
    for backend in [Backend::Mkl, Backend::Onednn] {
        eprintln!("products on {backend:?}");
        with_backend(backend, bert_parity);
    }
}

fn bert_parity() {
    tch::set_num_threads(1);
    let l = hf::load::<BertModel>(&fixture("bert"), LoadOptions::default()).unwrap();
    assert!(l.report.missing.is_empty() && l.report.unexpected.is_empty(), "{:?}", l.report);
    let io: HashMap<String, Tensor> =
        grdr::model::safetensors::read_all(&fixture("bert").join("io.safetensors")).unwrap().into_iter().collect();
    let hidden = tch::no_grad(|| l.model.forward(&io["input_ids"], &io["attention_mask"], false));
    let d_hidden = max_abs_diff(&hidden, &io["last_hidden_state"]);
    let d_pooler = max_abs_diff(&tch::no_grad(|| l.model.pooled(&hidden)), &io["pooler_output"]);
    eprintln!("bert: max |Δ| hidden {d_hidden:.2e} pooler {d_pooler:.2e}");
    assert!(d_hidden <= 1e-5 && d_pooler <= 1e-5);
    // Row 0 is unpadded: alone, it takes the mask-free attention path.
    let row0 = tch::no_grad(|| {
        l.model.forward(&io["input_ids"].narrow(0, 0, 1), &io["attention_mask"].narrow(0, 0, 1), false)
    });
    assert!(max_abs_diff(&row0, &io["last_hidden_state"].narrow(0, 0, 1)) <= 1e-5);
}

/// `_id` → text of the wanted records; documents are `title + " " + text`, trimmed (BEIR).
fn texts(path: &Path, ids: &[String], doc: bool) -> Vec<String> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    let mut found = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["_id"].as_str().unwrap();
        if wanted.contains(id) {
            let text = v["text"].as_str().unwrap_or("");
            let t = if doc {
                format!("{} {}", v["title"].as_str().unwrap_or(""), text).trim().to_string()
            } else {
                text.to_string()
            };
            found.insert(id.to_string(), t);
        }
    }
    ids.iter().map(|id| found[id].clone()).collect()
}

#[test]
fn minilm_equals_sentence_transformers_on_scifact() {
    // Fails (never skips) without SciFact: the comparison is on real texts.
    let scifact = common::scifact_dir();
    let dir = grdr::assets::resolve("minilm").expect("minilm artefact (launcher/setup)");
    let l = hf::load::<BertModel>(&dir, LoadOptions::default()).unwrap();
    assert!(l.report.missing.is_empty(), "{:?}", l.report.missing);
    let tok = TextTokenizer::from_path(&dir, 256).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("minilm").join("ids.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<String> {
        meta[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    let expected: HashMap<String, Tensor> =
        grdr::model::safetensors::read_all(&fixture("minilm").join("embeddings.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut min_cos = f64::MAX;
    for (what, key, file, doc) in
        [("queries", "query_ids", "queries.jsonl", false), ("docs", "doc_ids", "corpus.jsonl", true)]
    {
        let texts = texts(&scifact.join(file), &ids(key), doc);
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut embs = Vec::new();
        for chunk in refs.chunks(16) {
            let (input_ids, mask) = tok.batch(&tok.encode(chunk).unwrap(), tch::Device::Cpu);
            let hidden = tch::no_grad(|| l.model.encode(&input_ids, &mask, false));
            embs.push(l2_normalize(&pool(&hidden, &mask, Pooling::Mean)));
        }
        let ours = Tensor::cat(&embs, 0);
        let want = &expected[what];
        let cos = (&ours * want).sum_dim_intlist(-1, false, Kind::Double)
            / (ours.norm_scalaropt_dim(2, [-1i64].as_slice(), false)
                * want.norm_scalaropt_dim(2, [-1i64].as_slice(), false));
        let m = cos.min().double_value(&[]);
        let max_abs = max_abs_diff(&ours, want);
        eprintln!("minilm {what}: {} texts, min cosine {m:.8}, max |Δ| {max_abs:.2e}", texts.len());
        assert!(max_abs <= 1e-4, "minilm {what}: max |Δ| {max_abs:e}");
        min_cos = min_cos.min(m);
    }
    assert!(min_cos >= 0.9999, "min cosine {min_cos}");
}

/// Gradients flow through BERT and the dual head: an in-batch softmax over 8 random
/// (query, document) pairs reaches ~0 loss with AdamW.
#[test]
fn tiny_bert_dual_encoder_overfits_a_batch() {
    tch::manual_seed(0);
    let cfg = grdr::model::hf::read_config(&fixture("bert")).unwrap();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let bert = BertModel::new(&vs.root(), grdr::model::BertConfig::from_json(&cfg).unwrap()).unwrap();
    let head = DualHead::new(
        &(vs.root() / "grdr_head"),
        32,
        DualConfig { dim: Some(16), temperature: 0.05, ..Default::default() },
    );
    let model = DualEncoder { encoder: bert, head };
    let q = Tensor::randint_low(5, 120, [8, 6], (Kind::Int64, tch::Device::Cpu));
    let d = Tensor::randint_low(5, 120, [8, 12], (Kind::Int64, tch::Device::Cpu));
    let (qm, dm) = (q.ones_like(), d.ones_like());
    let target = Tensor::arange(8, (Kind::Int64, tch::Device::Cpu));
    let mut opt = nn::AdamW::default().build(&vs, 1e-3).unwrap();
    let mut first = None;
    for _ in 0..100 {
        let scores = model.head.scores(&model.embed(&q, &qm, true), &model.embed(&d, &dm, true));
        let loss = scores.cross_entropy_for_logits(&target);
        opt.backward_step(&loss);
        first.get_or_insert(loss.double_value(&[]));
    }
    let scores = tch::no_grad(|| model.head.scores(&model.embed(&q, &qm, false), &model.embed(&d, &dm, false)));
    let last = scores.cross_entropy_for_logits(&target).double_value(&[]);
    eprintln!("bert dual: loss {:.3} → {last:.4}", first.unwrap());
    assert!(last < 0.05, "loss {last}");
}

/// Length-sorted sub-batches (training's less-padding path) are the same function as the
/// padded batch: embeddings and gradients equal to f32 rounding, on a batch whose short
/// and long texts make the split worth it.
#[test]
fn length_sorted_sub_batches_equal_the_padded_batch() {
    tch::manual_seed(1);
    let cfg = grdr::model::hf::read_config(&fixture("bert")).unwrap();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let bert = BertModel::new(&vs.root(), grdr::model::BertConfig::from_json(&cfg).unwrap()).unwrap();
    let head = DualHead::new(&(vs.root() / "grdr_head"), 32, DualConfig::default());
    let model = DualEncoder { encoder: bert, head };
    // 16 rows of 64 positions: even rows 5 real tokens, odd rows 60 (right-padded).
    let lengths: Vec<i64> = (0..16).map(|i| if i % 2 == 0 { 5 } else { 60 }).collect();
    assert!(grdr::model::encoder::length_buckets(&lengths, grdr::model::encoder::SUB_BATCH_OVERHEAD_TOKENS).len() > 1);
    let ids = Tensor::randint_low(5, 120, [16, 64], (Kind::Int64, tch::Device::Cpu));
    let mask = Tensor::arange(64, (Kind::Int64, tch::Device::Cpu))
        .unsqueeze(0)
        .lt_tensor(&Tensor::from_slice(&lengths).unsqueeze(1))
        .to_kind(Kind::Int64);
    let ids = &ids * &mask;
    let run = |sorted: bool| {
        vs.trainable_variables().iter().for_each(|v| {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        let e = if sorted {
            grdr::model::encoder::encode_length_sorted(&ids, &mask, |i, k| model.embed(i, k, false))
        } else {
            model.embed(&ids, &mask, false)
        };
        (&e * Tensor::arange(e.size()[1], (Kind::Float, tch::Device::Cpu))).sum(Kind::Float).backward();
        let grads: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .filter_map(|v| {
                let g = v.grad();
                g.defined().then(|| g.copy())
            })
            .collect();
        (e.detach(), grads)
    };
    let (e_pad, g_pad) = run(false);
    let (e_sorted, g_sorted) = run(true);
    assert_eq!(g_sorted.len(), g_pad.len());
    assert!(!g_pad.is_empty());
    let d = max_abs_diff(&e_sorted, &e_pad);
    assert!(d <= 1e-6, "embeddings differ by {d:e}");
    // Relative to each gradient's size, plus a floor for the attention key biases, whose
    // gradient is exactly 0 in exact arithmetic (softmax ignores a shift shared by all keys)
    // and f32 noise in both runs.
    for (a, b) in g_sorted.iter().zip(&g_pad) {
        let scale = f64::try_from(b.abs().max()).unwrap();
        let d = max_abs_diff(a, b);
        assert!(d <= 1e-5 * scale + 1e-6, "gradient differs by {d:e} (largest entry {scale:e})");
    }
}
