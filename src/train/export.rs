//! The trained model as an HF directory (`RUNDIR/model/`): `config.json`,
//! `model.safetensors` (backbone, HF keys), `tokenizer.json` (with a GR run's docid tokens) — loadable by `transformers` —
//! plus grdr's own `grdr_head.safetensors` (head variables, `grdr_head.*`) and `grdr.json`
//! (model kind and head settings, the docid file of a GR run).
use std::path::Path;

use serde_json::json;

use crate::config::RunConfig;
use crate::error::Result;
use crate::model::generative::add_docid_tokens;
use crate::model::task::{Net, Task, HEAD_PREFIX};
use crate::model::{hf, TextEncoderModel};

pub fn export(task: &Task, config: &RunConfig, out: &Path) -> Result<()> {
    let skip = [format!("{HEAD_PREFIX}.")];
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let tok = Some(task.tokenizer_json.as_path());
    let encoder = match &task.net {
        Net::Dual(m) => Some(&m.encoder),
        Net::Colbert(m) => Some(&m.encoder),
        Net::Generative { model, vocab } => {
            // The tokenizer learns the docid tokens (`<d12>`, `<s0_3>`), so transformers
            // encodes and decodes docids with the exported directory alone.
            let mut tokenizer =
                tokenizers::Tokenizer::from_file(&task.tokenizer_json).map_err(|e| crate::error::Error::Tokenizer {
                    name: task.tokenizer_json.display().to_string(),
                    message: e.to_string(),
                })?;
            add_docid_tokens(&mut tokenizer, vocab)?;
            hf::export_with_tokenizer(model, &task.vs, &tokenizer, out, &skip)?;
            None
        }
    };
    match encoder {
        Some(TextEncoderModel::Bert(m)) => hf::export(m, &task.vs, tok, out, &skip)?,
        Some(TextEncoderModel::T5(m)) => hf::export(m, &task.vs, tok, out, &skip)?,
        None => {}
    }
    let head: Vec<(String, tch::Tensor)> = super::checkpoint::model_tensors(&task.vs)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&format!("{HEAD_PREFIX}.")))
        .collect();
    crate::model::safetensors::write(&out.join("grdr_head.safetensors"), &head)?;
    let m = &config.model;
    let info = json!({
        "kind": m.kind,
        "pooling": m.pooling,
        "dim": m.dim,
        "normalize": m.normalize,
        "colbert_dim": m.colbert_dim,
        "colbert_query_len": m.colbert_query_len,
        "query_augment_token": m.query_augment_token,
        "query_max_len": config.data.query_max_len,
        "doc_max_len": config.data.doc_max_len,
        "docids": config.docids.path,
        "grdr_version": crate::VERSION,
    });
    crate::atomic::write_json(&out.join("grdr.json"), &info)
}
