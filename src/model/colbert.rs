//! Multi-vector (MVDR) head: per-token projection, L2 norm, ColBERT query augmentation, and
//! the two alignment directions of Wu et al. (SIGIR 2024):
//! - q→d, ColBERT's MaxSim: Σ_j max_i d_iᵀq_j (each query token picks a document token);
//! - q←d, the GR-style document-to-query alignment: Σ_i Σ_j d_iᵀq_j · softmax_j(d_iᵀq_j)
//!   (each document token softly attends over the query tokens, row-wise as in Eq. 22), or
//!   its hard form Σ_i max_j d_iᵀq_j.
//!
//! The direction is a model setting (`model.alignment`): training scores with it, and so does
//! evaluation unless `grdr eval --alignment` asks for the other one. Optionally the score is
//! divided by Z = Σ_ij A_ij, the normalisation of the seed's Eq. 1 that most MVDR methods drop:
//! the number of real query tokens for q→d, of real document tokens for q←d (each aligned
//! token's weights sum to one), so a q←d score is a mean over the document's tokens rather
//! than a sum that grows with the document's length.
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

pub use crate::config::Alignment;

use super::encoder::l2_normalize;
use super::nn_util::linear;
use super::Encoder;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColbertConfig {
    /// Per-token output dimension (ColBERT: 128).
    #[serde(default = "dim")]
    pub dim: i64,
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Queries are padded (or truncated) to exactly this many tokens (ColBERT: 32).
    #[serde(default = "query_len")]
    pub query_len: i64,
    /// The token queries are padded with, attended to and scored like real tokens (ColBERT's
    /// query augmentation; BERT uses [MASK] = 103, T5-ColBERT the pad token 0).
    #[serde(default)]
    pub query_augment_token: i64,
    /// How the score aligns tokens, in training and (unless overridden) evaluation.
    #[serde(default)]
    pub interaction: LateInteraction,
}

fn dim() -> i64 {
    128
}
fn yes() -> bool {
    true
}
fn query_len() -> i64 {
    32
}

impl Default for ColbertConfig {
    fn default() -> Self {
        ColbertConfig {
            dim: 128,
            normalize: true,
            query_len: 32,
            query_augment_token: 0,
            interaction: LateInteraction::default(),
        }
    }
}

/// A late-interaction score: the alignment direction and whether it is divided by Z (Eq. 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateInteraction {
    pub alignment: Alignment,
    /// Divide by Z = Σ_ij A_ij (real query tokens for q→d, real document tokens for q←d).
    pub normalized: bool,
}

impl LateInteraction {
    /// The same normalisation with another direction (`grdr eval --alignment`).
    pub fn with_alignment(self, alignment: Option<Alignment>) -> Self {
        LateInteraction { alignment: alignment.unwrap_or(self.alignment), ..self }
    }

    /// What run files record: `q2d`, `d2q-soft/Z`, ….
    pub fn describe(self) -> String {
        format!("{}{}", self.alignment.name(), if self.normalized { "/Z" } else { "" })
    }
}

/// Parameters under `p` (`grdr_head.`): `linear.weight` (dim, D), no bias (as ColBERT).
#[derive(Debug)]
pub struct ColbertHead {
    pub config: ColbertConfig,
    pub linear: nn::Linear,
}

impl ColbertHead {
    pub fn new(p: &nn::Path, hidden: i64, config: ColbertConfig) -> Self {
        let linear = linear(&(p / "linear"), hidden, config.dim, false, (hidden as f64).powf(-0.5));
        ColbertHead { config, linear }
    }

    /// ColBERT query augmentation: every query becomes exactly `query_len` tokens, padding
    /// with `query_augment_token` under mask 1 so the padding is attended and scored.
    /// (B, Lq) ids and mask → (B, query_len) ids and an all-ones mask.
    pub fn augment_query(&self, input_ids: &Tensor, attention_mask: &Tensor) -> (Tensor, Tensor) {
        let (b, l) = input_ids.size2().unwrap();
        let n = self.config.query_len;
        let fill = Tensor::full([b, n], self.config.query_augment_token, (Kind::Int64, input_ids.device()));
        let keep = l.min(n);
        let real = attention_mask.narrow(1, 0, keep).to_kind(Kind::Bool);
        let head = input_ids.narrow(1, 0, keep).where_self(&real, &fill.narrow(1, 0, keep));
        let ids = if keep < n { Tensor::cat(&[head, fill.narrow(1, keep, n - keep)], 1) } else { head };
        (ids, Tensor::ones([b, n], (Kind::Int64, input_ids.device())))
    }

    /// Token vectors (B, L, dim), zero at padding positions.
    pub fn token_vectors(&self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        let v = hidden.apply(&self.linear);
        let v = if self.config.normalize { l2_normalize(&v) } else { v };
        let m = mask.to_kind(v.kind()).unsqueeze(-1);
        v * m
    }
}

/// All-pairs late-interaction scores: queries q (B, Lq, d) with mask (B, Lq), documents
/// d (N, Ld, d) with mask (N, Ld) → (B, N).
/// Padding (mask 0) never wins a max or a softmax and never counts in a sum, so the scores
/// do not depend on how far a batch was padded (training gathers padded batches).
pub fn late_interaction(q: &Tensor, q_mask: &Tensor, d: &Tensor, d_mask: &Tensor, score: LateInteraction) -> Tensor {
    let sim = Tensor::einsum("bjk,nik->bnji", &[q, d], None::<i64>); // (B, N, Lq, Ld)
    reduce(&sim, &q_mask.unsqueeze(1).unsqueeze(-1), &d_mask.unsqueeze(0).unsqueeze(2), score)
}

/// Aligned-pair scores: q (B, Lq, d), d (B, Ld, d) → (B,), the rerank setting.
pub fn late_interaction_pairs(
    q: &Tensor,
    q_mask: &Tensor,
    d: &Tensor,
    d_mask: &Tensor,
    score: LateInteraction,
) -> Tensor {
    let sim = q.matmul(&d.transpose(1, 2)); // (B, Lq, Ld)
    reduce(&sim, &q_mask.unsqueeze(-1), &d_mask.unsqueeze(1), score)
}

/// `sim` (…, Lq, Ld) with broadcastable masks qm (…, Lq, 1), dm (…, 1, Ld) → (…).
fn reduce(sim: &Tensor, qm: &Tensor, dm: &Tensor, score: LateInteraction) -> Tensor {
    let kind = sim.kind();
    let qm = qm.to_kind(Kind::Bool);
    let dm = dm.to_kind(Kind::Bool);
    let neg = super::nn_util::finfo_min(kind);
    // Per aligned token (…, Lq) or (…, Ld), and which of them are real.
    let (per_token, real) = match score.alignment {
        Alignment::QueryToDoc => {
            (sim.masked_fill(&dm.logical_not(), neg).amax([-1i64].as_slice(), false), qm.squeeze_dim(-1))
        }
        Alignment::DocToQueryMax => {
            (sim.masked_fill(&qm.logical_not(), neg).amax([-2i64].as_slice(), false), dm.squeeze_dim(-2))
        }
        Alignment::DocToQuerySoft => {
            let a = sim.masked_fill(&qm.logical_not(), neg).softmax(-2, kind); // over query tokens
            ((sim * a).sum_dim_intlist(-2, false, kind), dm.squeeze_dim(-2))
        }
    };
    // where() rather than a product: a padded token's row must contribute 0, never NaN.
    let sum = per_token.where_self(&real, &per_token.zeros_like()).sum_dim_intlist(-1, false, kind);
    if score.normalized {
        // Z: every real token's alignment weights sum to one.
        sum / real.to_kind(kind).sum_dim_intlist(-1, false, kind).clamp_min(1.0)
    } else {
        sum
    }
}

// SAFETY (ForwardOnly): evaluation workers only run no-grad `embed_queries`/`embed_docs`
// passes; nothing is trained or written while they share it.
unsafe impl<E: Encoder> crate::parallel::ForwardOnly for ColbertEncoder<E> {}

/// A multi-vector encoder: one encoder for queries and documents, and the head.
pub struct ColbertEncoder<E: Encoder> {
    pub encoder: E,
    pub head: ColbertHead,
}

impl<E: Encoder> ColbertEncoder<E> {
    /// Queries after augmentation → ((B, query_len, dim), mask (B, query_len)).
    pub fn embed_queries(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> (Tensor, Tensor) {
        let (ids, mask) = self.head.augment_query(input_ids, attention_mask);
        let hidden = self.encoder.encode(&ids, &mask, train);
        (self.head.token_vectors(&hidden, &mask), mask)
    }

    /// Documents → ((B, L, dim) zero at padding, mask (B, L)).
    pub fn embed_docs(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> (Tensor, Tensor) {
        let hidden = self.encoder.encode(input_ids, attention_mask, train);
        (self.head.token_vectors(&hidden, attention_mask), attention_mask.shallow_clone())
    }
}
