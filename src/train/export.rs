//! The trained model as an HF directory (`RUNDIR/model/`): `config.json`,
//! `model.safetensors` (backbone, HF keys), `tokenizer.json` (with a GR run's docid tokens) —
//! loadable by `transformers` — plus grdr's own `grdr_head.safetensors` (head variables,
//! `grdr_head.*`) and `grdr.json` ([`ExportInfo`]: what the model is and how it reads text,
//! which `grdr eval --model RUNDIR/model` reads back). A dual encoder also gets the files
//! sentence-transformers reads (`modules.json`, `sentence_bert_config.json`,
//! `1_Pooling/config.json`, a `2_Dense` projection when `model.dim` is set, `Normalize`), so
//! `SentenceTransformer(RUNDIR/model)` embeds texts as grdr does.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{ModelConfig, RunConfig};
use crate::error::{Error, Location, Result};
use crate::model::generative::add_docid_tokens;
use crate::model::task::{Net, Task, HEAD_PREFIX};
use crate::model::{hf, Encoder, TextEncoderModel};

/// `grdr.json` of an exported model.
pub const INFO_FILE: &str = "grdr.json";

/// What an exported model is and how it reads text (`grdr.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// The run's `[model]` section as trained (kind, pooling, projection, ColBERT settings).
    pub model: ModelConfig,
    pub query_max_len: usize,
    /// Document truncation at evaluation (`eval.doc_max_len`, else `data.doc_max_len`).
    pub doc_max_len: usize,
    pub docids: Option<PathBuf>,
    pub grdr_version: String,
}

impl ExportInfo {
    fn of(config: &RunConfig) -> ExportInfo {
        ExportInfo {
            model: config.model.clone(),
            query_max_len: config.data.query_max_len,
            doc_max_len: config.eval.doc_max_len.unwrap_or(config.data.doc_max_len),
            docids: config.docids.path.clone(),
            grdr_version: crate::VERSION.into(),
        }
    }

    /// `dir/grdr.json` when `dir` is a grdr export (none for any other HF directory).
    pub fn read(dir: &Path) -> Result<Option<ExportInfo>> {
        let path = dir.join(INFO_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::input(&path, Location::Line(e.line()), "grdr.json", e.to_string()))
    }
}

pub fn export(task: &Task, config: &RunConfig, out: &Path) -> Result<()> {
    // The head goes to its own file; a negative bank is training state, not model.
    let skip = [format!("{HEAD_PREFIX}."), format!("{}.", super::bank::VAR_PREFIX)];
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let tok = Some(task.tokenizer_json.as_path());
    let encoder = match &task.net {
        Net::Dual(m) => Some(&m.encoder),
        Net::Colbert(m) => Some(&m.encoder),
        Net::Generative { model, vocab } => {
            // The tokenizer learns the docid tokens (`<d12>`, `<s0_3>`), so transformers
            // encodes and decodes docids with the exported directory alone.
            let mut tokenizer = tokenizers::Tokenizer::from_file(&task.tokenizer_json).map_err(|e| {
                Error::Tokenizer { name: task.tokenizer_json.display().to_string(), message: e.to_string() }
            })?;
            add_docid_tokens(&mut tokenizer, vocab)?;
            hf::export_with_tokenizer(&model.t5, &task.vs, &tokenizer, out, &skip)?;
            None
        }
    };
    match encoder {
        Some(TextEncoderModel::Bert(m)) => hf::export(m, &task.vs, tok, out, &skip)?,
        Some(TextEncoderModel::T5(m)) => hf::export(m, &task.vs, tok, out, &skip)?,
        None => {}
    }
    if encoder.is_some() {
        // The tokenizer's companions (AutoTokenizer reads its class and special tokens there).
        let from = task.tokenizer_json.parent().unwrap_or(Path::new("."));
        for name in ["tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
            if from.join(name).is_file() {
                std::fs::copy(from.join(name), out.join(name))
                    .map_err(|e| Error::io(from.join(name), "cannot copy", e))?;
            }
        }
    }
    let head: Vec<(String, tch::Tensor)> = super::checkpoint::model_tensors(&task.vs)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&format!("{HEAD_PREFIX}.")))
        .collect();
    crate::model::safetensors::write(&out.join("grdr_head.safetensors"), &head)?;
    let info = ExportInfo::of(config);
    if let Net::Dual(m) = &task.net {
        write_sentence_transformers(out, &info, m.encoder.hidden_size(), &head)?;
    }
    crate::atomic::write_json(&out.join(INFO_FILE), &info)
}

/// The module files sentence-transformers reads: Transformer → Pooling → [Dense] → [Normalize].
fn write_sentence_transformers(
    out: &Path,
    info: &ExportInfo,
    hidden: i64,
    head: &[(String, tch::Tensor)],
) -> Result<()> {
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    crate::atomic::write_json(
        &out.join("sentence_bert_config.json"),
        &json!({"max_seq_length": info.doc_max_len, "do_lower_case": false}),
    )?;
    let first = info.model.pooling != "mean";
    crate::atomic::write_json(
        &out.join("1_Pooling/config.json"),
        &json!({
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": first, "pooling_mode_mean_tokens": !first,
            "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false, "pooling_mode_lasttoken": false, "include_prompt": true,
        }),
    )?;
    if let Some(d) = info.model.dim {
        let tensor = |suffix: &str| {
            let name = format!("{HEAD_PREFIX}.projection.{suffix}");
            head.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| Error::usage("model.dim", format!("the head has no {name} to export as a Dense module")))
        };
        let linear =
            vec![("linear.weight".to_string(), tensor("weight")?), ("linear.bias".to_string(), tensor("bias")?)];
        crate::model::safetensors::write(&out.join("2_Dense/model.safetensors"), &linear)?;
        crate::atomic::write_json(
            &out.join("2_Dense/config.json"),
            &json!({"in_features": hidden, "out_features": d, "bias": true,
                    "activation_function": "torch.nn.modules.linear.Identity"}),
        )?;
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}));
    }
    if info.model.normalize {
        let idx = modules.len();
        modules.push(json!({"idx": idx, "name": idx.to_string(), "path": format!("{idx}_Normalize"),
                            "type": "sentence_transformers.models.Normalize"}));
    }
    crate::atomic::write_json(&out.join("modules.json"), &modules)
}
