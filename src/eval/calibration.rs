//! Calibration (Zhang et al.): how well a model's probabilities over the *whole corpus* match
//! relevance, by the Brier score, and how far DR's in-batch softmax over K candidates drifts
//! from the full softmax over N documents.
//!
//! - DR: p(d|q) = softmax over every document of s(q, d)/τ. The normaliser is a log-sum-exp
//!   streamed over score blocks ([`SoftmaxAccumulator`]) and, sharded, combined across ranks
//!   ([`all_reduce_lse`]); Σ_d p² needs a second log-sum-exp of 2s, so one pass suffices.
//! - GR: p(docid|q) = exp(log-likelihood) normalised over the docid set: exact when the beam
//!   returned every docid (beam ≥ #docids), else over the docids it returned (flagged).
//!
//! Brier of one query = Σ_d (p_d − y_d)², y uniform over the relevant documents (one-hot
//! when there is one), = Σ p² − (2/|R|) Σ_{d∈R} p_d + 1/|R|. Lower is better, in [0, 2].
//!
//! In-batch gap at K: the training softmax normalises the gold document against K−1 sampled
//! negatives; with uniform negatives its expected normaliser is e^{s⁺} + (K−1)/(N−1)·(Z − e^{s⁺})
//! (Z the full normaliser). `gap@K` = log p_K(d⁺) − log p_N(d⁺) with that expectation, mean
//! over (query, relevant doc): 0 when K = N, growing with N/K (Zhang et al., Theorem 3.1).
use std::collections::BTreeMap;

use serde_json::json;
use tch::{Kind, Tensor};

use crate::dist::{Comm, ReduceOp};
use crate::error::Result;

/// log(e^a + e^b) without overflow; −∞ is the identity.
pub fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Per query: log Σ_d e^{s_d} and log Σ_d e^{2 s_d} over the documents seen so far.
#[derive(Debug, Clone)]
pub struct SoftmaxAccumulator {
    pub lse1: Vec<f64>,
    pub lse2: Vec<f64>,
    /// Scores are divided by this before the softmax.
    pub temperature: f64,
}

impl SoftmaxAccumulator {
    pub fn new(queries: usize, temperature: f64) -> Self {
        SoftmaxAccumulator {
            lse1: vec![f64::NEG_INFINITY; queries],
            lse2: vec![f64::NEG_INFINITY; queries],
            temperature,
        }
    }

    /// Adds a block of raw scores (Qb, C) of queries `first_query ..`.
    pub fn add_block(&mut self, first_query: i64, scores: &Tensor) {
        let (l1, l2) = Self::block_lse(scores, self.temperature);
        self.add_lse(first_query, &l1, &l2);
    }

    /// Per row of `scores` (Qb, C): log Σ e^{s/τ} and log Σ e^{2s/τ} (the thread-safe part).
    pub fn block_lse(scores: &Tensor, temperature: f64) -> (Vec<f64>, Vec<f64>) {
        let s = scores.to_kind(Kind::Double) / temperature; // (Qb, C)
        let lse = |x: Tensor| {
            Vec::<f64>::try_from(x.logsumexp([1i64].as_slice(), false).to_device(tch::Device::Cpu)).expect("f64")
        };
        (lse(s.shallow_clone()), lse(s * 2.0))
    }

    /// Adds per-query partial normalisers of queries `first_query ..`.
    pub fn add_lse(&mut self, first_query: i64, l1: &[f64], l2: &[f64]) {
        for (i, (&a, &b)) in l1.iter().zip(l2).enumerate() {
            let q = first_query as usize + i;
            self.lse1[q] = log_add(self.lse1[q], a);
            self.lse2[q] = log_add(self.lse2[q], b);
        }
    }

    /// Combines every rank's partial normalisers (all ranks get the global ones).
    pub fn all_reduce(&mut self, comm: &dyn Comm) -> Result<()> {
        all_reduce_lse(comm, &mut self.lse1)?;
        all_reduce_lse(comm, &mut self.lse2)
    }
}

/// Log-sum-exp across ranks, element-wise: max, then the sum of shifted exponentials.
pub fn all_reduce_lse(comm: &dyn Comm, values: &mut [f64]) -> Result<()> {
    if comm.world().size == 1 {
        return Ok(());
    }
    let mut m = values.to_vec();
    comm.all_reduce_f64(&mut m, ReduceOp::Max)?;
    let mut s: Vec<f64> =
        values.iter().zip(&m).map(|(v, m)| if *m == f64::NEG_INFINITY { 0.0 } else { (v - m).exp() }).collect();
    comm.all_reduce_f64(&mut s, ReduceOp::Sum)?;
    for ((v, m), s) in values.iter_mut().zip(m).zip(s) {
        *v = if m == f64::NEG_INFINITY { m } else { m + s.ln() };
    }
    Ok(())
}

/// Brier of one query from Σ p² and the probabilities of its relevant documents.
pub fn brier(sum_p2: f64, p_relevant: &[f64]) -> f64 {
    let r = p_relevant.len() as f64;
    sum_p2 - 2.0 / r * p_relevant.iter().sum::<f64>() + 1.0 / r
}

/// Calibration of one DR query: `lse1`/`lse2` the full normalisers of s/τ and 2s/τ, `relevant`
/// the raw scores of its relevant documents, `n_docs` the corpus size, `ks` the batch sizes
/// whose in-batch gap is reported.
pub fn dr_query(
    lse1: f64,
    lse2: f64,
    temperature: f64,
    relevant: &[f64],
    n_docs: usize,
    ks: &[usize],
) -> QueryCalibration {
    let log_p: Vec<f64> = relevant.iter().map(|s| s / temperature - lse1).collect();
    let p: Vec<f64> = log_p.iter().map(|l| l.exp()).collect();
    let sum_p2 = (lse2 - 2.0 * lse1).exp();
    let gaps = ks
        .iter()
        .map(|&k| {
            let frac = if n_docs > 1 { (k.saturating_sub(1) as f64 / (n_docs - 1) as f64).min(1.0) } else { 1.0 };
            let mean = log_p
                .iter()
                .map(|&lp| {
                    // p_K = e^{s⁺} / (e^{s⁺} + frac·(Z − e^{s⁺})) = p / (p + frac·(1 − p)), p = p_N.
                    let p = lp.exp();
                    -(p + frac * (1.0 - p)).ln()
                })
                .sum::<f64>()
                / log_p.len().max(1) as f64;
            (k, mean)
        })
        .collect();
    QueryCalibration { brier: brier(sum_p2, &p), p_relevant: p.iter().sum::<f64>() / p.len().max(1) as f64, gaps }
}

/// Calibration of one GR query from the log-likelihoods of the docids a search returned
/// (`log_likelihoods`) and which of them are relevant (`relevant[i]`); normalised over
/// them — the whole docid set when the search was exhaustive. Relevant documents the search
/// did not return have probability 0.
pub fn gr_query(log_likelihoods: &[f64], relevant: &[bool], n_relevant: usize) -> QueryCalibration {
    let lse = log_likelihoods.iter().fold(f64::NEG_INFINITY, |a, &b| log_add(a, b));
    let p: Vec<f64> = log_likelihoods.iter().map(|l| (l - lse).exp()).collect();
    let sum_p2: f64 = p.iter().map(|x| x * x).sum();
    let mut p_rel: Vec<f64> = p.iter().zip(relevant).filter(|(_, &r)| r).map(|(p, _)| *p).collect();
    p_rel.resize(n_relevant.max(p_rel.len()), 0.0);
    QueryCalibration {
        brier: brier(sum_p2, &p_rel),
        p_relevant: p_rel.iter().sum::<f64>() / p_rel.len().max(1) as f64,
        gaps: vec![],
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryCalibration {
    pub brier: f64,
    /// Mean full-softmax probability of the relevant documents.
    pub p_relevant: f64,
    /// (K, mean log p_K(d⁺) − log p_N(d⁺)).
    pub gaps: Vec<(usize, f64)>,
}

/// Means over queries, as written to metrics.json (`Brier`) and run.json (the rest).
pub fn summarize(per_query: &[QueryCalibration], how: &str) -> serde_json::Value {
    let n = per_query.len().max(1) as f64;
    let mean = |f: &dyn Fn(&QueryCalibration) -> f64| per_query.iter().map(f).sum::<f64>() / n;
    let mut gaps = BTreeMap::new();
    if let Some(first) = per_query.first() {
        for (i, (k, _)) in first.gaps.iter().enumerate() {
            gaps.insert(format!("gap@{k}"), json!(mean(&|q| q.gaps[i].1)));
        }
    }
    json!({
        "Brier": mean(&|q| q.brier),
        "p_relevant": mean(&|q| q.p_relevant),
        "queries": per_query.len(),
        "normalised_over": how,
        "in_batch_gap": gaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(s: &[f64]) -> Vec<f64> {
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        s.iter().map(|x| (x - m).exp() / z).collect()
    }

    #[test]
    fn streamed_brier_equals_the_direct_formula() {
        let scores = [0.3f64, -1.2, 2.0, 0.7, 0.0, 1.1, -0.4];
        let t = 0.5;
        let mut acc = SoftmaxAccumulator::new(1, t);
        for part in scores.chunks(3) {
            acc.add_block(0, &Tensor::from_slice(part).view([1, -1]));
        }
        let relevant = [2usize, 5];
        let got = dr_query(acc.lse1[0], acc.lse2[0], t, &relevant.map(|i| scores[i]), scores.len(), &[scores.len(), 3]);
        let p = softmax(&scores.map(|s| s / t));
        let y: Vec<f64> = (0..scores.len()).map(|i| if relevant.contains(&i) { 0.5 } else { 0.0 }).collect();
        let direct: f64 = p.iter().zip(&y).map(|(p, y)| (p - y).powi(2)).sum();
        assert!((got.brier - direct).abs() < 1e-12, "{} vs {direct}", got.brier);
        // K = N: the in-batch softmax is the full one.
        assert!(got.gaps[0].1.abs() < 1e-12);
        // K < N: the expected in-batch probability is higher (positive gap).
        assert!(got.gaps[1].1 > 0.0);
    }

    #[test]
    fn gap_of_equal_scores_is_log_n_over_k() {
        let n = 6;
        let lse1 = (n as f64).ln();
        let lse2 = (n as f64).ln() + 1.0; // irrelevant here
        let q = dr_query(lse1 + 1.0, lse2, 1.0, &[1.0], n, &[3]);
        // Equal scores: p_K = 1/K, p_N = 1/N → gap = ln(N/K).
        assert!((q.gaps[0].1 - (n as f64 / 3.0).ln()).abs() < 1e-12, "{:?}", q.gaps);
    }

    #[test]
    fn perfect_and_uniform_gr_predictions() {
        let perfect = gr_query(&[0.0, -50.0, -60.0], &[true, false, false], 1);
        assert!(perfect.brier < 1e-12);
        let uniform = gr_query(&[-1.0, -1.0], &[true, false], 1);
        assert!((uniform.brier - 0.5).abs() < 1e-12);
        // A relevant doc the beam missed counts with p = 0.
        let missed = gr_query(&[0.0], &[false], 1);
        assert!((missed.brier - 2.0).abs() < 1e-12);
    }

    #[test]
    fn log_add_handles_infinities() {
        assert_eq!(log_add(f64::NEG_INFINITY, 2.0), 2.0);
        assert!((log_add(0.0, 0.0) - 2f64.ln()).abs() < 1e-15);
        assert!((log_add(1000.0, 1000.0) - (1000.0 + 2f64.ln())).abs() < 1e-9);
    }
}
