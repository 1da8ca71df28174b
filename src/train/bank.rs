//! DR's negative bank: every document's embedding, so that a query's softmax can reach past
//! the global batch — over the whole corpus (`negative_bank = "full"`, the globally
//! normalised control of Zhang et al.'s local-vs-global argument), over `num_negatives`
//! documents drawn from it (`"sampled"`, any number up to the corpus), or over the
//! `num_negatives` that score highest against the query (`"hard"`, ANCE-style: the index is
//! the bank, the query fresh; documents the training qrels judge relevant are left out).
//!
//! ```text
//! refresh (step 0, then every bank_refresh_steps), no dropout, no gradient:
//!   documents in chunks of CHUNK by doc_idx; chunk j encoded by rank j mod W
//!   ─all-gather→ every rank holds vectors (N, d) in doc_idx order
//! loss (objective.rs): fresh q (Q, d) and positive d⁺ (Q, d), gathered over ranks
//!   full     scores = q · vectorsᵀ (Q, N), column pos(i) ← q_i · d⁺_i ; CE at pos(i)
//!   sampled  scores = [q_i · d⁺_i, q_i · vectors[neg_ik] for k < K] (Q, 1 + K) ; CE at 0
//!   hard     neg_i = top-K of q_i · vectorsᵀ over documents not relevant to q_i ; as sampled
//! ```
//! A chunk's documents, padding and encoder call are the same whichever rank encodes it,
//! so the bank is the same on N ranks as on one. Bank negatives carry no gradient (the
//! query and the positive do) and are as stale as the last refresh (at most
//! `bank_refresh_steps − 1` optimizer steps old). The vectors are an untrained variable
//! of the model's VarStore: checkpoints carry them, so a resumed run continues with the
//! bank it had (resume ≡ uninterrupted); exports leave them out ([`VAR_PREFIX`]).
use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::config::NegativeBank;
use crate::data::batch::Batcher;
use crate::data::shard::tag;
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::model::encoder::encode_length_sorted;
use crate::model::task::{Net, Task};
use crate::rng::SplitMix64;

/// Variables under this prefix are training state, not model: exports skip them.
pub const VAR_PREFIX: &str = "grdr_bank";

/// Documents per encoder call of a refresh (and the unit dealt to ranks).
const CHUNK: usize = 64;

pub struct Bank {
    pub mode: NegativeBank,
    /// `sampled`: negatives per query.
    pub negatives: usize,
    pub refresh_steps: u64,
    /// (N, d) f32 by doc_idx.
    pub vectors: Tensor,
    /// `hard`: query_idx → the doc_idx its training qrels judge relevant (never negatives).
    pub relevant: HashMap<i64, Vec<i64>>,
}

impl Bank {
    /// A bank of `n_docs` zero vectors of the dual encoder's width, registered in `task`'s
    /// VarStore (before a checkpoint is loaded into it).
    /// `pairs` are the training (query_idx, doc_idx) pairs: a hard bank's relevance.
    pub fn new(
        task: &Task,
        n_docs: usize,
        pairs: &[(u32, u32)],
        mode: NegativeBank,
        negatives: Option<usize>,
        refresh_steps: u64,
    ) -> Result<Bank> {
        let Net::Dual(m) = &task.net else {
            return Err(Error::usage("train.negative_bank", "a negative bank is for dual encoders"));
        };
        let k = negatives.unwrap_or(0);
        let mut relevant: HashMap<i64, Vec<i64>> = HashMap::new();
        if mode == NegativeBank::Hard {
            for &(q, d) in pairs {
                relevant.entry(i64::from(q)).or_default().push(i64::from(d));
            }
        }
        // A query needs K documents besides its positive (hard: besides all its relevant ones).
        let most_relevant = relevant.values().map(Vec::len).max().unwrap_or(1);
        if matches!(mode, NegativeBank::Sampled | NegativeBank::Hard) && k + most_relevant > n_docs {
            return Err(Error::usage(
                "train.num_negatives",
                format!(
                    "{k} negatives per query asked for; the corpus has {n_docs} documents ({} possible)",
                    n_docs.saturating_sub(most_relevant)
                ),
            ));
        }
        let dim = m.output_dim();
        let vectors = (task.vs.root() / VAR_PREFIX).zeros_no_train("vectors", &[n_docs as i64, dim]);
        Ok(Bank { mode, negatives: k, refresh_steps, vectors, relevant })
    }

    /// Whether the bank is re-encoded before `step`: at 0, then every `refresh_steps`.
    pub fn due(&self, step: u64) -> bool {
        step == 0 || (self.refresh_steps > 0 && step.is_multiple_of(self.refresh_steps))
    }

    /// Re-encodes every document with the current model (no dropout), sharded by chunk.
    pub fn refresh(&self, comm: &dyn Comm, task: &Task, batcher: &mut Batcher) -> Result<()> {
        let Net::Dual(m) = &task.net else { unreachable!("checked in Bank::new") };
        let n = self.vectors.size()[0] as usize;
        let dim = self.vectors.size()[1];
        let shard = Dealing::new(n, comm.world().rank, comm.world().size);
        // This rank's chunks, in order, as one (rows, d) block.
        let local = tch::no_grad(|| -> Result<Tensor> {
            let mut parts = Vec::new();
            for &(lo, hi) in &shard.chunks {
                let tokens = doc_tokens(batcher, lo, hi)?;
                let (ids, mask) = batcher.doc_tok.batch(&tokens, batcher.device);
                // Length-sorted sub-batches inside the chunk: less padding, the same function.
                parts.push(encode_length_sorted(&ids, &mask, |i, k| m.embed(i, k, false)).to_kind(Kind::Float));
            }
            Ok(if parts.is_empty() {
                Tensor::zeros([0, dim], (Kind::Float, self.vectors.device()))
            } else {
                Tensor::cat(&parts, 0)
            })
        })?;
        let (all, _) = comm.all_gather_varsize(&local)?; // (N, d), rank-block order
        let order = Tensor::from_slice(&shard.order).to_device(all.device());
        tch::no_grad(|| self.vectors.shallow_clone().copy_(&all.index_select(0, &order)));
        Ok(())
    }

    /// `sampled`: for each global query row i with positive `positives[i]`, `negatives`
    /// distinct documents other than it, drawn uniformly (Floyd's algorithm) with a stream
    /// keyed by (seed, step, micro-batch, row): the same on every rank. (Q·K,) doc_idx.
    pub fn sample(&self, positives: &[i64], seed: u64, step: u64, micro: u64) -> Vec<i64> {
        let n = self.vectors.size()[0] as u64;
        let k = self.negatives as u64;
        let mut out = Vec::with_capacity(positives.len() * self.negatives);
        for (i, &pos) in positives.iter().enumerate() {
            let mut rng = SplitMix64::keyed(&[seed, tag::BANK, step, micro, i as u64]);
            // K distinct values of 0..n−1, then shifted past the positive.
            let mut picked: std::collections::BTreeSet<u64> = Default::default();
            for j in (n - 1 - k)..(n - 1) {
                let t = rng.below(j + 1);
                if !picked.insert(t) {
                    picked.insert(j);
                }
            }
            out.extend(picked.into_iter().map(|d| if d as i64 >= pos { d as i64 + 1 } else { d as i64 }));
        }
        out
    }

    /// `hard`: (Q, N) bool, true where a document may not be query row i's negative — the
    /// documents relevant to `queries[i]` and its positive `positives[i]`.
    pub fn not_negatives(&self, queries: &[i64], positives: &[i64]) -> Tensor {
        let n = self.vectors.size()[0];
        let mut mask = vec![false; queries.len() * n as usize];
        for (i, (q, &pos)) in queries.iter().zip(positives).enumerate() {
            let row = &mut mask[i * n as usize..(i + 1) * n as usize];
            row[pos as usize] = true;
            for &d in self.relevant.get(q).into_iter().flatten() {
                row[d as usize] = true;
            }
        }
        Tensor::from_slice(&mask).view([queries.len() as i64, n]).to_device(self.vectors.device())
    }
}

/// The corpus sharded over ranks: chunks of CHUNK documents by doc_idx, chunk j to rank
/// j mod W. A chunk's documents are the same whichever rank encodes them, so what is built
/// from them is the same on N ranks as on one.
pub struct Dealing {
    /// This rank's chunks, `[lo, hi)` doc_idx ranges in order.
    pub chunks: Vec<(usize, usize)>,
    /// For each doc_idx, its row in the rank-order concatenation of every rank's chunks
    /// (what an all-gather of the ranks' blocks holds): `index_select` puts it in doc order.
    pub order: Vec<i64>,
}

impl Dealing {
    pub fn new(n_docs: usize, rank: usize, world_size: usize) -> Dealing {
        let all: Vec<(usize, usize)> = (0..n_docs).step_by(CHUNK).map(|lo| (lo, (lo + CHUNK).min(n_docs))).collect();
        // Rank r's block starts after the rows of ranks < r; chunk j is the (j / W)-th of
        // rank j mod W.
        let mut next = vec![0i64; world_size];
        for (j, &(lo, hi)) in all.iter().enumerate() {
            next[j % world_size] += (hi - lo) as i64;
        }
        let mut at: Vec<i64> = next.iter().scan(0, |sum, &rows| Some(std::mem::replace(sum, *sum + rows))).collect();
        let mut order = Vec::with_capacity(n_docs);
        for (j, &(lo, hi)) in all.iter().enumerate() {
            let r = j % world_size;
            order.extend(at[r]..at[r] + (hi - lo) as i64);
            at[r] += (hi - lo) as i64;
        }
        let chunks = all.into_iter().skip(rank).step_by(world_size).collect();
        Dealing { chunks, order }
    }
}

/// The token ids of documents `lo..hi` at the training length.
pub fn doc_tokens(batcher: &mut Batcher, lo: usize, hi: usize) -> Result<Vec<Vec<i64>>> {
    let texts: Vec<String> = (lo..hi).map(|d| batcher.docs.text(d as u32)).collect::<Result<_>>()?;
    batcher.doc_tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dealt_chunks_cover_the_corpus_and_order_restores_doc_order() {
        for (n, w) in [(1, 1), (150, 1), (150, 2), (300, 3), (64, 4)] {
            let shards: Vec<Dealing> = (0..w).map(|r| Dealing::new(n, r, w)).collect();
            // The rank-order concatenation of every rank's doc_idx, then `order` applied.
            let gathered: Vec<i64> =
                shards.iter().flat_map(|s| s.chunks.iter().flat_map(|&(lo, hi)| lo as i64..hi as i64)).collect();
            let restored: Vec<i64> = shards[0].order.iter().map(|&row| gathered[row as usize]).collect();
            assert_eq!(restored, (0..n as i64).collect::<Vec<_>>(), "n {n}, W {w}");
            assert!(shards.iter().all(|s| s.order == shards[0].order), "every rank knows the order");
        }
        assert_eq!(Dealing::new(150, 1, 2).chunks, vec![(64, 128)]);
    }

    fn bank(n: i64, k: usize) -> Bank {
        Bank {
            mode: NegativeBank::Sampled,
            negatives: k,
            refresh_steps: 0,
            vectors: Tensor::zeros([n, 2], (Kind::Float, tch::Device::Cpu)),
            relevant: HashMap::new(),
        }
    }

    #[test]
    fn sampled_negatives_are_distinct_and_never_the_positive() {
        for (n, k) in [(10, 9), (10, 3), (1000, 50), (2, 1)] {
            let b = bank(n, k);
            let pos = [0i64, n - 1, n / 2];
            let s = b.sample(&pos, 7, 3, 0);
            assert_eq!(s.len(), pos.len() * k);
            for (i, &p) in pos.iter().enumerate() {
                let row = &s[i * k..(i + 1) * k];
                let set: std::collections::HashSet<_> = row.iter().collect();
                assert_eq!(set.len(), k, "distinct");
                assert!(row.iter().all(|&d| d != p && (0..n).contains(&d)), "{row:?} vs {p}");
            }
            assert_eq!(s, b.sample(&pos, 7, 3, 0), "keyed: the same on every rank");
        }
        // k = n − 1: every other document.
        let all = bank(6, 5).sample(&[2], 1, 0, 0);
        assert_eq!(all, vec![0, 1, 3, 4, 5]);
        // Uniform: over many draws every non-positive document comes up about equally.
        let b = bank(5, 1);
        let mut counts = [0usize; 5];
        for step in 0..4000 {
            counts[b.sample(&[0], 1, step, 0)[0] as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1..].iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn hard_negatives_never_include_a_relevant_document() {
        let mut b = bank(5, 2);
        b.relevant.insert(7, vec![1, 3]);
        let m: Vec<bool> = Vec::try_from(b.not_negatives(&[7, 8], &[1, 4]).view([-1])).unwrap();
        assert_eq!(m, [false, true, false, true, false, false, false, false, false, true]);
    }

    #[test]
    fn refresh_schedule() {
        let mut b = bank(4, 1);
        b.refresh_steps = 3;
        assert_eq!((0..8).filter(|&s| b.due(s)).collect::<Vec<_>>(), vec![0, 3, 6]);
        b.refresh_steps = 0;
        assert_eq!((0..8).filter(|&s| b.due(s)).collect::<Vec<_>>(), vec![0]);
    }
}
