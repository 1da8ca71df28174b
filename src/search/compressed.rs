//! A shard's ColBERT token vectors, compressed (`codec.rs`: centroid id + b-bit residual per
//! token), with PLAID's candidate stages (Santhanam et al. 2022, "PLAID"):
//!
//! ```text
//! per query: qc = q · centroidsᵀ, kept on the host centroid-major      (C, Lq)
//!   1 probe       each query token's `nprobe` best centroids → the documents holding a
//!                 token of one of them (inverted lists: centroid → local documents)
//!   2 prune       Σ_i max_{t ∈ d, c(t) kept} qc[c(t), i], where a centroid is kept when its
//!                 best query-token score reaches the threshold (PLAID's t_cs): the other
//!                 codes skip the Lq-wide max; a document with no kept code is dropped
//!   3 interact    Σ_i max_{t ∈ d} qc[c(t), i] (centroid interaction, no decompression) of
//!                 the documents the caller kept after stage 2, when it cuts again (`--rescore`)
//!   → the caller keeps the best over every shard after each stage, then scores the last
//!     survivors by MaxSim over decompressed vectors (maxsim::rescore through [`TokenSource`]).
//! ```
//! Memory per token: a 4-byte code and `d·b/8` residual bytes, plus the inverted lists
//! (at most one 4-byte entry per token).
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::search::codec::Codec;
use crate::search::maxsim::{check_ascending, real_tokens, TokenSource};
use crate::search::topk::Hit;

// SAFETY (ForwardOnly): once finished, the pool is only read (probing, decoding under
// no-grad); workers never push to it.
unsafe impl crate::parallel::ForwardOnly for CompressedPool {}

pub struct CompressedPool {
    pub codec: Codec,
    /// Per push: codes (n,) i32 and packed residuals (n, d·b/8) u8; one tensor each after
    /// `finish`.
    codes: Vec<Tensor>,
    packed: Vec<Tensor>,
    /// The codes on the host, for probing and centroid interaction.
    host_codes: Vec<i32>,
    /// Per local document (ascending doc_idx): (doc_idx, first row, number of tokens).
    docs: Vec<(i64, i64, i64)>,
    /// Centroid → positions in `docs` of the documents holding a token of it, ascending.
    lists: Vec<Vec<u32>>,
    rows: i64,
}

impl CompressedPool {
    pub fn new(codec: Codec) -> CompressedPool {
        CompressedPool {
            codec,
            codes: Vec::new(),
            packed: Vec::new(),
            host_codes: Vec::new(),
            docs: Vec::new(),
            lists: Vec::new(),
            rows: 0,
        }
    }

    /// Adds documents `doc_idx` (ascending, after those already added) with their token
    /// vectors `vecs (n, L, d)` and mask `(n, L)`: only real tokens are kept, compressed.
    pub fn push(&mut self, doc_idx: &[i64], vecs: &Tensor, mask: &Tensor) -> Result<()> {
        check_ascending(self.docs.last().map(|d| d.0), doc_idx)?;
        let (flat, lens) = real_tokens(vecs, mask)?; // (T, d)
        let (codes, packed) = self.codec.encode(&flat);
        for (&d, &len) in doc_idx.iter().zip(&lens) {
            self.docs.push((d, self.rows, len));
            self.rows += len;
        }
        self.host_codes.extend(Vec::<i32>::try_from(codes.to_device(Device::Cpu)).expect("i32 codes"));
        self.codes.push(codes);
        self.packed.push(packed);
        Ok(())
    }

    /// Joins the pushed blocks and builds the inverted lists; call once, after the last push.
    pub fn finish(&mut self) {
        let dev = self.codec.centroids.device();
        let join = |parts: &mut Vec<Tensor>, empty: Tensor| {
            let t = if parts.is_empty() { empty } else { Tensor::cat(parts, 0) };
            *parts = vec![t];
        };
        join(&mut self.codes, Tensor::zeros([0], (Kind::Int, dev)));
        join(&mut self.packed, Tensor::zeros([0, self.codec.residual_bytes()], (Kind::Uint8, dev)));
        self.lists = vec![Vec::new(); self.codec.num_centroids() as usize];
        for (p, &(_, first, len)) in self.docs.iter().enumerate() {
            for &c in &self.host_codes[first as usize..(first + len) as usize] {
                let list = &mut self.lists[c as usize];
                if list.last() != Some(&(p as u32)) {
                    list.push(p as u32);
                }
            }
        }
    }

    pub fn num_tokens(&self) -> i64 {
        self.rows
    }

    /// Bytes held per token: code, packed residual and inverted-list entries.
    pub fn bytes_per_token(&self) -> f64 {
        let lists: usize = self.lists.iter().map(Vec::len).sum();
        let total = self.rows * (4 + self.codec.residual_bytes()) + 4 * lists as i64;
        total as f64 / self.rows.max(1) as f64
    }

    /// One query's scores against every centroid, `q (Lq, d)` its real tokens.
    pub fn centroid_scores(&self, q: &Tensor) -> CentroidScores {
        let c = self.codec.num_centroids();
        let lq = q.size()[0] as usize;
        let by_centroid: Vec<f32> = tch::no_grad(|| {
            let q = q.to_kind(Kind::Float).to_device(self.codec.centroids.device());
            let qc = self.codec.centroids.matmul(&q.tr()); // (C, Lq)
            Vec::try_from(qc.contiguous().reshape([-1]).to_device(Device::Cpu)).expect("f32")
        });
        let best =
            by_centroid.chunks(lq.max(1)).map(|row| row.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
        debug_assert_eq!(by_centroid.len(), c as usize * lq);
        CentroidScores { lq, by_centroid, best }
    }

    /// Stages 1 and 2: the documents holding a token of one of each query token's `nprobe`
    /// best centroids, scored by centroid interaction over the codes whose centroid's best
    /// query-token score reaches `threshold` (`f32::NEG_INFINITY`: every code, the exact
    /// centroid interaction). Hits name global doc_idx, in ascending order.
    pub fn candidates(&self, s: &CentroidScores, nprobe: usize, threshold: f32) -> Vec<Hit> {
        let mut hit = vec![false; self.docs.len()];
        for centroid in s.probed(nprobe) {
            for &p in &self.lists[centroid] {
                hit[p as usize] = true;
            }
        }
        let kept: Vec<bool> = s.best.iter().map(|&b| b >= threshold).collect();
        let mut scratch = Vec::new();
        (0..self.docs.len())
            .filter(|&p| hit[p])
            .filter_map(|p| {
                let (doc_idx, first, len) = self.docs[p];
                let codes = &self.host_codes[first as usize..(first + len) as usize];
                s.interaction(codes, Some(&kept), &mut scratch).map(|score| Hit { score, doc_idx })
            })
            .collect()
    }

    /// Stage 3: the exact centroid interaction of the documents of `doc_idx` this shard
    /// holds (the others are skipped), in the order given.
    pub fn interaction(&self, s: &CentroidScores, doc_idx: &[i64]) -> Vec<Hit> {
        let mut scratch = Vec::new();
        doc_idx
            .iter()
            .filter_map(|&d| self.find(d))
            .filter_map(|p| {
                let (doc_idx, first, len) = self.docs[p];
                let codes = &self.host_codes[first as usize..(first + len) as usize];
                s.interaction(codes, None, &mut scratch).map(|score| Hit { score, doc_idx })
            })
            .collect()
    }

    /// The position in `docs` of a document of this shard.
    fn find(&self, doc_idx: i64) -> Option<usize> {
        self.docs.binary_search_by_key(&doc_idx, |d| d.0).ok()
    }

    fn position(&self, doc_idx: i64) -> Result<usize> {
        self.find(doc_idx).ok_or_else(|| Error::usage("doc_idx", format!("doc {doc_idx} is not in this shard")))
    }
}

/// One query against every centroid, on the host and centroid-major, so that a token's code
/// reads one contiguous row of Lq scores (the max over the query tokens vectorises).
pub struct CentroidScores {
    lq: usize,
    /// (C, Lq): row c holds every query token's score against centroid c.
    by_centroid: Vec<f32>,
    /// (C,): each centroid's best query-token score, which pruning compares to the threshold.
    best: Vec<f32>,
}

impl CentroidScores {
    /// Each query token's `nprobe` best centroids (ties: the lower id), deduplicated.
    fn probed(&self, nprobe: usize) -> Vec<usize> {
        let c = self.best.len();
        let n = nprobe.min(c);
        let mut probed = Vec::with_capacity(self.lq * n);
        let mut order: Vec<usize> = Vec::with_capacity(c);
        for i in 0..self.lq {
            if n == 0 {
                break;
            }
            order.clear();
            order.extend(0..c);
            let score = |c: usize| self.by_centroid[c * self.lq + i];
            order.select_nth_unstable_by(n - 1, |&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
            probed.extend_from_slice(&order[..n]);
        }
        probed.sort_unstable();
        probed.dedup();
        probed
    }

    /// Σ_i max_t qc[code(t), i] over `codes` (only those `kept`, when given); None when no
    /// code counts. `scratch` holds the Lq running maxima between calls.
    fn interaction(&self, codes: &[i32], kept: Option<&[bool]>, scratch: &mut Vec<f32>) -> Option<f32> {
        scratch.clear();
        scratch.resize(self.lq, f32::NEG_INFINITY);
        let mut any = false;
        for &code in codes {
            let code = code as usize;
            if kept.is_some_and(|k| !k[code]) {
                continue;
            }
            any = true;
            let row = &self.by_centroid[code * self.lq..(code + 1) * self.lq];
            for (m, &v) in scratch.iter_mut().zip(row) {
                *m = m.max(v);
            }
        }
        any.then(|| scratch.iter().sum())
    }
}

impl TokenSource for CompressedPool {
    fn owns(&self, doc_idx: i64) -> bool {
        self.find(doc_idx).is_some()
    }

    fn len_of(&self, doc_idx: i64) -> Result<i64> {
        Ok(self.docs[self.position(doc_idx)?].2)
    }

    /// Decompressed token vectors of local documents, padded: ((n, L, d), mask (n, L)).
    fn doc_tokens(&self, doc_idx: &[i64]) -> Result<(Tensor, Tensor)> {
        let spans: Vec<(i64, i64)> = doc_idx
            .iter()
            .map(|&d| self.position(d).map(|p| (self.docs[p].1, self.docs[p].2)))
            .collect::<Result<_>>()?;
        let l = spans.iter().map(|s| s.1).max().unwrap_or(1).max(1);
        let dev = self.codec.centroids.device();
        let rows: Vec<i64> = spans.iter().flat_map(|&(first, len)| first..first + len).collect();
        let rows = Tensor::from_slice(&rows).to_device(dev);
        let flat = self.codec.decode(&self.codes[0].index_select(0, &rows), &self.packed[0].index_select(0, &rows)); // (T, d)
        let (out, mask) = (
            Tensor::zeros([doc_idx.len() as i64, l, self.codec.dim()], (Kind::Float, dev)),
            Tensor::zeros([doc_idx.len() as i64, l], (Kind::Int64, dev)),
        );
        let mut at = 0;
        for (i, &(_, len)) in spans.iter().enumerate() {
            out.get(i as i64).narrow(0, 0, len).copy_(&flat.narrow(0, at, len));
            let _ = mask.get(i as i64).narrow(0, 0, len).fill_(1);
            at += len;
        }
        Ok((out, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three documents of 2, 3 and 1 tokens (doc_idx 5, 7, 9) over a codec trained on them.
    fn pool() -> (CompressedPool, Tensor) {
        let tokens = crate::search::codec::tests::uniform(11, 6, 8);
        let codec = Codec::train(&tokens, 4, 4, 5, 1).unwrap();
        let mut pool = CompressedPool::new(codec);
        let vecs = Tensor::zeros([3, 3, 8], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice2(&[[1i64, 1, 0], [1, 1, 1], [1, 0, 0]]);
        for (d, (lo, len)) in [(0i64, 2i64), (2, 3), (5, 1)].into_iter().enumerate() {
            vecs.get(d as i64).narrow(0, 0, len).copy_(&tokens.narrow(0, lo, len));
        }
        pool.push(&[5, 7, 9], &vecs, &mask).unwrap();
        pool.finish();
        (pool, tokens)
    }

    #[test]
    fn candidates_are_the_probed_documents_scored_by_pruned_centroid_interaction() {
        let (pool, tokens) = pool();
        let q = crate::search::codec::tests::uniform(12, 2, 8);
        let (codes, _) = pool.codec.encode(&tokens);
        let codes: Vec<i32> = Vec::try_from(&codes).unwrap();
        let owner = [5i64, 5, 7, 7, 7, 9];
        let qc = q.matmul(&pool.codec.centroids.tr()); // (2, 4)
        let qc: Vec<Vec<f32>> = (0..2).map(|i| Vec::try_from(qc.get(i)).unwrap()).collect();
        let best = |c: usize| qc[0][c].max(qc[1][c]);
        // Brute force, stage 3: Σ over query tokens of the max over the document's codes
        // (those of kept centroids only, in stage 2); None when no code counts.
        let interaction = |doc: i64, kept: &dyn Fn(usize) -> bool| -> Option<f32> {
            let mine: Vec<usize> = (0..6).filter(|&t| owner[t] == doc && kept(codes[t] as usize)).collect();
            (!mine.is_empty()).then(|| {
                qc.iter()
                    .map(|row| mine.iter().map(|&t| row[codes[t] as usize]).fold(f32::NEG_INFINITY, f32::max))
                    .sum()
            })
        };
        let s = pool.centroid_scores(&q);
        // Between the centroids' best scores (not on them: the pool's GEMM may round them
        // differently), below all (every centroid kept) and above all (none).
        let mut bests: Vec<f32> = (0..4).map(best).collect();
        bests.sort_by(f32::total_cmp);
        let mut thresholds: Vec<f32> = bests.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        thresholds.extend([f32::NEG_INFINITY, bests[3] + 1.0]);
        for nprobe in 1..=4 {
            // Stage 1: each query token's nprobe best centroids; a document is probed when one
            // of its tokens has one of them.
            let probed: Vec<usize> = qc
                .iter()
                .flat_map(|row| {
                    let mut order: Vec<usize> = (0..4).collect();
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                    order.into_iter().take(nprobe)
                })
                .collect();
            let mut probed_docs: Vec<i64> =
                (0..6).filter(|&t| probed.contains(&(codes[t] as usize))).map(|t| owner[t]).collect();
            probed_docs.dedup();
            for &threshold in &thresholds {
                let kept = |c: usize| best(c) >= threshold;
                let expected: Vec<Hit> = probed_docs
                    .iter()
                    .filter_map(|&d| interaction(d, &kept).map(|score| Hit { score, doc_idx: d }))
                    .collect();
                let got = pool.candidates(&s, nprobe, threshold);
                let ids = |h: &[Hit]| h.iter().map(|h| h.doc_idx).collect::<Vec<_>>();
                assert_eq!(ids(&got), ids(&expected), "nprobe {nprobe}, threshold {threshold}");
                for (g, e) in got.iter().zip(&expected) {
                    assert!((g.score - e.score).abs() < 1e-5, "doc {}: {} vs {}", g.doc_idx, g.score, e.score);
                }
            }
        }
        // Stage 3: every code counts; documents of other shards are skipped.
        let got = pool.interaction(&s, &[9, 6, 5]);
        assert_eq!(got.iter().map(|h| h.doc_idx).collect::<Vec<_>>(), [9, 5]);
        for h in got {
            let score = interaction(h.doc_idx, &|_| true).unwrap();
            assert!((h.score - score).abs() < 1e-5, "doc {}: {} vs {score}", h.doc_idx, h.score);
        }
    }

    #[test]
    fn decompressed_tokens_are_the_codec_s_decoding_in_document_order() {
        let (pool, tokens) = pool();
        let (v, m) = pool.doc_tokens(&[9, 7]).unwrap();
        assert_eq!(v.size(), [2, 3, 8]);
        assert_eq!(Vec::<i64>::try_from(m.view([-1])).unwrap(), [1, 0, 0, 1, 1, 1]);
        let (codes, packed) = pool.codec.encode(&tokens);
        let decoded = pool.codec.decode(&codes, &packed);
        assert!(v.get(0).get(0).allclose(&decoded.get(5), 0.0, 0.0, false));
        assert!(v.get(1).allclose(&decoded.narrow(0, 2, 3), 0.0, 0.0, false));
        assert_eq!((pool.len_of(7).unwrap(), pool.owns(8)), (3, false));
        assert_eq!(
            pool.bytes_per_token(),
            4.0 + 4.0 + 4.0 * pool.lists.iter().map(Vec::len).sum::<usize>() as f64 / 6.0
        );
    }
}
