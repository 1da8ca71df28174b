//! Multi-vector (ColBERT / MVDR) retrieval over a shard's token-embedding pool, as T5-ColBERT
//! does end to end (Wu et al., §6.3): every query token vector retrieves its `token_k`
//! nearest document token vectors from the pool (exact inner product, [`crate::search::flat`]);
//! the documents owning them are the candidates; each candidate is rescored exactly by
//! late interaction (q→d MaxSim, or q←d), the score the model was trained with
//! ([`crate::model::colbert::late_interaction_pairs`]).
//!
//! Sharding: a token is named by the rank-independent key `doc_idx · MAX_TOKENS + position`,
//! and the pool keeps a shard's tokens in key order, so a local tie-break by pool row agrees
//! with the global one by key; per-token hits of all ranks merge through [`TopK`] into the
//! same candidate sets as one process would find.
use std::collections::BTreeSet;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::colbert::{late_interaction_pairs, LateInteraction};
use crate::search::flat::{self, EmbeddingStore};
use crate::search::topk::{Hit, TopK};

/// Tokens per document a key can address (longer documents are refused).
pub const MAX_TOKENS: i64 = 1 << 16;

// SAFETY (ForwardOnly): once built, the pool is only read (candidate search and exact
// MaxSim products under no-grad); workers never push to it.
unsafe impl crate::parallel::ForwardOnly for TokenPool {}

/// One shard's document token vectors, in (doc_idx, position) order.
pub struct TokenPool {
    /// Rows = tokens; row `r` has key `keys[r]`.
    store: EmbeddingStore,
    keys: Vec<i64>,
    /// Per local document (ascending doc_idx): (doc_idx, first row, number of tokens).
    docs: Vec<(i64, i64, i64)>,
    rows: i64,
}

impl TokenPool {
    pub fn new(dim: i64, device: Device) -> Result<Self> {
        Ok(TokenPool { store: EmbeddingStore::new(dim, device, None)?, keys: Vec::new(), docs: Vec::new(), rows: 0 })
    }

    /// Adds documents `doc_idx` (ascending, after those already added) with their token
    /// vectors `vecs` (n, L, dim) and mask (n, L): only real tokens enter the pool.
    pub fn push(&mut self, doc_idx: &[i64], vecs: &Tensor, mask: &Tensor) -> Result<()> {
        check_ascending(self.docs.last().map(|d| d.0), doc_idx)?;
        let (flat, lens) = real_tokens(vecs, mask)?; // (T, dim) row-major = doc, position
        let mut row = self.rows;
        for (&d, &len) in doc_idx.iter().zip(&lens) {
            if len >= MAX_TOKENS {
                return Err(Error::usage("token pool", format!("doc {d} has {len} tokens (≥ {MAX_TOKENS})")));
            }
            self.docs.push((d, row, len));
            self.keys.extend((0..len).map(|p| d * MAX_TOKENS + p));
            row += len;
        }
        self.store.push(self.rows, &flat)?;
        self.rows = row;
        Ok(())
    }

    pub fn num_tokens(&self) -> i64 {
        self.rows
    }

    pub fn num_docs(&self) -> usize {
        self.docs.len()
    }

    /// The local top-`token_k` pool tokens of every query token `q` (n, dim), as hits whose
    /// `doc_idx` is the token key.
    pub fn search_tokens(&self, q: &Tensor, token_k: usize, query_block: i64) -> Result<Vec<Vec<Hit>>> {
        let tops = flat::search(&self.store, q, token_k, query_block)?;
        Ok(tops
            .into_iter()
            .map(|t| {
                t.into_sorted_vec()
                    .into_iter()
                    .map(|h| Hit { score: h.score, doc_idx: self.keys[h.doc_idx as usize] })
                    .collect()
            })
            .collect())
    }
}

/// Pools take documents in ascending doc_idx order, after `last` (the last one added).
pub fn check_ascending(last: Option<i64>, doc_idx: &[i64]) -> Result<()> {
    match (last, doc_idx.first()) {
        (Some(last), Some(&first)) if first <= last => {
            Err(Error::usage("token pool", "documents must be added in ascending doc_idx order"))
        }
        _ => Ok(()),
    }
}

/// The real tokens of a padded batch `vecs (n, L, dim)`, `mask (n, L)`: their vectors
/// `(T, dim)` in (document, position) order and each document's count.
pub fn real_tokens(vecs: &Tensor, mask: &Tensor) -> Result<(Tensor, Vec<i64>)> {
    let lens: Vec<i64> =
        Vec::try_from(mask.to_kind(Kind::Int64).sum_dim_intlist(1, false, Kind::Int64).to_device(Device::Cpu))
            .map_err(|e: tch::TchError| Error::usage("mask", e.to_string()))?;
    let dim = vecs.size().last().copied().unwrap_or(0);
    Ok((vecs.masked_select(&mask.to_kind(Kind::Bool).unsqueeze(-1)).view([-1, dim]), lens))
}

/// Where late-interaction rescoring reads documents' token vectors: the exact pool or a
/// compressed one (`compressed.rs`, decompressed on the fly).
pub trait TokenSource {
    /// Whether this shard holds the document.
    fn owns(&self, doc_idx: i64) -> bool;
    /// Number of tokens of a local document.
    fn len_of(&self, doc_idx: i64) -> Result<i64>;
    /// Token vectors of local documents, padded: ((n, L, dim), mask (n, L)).
    fn doc_tokens(&self, doc_idx: &[i64]) -> Result<(Tensor, Tensor)>;
}

impl TokenSource for TokenPool {
    fn len_of(&self, doc_idx: i64) -> Result<i64> {
        let i = self
            .docs
            .binary_search_by_key(&doc_idx, |d| d.0)
            .map_err(|_| Error::usage("doc_idx", format!("doc {doc_idx} is not in this shard")))?;
        Ok(self.docs[i].2)
    }

    fn owns(&self, doc_idx: i64) -> bool {
        self.docs.binary_search_by_key(&doc_idx, |d| d.0).is_ok()
    }

    fn doc_tokens(&self, doc_idx: &[i64]) -> Result<(Tensor, Tensor)> {
        let dim = self.store.dim;
        let mut spans = Vec::with_capacity(doc_idx.len());
        for &d in doc_idx {
            let i = self
                .docs
                .binary_search_by_key(&d, |x| x.0)
                .map_err(|_| Error::usage("doc_idx", format!("doc {d} is not in this shard")))?;
            spans.push((self.docs[i].1, self.docs[i].2));
        }
        let l = spans.iter().map(|s| s.1).max().unwrap_or(1).max(1);
        let dev = self.store.device;
        let out = Tensor::zeros([doc_idx.len() as i64, l, dim], (Kind::Float, dev));
        let mask = Tensor::zeros([doc_idx.len() as i64, l], (Kind::Int64, dev));
        // Rows are contiguous per doc; chunks are what `push` added (whole documents).
        for (i, &(start, len)) in spans.iter().enumerate() {
            let chunk = self
                .store
                .chunks()
                .iter()
                .find(|c| (c.first_doc..c.first_doc + c.rows).contains(&start))
                .expect("every row is in a chunk");
            let rows = self.store.load(chunk)?.narrow(0, start - chunk.first_doc, len);
            out.get(i as i64).narrow(0, 0, len).copy_(&rows.to_kind(Kind::Float));
            let _ = mask.get(i as i64).narrow(0, 0, len).fill_(1);
        }
        Ok((out, mask))
    }
}

/// Candidate documents of each query from the merged per-token hits: `hits[q][j]` are the
/// global top hits (keys) of query `q`'s token `j`. Sorted ascending.
pub fn candidates(hits: &[Vec<Vec<Hit>>]) -> Vec<Vec<i64>> {
    hits.iter()
        .map(|tokens| {
            let set: BTreeSet<i64> = tokens.iter().flatten().map(|h| h.doc_idx / MAX_TOKENS).collect();
            set.into_iter().collect()
        })
        .collect()
}

/// Merges every rank's per-token hit lists (same shape) into the global top-`token_k`.
pub fn merge_token_hits(parts: Vec<Vec<Vec<Hit>>>, token_k: usize) -> Vec<Vec<Hit>> {
    let n = parts.first().map_or(0, Vec::len);
    let mut tops: Vec<TopK> = (0..n).map(|_| TopK::new(token_k)).collect();
    for part in parts {
        for (t, hits) in tops.iter_mut().zip(part) {
            t.merge(hits);
        }
    }
    tops.into_iter().map(TopK::into_sorted_vec).collect()
}

/// Exact late-interaction scores of one query `q` (Lq, dim) with mask (Lq) against local
/// documents `docs`, `batch` documents at a time.
pub fn rescore(
    pool: &dyn TokenSource,
    q: &Tensor,
    q_mask: &Tensor,
    docs: &[i64],
    score: LateInteraction,
    batch: usize,
) -> Result<Vec<Hit>> {
    // Batches of documents of equal length: no padding, so a document's score never depends
    // on which others share its batch (a padded sum over more positions may round
    // differently), hence not on the number of ranks either.
    let mut by_len: Vec<(i64, i64)> = docs.iter().map(|&d| Ok((pool.len_of(d)?, d))).collect::<Result<_>>()?;
    by_len.sort_unstable();
    let mut parts: Vec<Vec<i64>> = Vec::new();
    for run in by_len.chunk_by(|a, b| a.0 == b.0) {
        parts.extend(run.chunks(batch.max(1)).map(|c| c.iter().map(|x| x.1).collect()));
    }
    let mut out = Vec::with_capacity(docs.len());
    for part in &parts {
        let part = part.as_slice();
        let (d, dm) = pool.doc_tokens(part)?; // (n, L, dim), (n, L)
        let n = part.len() as i64;
        let qs = q.to_device(d.device()).to_kind(Kind::Float).unsqueeze(0).expand([n, -1, -1], false); // (n, Lq, dim)
        let qm = q_mask.to_device(d.device()).unsqueeze(0).expand([n, -1], false); // (n, Lq)
        let s = tch::no_grad(|| late_interaction_pairs(&qs, &qm, &d, &dm, score)); // (n,)
        let s: Vec<f32> = Vec::try_from(s.to_kind(Kind::Float).to_device(Device::Cpu)).expect("f32 scores");
        out.extend(part.iter().zip(s).map(|(&doc_idx, score)| Hit { score, doc_idx }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::colbert::Alignment;

    /// Brute-force q→d MaxSim and q←d hard max on plain vectors.
    fn maxsim(q: &[Vec<f32>], d: &[Vec<f32>], q2d: bool) -> f32 {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        if q2d {
            q.iter().map(|qv| d.iter().map(|dv| dot(qv, dv)).fold(f32::NEG_INFINITY, f32::max)).sum()
        } else {
            d.iter().map(|dv| q.iter().map(|qv| dot(qv, dv)).fold(f32::NEG_INFINITY, f32::max)).sum()
        }
    }

    fn vecs(seed: u64, n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((s >> 40) % 9) as f32 / 4.0 - 1.0
                    })
                    .collect()
            })
            .collect()
    }

    fn tensor(rows: &[Vec<f32>]) -> Tensor {
        let dim = rows[0].len() as i64;
        Tensor::from_slice(&rows.concat()).view([-1, dim])
    }

    #[test]
    fn pool_rescoring_equals_brute_force_maxsim() {
        let dim = 4;
        let lens = [3usize, 5, 1, 4];
        let docs: Vec<Vec<Vec<f32>>> = lens.iter().enumerate().map(|(i, &l)| vecs(i as u64 + 7, l, dim)).collect();
        let mut pool = TokenPool::new(dim as i64, Device::Cpu).unwrap();
        // Two pushes of padded batches, doc indices 10.. ascending.
        for (range, first) in [(0..2usize, 10i64), (2..4, 12)] {
            let l = lens[range.clone()].iter().max().copied().unwrap();
            let v = Tensor::zeros([range.len() as i64, l as i64, dim as i64], (Kind::Float, Device::Cpu));
            let m = Tensor::zeros([range.len() as i64, l as i64], (Kind::Int64, Device::Cpu));
            for (j, i) in range.clone().enumerate() {
                v.get(j as i64).narrow(0, 0, lens[i] as i64).copy_(&tensor(&docs[i]));
                let _ = m.get(j as i64).narrow(0, 0, lens[i] as i64).fill_(1);
            }
            let ids: Vec<i64> = (0..range.len() as i64).map(|j| first + j).collect();
            pool.push(&ids, &v, &m).unwrap();
        }
        assert_eq!(pool.num_tokens(), 13);
        let q = vecs(99, 3, dim);
        let qm = Tensor::ones([3], (Kind::Int64, Device::Cpu));
        for (align, q2d) in [(Alignment::QueryToDoc, true), (Alignment::DocToQueryMax, false)] {
            let score = LateInteraction { alignment: align, normalized: false };
            let hits = rescore(&pool, &tensor(&q), &qm, &[10, 11, 12, 13], score, 3).unwrap();
            assert_eq!(hits.len(), 4);
            for h in &hits {
                let d = &docs[(h.doc_idx - 10) as usize];
                assert!(
                    (h.score - maxsim(&q, d, q2d)).abs() < 1e-5,
                    "{align:?} doc {}: {} vs {}",
                    h.doc_idx,
                    h.score,
                    maxsim(&q, d, q2d)
                );
            }
        }
        // Token search: keys name (doc, position); candidates are their documents.
        let hits = pool.search_tokens(&tensor(&q), 2, 8).unwrap();
        assert_eq!(hits.len(), 3);
        let cands = candidates(std::slice::from_ref(&hits));
        for h in hits.iter().flatten() {
            assert!(cands[0].contains(&(h.doc_idx / MAX_TOKENS)));
            assert!(pool.owns(h.doc_idx / MAX_TOKENS));
        }
    }
}
