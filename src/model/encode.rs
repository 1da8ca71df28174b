//! Texts → single vectors with any [`Encoder`]: length-sorted batches (padding, not text, is
//! what gets cut), no autograd, pooling and normalisation as a sentence-transformers
//! directory declares them. `grdr encode` writes the vectors with `data::embeddings`.
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::encoder::{l2_normalize, pool, Pooling};
use super::Encoder;
use crate::data::text::TextTokenizer;
use crate::error::{Error, Location, Result};

/// How texts become vectors, with the defaults a sentence-transformers directory declares.
#[derive(Debug, Clone)]
pub struct EncodeSpec {
    pub max_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub batch_size: usize,
}

impl EncodeSpec {
    /// Reads `sentence_bert_config.json`, `1_Pooling/config.json` and `modules.json` if
    /// present. A file that is not JSON, or a pooling mode grdr does not implement (max,
    /// weighted mean, last token, …), is an error rather than a silent mean pooling.
    pub fn from_model_dir(dir: &Path) -> Result<EncodeSpec> {
        let json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p: PathBuf = dir.join(name);
            let Ok(text) = std::fs::read_to_string(&p) else { return Ok(None) };
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::input(&p, Location::Line(e.line()), name, e.to_string()))
        };
        let max_len = json("sentence_bert_config.json")?
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|n| n as usize)
            .unwrap_or(512);
        let pooling = match json("1_Pooling/config.json")? {
            None => Pooling::Mean,
            Some(v) => {
                let on = |k: &str| v[k].as_bool() == Some(true);
                let others = [
                    "pooling_mode_max_tokens",
                    "pooling_mode_mean_sqrt_len_tokens",
                    "pooling_mode_weightedmean_tokens",
                    "pooling_mode_lasttoken",
                ];
                if let Some(mode) = others.iter().find(|k| on(k)) {
                    return Err(Error::input(
                        dir.join("1_Pooling/config.json"),
                        Location::File,
                        *mode,
                        "this pooling mode is not implemented by grdr (mean and cls are)",
                    ));
                }
                if on("pooling_mode_cls_token") {
                    Pooling::First
                } else {
                    Pooling::Mean
                }
            }
        };
        let normalize = json("modules.json")?
            .map(|v| v.to_string().contains("sentence_transformers.models.Normalize"))
            .unwrap_or(true);
        Ok(EncodeSpec { max_len, pooling, normalize, batch_size: 64 })
    }
}

/// Embeds `texts` (N) → (N, D) f32 on the CPU, in input order: batches of length-sorted texts,
/// no autograd, `progress` ticked per text.
pub fn encode_texts(
    model: &dyn Encoder,
    tok: &TextTokenizer,
    texts: &[&str],
    spec: &EncodeSpec,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let ids = tok.encode(texts)?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut out = Tensor::zeros([texts.len() as i64, model.hidden_size()], (Kind::Float, Device::Cpu));
    for chunk in order.chunks(spec.batch_size.max(1)) {
        let rows: Vec<Vec<i64>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let (input_ids, mask) = tok.batch(&rows, device);
        let hidden = model.encode(&input_ids, &mask, false); // (B, L, D)
        let pooled = pool(&hidden, &mask, spec.pooling);
        let emb = if spec.normalize { l2_normalize(&pooled) } else { pooled };
        let at = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
        out = out.index_copy(0, &at, &emb.to_kind(Kind::Float).to_device(Device::Cpu));
        progress.inc(chunk.len() as u64);
    }
    Ok(out)
}
