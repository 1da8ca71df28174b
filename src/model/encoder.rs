//! Encoders behind one type, and the pooling shared by the dense heads.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::bert::BertModel;
use super::hf::{self, LoadOptions, LoadReport};
use super::t5_model::T5EncoderModel;
use super::Encoder;
use crate::error::{Error, Result};

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Masked mean over real tokens (sentence-transformers, GTR, Contriever).
    Mean,
    /// The first token ([CLS] for BERT/DPR).
    First,
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "first" | "cls" => Ok(Pooling::First),
            _ => Err(Error::usage("pooling", format!("`{s}`: expected mean, first or cls"))),
        }
    }
}

/// `hidden` (B, L, D), `mask` (B, L) → (B, D). The mean divides by the token count clamped at
/// 1e-9, as sentence-transformers' `Pooling` does, so an all-padding row gives zeros.
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Tensor {
    match pooling {
        Pooling::First => hidden.select(1, 0),
        Pooling::Mean => {
            let m = mask.to_kind(hidden.kind()).unsqueeze(-1); // (B, L, 1)
            let sum = (hidden * &m).sum_dim_intlist(1, false, hidden.kind());
            sum / m.sum_dim_intlist(1, false, hidden.kind()).clamp_min(1e-9)
        }
    }
}

/// L2 normalisation along the last dimension (eps 1e-12 like `F.normalize`).
pub fn l2_normalize(xs: &Tensor) -> Tensor {
    let norm = xs.norm_scalaropt_dim(2, [-1i64].as_slice(), true).clamp_min(1e-12);
    xs / norm
}

/// Any encoder grdr can load from an HF directory, chosen by `model_type`.
pub enum TextEncoderModel {
    Bert(BertModel),
    /// A `T5EncoderModel`, or the encoder half of a seq2seq checkpoint.
    T5(T5EncoderModel),
}

impl TextEncoderModel {
    /// The longest input it takes: BERT's learned positions; none for T5, whose relative
    /// positions have no limit.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            TextEncoderModel::Bert(b) => Some(b.config.max_position_embeddings as usize),
            TextEncoderModel::T5(_) => None,
        }
    }
}

impl TextEncoderModel {
    /// Loads `dir` by its `config.json` `model_type` (bert-family or t5).
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<(nn::VarStore, Self, LoadReport)> {
        let ty = hf::model_type(dir)?;
        match ty.as_str() {
            "bert" => {
                let l = hf::load::<BertModel>(dir, opts)?;
                Ok((l.vs, TextEncoderModel::Bert(l.model), l.report))
            }
            "t5" | "mt5" => {
                let l = hf::load::<T5EncoderModel>(dir, opts)?;
                Ok((l.vs, TextEncoderModel::T5(l.model), l.report))
            }
            other => Err(Error::usage(
                dir.display().to_string(),
                format!("model_type `{other}` is not supported as an encoder (bert, t5)"),
            )),
        }
    }
}

impl Encoder for TextEncoderModel {
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        match self {
            TextEncoderModel::Bert(m) => m.encode(input_ids, attention_mask, train),
            TextEncoderModel::T5(m) => m.encode(input_ids, attention_mask, train),
        }
    }
    fn hidden_size(&self) -> i64 {
        match self {
            TextEncoderModel::Bert(m) => m.hidden_size(),
            TextEncoderModel::T5(m) => m.hidden_size(),
        }
    }
}

/// What one more forward call costs beyond its tokens, in token-equivalents (kernel set-up,
/// per-call products too small to use the cores): splitting a batch must save more padded
/// tokens than this per extra sub-batch.
pub const SUB_BATCH_OVERHEAD_TOKENS: i64 = 384;

/// Groups the rows of a padded batch, by real length, into sub-batches that each pad only
/// to their own longest row: the split of the length-sorted rows that minimises padded
/// tokens plus `overhead` per sub-batch (exact, by dynamic programming over split points).
/// Returns each sub-batch's rows (ascending length) and its length.
pub fn length_buckets(lengths: &[i64], overhead: i64) -> Vec<(Vec<i64>, i64)> {
    let mut order: Vec<i64> = (0..lengths.len() as i64).collect();
    order.sort_by_key(|&r| (lengths[r as usize], r));
    let len = |i: usize| lengths[order[i] as usize].max(1);
    let n = order.len();
    // best[j]: the cheapest split of the j shortest rows; cut[j]: where its last part starts.
    let mut best = vec![0i64; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let (c, i) = (0..j).map(|i| (best[i] + (j - i) as i64 * len(j - 1) + overhead, i)).min().expect("j ≥ 1");
        best[j] = c;
        cut[j] = i;
    }
    let mut parts = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = cut[j];
        parts.push((order[i..j].to_vec(), len(j - 1)));
        j = i;
    }
    parts.reverse();
    parts
}

/// `encode(ids, mask)` of a right-padded batch on the CPU, computed on length-sorted
/// sub-batches that pad only to their own longest text ([`length_buckets`]) and put back in
/// batch order. `encode` gives one row per text, (b, D), or one per token, (b, len, D);
/// per-token outputs are zero-padded back to the batch's length, where the mask hides them.
/// A text's encoding does not depend on its batch neighbours, so this is the same function
/// with less padding. On CUDA the host copy of the lengths would cost a synchronisation per
/// call, so the batch is encoded whole.
pub fn encode_length_sorted(ids: &Tensor, mask: &Tensor, encode: impl Fn(&Tensor, &Tensor) -> Tensor) -> Tensor {
    if ids.device() != tch::Device::Cpu {
        return encode(ids, mask);
    }
    let lengths: Vec<i64> = Vec::try_from(mask.sum_dim_intlist(1, false, tch::Kind::Int64)).expect("a (B, L) mask");
    let buckets = length_buckets(&lengths, SUB_BATCH_OVERHEAD_TOKENS);
    if buckets.len() <= 1 {
        return encode(ids, mask);
    }
    let full_len = ids.size()[1];
    let mut parts = Vec::with_capacity(buckets.len());
    let mut position = vec![0i64; lengths.len()]; // row → its row in the concatenation
    let mut at = 0;
    for (rows, len) in &buckets {
        for &r in rows {
            position[r as usize] = at;
            at += 1;
        }
        let idx = Tensor::from_slice(rows);
        let out = encode(&ids.index_select(0, &idx).narrow(1, 0, *len), &mask.index_select(0, &idx).narrow(1, 0, *len));
        // (b, D), or (b, len, D) → (b, L, D)
        parts.push(if out.dim() == 3 { out.constant_pad_nd([0, 0, 0, full_len - len]) } else { out });
    }
    Tensor::cat(&parts, 0).index_select(0, &Tensor::from_slice(&position)) // (B, …)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_buckets_split_only_when_padding_costs_more_than_a_call() {
        // Similar lengths: one sub-batch.
        assert_eq!(length_buckets(&[10, 12, 11], 384), vec![(vec![0, 2, 1], 12)]);
        // 8 short rows beside 8 long ones: 8 × 90 padded tokens saved > one call's overhead.
        let lengths: Vec<i64> = (0..16).map(|i| if i % 2 == 0 { 10 } else { 100 }).collect();
        let parts = length_buckets(&lengths, 384);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], ((0..16).step_by(2).collect::<Vec<i64>>(), 10));
        assert_eq!(parts[1].1, 100);
        // Every row exactly once.
        let mut rows: Vec<i64> = parts.iter().flat_map(|p| p.0.clone()).collect();
        rows.sort();
        assert_eq!(rows, (0..16).collect::<Vec<i64>>());
        assert!(length_buckets(&[], 384).is_empty());
    }
}
