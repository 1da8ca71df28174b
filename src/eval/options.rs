//! What an evaluation can vary (the model aside), with **one** set of defaults: a run's
//! `[eval]` section (`config::EvalConfig`, whose `Default` is what a config that says nothing
//! gets). The evaluation at the end of `grdr train` uses [`EvalOptions::for_run`] as it is;
//! `grdr eval --run RUNDIR` starts from the same value and applies only the flags given, so
//! both write the same run file unless a flag asks otherwise. `grdr eval --model` starts from
//! [`EvalOptions::for_model`]: the same defaults, the model directory's lengths.
use std::path::PathBuf;

use tch::Device;

use crate::config::{EvalConfig, RunConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::model::colbert::Alignment;
use crate::search::seal::SealOptions;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub split: String,
    /// Documents per query in the run file.
    pub k: usize,
    /// Texts per encoder forward pass.
    pub batch_size: usize,
    pub query_max_len: usize,
    pub doc_max_len: usize,
    /// Queries per score block (with a row group's docs: the memory of one score block).
    pub query_block: i64,
    /// Keep document embeddings on disk in this directory instead of memory (DR).
    pub spill: Option<PathBuf>,
    pub device: Device,
    /// Store document embeddings in bf16 (CUDA: halves their memory; scores stay f32).
    pub bf16_store: bool,
    /// ColBERT: pool tokens retrieved per query token in the candidate stage.
    pub token_k: usize,
    /// ColBERT end to end: search a compressed token index (centroids + b-bit residuals,
    /// PLAID's candidate stage) instead of the exact pool; none = exact.
    pub compress: Option<Compression>,
    /// ColBERT: the token alignment of the final score (end to end and rerank) instead of
    /// the model's own (`model.alignment`, whose normalisation is kept); none = the model's.
    pub alignment: Option<Alignment>,
    /// GR: beam width (≥ k to return k docids); none = k. Read it through [`Self::beam_width`].
    pub beam: Option<usize>,
    /// GR: running beams decoded per batch (bounds the KV cache: queries per batch = this / beam).
    pub beam_rows: usize,
    /// The rerank setting instead of end-to-end retrieval.
    pub rerank: Option<RerankOptions>,
    /// DR/GR: compute the Brier score (and DR's in-batch gap at `gap_ks`).
    pub calibration: bool,
    pub temperature: f64,
    pub gap_ks: Vec<usize>,
    /// GR: documents whose indexing input is decoded for memorisation R@1 (0: none).
    pub memorization_docs: usize,
    /// GR: the seed of the memorisation sample (a run's `train.seed`).
    pub memorization_seed: u64,
    /// GR (n-gram docids): SEAL's end-to-end retrieval over this FM-index directory.
    pub fm_index: Option<PathBuf>,
    /// SEAL: tokens per decoded n-gram.
    pub ngram_len: usize,
    /// SEAL: the scoring's parameters (SEAL's defaults).
    pub seal: SealOptions,
}

/// The compressed ColBERT index (search/codec.rs, search/compressed.rs) and its search.
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// Bits per residual dimension (1, 2, 4, 8). Default 2, as ColBERTv2.
    pub nbits: i64,
    /// k-means centroids; none = 2^⌊log2(16·√tokens)⌋, ColBERTv2's rule (tokens estimated from the sample).
    pub centroids: Option<usize>,
    /// Centroids probed per query token. Default 4.
    pub nprobe: usize,
    /// PLAID's centroid pruning (t_cs): in the first cut, a document's tokens count only
    /// when their centroid's best query-token score reaches this. Default 0.45, PLAID's
    /// for k = 100; `-inf` keeps every centroid.
    pub threshold: f64,
    /// Candidates per query, over all shards, kept by pruned centroid interaction. Default 1024.
    pub ndocs: usize,
    /// Of those, the best by exact centroid interaction that MaxSim scores over decompressed
    /// vectors; none = all `ndocs`. PLAID's ndocs / 4 searches 3.2× faster on SciFact but
    /// keeps 0.916 of the relevant documents where all keep 0.980 (docs/BENCHMARKS.md).
    pub rescore: Option<usize>,
    /// Documents encoded to train the codec (drawn by a keyed hash of doc_idx); none =
    /// max(1024, 16·√documents), as ColBERTv2's sample grows.
    pub sample_docs: Option<usize>,
    /// Lloyd iterations. Default 10.
    pub kmeans_iters: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            nbits: 2,
            centroids: None,
            nprobe: 4,
            threshold: 0.45,
            ndocs: 1024,
            rescore: None,
            sample_docs: None,
            kmeans_iters: 10,
        }
    }
}

impl Compression {
    /// The documents per query that MaxSim scores.
    pub fn rescored(&self) -> usize {
        self.rescore.unwrap_or(self.ndocs)
    }
}

#[derive(Debug, Clone)]
pub struct RerankOptions {
    /// BM25 candidates per query.
    pub depth: usize,
    /// Add every relevant document to the candidates (inflates scores; off by default).
    pub add_gold: bool,
    /// GR n-gram docids: score a candidate as Wu et al.'s code does (sampled spans of the
    /// document, [`crate::eval::rerank`]) rather than by its best pre-sampled n-gram.
    pub paper: bool,
}

impl RerankOptions {
    /// BM25 candidates per query unless asked otherwise (the papers' top-100).
    pub const DEFAULT_DEPTH: usize = 100;
}

impl EvalOptions {
    /// The evaluation of a trained run: its `[eval]` section, its training lengths and
    /// temperature, its seed for the memorisation sample.
    pub fn for_run(cfg: &RunConfig, device: Device) -> EvalOptions {
        let e = &cfg.eval;
        let doc_max_len = e.doc_max_len.unwrap_or(cfg.data.doc_max_len);
        EvalOptions::from_sections(e, &cfg.train, cfg.data.query_max_len, doc_max_len, device)
    }

    /// A model evaluated as it is: `[eval]`'s defaults, truncation at the model's own
    /// length (sentence-transformers' `max_seq_length`), `[train]`'s default temperature.
    pub fn for_model(max_len: usize, device: Device) -> EvalOptions {
        EvalOptions::from_sections(&EvalConfig::default(), &TrainConfig::default(), max_len, max_len, device)
    }

    fn from_sections(
        e: &EvalConfig,
        t: &TrainConfig,
        query_max_len: usize,
        doc_max_len: usize,
        device: Device,
    ) -> Self {
        EvalOptions {
            split: e.split.clone(),
            k: e.k,
            batch_size: e.batch_size,
            query_max_len,
            doc_max_len,
            query_block: 1024,
            spill: None,
            device,
            bf16_store: false,
            token_k: 100,
            compress: None,
            alignment: None,
            beam: e.beam,
            beam_rows: 1024,
            rerank: None,
            calibration: e.calibration,
            temperature: t.temperature,
            gap_ks: e.gap_k.clone(),
            memorization_docs: e.memorization_docs,
            memorization_seed: t.seed,
            fm_index: e.fm_index.clone(),
            ngram_len: e.ngram_len,
            seal: SealOptions::default(),
        }
    }

    /// GR: the beam width in force (`beam`, else a beam as wide as the run file is deep).
    pub fn beam_width(&self) -> usize {
        self.beam.unwrap_or(self.k)
    }

    /// Refuses values that would give an empty or meaningless evaluation (exit 2), naming
    /// the flag that sets each.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("--k / eval.k", self.k as i64),
            ("--batch-size / eval.batch_size", self.batch_size as i64),
            ("--query-block", self.query_block),
            ("--token-k", self.token_k as i64),
            ("--beam / eval.beam", self.beam_width() as i64),
            ("--beam-rows", self.beam_rows as i64),
            ("--query-max-len / data.query_max_len", self.query_max_len as i64),
            ("--doc-max-len / eval.doc_max_len", self.doc_max_len as i64),
            ("--ngram-len / eval.ngram_len", self.ngram_len as i64),
        ];
        for (name, v) in positive {
            if v < 1 {
                return Err(Error::usage(name, "must be at least 1"));
            }
        }
        if let Some(c) = &self.compress {
            let counts = [
                ("--nprobe", c.nprobe),
                ("--sample-docs", c.sample_docs.unwrap_or(1)),
                ("--centroids", c.centroids.unwrap_or(1)),
            ];
            if let Some((flag, _)) = counts.iter().find(|(_, v)| *v < 1) {
                return Err(Error::usage(*flag, "must be at least 1"));
            }
            if c.ndocs < self.k {
                return Err(Error::usage("--ndocs", format!("{} candidates cannot fill k = {}", c.ndocs, self.k)));
            }
            if let Some(r) = c.rescore {
                if r < self.k || r > c.ndocs {
                    let why = format!("must lie between k = {} and --ndocs {}, not {r}", self.k, c.ndocs);
                    return Err(Error::usage("--rescore", why));
                }
            }
            if c.threshold.is_nan() {
                return Err(Error::usage("--centroid-threshold", "must be a number (-inf keeps every centroid)"));
            }
            // Before any document is encoded, rather than when the codec is trained.
            crate::search::codec::check_nbits(c.nbits)?;
        }
        if let Some(r) = &self.rerank {
            if r.depth < 1 {
                return Err(Error::usage("--rerank-depth", "must be at least 1"));
            }
        }
        if self.gap_ks.contains(&0) {
            return Err(Error::usage("--gap-k / eval.gap_k", "batch sizes must be at least 1"));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(Error::usage("--temperature", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(k: usize, c: Compression) -> Result<()> {
        let mut opts = EvalOptions::for_model(32, Device::Cpu);
        opts.k = k;
        opts.compress = Some(c);
        opts.validate()
    }

    fn option_of(r: Result<()>) -> String {
        match r {
            Err(Error::Usage { option, .. }) => option,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn the_plaid_cuts_must_fill_k_and_nest() {
        let d = Compression::default();
        // MaxSim over every candidate unless asked for fewer (PLAID's ndocs / 4).
        assert_eq!(d.rescored(), 1024);
        with(100, d.clone()).unwrap();
        assert_eq!(option_of(with(100, Compression { rescore: Some(99), ..d.clone() })), "--rescore");
        assert_eq!(option_of(with(100, Compression { rescore: Some(300), ndocs: 299, ..d.clone() })), "--rescore");
        with(100, Compression { rescore: Some(100), ..d.clone() }).unwrap();
        assert_eq!(option_of(with(2000, d.clone())), "--ndocs");
        assert_eq!(option_of(with(10, Compression { threshold: f64::NAN, ..d.clone() })), "--centroid-threshold");
        with(10, Compression { threshold: f64::NEG_INFINITY, ..d }).unwrap();
    }
}
