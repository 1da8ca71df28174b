//! The one ranking order of grdr: score descending, then doc index ascending. Search,
//! the merge of per-rank results and evaluation all use [`TopK`], so a sharded run and a
//! single-process run produce identical run files (N ranks ≡ 1 rank, `tests/eval_dist.rs`).
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A scored document. `Ord`: a greater hit ranks higher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub score: f32,
    pub doc_idx: i64,
}

impl Eq for Hit {}

impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        // total_cmp: NaN never makes the order inconsistent (it sorts above +inf).
        self.score.total_cmp(&other.score).then_with(|| other.doc_idx.cmp(&self.doc_idx))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The best `k` hits seen so far; O(log k) per push, the worst kept hit on top of a heap.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Hit>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1) }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The score a new hit must beat once full (None while not full).
    pub fn threshold(&self) -> Option<Hit> {
        if self.heap.len() < self.k {
            None
        } else {
            self.heap.peek().map(|r| r.0)
        }
    }

    pub fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Reverse(hit));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if hit > worst.0 {
                *worst = Reverse(hit);
            }
        }
    }

    /// Merges another top-k (e.g. another rank's): the result is the top-k of the union.
    pub fn merge(&mut self, other: impl IntoIterator<Item = Hit>) {
        for hit in other {
            self.push(hit);
        }
    }

    /// Hits best first.
    pub fn into_sorted_vec(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force(hits: &[Hit], k: usize) -> Vec<Hit> {
        let mut v = hits.to_vec();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.doc_idx.cmp(&b.doc_idx)));
        v.truncate(k);
        v
    }

    proptest! {
        #[test]
        fn equals_sort_and_truncate(scores in prop::collection::vec(0u8..6, 0..200), k in 0usize..50) {
            // Few distinct scores: ties everywhere, so the doc-index tie-break is exercised.
            let hits: Vec<Hit> = scores.iter().enumerate().map(|(i, &s)| Hit { score: s as f32, doc_idx: i as i64 }).collect();
            let mut top = TopK::new(k);
            for &h in hits.iter().rev() { top.push(h); }
            prop_assert_eq!(top.into_sorted_vec(), brute_force(&hits, k));
        }

        #[test]
        fn merge_of_shards_equals_whole(scores in prop::collection::vec(0u8..6, 0..200), k in 1usize..30, shards in 1usize..5) {
            let hits: Vec<Hit> = scores.iter().enumerate().map(|(i, &s)| Hit { score: s as f32, doc_idx: i as i64 }).collect();
            let mut merged = TopK::new(k);
            for shard in 0..shards {
                let mut local = TopK::new(k);
                for h in hits.iter().skip(shard).step_by(shards) { local.push(*h); }
                merged.merge(local.into_sorted_vec());
            }
            prop_assert_eq!(merged.into_sorted_vec(), brute_force(&hits, k));
        }
    }
}
