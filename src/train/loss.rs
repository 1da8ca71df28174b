//! Training losses as pure functions of tensors. They know nothing of ranks: the trainer
//! hands them the global batch assembled by `dist::gather` (DR, MVDR) or a local sum it
//! normalises by the global token count (GR); see `dist/gather.rs` for why that makes N
//! ranks compute exactly the one-process loss.
//!
//! Contrastive layout: documents come in groups of `group` rows per query — the positive
//! first, then `group - 1` hard negatives — so query `i`'s positive is document row
//! `i·group`. Every other row of the batch (other queries' positives and hard negatives,
//! on every rank after a gather) is an in-batch negative.
use tch::{Kind, Tensor};

use crate::model::colbert::{late_interaction, LateInteraction};

/// Row of each query's positive document: `(Q,)` i64 = `[0, group, 2·group, …]`.
pub fn positive_rows(num_queries: i64, group: i64, device: tch::Device) -> Tensor {
    Tensor::arange(num_queries, (Kind::Int64, device)) * group
}

/// The mask (true = dropped) of ColBERTv1's pairwise loss: query `i` keeps only its own
/// group, document rows `i·group .. (i+1)·group` (its positive and hard negatives).
/// `(Q, N)` bool on the CPU.
pub fn outside_own_group(num_queries: i64, num_docs: i64, group: i64) -> Tensor {
    let col = Tensor::arange(num_docs, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0); // (1, N)
    let first = positive_rows(num_queries, group, tch::Device::Cpu).unsqueeze(1); // (Q, 1)
    col.lt_tensor(&first).logical_or(&col.ge_tensor(&(first + group)))
}

/// Cross-entropy of `scores / temperature` against `labels`, averaged over queries.
/// `scores (Q, N)`, `labels (Q,)` i64. Computed in f32 at least (bf16 scores upcast).
pub fn info_nce_from_scores(scores: &Tensor, labels: &Tensor, temperature: f64) -> Tensor {
    let logits = upcast(scores) / temperature; // (Q, N)
    logits.log_softmax(-1, Kind::Float).nll_loss(labels)
}

/// Single-vector InfoNCE: dot-product scores of every query against every document row
/// (positives, hard negatives, in-batch and cross-rank negatives alike).
/// `q (Q, D)`, `d (Q·group, D)`.
pub fn info_nce(q: &Tensor, d: &Tensor, group: i64, temperature: f64) -> Tensor {
    let scores = q.matmul(&d.tr()); // (Q, Q·group)
    let labels = positive_rows(q.size()[0], group, q.device());
    info_nce_from_scores(&scores, &labels, temperature)
}

/// ColBERT contrastive loss: InfoNCE over late-interaction scores (layout as [`info_nce`]).
/// `q (Q, Lq, D)`, `q_mask (Q, Lq)`, `d (N, Ld, D)`, `d_mask (N, Ld)`; every document needs
/// one real token.
pub fn colbert_info_nce(
    q: &Tensor,
    q_mask: &Tensor,
    d: &Tensor,
    d_mask: &Tensor,
    score: LateInteraction,
    group: i64,
    temperature: f64,
) -> Tensor {
    let scores = late_interaction(q, q_mask, d, d_mask, score); // (Q, N)
    let labels = positive_rows(q.size()[0], group, q.device());
    info_nce_from_scores(&scores, &labels, temperature)
}

/// Summed token negative log-likelihood of `targets` under `logits`, over positions
/// where `mask` is set. `logits (B, T, V)`, `targets (B, T)` i64 (any value at masked
/// positions), `mask (B, T)` bool or 0/1. Returns a 0-dim f32 sum: divide by the token
/// count of the whole (global, accumulated) batch — see `dist::gather::global_mean_share`.
pub fn token_nll_sum(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Tensor {
    let logp = upcast(logits).log_softmax(-1, Kind::Float); // (B, T, V)
    let picked = logp.gather(-1, &targets.clamp_min(0).unsqueeze(-1), false).squeeze_dim(-1); // (B, T)
    let real = mask.to_kind(Kind::Bool);
    -picked.where_self(&real, &picked.zeros_like()).sum(Kind::Float)
}

/// Number of real (masked-in) target tokens: the local term of the global token count.
pub fn token_count(mask: &Tensor) -> i64 {
    mask.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
}

fn upcast(t: &Tensor) -> Tensor {
    match t.kind() {
        Kind::BFloat16 | Kind::Half => t.to_kind(Kind::Float),
        _ => t.shallow_clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn info_nce_matches_a_hand_computed_softmax() {
        let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).reshape([2, 2]);
        let d = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).reshape([2, 2]);
        let loss = info_nce(&q, &d, 1, 0.5).double_value(&[]);
        // Each query: scores (2, 0) → -log(e² / (e² + 1)).
        let want = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }

    /// ColBERTv1's pairwise loss: each query's softmax over its own positive and hard
    /// negative only, whatever the other queries' documents score.
    #[test]
    fn pairwise_keeps_only_the_own_group() {
        // 2 queries × 4 documents (group 2: q0 owns d0 (+), d1 (−); q1 owns d2 (+), d3 (−)).
        let scores = Tensor::from_slice(&[3.0f32, 1.0, 9.0, 9.0, 9.0, 9.0, 0.5, 2.0]).reshape([2, 4]);
        let drop = outside_own_group(2, 4, 2);
        assert_eq!(
            Vec::<bool>::try_from(drop.reshape([-1])).unwrap(),
            [false, false, true, true, true, true, false, false]
        );
        let kept = scores.masked_fill(&drop, f64::NEG_INFINITY);
        let loss = info_nce_from_scores(&kept, &positive_rows(2, 2, Device::Cpu), 1.0).double_value(&[]);
        let pair = |pos: f64, neg: f64| -(pos.exp() / (pos.exp() + neg.exp())).ln();
        let want = (pair(3.0, 1.0) + pair(0.5, 2.0)) / 2.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }

    /// Every alignment, normalised or not: padding further with garbage under mask 0 leaves
    /// the scores as they were (training gathers batches padded to each rank's longest).
    #[test]
    fn late_interaction_ignores_padding() {
        use crate::model::colbert::Alignment;
        tch::manual_seed(1);
        let q = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu));
        let d = Tensor::randn([3, 5, 4], (Kind::Float, Device::Cpu));
        let q_mask = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 1]).reshape([2, 3]).to_kind(Kind::Bool);
        let d_mask =
            Tensor::from_slice(&[1i64, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]).reshape([3, 5]).to_kind(Kind::Bool);
        let q2 = Tensor::cat(&[q.shallow_clone(), Tensor::full([2, 2, 4], 9.0, (Kind::Float, Device::Cpu))], 1);
        let d2 = Tensor::cat(&[d.shallow_clone(), Tensor::full([3, 3, 4], 9.0, (Kind::Float, Device::Cpu))], 1);
        let qm2 = Tensor::cat(&[q_mask.shallow_clone(), Tensor::zeros([2, 2], (Kind::Bool, Device::Cpu))], 1);
        let dm2 = Tensor::cat(&[d_mask.shallow_clone(), Tensor::zeros([3, 3], (Kind::Bool, Device::Cpu))], 1);
        for alignment in [Alignment::QueryToDoc, Alignment::DocToQuerySoft, Alignment::DocToQueryMax] {
            for normalized in [false, true] {
                let score = LateInteraction { alignment, normalized };
                let s = late_interaction(&q, &q_mask, &d, &d_mask, score);
                let s2 = late_interaction(&q2, &qm2, &d2, &dm2, score);
                assert!(s.allclose(&s2, 1e-6, 1e-6, false), "{score:?}");
            }
        }
    }

    #[test]
    fn token_nll_sums_only_real_tokens() {
        let logits = Tensor::zeros([1, 3, 4], (Kind::Float, Device::Cpu));
        let targets = Tensor::from_slice(&[1i64, 2, -100]).reshape([1, 3]);
        let mask = Tensor::from_slice(&[true, true, false]).reshape([1, 3]);
        let s = token_nll_sum(&logits, &targets, &mask).double_value(&[]);
        assert!((s - 2.0 * 4f64.ln()).abs() < 1e-6);
        assert_eq!(token_count(&mask), 2);
    }
}
