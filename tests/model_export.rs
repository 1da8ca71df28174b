//! HF directories: load → export → load gives identical outputs; transformers loads our
//! exports (also after the vocabulary grew for docid tokens) and computes the same outputs;
//! sharded checkpoints load; missing keys fail unless allowed; unexpected keys are reported.
mod require;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use grdr::model::generative::resize_token_embeddings;
use grdr::model::hf::{self, LoadOptions};
use grdr::model::safetensors;
use grdr::model::{BertModel, T5ForConditionalGeneration};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

fn io(name: &str) -> HashMap<String, Tensor> {
    safetensors::read_all(&fixture(name).join("io.safetensors")).unwrap().into_iter().collect()
}

fn t5_logits(m: &T5ForConditionalGeneration, io: &HashMap<String, Tensor>) -> Tensor {
    tch::no_grad(|| m.forward(&io["input_ids"], &io["attention_mask"], &io["decoder_input_ids"], false, false).logits)
}

fn bert_hidden(m: &BertModel, io: &HashMap<String, Tensor>) -> Tensor {
    tch::no_grad(|| m.forward(&io["input_ids"], &io["attention_mask"], false))
}

#[test]
fn load_export_load_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["t5_v10", "t5_v11"] {
        let a = hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap();
        let out = tmp.path().join(name);
        hf::export(&a.model, &a.vs, None, &out, &[]).unwrap();
        let b = hf::load::<T5ForConditionalGeneration>(&out, LoadOptions::default()).unwrap();
        assert!(b.report.missing.is_empty() && b.report.unexpected.is_empty(), "{:?}", b.report);
        assert_eq!(a.model.lm_head.is_some(), b.model.lm_head.is_some());
        let io = io(name);
        assert!(t5_logits(&a.model, &io).equal(&t5_logits(&b.model, &io)), "{name}");
    }
    let a = hf::load::<BertModel>(&fixture("bert"), LoadOptions::default()).unwrap();
    let out = tmp.path().join("bert");
    hf::export(&a.model, &a.vs, None, &out, &[]).unwrap();
    let b = hf::load::<BertModel>(&out, LoadOptions::default()).unwrap();
    let io = io("bert");
    assert!(bert_hidden(&a.model, &io).equal(&bert_hidden(&b.model, &io)));
}

/// The encoder of a seq2seq checkpoint loads as `T5EncoderModel` (decoder keys reported as
/// unexpected), and a model loads in f64 too.
#[test]
fn encoder_only_and_double_precision_loads() {
    let name = "t5_v10";
    let io = io(name);
    let e = hf::load::<grdr::model::T5EncoderModel>(&fixture(name), LoadOptions::default()).unwrap();
    assert!(e.report.missing.is_empty());
    assert!(e.report.unexpected.iter().all(|k| k.starts_with("decoder.")) && !e.report.unexpected.is_empty());
    let h = tch::no_grad(|| grdr::model::Encoder::encode(&e.model, &io["input_ids"], &io["attention_mask"], false));
    assert!((h - &io["encoder_hidden"]).abs().max().double_value(&[]) <= 1e-5);
    let d = hf::load::<T5ForConditionalGeneration>(
        &fixture(name),
        LoadOptions { kind: Kind::Double, ..Default::default() },
    )
    .unwrap();
    let logits = t5_logits(&d.model, &io);
    assert_eq!(logits.kind(), Kind::Double);
    assert!((logits - io["logits"].to_kind(Kind::Double)).abs().max().double_value(&[]) <= 1e-5);
}

/// Splits a fixture into two shards with an index, as large HF checkpoints come.
#[test]
fn sharded_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("t5_v11");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let all = safetensors::read_all(&src.join("model.safetensors")).unwrap();
    let (first, second) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        safetensors::write(&tmp.path().join(file), part).unwrap();
        for (k, _) in part {
            map.insert(k.clone(), file.into());
        }
    }
    grdr::atomic::write_json(
        &tmp.path().join("model.safetensors.index.json"),
        &serde_json::json!({"metadata": {}, "weight_map": map}),
    )
    .unwrap();
    let a = hf::load::<T5ForConditionalGeneration>(&src, LoadOptions::default()).unwrap();
    let b = hf::load::<T5ForConditionalGeneration>(tmp.path(), LoadOptions::default()).unwrap();
    let io = io("t5_v11");
    assert!(t5_logits(&a.model, &io).equal(&t5_logits(&b.model, &io)));
}

#[test]
fn missing_keys_fail_unless_allowed_and_unexpected_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("bert");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut all = safetensors::read_all(&src.join("model.safetensors")).unwrap();
    all.retain(|(k, _)| k != "encoder.layer.1.output.dense.weight");
    all.push(("cls.predictions.bias".into(), Tensor::zeros([3], (Kind::Float, tch::Device::Cpu))));
    safetensors::write(&tmp.path().join("model.safetensors"), &all).unwrap();
    let err = hf::load::<BertModel>(tmp.path(), LoadOptions::default()).err().expect("missing key must fail");
    assert!(err.to_string().contains("encoder.layer.1.output.dense.weight"), "{err}");
    let l = hf::load::<BertModel>(tmp.path(), LoadOptions { allow_missing: true, ..Default::default() }).unwrap();
    assert_eq!(l.report.missing, vec!["encoder.layer.1.output.dense.weight".to_string()]);
    assert_eq!(l.report.unexpected, vec!["cls.predictions.bias".to_string()]);

    // A checkpoint without the pooler (optional) and with the position_ids buffer (ignored).
    all = safetensors::read_all(&src.join("model.safetensors")).unwrap();
    all.retain(|(k, _)| !k.starts_with("pooler."));
    all.push(("bert.embeddings.position_ids".into(), Tensor::arange(64, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0)));
    let all: Vec<(String, Tensor)> =
        all.into_iter().map(|(k, t)| (if k.starts_with("bert.") { k } else { format!("bert.{k}") }, t)).collect();
    safetensors::write(&tmp.path().join("model.safetensors"), &all).unwrap();
    let l = hf::load::<BertModel>(tmp.path(), LoadOptions::default()).unwrap();
    assert_eq!(l.report.missing, vec!["pooler.dense.bias".to_string(), "pooler.dense.weight".to_string()]);
    assert!(l.report.unexpected.is_empty(), "{:?}", l.report.unexpected);
}

const HF_CHECK: &str = r#"
import json, sys, torch
from safetensors.torch import load_file
from transformers import BertModel, T5ForConditionalGeneration
torch.set_num_threads(1)
worst = {}
for spec in json.loads(sys.argv[1]):
    kind, model_dir, check = spec
    io = load_file(check)
    cls = T5ForConditionalGeneration if kind == "t5" else BertModel
    model, info = cls.from_pretrained(model_dir, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{model_dir}: {bad}"
    model.eval()
    with torch.no_grad():
        if kind == "t5":
            out = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"], decoder_input_ids=io["decoder_input_ids"]).logits
        else:
            out = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).last_hidden_state
    worst[model_dir] = (out - io["ours"]).abs().max().item()
print(json.dumps(worst))
"#;

fn write_check(path: &Path, io: &HashMap<String, Tensor>, keys: &[&str], ours: Tensor) {
    let mut t: Vec<(String, Tensor)> = keys.iter().map(|k| (k.to_string(), io[*k].shallow_clone())).collect();
    t.push(("ours".into(), ours));
    safetensors::write(path, &t).unwrap();
}

/// transformers loads our exports with no missing or unexpected keys and computes our outputs,
/// including a T5 whose vocabulary grew by 10 docid tokens.
#[test]
fn transformers_loads_our_export() {
    let Some(py) = require::reference_python() else { return };
    let py = {
        // Prefer the full reference venv (transformers) over the runtime one.
        let pyref = grdr::assets::cache_dir().join("pyref/bin/python");
        if pyref.exists() {
            pyref
        } else {
            py
        }
    };
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for name in ["t5_v10", "t5_v11"] {
        let io = io(name);
        let mut l = hf::load::<T5ForConditionalGeneration>(&fixture(name), LoadOptions::default()).unwrap();
        let dir = tmp.path().join(name);
        hf::export(&l.model, &l.vs, None, &dir, &[]).unwrap();
        let check = tmp.path().join(format!("{name}.check.safetensors"));
        write_check(&check, &io, &["input_ids", "attention_mask", "decoder_input_ids"], t5_logits(&l.model, &io));
        specs.push(("t5", dir, check));
        // Grown vocabulary: decoder inputs that use the new tokens.
        let v = l.model.config.vocab_size;
        resize_token_embeddings(&mut l.model, v + 10, v).unwrap();
        let mut io = io;
        let mut dec = io["decoder_input_ids"].copy();
        let _ = dec.fill_diagonal_(v + 3, false);
        io.insert("decoder_input_ids".into(), dec);
        let dir = tmp.path().join(format!("{name}_resized"));
        hf::export(&l.model, &l.vs, None, &dir, &[]).unwrap();
        let check = tmp.path().join(format!("{name}_resized.check.safetensors"));
        write_check(&check, &io, &["input_ids", "attention_mask", "decoder_input_ids"], t5_logits(&l.model, &io));
        specs.push(("t5", dir, check));
    }
    let io = io("bert");
    let l = hf::load::<BertModel>(&fixture("bert"), LoadOptions::default()).unwrap();
    let dir = tmp.path().join("bert");
    hf::export(&l.model, &l.vs, None, &dir, &[]).unwrap();
    let check = tmp.path().join("bert.check.safetensors");
    write_check(&check, &io, &["input_ids", "attention_mask"], bert_hidden(&l.model, &io));
    specs.push(("bert", dir, check));

    let arg = serde_json::to_string(&specs).unwrap();
    let out = std::process::Command::new(&py).arg("-c").arg(HF_CHECK).arg(&arg).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "transformers failed:\n{stderr}");
    let worst: HashMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("transformers on our exports, max |Δ|: {worst:?}");
    assert_eq!(worst.len(), 5);
    for (dir, d) in worst {
        assert!(d <= 1e-5, "{dir}: {d}");
    }
}
