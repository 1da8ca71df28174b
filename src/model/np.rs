//! Non-parametric decoding (Lee et al., "Nonparametric Decoding for Generative Retrieval",
//! ACL Findings 2023) as Wu et al. (SIGIR 2024, §5.1, Eq. 20) read it: the decoder's output
//! embedding table Ẽ_d is replaced by D, the contextualized token embeddings of the docids, so
//! rel(d, q) = sum(Dᵀ Q ⊙ A) with D the document's own token vectors, not one static vector
//! per token type.
//!
//! - **D**: each docid (title or n-gram tokens + eos) is run through the GR model's encoder
//!   alone; the output vector at each position is that token occurrence's contextual
//!   embedding. BASE computes D once from the initial encoder (Lee et al.'s pre-trained T5;
//!   here the model's initialisation, pretrained or scratch) and freezes it; ASYNC
//!   (`model.np_refresh_epochs` = N) recomputes it with the model's current encoder every N
//!   epochs. D is never trained (no gradient reaches it), as in both variants.
//! - **Compression**: the occurrences of each token type are clustered by k-means into at
//!   most k centroids (`model.np_clusters`); the output vocabulary is those centroids, the
//!   *entries*: entry 0 pad, entry 1 eos (the mean of its contextual vectors), then each
//!   type's clusters, types in id order. A docid becomes the sequence of its occurrences'
//!   entries, so the per-step vocabulary is at most 2 + k·(token types), and the trie of
//!   entry sequences constrains the beam to real docids.
//! - **Decoder inputs** embed an entry's token with the model's own embeddings: D replaces
//!   the output side only.
//!
//! Storage: `grdr_head.np.table` (E, D) and `grdr_head.np.targets` (docid rows, T) — each
//! docid's entry sequence, -1 past its end — are untrained variables, so checkpoints, resume
//! and exports carry the D a run was at. (f32 like every VarStore variable: entry ids are
//! exact below 2^24, checked.) Memory of a refresh: the contextual vectors of every docid
//! token at once (rows × T × D × 4 bytes: 130 MB for SciFact's titles).
use std::collections::BTreeMap;

use tch::{nn, Device, Kind, Tensor};

use super::kmeans::kmeans;
use super::t5_model::T5ForConditionalGeneration;
use crate::error::{Error, Result};

/// Entry ids of padding and eos (equal to the T5 token ids they stand for).
pub const PAD_ENTRY: i64 = 0;
pub const EOS_ENTRY: i64 = 1;

/// Docids encoded per forward pass of a refresh.
const REFRESH_BATCH: usize = 128;

/// A token type's contextual vectors (n × D, row-major) and where each occurred (docid row,
/// position).
type Occurrences = (Vec<f32>, Vec<(usize, usize)>);

#[derive(Debug)]
pub struct Np {
    /// D (E, D): the output vector of every entry. Untrained.
    pub table: Tensor,
    /// Each docid row's entries (rows, T) as f32, eos entry included, -1 after. Untrained.
    pub targets: Tensor,
    /// The token of every entry (E,): decoder inputs embed it.
    pub entry_token: Tensor,
    /// The first entry of each docid token type, and how many it has.
    entries_of: BTreeMap<i64, (i64, i64)>,
    /// Clusters per type.
    pub clusters: usize,
}

impl Np {
    /// The entry layout of the docids `rows` (their tokens, eos excluded) at `clusters` per
    /// type, and its variables under `p` (zero until [`Self::refresh`]).
    pub fn new(p: &nn::Path, rows: &[Vec<i64>], d_model: i64, eos: i64, clusters: usize) -> Result<Self> {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for &t in rows.iter().flatten() {
            if t == eos || t < 0 {
                return Err(Error::usage("model.decoder", format!("docid token {t} cannot be an NP output entry")));
            }
            *counts.entry(t).or_default() += 1;
        }
        let mut entries_of = BTreeMap::new();
        let mut tokens = vec![0i64, eos];
        for (&t, &n) in &counts {
            let k = n.min(clusters) as i64;
            entries_of.insert(t, (tokens.len() as i64, k));
            tokens.extend(std::iter::repeat_n(t, k as usize));
        }
        let n_entries = tokens.len() as i64;
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0) as i64 + 1;
        if n_entries >= 1 << 24 || (rows.len() as i64) * longest >= 1 << 40 {
            return Err(Error::usage("model.np_clusters", format!("{n_entries} NP entries: more than f32 ids hold")));
        }
        let table = p.zeros_no_train("table", &[n_entries, d_model]);
        let targets = p.zeros_no_train("targets", &[rows.len() as i64, longest]);
        let entry_token = Tensor::from_slice(&tokens).to_device(p.device());
        Ok(Np { table, targets, entry_token, entries_of, clusters })
    }

    /// E, the number of entries (the width of the logits).
    pub fn n_entries(&self) -> i64 {
        self.table.size()[0]
    }

    /// Decoder input tokens of entry ids `ids` (any shape; negative ids kept as pad).
    pub fn tokens_of(&self, ids: &Tensor) -> Tensor {
        self.entry_token.index_select(0, &ids.clamp_min(0).reshape([-1])).reshape(ids.size())
    }

    /// Entry logits (…, E) of decoder states (…, D) already scaled as the lm_head takes them.
    pub fn logits(&self, states: &Tensor) -> Tensor {
        states.matmul(&self.table.to_kind(states.kind()).tr())
    }

    /// Each docid row's target entries (eos entry included), as stored.
    pub fn row_targets(&self) -> Vec<Vec<i64>> {
        let t = self.targets.to_device(Device::Cpu).to_kind(Kind::Int64);
        let (rows, len) = t.size2().expect("(rows, T)");
        let flat: Vec<i64> = Vec::try_from(t.reshape([-1])).expect("i64");
        (0..rows as usize)
            .map(|r| flat[r * len as usize..(r + 1) * len as usize].iter().copied().take_while(|&e| e >= 0).collect())
            .collect()
    }

    /// Recomputes D from `model`'s encoder over the docids `rows` (tokens without eos, as
    /// given to [`Self::new`]): contextual vectors of every occurrence, k-means per type,
    /// the centroids into `table` and each occurrence's entry into `targets`. No dropout,
    /// no gradient; deterministic, so every rank computes the same.
    pub fn refresh(&self, model: &T5ForConditionalGeneration, rows: &[Vec<i64>]) {
        let d = model.config.d_model as usize;
        let eos = model.config.eos_token_id;
        let dev = self.table.device();
        // Contextual vectors of every occurrence, grouped by token type (eos as its own).
        let mut by_type: BTreeMap<i64, Occurrences> = BTreeMap::new();
        tch::no_grad(|| {
            for (chunk_no, chunk) in rows.chunks(REFRESH_BATCH).enumerate() {
                let len = chunk.iter().map(Vec::len).max().unwrap_or(0) + 1;
                let mut ids = vec![0i64; chunk.len() * len];
                let mut mask = vec![0i64; chunk.len() * len];
                for (i, r) in chunk.iter().enumerate() {
                    for (j, &t) in r.iter().chain([&eos]).enumerate() {
                        ids[i * len + j] = t;
                        mask[i * len + j] = 1;
                    }
                }
                let shape = [chunk.len() as i64, len as i64];
                let ids_t = Tensor::from_slice(&ids).reshape(shape).to_device(dev);
                let mask_t = Tensor::from_slice(&mask).reshape(shape).to_device(dev);
                let enc = model.encode(&ids_t, &mask_t, false).to_kind(Kind::Float).to_device(Device::Cpu); // (B, L, D)
                let flat: Vec<f32> = Vec::try_from(enc.reshape([-1])).expect("f32");
                for (i, r) in chunk.iter().enumerate() {
                    for (j, &t) in r.iter().chain([&eos]).enumerate() {
                        let g = by_type.entry(t).or_default();
                        g.0.extend_from_slice(&flat[(i * len + j) * d..(i * len + j + 1) * d]);
                        g.1.push((chunk_no * REFRESH_BATCH + i, j));
                    }
                }
            }
        });
        // Cluster each type; write centroids and the occurrences' entries.
        let n_entries = self.n_entries() as usize;
        let longest = self.targets.size()[1] as usize;
        let mut table = vec![0f32; n_entries * d];
        let mut targets = vec![-1f32; rows.len() * longest];
        for (t, (points, at)) in &by_type {
            let (first, k) = if *t == eos { (EOS_ENTRY, 1) } else { self.entries_of[t] };
            let c = kmeans(points, d, k as usize);
            let first = first as usize;
            table[first * d..first * d + c.centroids.len()].copy_from_slice(&c.centroids);
            for (&(row, pos), &cluster) in at.iter().zip(&c.assignment) {
                targets[row * longest + pos] = (first + cluster) as f32;
            }
        }
        tch::no_grad(|| {
            let table = Tensor::from_slice(&table).reshape([n_entries as i64, d as i64]);
            self.table.shallow_clone().copy_(&table.to_device(dev));
            let targets = Tensor::from_slice(&targets).reshape([rows.len() as i64, longest as i64]);
            self.targets.shallow_clone().copy_(&targets.to_device(dev));
        });
    }
}
