//! `negative_bank = "corpus"`: the exact global softmax of a dual encoder. Every micro-batch
//! scores each query against every document of the corpus, all encoded with the current
//! parameters and all back-propagated through, which is Zhang et al.'s globally normalised
//! objective (Theorem 3.1). `full` differs: its negatives come from a bank without gradient.
//!
//! ```text
//! start:  this rank's shard of the corpus (bank::Dealing: 64-document chunks, chunk j to
//!         rank j mod W) tokenized once → ids, mask (n_r, L)
//! each micro-batch, through grad_cache (queries and the shard are its two sides):
//!   q (B, d), shard (n_r, d) ─all-gather with grad→ Q (ΣB, d), D (N, d) in doc_idx order
//!   loss = mean_i −log softmax(Q_i · Dᵀ / τ)[positive_i]
//! ```
//! Memory stays one GradCache chunk of activations plus the (N, d) embeddings; time is about
//! three encodings of the corpus per micro-batch (no-graph pass, graph pass, backward).
use tch::{Kind, Tensor};

use super::bank::{doc_tokens, Dealing};
use super::loss;
use crate::data::batch::Batcher;
use crate::dist::gather::{all_gather_i64, all_gather_with_grad};
use crate::dist::Comm;
use crate::error::Result;

/// This rank's shard of the corpus, tokenized, and where its rows go in doc order.
pub struct CorpusSide {
    /// `(n_r, L)`: this rank's documents, its chunks in order.
    pub ids: Tensor,
    pub mask: Tensor,
    /// `(N,)`: doc_idx → row of the all-gathered shards.
    order: Tensor,
}

impl CorpusSide {
    pub fn new(comm: &dyn Comm, batcher: &mut Batcher, n_docs: usize) -> Result<CorpusSide> {
        let w = comm.world();
        let dealing = Dealing::new(n_docs, w.rank, w.size);
        let mut ids = Vec::with_capacity(n_docs / w.size + 1);
        for &(lo, hi) in &dealing.chunks {
            ids.extend(doc_tokens(batcher, lo, hi)?);
        }
        let (ids, mask) = batcher.doc_tok.batch(&ids, batcher.device);
        let order = Tensor::from_slice(&dealing.order).to_device(batcher.device);
        Ok(CorpusSide { ids, mask, order })
    }

    /// The loss over the corpus from this rank's query embeddings `q (B, d)`, its shard's
    /// `docs (n_r, d)` (both with their graphs) and its queries' `positives (B,)` doc_idx.
    pub fn loss(
        &self,
        comm: &dyn Comm,
        q: &Tensor,
        docs: &Tensor,
        positives: &[i64],
        temperature: f64,
    ) -> Result<Tensor> {
        let q = all_gather_with_grad(comm, q)?.to_kind(Kind::Float); // (Q, d)
        let d = all_gather_with_grad(comm, docs)?.index_select(0, &self.order).to_kind(Kind::Float); // (N, d)
        let positives = Tensor::from_slice(&all_gather_i64(comm, positives)?).to_device(q.device()); // (Q,)
        Ok(loss::info_nce_from_scores(&q.matmul(&d.tr()), &positives, temperature))
        // scores (Q, N)
    }
}
