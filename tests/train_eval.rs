//! The evaluation at the end of `grdr train` is `grdr eval --run` on the same checkpoint:
//! both go through `eval::run_eval`, so the run files are byte-identical — for DR trained
//! and evaluated on 2 ranks against `grdr eval` on 1 rank (N ranks ≡ 1 rank as well), and for GR,
//! whose end-of-run evaluation also reports memorisation (R@1 of decoding documents' own
//! indexing inputs) and never returns an unknown docid.
mod train_common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use train_common::*;

fn eval_run(run: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(bin())
        .args(["eval", "--run", run.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .args(extra)
        .env("CI", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    ok(&o);
    json(&out.join("metrics.json"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn dual_end_of_run_eval_on_two_ranks_equals_grdr_eval_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("at_end = false", "at_end = true\nk = 20\nbatch_size = 32");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train_ranks(2, &cfg, &run, &[]));
    let at_end = json(&run.join("eval/metrics.json"));
    assert_eq!(at_end["queries"], 300);
    assert!(at_end["eval_seconds"].as_f64().unwrap() > 0.0);
    let again = eval_run(&run, &dir.path().join("again"), &["--k", "20", "--batch-size", "32"]);
    assert_eq!(
        read(&run.join("eval/run.trec")),
        read(&dir.path().join("again/run.trec")).replace("grdr-eval", "grdr-train")
    );
    assert_eq!(at_end["nDCG@10"], again["nDCG@10"]);
}

#[test]
fn generative_end_of_run_eval_reports_memorization_and_only_real_docids() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_generative(dataset(), dir.path())
        .replace("at_end = false", "at_end = true\nk = 10\nbatch_size = 32\nmemorization_docs = 40");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let at_end = json(&run.join("eval/metrics.json"));
    assert_eq!(at_end["memorization_docs"], 40);
    let mem = at_end["memorization_R@1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mem), "{mem}");
    // Every returned docid is a document of the corpus, at most k per query, none twice.
    let ids: HashSet<String> = grdr::eval::run_eval::read_doc_ids(&grdr::data::Dataset::open(dataset()).unwrap())
        .unwrap()
        .into_iter()
        .collect();
    let trec = read(&run.join("eval/run.trec"));
    let mut per_query: std::collections::HashMap<&str, HashSet<&str>> = Default::default();
    for line in trec.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(ids.contains(f[2]), "unknown docid {} in {line}", f[2]);
        assert!(per_query.entry(f[0]).or_default().insert(f[2]), "{} twice for {}", f[2], f[0]);
    }
    assert!(per_query.values().all(|d| d.len() <= 10));
    assert!(!per_query.is_empty());
    // grdr eval --run: the same run file and the same memorisation.
    let again = eval_run(&run, &dir.path().join("again"), &["--k", "10", "--beam", "10", "--batch-size", "32"]);
    assert_eq!(trec, read(&dir.path().join("again/run.trec")).replace("grdr-eval", "grdr-train"));
    assert_eq!(again["memorization_R@1"], at_end["memorization_R@1"]);
}

/// The exported GR model (`RUNDIR/model/`) is usable with transformers alone: its tokenizer
/// knows the docid tokens at the ids the model gives them, so a docid the model scores best
/// decodes to its name and the name encodes back to the docid's token.
#[test]
fn generative_export_decodes_docids_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &tiny_generative(dataset(), dir.path()));
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let py = grdr::assets::reference_python().expect("reference python (launcher/setup --reference)");
    let code = r#"
import json, sys, torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
d, n_docs = sys.argv[1], int(sys.argv[2])
tok = PreTrainedTokenizerFast(tokenizer_file=d + "/tokenizer.json")
m = T5ForConditionalGeneration.from_pretrained(d).eval()
base = m.config.vocab_size - n_docs
enc = tok(["protein folding in yeast"], return_tensors="pt")
with torch.no_grad():
    logits = m(**enc, decoder_input_ids=torch.tensor([[m.config.decoder_start_token_id]])).logits[0, -1]
best = base + int(logits[base:].argmax())
name = tok.decode([best])
print(json.dumps({"len": len(tok), "vocab": m.config.vocab_size, "base": base, "best": best, "name": name,
                  "back": tok(name, add_special_tokens=False).input_ids, "d7": tok.convert_tokens_to_ids("<d7>")}))
"#;
    let n_docs = grdr::data::Dataset::open(dataset()).unwrap().docs().unwrap().len();
    let out = Command::new(py).arg("-c").arg(code).arg(run.join("model")).arg(n_docs.to_string()).output().unwrap();
    assert!(out.status.success(), "transformers: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let base = got["base"].as_i64().unwrap();
    assert_eq!(base, 32100, "atomic docid tokens follow the T5 tokenizer's 32,100 tokens");
    assert_eq!(got["len"], got["vocab"], "the tokenizer names every row of the model's vocabulary");
    assert_eq!(got["d7"].as_i64(), Some(base + 7));
    let best = got["best"].as_i64().unwrap();
    assert_eq!(got["name"].as_str().unwrap(), format!("<d{}>", best - base));
    assert_eq!(got["back"], serde_json::json!([best]));
}

/// An exported DR model is what it was trained as: `grdr eval --model RUNDIR/model` reads
/// grdr.json (pooling, projection, lengths) and scores exactly as the run's own evaluation,
/// and sentence-transformers loads the export (Pooling, Dense, Normalize modules) and embeds
/// texts as grdr does.
#[test]
fn dual_export_is_read_back_by_grdr_and_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset())
        .replace("d_ff = 64", "d_ff = 64\npooling = \"first\"\ndim = 16")
        .replace("max_steps = 6", "max_steps = 2")
        .replace("at_end = false", "at_end = true\nk = 20\nbatch_size = 32");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let export = run.join("model");
    let out = dir.path().join("from-export");
    let o = Command::new(bin())
        .args(["eval", "--model", export.to_str().unwrap(), "--data", dataset().to_str().unwrap()])
        .args(["--output", out.to_str().unwrap(), "--k", "20", "--batch-size", "32", "--device", "cpu"])
        .env("CI", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(read(&out.join("run.trec")), read(&run.join("eval/run.trec")).replace("grdr-train", "grdr-eval"));

    // grdr's embeddings of a few texts, from the run's checkpoint through the library.
    let texts = ["protein folding in yeast", "vitamin D and bone density", "a"];
    let run_cfg = grdr::config::RunConfig::load(&run.join("config.toml"), &[]).unwrap();
    let mut model_cfg = run_cfg.model.clone();
    model_cfg.no_dropout = true;
    let task = grdr::model::task::Task::build(&model_cfg, tch::Device::Cpu, None).unwrap();
    grdr::train::checkpoint::load_model(&grdr::train::checkpoint::latest(&run).unwrap(), &task.vs).unwrap();
    let tok = grdr::data::text::TextTokenizer::from_path(&task.tokenizer_json, 32).unwrap();
    let (ids, mask) = tok.batch(&tok.encode(&texts).unwrap(), tch::Device::Cpu);
    let grdr::model::task::Net::Dual(net) = &task.net else { panic!("a dual encoder") };
    let ours = tch::no_grad(|| net.embed(&ids, &mask, false)); // (3, 16)
    assert_eq!(ours.size(), [3, 16]);

    let py = grdr::assets::reference_python().expect("reference python (launcher/setup --reference)");
    let code = r#"
import json, sys
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(sys.argv[1], device="cpu")
print(json.dumps(m.encode(json.loads(sys.argv[2]), convert_to_numpy=True).tolist()))
"#;
    let o = Command::new(py)
        .args(["-c", code, export.to_str().unwrap(), &serde_json::to_string(&texts).unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "sentence-transformers: {}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<Vec<f32>> = serde_json::from_slice(&o.stdout).unwrap();
    let theirs = tch::Tensor::from_slice(&theirs.concat()).view([3, 16]);
    let max_abs = (&ours - &theirs).abs().max().double_value(&[]);
    let norms = ours.norm_scalaropt_dim(2, [1], false) * theirs.norm_scalaropt_dim(2, [1], false);
    let cos = ((&ours * &theirs).sum_dim_intlist(1, false, tch::Kind::Float) / norms).min().double_value(&[]);
    assert!(max_abs <= 1e-5 && cos >= 0.9999, "max |Δ| {max_abs}, min cosine {cos}");
}
