//! Text → padded id tensors for the models, with the tokenizer's own padding switched off (the
//! shipped MiniLM `tokenizer.json` pads everything to 128) and our own truncation length.
use std::path::Path;

use tch::{Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// A tokenizer that truncates to `max_len` tokens (special tokens included) and never pads.
pub struct TextTokenizer {
    pub tokenizer: Tokenizer,
    pub max_len: usize,
    pub pad_id: i64,
    name: String,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (a file, or a model directory holding one).
    pub fn from_path(path: &Path, max_len: usize) -> Result<Self> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        let name = file.display().to_string();
        let err = |m: String| Error::Tokenizer { name: name.clone(), message: m };
        if max_len < 2 {
            return Err(Error::usage("max_len", "must be at least 2 (room for the special tokens)"));
        }
        let mut tokenizer = Tokenizer::from_file(&file).map_err(|e| err(e.to_string()))?;
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id as i64).unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(TextTokenizer { tokenizer, max_len, pad_id, name })
    }

    /// Token ids of each text, special tokens added, truncated, unpadded.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer { name: self.name.clone(), message: e.to_string() })?;
        Ok(encs.iter().map(|e| e.get_ids().iter().map(|&i| i as i64).collect()).collect())
    }

    /// Pads `ids` to their longest row: (input_ids (B, L), attention_mask (B, L)).
    pub fn batch(&self, ids: &[Vec<i64>], device: Device) -> (Tensor, Tensor) {
        pad_batch(ids, self.pad_id, device)
    }
}

/// Right-pads rows with `pad_id`: (input_ids (B, L) int64, attention_mask (B, L) int64).
pub fn pad_batch(ids: &[Vec<i64>], pad_id: i64, device: Device) -> (Tensor, Tensor) {
    let l = ids.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut flat = Vec::with_capacity(ids.len() * l);
    let mut mask = Vec::with_capacity(ids.len() * l);
    for row in ids {
        flat.extend_from_slice(row);
        flat.extend(std::iter::repeat_n(pad_id, l - row.len()));
        mask.extend(std::iter::repeat_n(1i64, row.len()));
        mask.extend(std::iter::repeat_n(0i64, l - row.len()));
    }
    let shape = [ids.len() as i64, l as i64];
    let t = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_kind(Kind::Int64).to_device(device);
    (t(flat), t(mask))
}
