//! Training examples and their order. The order of the *global* batch of every step is a
//! pure function of (seed, step): the trainer asks for step s's examples, and rank r takes
//! its slice. Hence N ranks × batch B see exactly the examples of 1 rank × batch N·B, and a
//! resumed run needs only the step to continue where it stopped.
//!
//! Global batch layout (G = N·B·A for N ranks, per-rank batch B, A accumulation
//! micro-batches): micro-batch a of rank r is `global[a·N·B + r·B ..][..B]`, so the
//! gathered micro-batch a (rank order) is the 1-rank micro-batch a.
//!
//! - DR/ColBERT: examples are the (query, relevant doc) pairs of the training split, one
//!   permutation per epoch; each carries its hard negatives (drawn per step from the BM25
//!   list of its query, positives excluded).
//! - GR (DSI): indexing examples (a document → its docid) stream through docs.parquet in a
//!   block-shuffled order per epoch; retrieval examples (query → docid of a relevant doc)
//!   come from the pairs; each global batch holds `round(G·retrieval_fraction)` retrieval
//!   examples, and the two kinds are interleaved by a per-step shuffle.
use std::collections::HashMap;

use super::shard::{block_shuffled, permutation, tag, RowGroup, SplitMix64};
use super::Dataset;
use crate::error::{Error, Result};

/// One training example, resolved to indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Example {
    /// DR/ColBERT: query, positive doc, hard-negative docs.
    Pair { query_idx: u32, doc_idx: u32, negatives: Vec<u32> },
    /// GR indexing: the document's text → docid row `target`.
    Index { doc_idx: u32, target: u32 },
    /// GR retrieval: the query → docid row `target` (of a relevant doc).
    Retrieve { query_idx: u32, doc_idx: u32, target: u32 },
}

/// The (query_idx, doc_idx) pairs of `split` with relevance > 0, sorted.
pub fn training_pairs(ds: &Dataset, split: &str) -> Result<Vec<(u32, u32)>> {
    ds.check_split(split)?;
    let queries: HashMap<String, u32> = ds.queries()?.into_iter().map(|q| (q.query_id, q.query_idx as u32)).collect();
    let docs: HashMap<String, u32> = ds.docs()?.into_iter().map(|d| (d.doc_id, d.doc_idx as u32)).collect();
    let mut pairs = Vec::new();
    for q in ds.qrels(Some(split))?.into_iter().filter(|q| q.relevance > 0) {
        let (Some(&qi), Some(&di)) = (queries.get(&q.query_id), docs.get(&q.doc_id)) else {
            return Err(Error::usage("data.path", format!("qrels name unknown ids ({}, {})", q.query_id, q.doc_id)));
        };
        pairs.push((qi, di));
    }
    pairs.sort_unstable();
    pairs.dedup();
    if pairs.is_empty() {
        return Err(Error::usage("data.train_split", format!("split `{split}` has no relevant pairs")));
    }
    Ok(pairs)
}

/// GR targets: the docid rows of each document (one for atomic/semantic/title, several
/// n-grams for SEAL-style docids).
#[derive(Debug, Clone)]
pub struct Targets {
    pub rows_by_doc: Vec<Vec<usize>>,
}

/// What the sampler draws from.
pub enum Source {
    Pairs {
        pairs: Vec<(u32, u32)>,
        /// Per query_idx: BM25 candidates minus positives (empty without hard negatives).
        hard: HashMap<u32, Vec<u32>>,
        hard_negatives: usize,
    },
    Generative {
        pairs: Vec<(u32, u32)>,
        doc_groups: Vec<RowGroup>,
        window: usize,
        retrieval_fraction: f64,
        targets: Targets,
    },
}

pub struct Sampler {
    source: Source,
    seed: u64,
    /// The epoch orders in use, by (stream tag, epoch) — two at most at a time.
    orders: HashMap<(u64, u64), Vec<u32>>,
}

impl Sampler {
    pub fn new(source: Source, seed: u64) -> Self {
        Sampler { source, seed, orders: HashMap::new() }
    }

    /// Examples of one epoch: pairs (DR) or documents (GR indexing, the corpus pass that
    /// DSI counts epochs by).
    pub fn epoch_len(&self) -> u64 {
        match &self.source {
            Source::Pairs { pairs, .. } => pairs.len() as u64,
            Source::Generative { doc_groups, .. } => doc_groups.iter().map(|g| g.rows).sum(),
        }
    }

    /// Of a global batch of `g` examples, how many advance the epoch stream.
    pub fn epoch_examples_per_batch(&self, g: usize) -> u64 {
        match &self.source {
            Source::Pairs { .. } => g as u64,
            Source::Generative { retrieval_fraction, .. } => (g - retrieval_count(g, *retrieval_fraction)) as u64,
        }
    }

    /// Position `p` of an endless stream of epochs, each a permutation keyed by `stream`.
    fn at(&mut self, stream: u64, n: u64, p: u64) -> u32 {
        let epoch = p / n;
        if !self.orders.contains_key(&(stream, epoch)) {
            self.orders.retain(|&(s, e), _| s != stream || e + 1 >= epoch);
            let order = match (&self.source, stream) {
                (Source::Generative { doc_groups, window, .. }, tag::INDEX) => {
                    block_shuffled(doc_groups, *window, &[self.seed, tag::INDEX, epoch])
                }
                _ => permutation(n as usize, &[self.seed, stream, epoch]),
            };
            self.orders.insert((stream, epoch), order);
        }
        self.orders[&(stream, epoch)][(p % n) as usize]
    }

    /// The `g` examples of global step `step`.
    pub fn global_batch(&mut self, step: u64, g: usize) -> Vec<Example> {
        let seed = self.seed;
        let mut out = Vec::with_capacity(g);
        match &self.source {
            Source::Pairs { pairs, .. } => {
                let n = pairs.len() as u64;
                for j in 0..g as u64 {
                    let i = self.at(tag::PAIRS, n, step * g as u64 + j) as usize;
                    let (query_idx, doc_idx) = self.pair(i);
                    let negatives = self.negatives(query_idx, step, j);
                    out.push(Example::Pair { query_idx, doc_idx, negatives });
                }
            }
            Source::Generative { pairs, retrieval_fraction, .. } => {
                let n_pairs = pairs.len() as u64;
                let n_docs = self.epoch_len();
                let gr = retrieval_count(g, *retrieval_fraction);
                let gi = g - gr;
                for j in 0..gi as u64 {
                    let doc_idx = self.at(tag::INDEX, n_docs, step * gi as u64 + j);
                    let target = self.target(doc_idx, step, j);
                    out.push(Example::Index { doc_idx, target });
                }
                for j in 0..gr as u64 {
                    let i = self.at(tag::PAIRS, n_pairs, step * gr as u64 + j) as usize;
                    let (query_idx, doc_idx) = self.pair(i);
                    let target = self.target(doc_idx, step, gi as u64 + j);
                    out.push(Example::Retrieve { query_idx, doc_idx, target });
                }
                SplitMix64::keyed(&[seed, tag::MIX, step]).shuffle(&mut out);
            }
        }
        out
    }

    fn pair(&self, i: usize) -> (u32, u32) {
        match &self.source {
            Source::Pairs { pairs, .. } | Source::Generative { pairs, .. } => pairs[i],
        }
    }

    /// This rank's micro-batches of step `step`: `accum` lists of `batch` examples.
    pub fn rank_batches(
        &mut self,
        step: u64,
        rank: usize,
        ranks: usize,
        batch: usize,
        accum: usize,
    ) -> Vec<Vec<Example>> {
        let global = self.global_batch(step, ranks * batch * accum);
        (0..accum)
            .map(|a| {
                let start = a * ranks * batch + rank * batch;
                global[start..start + batch].to_vec()
            })
            .collect()
    }

    fn negatives(&self, query_idx: u32, step: u64, slot: u64) -> Vec<u32> {
        let Source::Pairs { hard, hard_negatives, .. } = &self.source else { return vec![] };
        let Some(cands) = hard.get(&query_idx).filter(|c| !c.is_empty() && *hard_negatives > 0) else {
            return vec![];
        };
        // Distinct while the list allows; with fewer candidates than asked, repeats (so every
        // query has the same group size).
        let mut pool = cands.clone();
        let mut rng = SplitMix64::keyed(&[self.seed, tag::NEGATIVES, step, slot]);
        rng.shuffle(&mut pool);
        (0..*hard_negatives).map(|i| pool[i % pool.len()]).collect()
    }

    fn target(&self, doc_idx: u32, step: u64, slot: u64) -> u32 {
        let Source::Generative { targets, .. } = &self.source else { return 0 };
        let rows = &targets.rows_by_doc[doc_idx as usize];
        if rows.len() == 1 {
            return rows[0] as u32;
        }
        rows[SplitMix64::keyed(&[self.seed, tag::TARGET, step, slot]).below(rows.len() as u64) as usize] as u32
    }
}

/// Retrieval examples in a GR global batch of `g`.
pub fn retrieval_count(g: usize, fraction: f64) -> usize {
    ((g as f64 * fraction).round() as usize).min(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs_sampler() -> Sampler {
        let pairs: Vec<(u32, u32)> = (0..10).map(|i| (i, 100 + i)).collect();
        let hard = (0..10).map(|q| (q, vec![1, 2, 3])).collect();
        Sampler::new(Source::Pairs { pairs, hard, hard_negatives: 2 }, 9)
    }

    #[test]
    fn n_ranks_see_the_one_rank_batch() {
        let mut one = pairs_sampler();
        let mut two = pairs_sampler();
        for step in 0..7 {
            let single = one.rank_batches(step, 0, 1, 4, 2);
            let r0 = two.rank_batches(step, 0, 2, 2, 2);
            let r1 = two.rank_batches(step, 1, 2, 2, 2);
            for a in 0..2 {
                let joined: Vec<_> = r0[a].iter().chain(&r1[a]).cloned().collect();
                assert_eq!(joined, single[a]);
            }
        }
    }

    #[test]
    fn every_pair_once_per_epoch() {
        let mut s = pairs_sampler();
        let mut seen: Vec<u32> = (0..5)
            .flat_map(|step| s.global_batch(step, 2))
            .map(|e| match e {
                Example::Pair { query_idx, negatives, .. } => {
                    assert_eq!(negatives.len(), 2);
                    query_idx
                }
                _ => unreachable!(),
            })
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn generative_batches_mix_both_kinds() {
        let sampler = |fraction: f64| {
            let groups =
                vec![RowGroup { index: 0, first_row: 0, rows: 6 }, RowGroup { index: 1, first_row: 6, rows: 4 }];
            let targets = Targets { rows_by_doc: (0..10).map(|d| vec![d]).collect() };
            let pairs = vec![(0, 3), (1, 4)];
            let src =
                Source::Generative { pairs, doc_groups: groups, window: 1, retrieval_fraction: fraction, targets };
            Sampler::new(src, 1)
        };
        let b = sampler(0.25).global_batch(0, 8);
        assert_eq!(b.iter().filter(|e| matches!(e, Example::Retrieve { .. })).count(), 2);
        // Half of each batch of 4 indexes: 5 steps are one pass over the 10 documents.
        let mut s = sampler(0.5);
        let mut docs: Vec<u32> = (0..5)
            .flat_map(|st| s.global_batch(st, 4))
            .filter_map(|e| if let Example::Index { doc_idx, .. } = e { Some(doc_idx) } else { None })
            .collect();
        docs.sort();
        assert_eq!(docs, (0..10).collect::<Vec<_>>());
    }
}
