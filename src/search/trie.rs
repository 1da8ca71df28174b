//! A compact prefix trie over docid token sequences, shared read-only by every beam.
//!
//! Layout (CSR in breadth-first order): the children of a node are consecutive node ids, and
//! `edge_token[child]` is the token leading into `child`, so [`DocidTrie::allowed`] is a
//! slice of `edge_token` — sorted, no allocation — and a step is a binary search in it.
//! Every docid ends with `eos` and holds no other `eos`, so no docid is a prefix of another
//! and the node after `eos` is a leaf naming the documents with that docid (several when
//! docids collide, e.g. equal titles). 1M atomic docids take ~2M nodes × 12 bytes.
use crate::error::{Error, Result};

pub type NodeId = u32;

#[derive(Debug, Clone)]
pub struct DocidTrie {
    /// First child of each node (children are `first_child[n] .. first_child[n] + n_children[n]`).
    first_child: Vec<u32>,
    n_children: Vec<u32>,
    /// The token on the edge into each node (unused for the root).
    edge_token: Vec<u32>,
    /// Leaves: `leaf_start[n] .. leaf_start[n + 1]` into `leaf_docs` (empty for inner nodes).
    leaf_start: Vec<u32>,
    leaf_docs: Vec<i64>,
    eos: u32,
    max_depth: usize,
    n_docids: usize,
}

impl DocidTrie {
    pub const ROOT: NodeId = 0;

    /// Builds the trie of `(doc_idx, tokens)`; each `tokens` must end with `eos` and hold no
    /// other `eos`, and be non-empty.
    pub fn build(docids: &[(i64, Vec<u32>)], eos: u32) -> Result<Self> {
        for (doc, seq) in docids {
            let n_eos = seq.iter().filter(|&&t| t == eos).count();
            if seq.last() != Some(&eos) || n_eos != 1 {
                return Err(Error::usage(
                    "docids",
                    format!("docid of doc {doc} ({seq:?}) must end with eos={eos} and hold it once"),
                ));
            }
        }
        let mut order: Vec<usize> = (0..docids.len()).collect();
        order.sort_by(|&a, &b| docids[a].1.cmp(&docids[b].1).then(docids[a].0.cmp(&docids[b].0)));
        let seq = |i: usize| &docids[order[i]].1;

        let mut t = DocidTrie {
            first_child: vec![0],
            n_children: vec![0],
            edge_token: vec![u32::MAX],
            leaf_start: vec![0],
            leaf_docs: Vec::new(),
            eos,
            max_depth: docids.iter().map(|d| d.1.len()).max().unwrap_or(0),
            n_docids: 0,
        };
        // Breadth-first: (node, range of sorted docids below it, depth).
        let mut queue = std::collections::VecDeque::from([(0u32, 0usize, docids.len(), 0usize)]);
        while let Some((node, lo, hi, depth)) = queue.pop_front() {
            let n = node as usize;
            if lo < hi && seq(lo).len() == depth {
                // A leaf (reached through eos): every docid here is this exact sequence.
                t.n_docids += 1;
                t.first_child[n] = t.edge_token.len() as u32;
                continue;
            }
            t.first_child[n] = t.edge_token.len() as u32;
            let mut i = lo;
            while i < hi {
                let tok = seq(i)[depth];
                let mut j = i + 1;
                while j < hi && seq(j)[depth] == tok {
                    j += 1;
                }
                let child = t.edge_token.len() as u32;
                t.edge_token.push(tok);
                t.first_child.push(0);
                t.n_children.push(0);
                t.n_children[n] += 1;
                queue.push_back((child, i, j, depth + 1));
                i = j;
            }
        }
        // Leaf ranges (CSR again): walk every docid to its leaf, count, then fill.
        t.leaf_start = vec![0; t.edge_token.len() + 1];
        let mut counts = vec![0u32; t.edge_token.len()];
        let mut leaf_of = Vec::with_capacity(docids.len());
        for &i in &order {
            let leaf = t.walk(&docids[i].1).expect("built from these sequences");
            counts[leaf as usize] += 1;
            leaf_of.push((leaf, docids[i].0));
        }
        for (n, c) in counts.iter().enumerate() {
            t.leaf_start[n + 1] = t.leaf_start[n] + c;
        }
        let mut fill = t.leaf_start.clone();
        t.leaf_docs = vec![0; docids.len()];
        for (leaf, doc) in leaf_of {
            t.leaf_docs[fill[leaf as usize] as usize] = doc;
            fill[leaf as usize] += 1;
        }
        for n in 0..counts.len() {
            let (a, b) = (t.leaf_start[n] as usize, t.leaf_start[n + 1] as usize);
            t.leaf_docs[a..b].sort_unstable();
        }
        Ok(t)
    }

    /// Tokens allowed after the prefix that led to `node`, ascending.
    pub fn allowed(&self, node: NodeId) -> &[u32] {
        let (a, n) = (self.first_child[node as usize] as usize, self.n_children[node as usize] as usize);
        &self.edge_token[a..a + n]
    }

    /// The node after `token`, if the trie allows it.
    pub fn child(&self, node: NodeId, token: u32) -> Option<NodeId> {
        let a = self.first_child[node as usize];
        self.allowed(node).binary_search(&token).ok().map(|i| a + i as u32)
    }

    /// The node a whole prefix leads to.
    pub fn walk(&self, prefix: &[u32]) -> Option<NodeId> {
        prefix.iter().try_fold(Self::ROOT, |n, &t| self.child(n, t))
    }

    /// Documents whose docid ends at `node` (empty unless `node` is a leaf), ascending.
    pub fn docs(&self, node: NodeId) -> &[i64] {
        let n = node as usize;
        &self.leaf_docs[self.leaf_start[n] as usize..self.leaf_start[n + 1] as usize]
    }

    pub fn is_leaf(&self, node: NodeId) -> bool {
        self.n_children[node as usize] == 0 && node != Self::ROOT
    }

    /// Whether `tokens` is a whole docid of the trie.
    pub fn is_valid(&self, tokens: &[u32]) -> bool {
        self.walk(tokens).is_some_and(|n| !self.docs(n).is_empty())
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn num_nodes(&self) -> usize {
        self.edge_token.len()
    }

    /// Distinct docids (leaves).
    pub fn num_docids(&self) -> usize {
        self.n_docids
    }

    /// Longest docid, eos included: the most decoding steps a search takes.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Bytes held by the trie's arrays.
    pub fn memory_bytes(&self) -> usize {
        4 * (self.first_child.len() + self.n_children.len() + self.edge_token.len() + self.leaf_start.len())
            + 8 * self.leaf_docs.len()
    }

    /// Every docid as (token sequence, docs), in lexicographic order (brute-force checks).
    pub fn enumerate(&self) -> Vec<(Vec<u32>, Vec<i64>)> {
        let mut out = Vec::new();
        let mut stack = vec![(Self::ROOT, Vec::new())];
        while let Some((node, prefix)) = stack.pop() {
            if self.is_leaf(node) {
                out.push((prefix, self.docs(node).to_vec()));
                continue;
            }
            let first = self.first_child[node as usize];
            for (i, &tok) in self.allowed(node).iter().enumerate().rev() {
                let mut p = prefix.clone();
                p.push(tok);
                stack.push((first + i as u32, p));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn allowed_tokens_and_leaves() {
        let eos = 1;
        let ids = vec![(0, vec![5, 7, 1]), (1, vec![5, 8, 1]), (2, vec![9, 1]), (3, vec![5, 7, 1])];
        let t = DocidTrie::build(&ids, eos).unwrap();
        assert_eq!(t.allowed(DocidTrie::ROOT), &[5, 9]);
        let n5 = t.child(DocidTrie::ROOT, 5).unwrap();
        assert_eq!(t.allowed(n5), &[7, 8]);
        assert_eq!(t.child(DocidTrie::ROOT, 6), None);
        let leaf = t.walk(&[5, 7, 1]).unwrap();
        assert!(t.is_leaf(leaf));
        assert_eq!(t.docs(leaf), &[0, 3]);
        assert!(t.is_valid(&[9, 1]));
        assert!(!t.is_valid(&[5, 7]));
        assert!(!t.is_valid(&[5, 7, 1, 1]));
        assert_eq!(t.num_docids(), 3);
        assert_eq!(t.max_depth(), 3);
    }

    #[test]
    fn refuses_docids_without_a_single_final_eos() {
        assert!(DocidTrie::build(&[(0, vec![3, 4])], 1).is_err());
        assert!(DocidTrie::build(&[(0, vec![3, 1, 4, 1])], 1).is_err());
        assert!(DocidTrie::build(&[(0, vec![])], 1).is_err());
    }

    proptest! {
        #[test]
        fn enumerates_exactly_the_docids(seqs in prop::collection::vec(prop::collection::vec(2u32..6, 0..4), 0..30)) {
            let ids: Vec<(i64, Vec<u32>)> = seqs.iter().enumerate().map(|(i, s)| {
                let mut s = s.clone();
                s.push(1);
                (i as i64, s)
            }).collect();
            let t = DocidTrie::build(&ids, 1).unwrap();
            let mut expect: BTreeMap<Vec<u32>, Vec<i64>> = BTreeMap::new();
            for (d, s) in &ids {
                expect.entry(s.clone()).or_default().push(*d);
            }
            let got: BTreeMap<Vec<u32>, Vec<i64>> = t.enumerate().into_iter().collect();
            prop_assert_eq!(&got, &expect);
            for (_, s) in &ids {
                prop_assert!(t.is_valid(s));
                // Every prefix allows exactly the next tokens some docid continues with.
                for cut in 0..s.len() {
                    let node = t.walk(&s[..cut]).unwrap();
                    let mut next: Vec<u32> = ids.iter().filter(|(_, o)| o.len() > cut && o[..cut] == s[..cut]).map(|(_, o)| o[cut]).collect();
                    next.sort_unstable();
                    next.dedup();
                    prop_assert_eq!(t.allowed(node), next.as_slice());
                }
            }
        }
    }
}
