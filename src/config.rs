//! The run configuration of `grdr train`: one TOML section per component, so each
//! component is handed only its own section (torchtitan's lesson: a monolithic config
//! leaks everywhere).
//!
//! ```toml
//! [data]    dataset, lengths, negatives, GR example mix     → data::examples, data::batch
//! [model]   what to train and from which weights             → model::task
//! [docids]  the docid file of a GR run                       → data::docid
//! [train]   optimiser, schedule, steps, seed, checkpoints    → train::{optim, schedule, trainer}
//! [dist]    collectives backend, DDP buckets                 → dist
//! [eval]    evaluation at the end of the run                 → train::evaluate
//! [log]     log interval, progress bar                       → train::metrics_log
//! ```
//!
//! Every struct denies unknown fields and documents its defaults (the doc comment of each
//! field). `--set section.key=value` overrides are applied to the TOML tree before it is
//! deserialised, so an override is checked exactly as the file is. The resolved config (all
//! defaults filled in) is written as TOML to the run directory and into every checkpoint.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole run. Only `data.path` is required; every other key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub docids: DocidsConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub dist: DistConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[data]`: where examples come from and how they are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset directory made by `grdr prepare` (required). Relative paths are relative to
    /// the working directory of `grdr train`.
    pub path: PathBuf,
    /// The qrels split whose (query, relevant doc) pairs are the training pairs. Default `train`.
    pub train_split: String,
    /// Queries are truncated to this many tokens (special tokens included). Default 32.
    pub query_max_len: usize,
    /// Documents (title + text) are truncated to this many tokens. Default 256.
    pub doc_max_len: usize,
    /// DR/ColBERT: BM25 hard negatives per query (0 = in-batch and cross-rank negatives only).
    /// Default 0.
    pub hard_negatives: usize,
    /// Hard negatives are drawn from the BM25 top-`hard_negative_depth` minus the positives.
    /// Default 30.
    pub hard_negative_depth: usize,
    /// Row groups of docs.parquet kept decoded in memory per rank (LRU): bounds memory on
    /// corpora of any size. Default 64 (64·1024 docs).
    pub doc_cache_row_groups: usize,
    /// GR: fraction of each global batch that is retrieval examples (query → docid); the rest
    /// are indexing examples (doc text → docid), as DSI mixes them. Default 0.5.
    pub retrieval_fraction: f64,
    /// GR: indexing examples read docs in row-group order shuffled in windows of this many
    /// row groups (bounded memory, still well mixed). Default 8.
    pub shuffle_window_row_groups: usize,
    /// GR: the document view of an indexing example: `first` (the first `doc_max_len`
    /// tokens, DSI's FirstP) or `span` (a random `doc_max_len`-token span, per step).
    /// Default `first`.
    pub index_view: IndexView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexView {
    First,
    Span,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: PathBuf::new(),
            train_split: "train".into(),
            query_max_len: 32,
            doc_max_len: 256,
            hard_negatives: 0,
            hard_negative_depth: 30,
            doc_cache_row_groups: 64,
            retrieval_fraction: 0.5,
            shuffle_window_row_groups: 8,
            index_view: IndexView::First,
        }
    }
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Single-vector dual encoder (DR), InfoNCE.
    Dual,
    /// Multi-vector late interaction (MVDR, ColBERT MaxSim), InfoNCE over MaxSim scores.
    Colbert,
    /// Seq2seq T5 generating docids (GR), token NLL.
    Generative,
}

/// ColBERT: which way tokens align (`model.alignment`: `q2d`, `d2q-soft`, `d2q-max`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alignment {
    /// q→d MaxSim.
    #[default]
    #[serde(rename = "q2d")]
    QueryToDoc,
    /// q←d with a softmax over query tokens per document token (GR's dense alignment).
    #[serde(rename = "d2q-soft")]
    DocToQuerySoft,
    /// q←d with a hard max over query tokens per document token.
    #[serde(rename = "d2q-max")]
    DocToQueryMax,
}

impl Alignment {
    /// The config spelling (`q2d`, `d2q-soft`, `d2q-max`).
    pub fn name(self) -> &'static str {
        match self {
            Alignment::QueryToDoc => "q2d",
            Alignment::DocToQuerySoft => "d2q-soft",
            Alignment::DocToQueryMax => "d2q-max",
        }
    }
}

/// GR: how decoder states become docid-token logits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// hᵀe_v: one static output embedding per token (DSI, GENRE).
    #[default]
    Standard,
    /// NCI's prefix-aware weight-adaptive decoder: hᵀ(e_v + E_v d'_i) (`model::pawa`).
    Pawa,
    /// Lee et al.'s non-parametric decoding: the output embeddings are the contextualized
    /// token embeddings D of the docids, k-means-compressed per token (`model::np`).
    Np,
}

/// Architecture of a model built from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Bert,
    T5,
}

/// `[model]`: the model and its head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `dual`, `colbert` or `generative`. Default `dual`.
    pub kind: ModelKind,
    /// Initial weights: an artefact name (`minilm`) or an HF directory; `scratch` builds a
    /// randomly initialised model of `arch` with the sizes below. Default `minilm`.
    pub init: String,
    /// Tokenizer (artefact name, directory or tokenizer.json); default: the one in `init`.
    /// Required with `init = "scratch"`.
    pub tokenizer: Option<String>,
    /// `scratch` only: `bert` (encoder) or `t5` (encoder–decoder; the encoder alone for
    /// dual/colbert). Default `t5`.
    pub arch: Arch,
    /// `scratch` only: width, layers, heads, feed-forward width. Defaults 256, 4, 4, 1024.
    pub d_model: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub d_ff: i64,
    /// Dropout used while training (scratch models; pretrained ones keep their config's
    /// rates). Default 0.1.
    pub dropout: f64,
    /// Turn dropout off altogether (deterministic forward: the N≡1-rank tests). Default false.
    pub no_dropout: bool,
    /// Dual: `mean` or `first` pooling. Default `mean` (sentence-transformers).
    pub pooling: String,
    /// Dual: project pooled vectors to this dimension; none keeps the encoder width.
    pub dim: Option<i64>,
    /// Dual/ColBERT: L2-normalise embeddings. Default true.
    pub normalize: bool,
    /// ColBERT: per-token dimension (default 128) and fixed query length (default 32).
    pub colbert_dim: i64,
    pub colbert_query_len: i64,
    /// ColBERT: token queries are padded with (BERT: [MASK] = 103; T5: pad 0). Default 103.
    pub query_augment_token: i64,
    /// ColBERT: the token alignment of the score, trained and evaluated: `q2d` (MaxSim),
    /// `d2q-soft` (GR's softmax over query tokens per document token) or `d2q-max`. Default q2d.
    pub alignment: Alignment,
    /// ColBERT: divide the score by Z = Σ A_ij (the seed's Eq. 1): the number of real query
    /// tokens (q2d) or document tokens (d2q). Default false (ColBERT's sum).
    pub alignment_normalize: bool,
    /// GR: `standard`, `pawa` (NCI's adaptive decoder; atomic or semantic docids) or `np`
    /// (non-parametric decoding; title or n-gram docids). Default standard.
    pub decoder: DecoderKind,
    /// PAWA: rank r of each docid token's D×D projection E_v = U_v W. Default 32.
    pub pawa_rank: i64,
    /// PAWA: decoder blocks of the prefix decoder. Default 1.
    pub pawa_layers: i64,
    /// NP: k-means centroids per docid token type (the contextual embeddings of its
    /// occurrences, compressed; a type with fewer occurrences keeps them all). Default 5.
    pub np_clusters: usize,
    /// NP: re-encode D with the model's own encoder every this many epochs (Lee et al.'s
    /// ASYNC); 0 keeps the D of the initial encoder, frozen (BASE). Default 0.
    pub np_refresh_epochs: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Dual,
            init: "minilm".into(),
            tokenizer: None,
            arch: Arch::T5,
            d_model: 256,
            num_layers: 4,
            num_heads: 4,
            d_ff: 1024,
            dropout: 0.1,
            no_dropout: false,
            pooling: "mean".into(),
            dim: None,
            normalize: true,
            colbert_dim: 128,
            colbert_query_len: 32,
            query_augment_token: 103,
            alignment: Alignment::QueryToDoc,
            alignment_normalize: false,
            decoder: DecoderKind::Standard,
            pawa_rank: 32,
            pawa_layers: 1,
            np_clusters: 5,
            np_refresh_epochs: 0.0,
        }
    }
}

/// `[docids]`: GR runs only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocidsConfig {
    /// A docid file written by `grdr docids` (its scheme is read from the file).
    pub path: Option<PathBuf>,
}

/// Learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Linear,
    Cosine,
    Constant,
}

/// Numeric precision of the forward/backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// bf16 autocast (parameters and optimizer state stay f32): on CUDA, and on CPUs with
    /// AVX512-BF16 or AMX (refused on others).
    Bf16,
}

/// The contrastive loss of DR and ColBERT training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContrastiveLoss {
    /// Softmax over every document of the global batch: the query's positive against its
    /// hard negatives and every other query's documents, on every rank.
    InBatch,
    /// ColBERTv1's pairwise softmax: the query's positive against its own hard negative(s)
    /// only (`data.hard_negatives` ≥ 1; ColBERTv1 trains on one BM25 negative per query, and
    /// its scores are not scaled: set `train.temperature = 1` for that).
    Pairwise,
}

/// Where DR's negatives come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NegativeBank {
    /// The global batch: in-batch, cross-rank and hard negatives (`num_negatives` of them).
    None,
    /// A softmax over every document of the corpus: the positive encoded fresh (with its
    /// gradient), every other document from the bank (Zhang et al.'s global normalisation,
    /// for a dual encoder).
    Full,
    /// `num_negatives` documents per query drawn uniformly from the bank (any number up to
    /// the corpus size minus one), besides the fresh positive.
    Sampled,
    /// The `num_negatives` bank documents that score highest against the query (ANCE-style
    /// hard negatives from a periodically refreshed index), every document the training
    /// qrels judge relevant to the query left out.
    Hard,
    /// The softmax over every document of the corpus, each encoded with the current
    /// parameters at every micro-batch and back-propagated through: the exact global
    /// softmax of Zhang et al.'s Theorem 3.1, where `full` has no gradient through the
    /// negatives. The corpus is the document side of every micro-batch, sharded over ranks
    /// and run through GradCache's chunks (`grad_cache_chunk`, required). No stored bank:
    /// `bank_refresh_steps` does not apply.
    Corpus,
}

/// `[train]`: the optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Examples (queries) per rank per micro-batch. Default 32.
    pub batch_size: usize,
    /// Micro-batches per optimizer step. Default 1.
    pub grad_accum: usize,
    /// Optimizer steps; 0 means `epochs` passes over the training examples. Default 0.
    pub max_steps: u64,
    /// Used when `max_steps` is 0 (fractions allowed). Default 1.
    pub epochs: f64,
    /// Peak learning rate. Default 2e-5.
    pub lr: f64,
    /// AdamW decoupled weight decay; never applied to biases and norm weights. Default 0.01.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Warm-up steps (linear from 0). Default: 10% of the steps when unset.
    pub warmup_steps: Option<u64>,
    /// `linear` (to 0), `cosine` (to `min_lr_ratio`·lr) or `constant`. Default `linear`.
    pub decay: Decay,
    pub min_lr_ratio: f64,
    /// Clip gradients to this global L2 norm (0 = off). Default 1.0.
    pub max_grad_norm: f64,
    /// InfoNCE temperature (scores are divided by it). Default 0.05 (scale 20, as
    /// sentence-transformers' MultipleNegativesRankingLoss).
    pub temperature: f64,
    /// DR/ColBERT: negatives per query; none = every other document of the global batch
    /// (in-batch, cross-rank and hard negatives). A number keeps that many, drawn per step
    /// (the negative-count sweeps of Zhang et al.): from the global batch, or with
    /// `negative_bank = "sampled"` from the whole corpus.
    pub num_negatives: Option<usize>,
    /// DR/ColBERT: `in-batch` (default) or `pairwise` (ColBERTv1: own hard negatives only).
    pub loss: ContrastiveLoss,
    /// DR: `none` (default: negatives from the global batch), `full` (softmax over the whole
    /// corpus), `sampled` (`num_negatives` per query drawn from the whole corpus) or `hard`
    /// (the `num_negatives` highest-scoring non-relevant documents), through a bank
    /// of every document's embedding, encoded with the current model (no dropout, sharded
    /// over ranks) at step 0 and every `bank_refresh_steps` steps. Bank negatives carry no
    /// gradient (the query and the positive do) and are as stale as the last refresh.
    /// `corpus`: every document encoded fresh at every micro-batch, with gradient (needs
    /// `grad_cache_chunk`; costs about three corpus encodings per micro-batch).
    pub negative_bank: NegativeBank,
    /// Re-encode the bank every this many steps (0: once, at step 0). Default 50.
    pub bank_refresh_steps: u64,
    /// DR dual encoders: GradCache (Gao et al., 2021). Encode each micro-batch's queries and
    /// documents in chunks of this many rows without keeping activations, take the loss of
    /// the whole batch on those representations, then re-encode chunk by chunk and
    /// back-propagate each chunk's cached gradient: the gradient of the whole batch at the
    /// activation memory of one chunk. None (default): one pass over the whole batch.
    pub grad_cache_chunk: Option<usize>,
    /// Seed of everything: data order, negatives, initialisation, dropout (per rank). Default 42.
    pub seed: u64,
    /// `fp32` or `bf16` (autocast: CUDA, or a CPU with AVX512-BF16/AMX). Default fp32.
    pub precision: Precision,
    /// Encode each side of a training batch (DR queries and documents, GR encoder inputs)
    /// in length-sorted sub-batches on the CPU: the same function with less padding, but
    /// dropout masks drawn for other shapes than the padded batch's. Default true.
    pub length_sorted: bool,
    /// `cpu`, `cuda` or `auto` (CUDA device `local_rank` when available). Default auto.
    pub device: String,
    /// Intra-op threads per rank; none = libtorch's default (OMP_NUM_THREADS).
    pub threads: Option<usize>,
    /// Checkpoint every this many steps (0 = only at the end and on preemption). Default 0.
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are removed). Default 2.
    pub keep_checkpoints: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 32,
            grad_accum: 1,
            max_steps: 0,
            epochs: 1.0,
            lr: 2e-5,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: None,
            decay: Decay::Linear,
            min_lr_ratio: 0.0,
            max_grad_norm: 1.0,
            temperature: 0.05,
            num_negatives: None,
            loss: ContrastiveLoss::InBatch,
            negative_bank: NegativeBank::None,
            bank_refresh_steps: 50,
            grad_cache_chunk: None,
            seed: 42,
            precision: Precision::Fp32,
            length_sorted: true,
            device: "auto".into(),
            threads: None,
            checkpoint_every: 0,
            keep_checkpoints: 2,
        }
    }
}

/// `[dist]`: how ranks talk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// `auto` (MPI under a launcher, NCCL on CUDA), `mpi`, `nccl`, `local`. Default auto.
    pub backend: String,
    /// DDP gradient bucket size in MiB. Default 25 (PyTorch's).
    pub bucket_mb: usize,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { backend: "auto".into(), bucket_mb: 25 }
    }
}

/// `[eval]`: evaluation after the last step (rank 0 writes it under RUNDIR/eval/).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate at the end of training. Default true.
    pub at_end: bool,
    /// The split evaluated. Default `test`.
    pub split: String,
    /// Documents retrieved per query. Default 100.
    pub k: usize,
    /// Texts encoded per forward. Default 64.
    pub batch_size: usize,
    /// Document truncation at evaluation; none = `data.doc_max_len` (training may use
    /// shorter documents than evaluation to save time).
    pub doc_max_len: Option<usize>,
    /// GR: documents whose indexing example is checked for memorisation (R@1). Default 500.
    pub memorization_docs: usize,
    /// GR: beam width; none = `k` (a beam as wide as the run file is deep).
    pub beam: Option<usize>,
    /// Also compute the Brier score (DR: full softmax over the corpus; GR: over the docid
    /// set) and DR's in-batch-vs-full-softmax gap. Default false.
    pub calibration: bool,
    /// Batch sizes K of the in-batch gap. Default [16, 64, 256, 1024].
    pub gap_k: Vec<usize>,
    /// GR with n-gram docids: retrieve end to end as SEAL does — n-grams decoded under this
    /// FM-index directory (`grdr index fm`), documents ranked by SEAL's scoring. None: the
    /// docid trie of the pre-sampled n-grams.
    pub fm_index: Option<std::path::PathBuf>,
    /// SEAL: tokens per decoded n-gram. Default 10 (SEAL's and Wu et al.'s).
    pub ngram_len: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            at_end: true,
            split: "test".into(),
            k: 100,
            batch_size: 64,
            doc_max_len: None,
            memorization_docs: 500,
            beam: None,
            calibration: false,
            gap_k: vec![16, 64, 256, 1024],
            fm_index: None,
            ngram_len: 10,
        }
    }
}

/// `[log]`: what rank 0 reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One log line (and one metrics.jsonl record) every this many steps. Default 10.
    pub interval: u64,
    /// A progress bar on a terminal. Default true.
    pub progress: bool,
    /// TensorBoard event files in `RUNDIR/tb/` (the figures of metrics.jsonl, the end-of-run
    /// evaluation, the config as text). Default true.
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { interval: 10, progress: true, tensorboard: true }
    }
}

/// Splits `section.key=value` and parses the value as a TOML value (a bare word that is not
/// valid TOML is taken as a string, so `--set model.init=minilm` works unquoted).
fn parse_override(spec: &str) -> Result<(Vec<String>, toml::Value)> {
    let bad = |m: &str| Error::usage("--set", format!("`{spec}`: {m} (expected section.key=value)"));
    let (key, raw) = spec.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let path: Vec<String> = key.trim().split('.').map(|s| s.trim().to_string()).collect();
    if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
        return Err(bad("the key needs a section"));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    Ok((path, value))
}

/// Sets `path` in `table` to `value`, creating sections as needed.
fn apply_override(table: &mut toml::Table, path: &[String], value: toml::Value, spec: &str) -> Result<()> {
    let (last, sections) = path.split_last().expect("checked non-empty");
    let mut at = table;
    for s in sections {
        let entry = at.entry(s.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| Error::usage("--set", format!("`{spec}`: `{s}` is a value, not a section")))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

impl RunConfig {
    /// Reads `path`, applies `overrides` (`section.key=value`), deserialises and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig> {
        // A config that is missing is a usage error (exit 2), one that is not text refused input.
        let text = std::fs::read_to_string(path).map_err(|e| Error::read_text(path, "cannot read the config", e))?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    /// As [`RunConfig::load`] for TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<RunConfig> {
        let config_err = |m: String| Error::usage(origin.to_string(), m.trim_end().to_string());
        let config: RunConfig = if overrides.is_empty() {
            // Straight from the text so errors carry the file's own line and column.
            toml::from_str(text).map_err(|e| config_err(e.to_string()))?
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| config_err(e.to_string()))?;
            for spec in overrides {
                let (key, value) = parse_override(spec)?;
                apply_override(&mut table, &key, value, spec)?;
            }
            let merged = toml::to_string(&table).map_err(|e| config_err(e.to_string()))?;
            toml::from_str(&merged).map_err(|e| match toml::from_str::<RunConfig>(text) {
                // The file itself is wrong: its own error, with the line of the user's file
                // (not of the rewritten copy the overrides were applied to).
                Err(in_file) => config_err(in_file.to_string()),
                Ok(_) => config_err(format!("after --set {}: {}", overrides.join(" --set "), e.message())),
            })?
        };
        config.validate().map_err(|e| match e {
            Error::Usage { option, message } => Error::usage(format!("{origin}: {option}"), message),
            other => other,
        })?;
        Ok(config)
    }

    /// Values that parse but cannot work; each error names its key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let d = &self.data;
        if d.path.as_os_str().is_empty() {
            return Err(Error::usage("data.path", "missing: the dataset directory made by `grdr prepare`"));
        }
        let positive = [
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
            ("data.query_max_len", d.query_max_len),
            ("data.doc_max_len", d.doc_max_len),
            ("data.doc_cache_row_groups", d.doc_cache_row_groups),
            ("data.shuffle_window_row_groups", d.shuffle_window_row_groups),
            ("eval.k", self.eval.k),
            ("eval.batch_size", self.eval.batch_size),
            ("train.keep_checkpoints", t.keep_checkpoints),
            ("train.threads", t.threads.unwrap_or(1)),
            ("eval.beam", self.eval.beam.unwrap_or(1)),
            ("model.colbert_dim", self.model.colbert_dim.max(0) as usize),
            ("model.colbert_query_len", self.model.colbert_query_len.max(0) as usize),
            ("model.dim", self.model.dim.unwrap_or(1).max(0) as usize),
            ("model.pawa_rank", self.model.pawa_rank.max(0) as usize),
            ("model.pawa_layers", self.model.pawa_layers.max(0) as usize),
            ("model.np_clusters", self.model.np_clusters),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::usage(key, "must be at least 1"));
            }
        }
        if self.model.kind != ModelKind::Colbert {
            let set = [
                ("model.alignment", self.model.alignment != Alignment::QueryToDoc),
                ("model.alignment_normalize", self.model.alignment_normalize),
            ];
            if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
                return Err(Error::usage(*key, "token alignment applies to ColBERT models only"));
            }
        }
        if self.model.decoder != DecoderKind::Standard && self.model.kind != ModelKind::Generative {
            return Err(Error::usage("model.decoder", "a decoder variant applies to generative models only"));
        }
        let r = self.model.np_refresh_epochs;
        if !(r >= 0.0 && r.is_finite()) {
            return Err(Error::usage("model.np_refresh_epochs", "must be a number of epochs ≥ 0 (0: never, BASE)"));
        }
        if r > 0.0 && self.model.decoder != DecoderKind::Np {
            return Err(Error::usage("model.np_refresh_epochs", "applies to model.decoder = \"np\" only"));
        }
        if self.model.query_augment_token < 0 {
            return Err(Error::usage("model.query_augment_token", "must be a token id (≥ 0)"));
        }
        if self.eval.gap_k.contains(&0) {
            return Err(Error::usage("eval.gap_k", "batch sizes must be at least 1"));
        }
        if d.query_max_len < 2 || d.doc_max_len < 2 {
            return Err(Error::usage("data.query_max_len/doc_max_len", "must be at least 2 (room for special tokens)"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(Error::usage("train.lr", format!("{} is not a positive learning rate", t.lr)));
        }
        if t.temperature.is_nan() || t.temperature <= 0.0 {
            return Err(Error::usage("train.temperature", "must be positive"));
        }
        if t.max_steps == 0 && (t.epochs.is_nan() || t.epochs <= 0.0) {
            return Err(Error::usage("train.epochs", "must be positive when train.max_steps is 0"));
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return Err(Error::usage("train.beta1/beta2", "must lie in [0, 1)"));
        }
        if t.weight_decay < 0.0 || t.max_grad_norm < 0.0 {
            return Err(Error::usage("train.weight_decay/max_grad_norm", "must not be negative"));
        }
        if t.loss == ContrastiveLoss::Pairwise {
            if self.model.kind == ModelKind::Generative {
                return Err(Error::usage(
                    "train.loss",
                    "`pairwise` is a DR/ColBERT loss; GR trains on the docid likelihood",
                ));
            }
            if d.hard_negatives == 0 {
                return Err(Error::usage(
                    "train.loss",
                    "`pairwise` needs a hard negative per query (set data.hard_negatives = 1, as ColBERTv1)",
                ));
            }
            if t.num_negatives.is_some() {
                return Err(Error::usage("train.num_negatives", "does not apply to train.loss = \"pairwise\""));
            }
        }
        self.check_negative_bank()?;
        self.check_grad_cache()?;
        if !(0.0..=1.0).contains(&d.retrieval_fraction) {
            return Err(Error::usage("data.retrieval_fraction", "must lie in [0, 1]"));
        }
        if !["cpu", "cuda", "auto"].contains(&t.device.as_str()) && !t.device.starts_with("cuda:") {
            return Err(Error::usage("train.device", format!("`{}`: expected cpu, cuda, cuda:N or auto", t.device)));
        }
        self.dist.backend.parse::<Backend>()?;
        if !["mean", "first", "cls"].contains(&self.model.pooling.as_str()) {
            return Err(Error::usage(
                "model.pooling",
                format!("`{}`: expected mean, first or cls", self.model.pooling),
            ));
        }
        if self.model.init == "scratch" && self.model.tokenizer.is_none() {
            return Err(Error::usage("model.tokenizer", "required with model.init = \"scratch\""));
        }
        match (self.model.kind, &self.docids.path) {
            (ModelKind::Generative, None) => {
                return Err(Error::usage("docids.path", "a generative model needs a docid file (`grdr docids`)"))
            }
            (ModelKind::Generative, Some(_)) if self.model.init == "scratch" && self.model.arch != Arch::T5 => {
                return Err(Error::usage("model.arch", "a generative model is a T5"))
            }
            (ModelKind::Dual | ModelKind::Colbert, Some(_)) => {
                return Err(Error::usage("docids.path", "only generative models use docids"))
            }
            _ => {}
        }
        if self.log.interval == 0 {
            return Err(Error::usage("log.interval", "must be at least 1"));
        }
        Ok(())
    }

    /// A negative bank is a dual encoder's, with its positive and the bank's documents as the
    /// only candidates (no hard negatives in the batch), and `num_negatives` only when sampled.
    fn check_negative_bank(&self) -> Result<()> {
        let t = &self.train;
        if t.negative_bank == NegativeBank::None {
            return Ok(());
        }
        let key = "train.negative_bank";
        if self.model.kind != ModelKind::Dual {
            return Err(Error::usage(
                key,
                "a negative bank is for single-vector dual encoders (model.kind = \"dual\")",
            ));
        }
        if t.loss != ContrastiveLoss::InBatch {
            return Err(Error::usage(key, "the bank replaces the batch's negatives: use train.loss = \"in-batch\""));
        }
        if self.data.hard_negatives > 0 {
            return Err(Error::usage(
                key,
                "the bank supplies the negatives: set data.hard_negatives = 0 (the batch holds positives only)",
            ));
        }
        match (t.negative_bank, t.num_negatives) {
            (NegativeBank::Sampled | NegativeBank::Hard, None | Some(0)) => Err(Error::usage(
                "train.num_negatives",
                "a sampled or hard bank needs the number of negatives per query (≥ 1)",
            )),
            (NegativeBank::Full | NegativeBank::Corpus, Some(_)) => Err(Error::usage(
                "train.num_negatives",
                "a full or corpus softmax uses every document; set train.negative_bank = \"sampled\" for a number of them",
            )),
            (NegativeBank::Corpus, None) if t.grad_cache_chunk.is_none() => Err(Error::usage(
                "train.grad_cache_chunk",
                "negative_bank = \"corpus\" encodes the whole corpus with gradient at every micro-batch, which fits \
                 in memory only through GradCache's chunks: set train.grad_cache_chunk (e.g. 64)",
            )),
            _ => Ok(()),
        }
    }

    /// GradCache chunks a dual encoder's batch: at least one row, and only where the loss
    /// couples the examples of a batch (GR's per-token loss is already exact under
    /// `grad_accum`; ColBERT's token matrices are not chunked yet).
    fn check_grad_cache(&self) -> Result<()> {
        match self.train.grad_cache_chunk {
            None => Ok(()),
            Some(0) => Err(Error::usage("train.grad_cache_chunk", "must be at least 1 row")),
            Some(_) if self.model.kind == ModelKind::Generative => Err(Error::usage(
                "train.grad_cache_chunk",
                "GR's loss is a sum over examples: use train.grad_accum for a larger batch",
            )),
            Some(_) if self.model.kind == ModelKind::Colbert => Err(Error::usage(
                "train.grad_cache_chunk",
                "GradCache is for single-vector dual encoders (model.kind = \"dual\"); ColBERT is not chunked",
            )),
            Some(_) => Ok(()),
        }
    }

    /// The resolved config as TOML (every default spelled out): what `config.toml` holds.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the run config serialises to TOML")
    }

    /// Writes the resolved config atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.to_toml();
        crate::atomic::write_file(path, |w| std::io::Write::write_all(w, text.as_bytes()))
    }
}

/// Which collectives a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MPI when started by a launcher, else the world of one; NCCL on top when `device`
    /// is CUDA and NCCL loads.
    Auto,
    /// MPI for everything (CUDA tensors staged through host memory).
    Mpi,
    /// NCCL for CUDA tensors, MPI (or the world of one) for the rest.
    Nccl,
    /// The world of one, whatever the environment says.
    Local,
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Backend> {
        match s {
            "auto" => Ok(Backend::Auto),
            "mpi" => Ok(Backend::Mpi),
            "nccl" => Ok(Backend::Nccl),
            "local" => Ok(Backend::Local),
            other => Err(Error::usage("dist.backend", format!("`{other}`: expected auto, mpi, nccl or local"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[data]\npath = \"ds\"\n";

    #[test]
    fn defaults_fill_everything_but_the_data_path() {
        let c = RunConfig::from_toml(MIN, "t.toml", &[]).unwrap();
        assert_eq!(c.train.batch_size, 32);
        assert_eq!(c.log.interval, 10);
        // The resolved config round-trips.
        let again = RunConfig::from_toml(&c.to_toml(), "resolved", &[]).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn overrides_are_typed_and_checked() {
        let sets = ["train.batch_size=8".to_string(), "model.init=scratch".into(), "model.tokenizer=t5".into()];
        let c = RunConfig::from_toml(MIN, "t.toml", &sets).unwrap();
        assert_eq!(c.train.batch_size, 8);
        assert_eq!(c.model.init, "scratch");
        let err = RunConfig::from_toml(MIN, "t.toml", &["train.batch_size=big".into()]).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = RunConfig::from_toml(MIN, "t.toml", &["train.bogus=1".into()]).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(RunConfig::from_toml(MIN, "t.toml", &["nodot=1".into()]).is_err());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let err = RunConfig::from_toml("[data]\npath = \"x\"\n[train]\nbatchsize = 3\n", "t.toml", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("batchsize") && msg.contains("t.toml"), "{msg}");
        assert_eq!(err.exit_code(), crate::error::exit_code::USAGE);
        let msg = RunConfig::from_toml("[data]\npath = 3\n", "t.toml", &[]).unwrap_err().to_string();
        assert!(msg.contains("path"), "{msg}");
        let msg = RunConfig::from_toml("[train]\nlr = 1e-3\n", "t.toml", &[]).unwrap_err().to_string();
        assert!(msg.contains("data"), "{msg}");
        let msg = RunConfig::from_toml("[data]\npath = \"x\"\n[train]\nbatch_size = 0\n", "t.toml", &[]).unwrap_err();
        assert!(msg.to_string().contains("train.batch_size"), "{msg}");
    }
}
