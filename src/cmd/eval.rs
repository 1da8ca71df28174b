//! `grdr eval`: distributed evaluation of a trained run or a pretrained model on one split,
//! written as a run directory (run.trec, metrics.json, run.json). Launch N ranks with
//! `launcher/grdr-launch -n N -- grdr eval …`; the files equal a one-process run's.
//!
//! Defaults: with `--run`, the run's own `[eval]` section (what the end of `grdr train`
//! evaluated with — `EvalOptions::for_run`); with `--model`, `[eval]`'s defaults. A flag
//! changes only what it names.
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;
use tch::Device;

use super::subject::SubjectArgs;
use crate::atomic::TempDir;
use crate::config::ModelKind;
use crate::data::docid::DocidTable;
use crate::data::Dataset;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::eval::run_eval::{self, EvalSummary};
use crate::eval::{EvalOptions, RerankOptions};
use crate::model::colbert::Alignment;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RerankArg {
    /// BM25's top `--rerank-depth` candidates.
    Bm25,
    /// Wu et al.'s setting: BM25 top-100 plus the relevant documents; n-gram docids scored
    /// by sampled spans of the document.
    Paper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlignArg {
    /// q→d MaxSim (ColBERT).
    Q2d,
    /// q←d, softmax over query tokens per document token (GR's alignment).
    D2qSoft,
    /// q←d, hard max over query tokens per document token.
    D2qMax,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// The split whose judged queries are evaluated (default: `eval.split`, i.e. test).
    #[arg(long)]
    pub split: Option<String>,
    /// The run directory to write: run.trec, metrics.json, run.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Documents per query in the run file (default: `eval.k`, 100).
    #[arg(long)]
    pub k: Option<usize>,
    /// Texts per encoder forward pass (default: `eval.batch_size`, 64).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Query truncation (tokens, special ones included). Default: the run's, else the model's.
    #[arg(long)]
    pub query_max_len: Option<usize>,
    /// Document truncation. Default: the run's, else the model's (sentence-transformers' max_seq_length).
    #[arg(long)]
    pub doc_max_len: Option<usize>,
    /// Queries per score block (memory: block × row-group rows scores; default 1024).
    #[arg(long)]
    pub query_block: Option<i64>,
    /// Spill document embeddings to this directory instead of keeping them in memory (DR).
    #[arg(long)]
    pub spill: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (the rank's local GPU when there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (bf16 on CUDA, fp32 on the CPU), fp32, or bf16 (model and stored embeddings in
    /// bf16, scores in f32; on the CPU only with AVX512-BF16 or AMX).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Intra-op CPU threads per rank (default: libtorch's, i.e. OMP_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<i32>,
    /// ColBERT: pool tokens retrieved per query token (candidate stage; default 100).
    #[arg(long)]
    pub token_k: Option<usize>,
    /// ColBERT end to end over a compressed token index: k-means centroids + b-bit
    /// residuals (ColBERTv2), candidates by centroid probing and centroid interaction (PLAID),
    /// MaxSim over decompressed vectors. Memory per token 4 + dim·nbits/8 bytes.
    #[arg(long)]
    pub compress: bool,
    /// --compress: bits per residual dimension, 1, 2, 4 or 8 (default 2).
    #[arg(long)]
    pub nbits: Option<i64>,
    /// --compress: k-means centroids (default 2^⌊log2(16·√tokens)⌋, ColBERTv2's rule).
    #[arg(long)]
    pub centroids: Option<usize>,
    /// --compress: centroids probed per query token (default 4).
    #[arg(long)]
    pub nprobe: Option<usize>,
    /// --compress: PLAID's centroid pruning: in the first cut a token counts only when its
    /// centroid's best query-token score reaches this (default 0.45; -inf keeps every one).
    #[arg(long, allow_hyphen_values = true)]
    pub centroid_threshold: Option<f64>,
    /// --compress: candidates per query kept by the first (pruned) cut (default 1024).
    #[arg(long)]
    pub ndocs: Option<usize>,
    /// --compress: of those, the best by exact centroid interaction that MaxSim rescores
    /// over decompressed vectors (default all; PLAID's ndocs / 4 is faster, recalls less).
    #[arg(long)]
    pub rescore: Option<usize>,
    /// ColBERT: token alignment of the final score (default: the model's `model.alignment`).
    #[arg(long, value_enum)]
    pub alignment: Option<AlignArg>,
    /// GR: beam width, returns at most this many docids per query (default: `eval.beam`, else k).
    #[arg(long)]
    pub beam: Option<usize>,
    /// GR: beams decoded together (bounds the KV cache; default 1024).
    #[arg(long)]
    pub beam_rows: Option<usize>,
    /// The rerank setting: score BM25's top candidates instead of retrieving end to end.
    /// `--rerank` (= `bm25`): BM25's top-`--rerank-depth`; `--rerank paper`: Wu et al.'s
    /// setting — BM25 top-100 plus the relevant documents (flagged as inflated in the
    /// metrics) and, for n-gram docids, their span score.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "bm25")]
    pub rerank: Option<RerankArg>,
    /// Rerank: BM25 candidates per query (default 100).
    #[arg(long)]
    pub rerank_depth: Option<usize>,
    /// Rerank: add the relevant documents to the candidates (inflates every metric; recorded).
    #[arg(long)]
    pub rerank_add_gold: bool,
    /// GR, n-gram docids: SEAL end to end — decode n-grams under this FM-index directory
    /// (`grdr index fm`) and rank documents by SEAL's scoring (default: `eval.fm_index`).
    #[arg(long)]
    pub fm_index: Option<PathBuf>,
    /// SEAL: tokens per decoded n-gram (default: `eval.ngram_len`, 10).
    #[arg(long)]
    pub ngram_len: Option<usize>,
    /// Brier score (DR: full softmax over the corpus; GR: over the docid set) and DR's
    /// in-batch-vs-full-softmax gap (default: `eval.calibration`, off).
    #[arg(long)]
    pub calibration: bool,
    /// Softmax temperature of the calibration (default: the run's train.temperature, else 0.05).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Batch sizes K of the in-batch gap, comma-separated (default: `eval.gap_k`, 16,64,256,1024).
    #[arg(long, value_delimiter = ',')]
    pub gap_k: Option<Vec<usize>>,
    /// GR: decode this many sampled documents' indexing inputs and report memorisation R@1
    /// (default: `eval.memorization_docs`).
    #[arg(long)]
    pub memorization_docs: Option<usize>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Recompute the dataset's sha256 checksums first (file sizes are always checked).
    #[arg(long)]
    pub verify: bool,
}

impl EvalArgs {
    pub fn run(&self) -> Result<()> {
        if self.threads.is_some_and(|t| t < 1) {
            return Err(Error::usage("--threads", "must be at least 1"));
        }
        let _threads = self.threads.map(crate::parallel::IntraOpThreads::set);
        // Hits and normalisers travel as small CPU tensors: MPI (or the world of one) suffices.
        let comm = dist::init(dist::Backend::Mpi, Device::Cpu)?;
        let result = self.run_rank(&*comm);
        dist::exit_on_error(&*comm, result)
    }

    fn run_rank(&self, comm: &dyn Comm) -> Result<()> {
        let world = comm.world();
        let device = crate::device::parse_device(&self.device, world.local_rank, "--device")?;
        let bf16 = match self.precision.as_str() {
            "auto" => device.is_cuda(),
            "bf16" if device.is_cuda() => true,
            "bf16" => {
                crate::model::precision::check_cpu_bf16("--precision")?;
                true
            }
            "fp32" => false,
            other => return Err(Error::usage("--precision", format!("`{other}`: expected auto, fp32 or bf16"))),
        };
        let subject = self.subject.resolve(device)?;
        let mut opts = self.apply_flags(subject.opts.clone(), subject.model.kind)?;
        opts.spill = self.spill.as_ref().map(|s| s.join(format!("rank-{}", world.rank)));
        opts.bf16_store = bf16;
        opts.validate()?;
        // Rank 0 owns the output; refuse an existing one before any work.
        let out = if world.is_coordinator() { Some(TempDir::new(&self.output, self.overwrite)?) } else { None };

        let docids = subject.docids.as_deref().map(DocidTable::read).transpose()?;
        let mut task = self.subject.build_task(&subject, device, docids.as_ref())?;
        task.check_lengths(&[("--query-max-len", opts.query_max_len), ("--doc-max-len", opts.doc_max_len)])?;
        if bf16 {
            task.vs.bfloat16();
        }
        let ds = Dataset::open(&subject.data)?;
        if self.verify {
            ds.verify()?;
        }
        let outcome = run_eval::evaluate(comm, &task, &ds, docids.as_ref(), &opts)?;
        let (Some(outcome), Some(out)) = (outcome, out) else { return Ok(()) };

        // ---- Rank 0: metrics and files -------------------------------------------------
        let model_name = self.subject.name();
        let mut info = serde_json::Map::new();
        info.insert("command".into(), json!("eval"));
        info.insert("grdr_version".into(), json!(crate::VERSION));
        info.insert("model".into(), json!(model_name));
        info.insert("checkpoint".into(), json!(subject.checkpoint.as_ref().map(|c| c.display().to_string())));
        info.insert("kind".into(), json!(format!("{:?}", subject.model.kind).to_lowercase()));
        info.insert("data".into(), json!(subject.data.display().to_string()));
        info.insert("split".into(), json!(opts.split));
        info.insert("k".into(), json!(opts.k));
        info.insert("device".into(), json!(format!("{device:?}")));
        info.insert("precision".into(), json!(if bf16 { "bf16" } else { "fp32" }));
        info.insert("query_max_len".into(), json!(opts.query_max_len));
        info.insert("doc_max_len".into(), json!(opts.doc_max_len));
        info.insert("threads".into(), json!(tch::get_num_threads()));
        let metrics = run_eval::write_outcome(out.path(), &ds, &opts, &outcome, info, "grdr-eval")?;
        let dest = out.commit()?;
        let title = format!(
            "{} {} ({} queries){}",
            model_name.as_deref().unwrap_or("model"),
            opts.split,
            metrics.queries,
            if opts.rerank.as_ref().is_some_and(|r| r.add_gold) { " — rerank with gold added: inflated" } else { "" }
        );
        super::print_summary(&EvalSummary { title, metrics, extra: outcome.metrics_extra });
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }

    /// `opts` with every flag given on the command line applied (and only those).
    fn apply_flags(&self, mut opts: EvalOptions, kind: ModelKind) -> Result<EvalOptions> {
        if self.rerank_add_gold && self.rerank.is_none() {
            return Err(Error::usage("--rerank-add-gold", "only with --rerank"));
        }
        if self.rerank_depth.is_some() && self.rerank.is_none() {
            return Err(Error::usage("--rerank-depth", "only with --rerank"));
        }
        let gr_only = [
            ("--beam", self.beam.is_some()),
            ("--beam-rows", self.beam_rows.is_some()),
            ("--fm-index", self.fm_index.is_some()),
            ("--ngram-len", self.ngram_len.is_some()),
        ];
        if kind != ModelKind::Generative {
            if let Some((flag, _)) = gr_only.iter().find(|(_, given)| *given) {
                return Err(Error::usage(*flag, "applies to generative models only"));
            }
        }
        let colbert_only = [
            ("--token-k", self.token_k.is_some()),
            ("--alignment", self.alignment.is_some()),
            ("--compress", self.compress),
        ];
        let compress_only = [
            ("--nbits", self.nbits.is_some()),
            ("--centroids", self.centroids.is_some()),
            ("--nprobe", self.nprobe.is_some()),
            ("--ndocs", self.ndocs.is_some()),
            ("--centroid-threshold", self.centroid_threshold.is_some()),
            ("--rescore", self.rescore.is_some()),
        ];
        if !self.compress {
            if let Some((flag, _)) = compress_only.iter().find(|(_, given)| *given) {
                return Err(Error::usage(*flag, "applies with --compress only"));
            }
        }
        if kind != ModelKind::Colbert {
            if let Some((flag, _)) = colbert_only.iter().find(|(_, given)| *given) {
                return Err(Error::usage(*flag, "applies to ColBERT models only"));
            }
        }
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        if let Some(s) = &self.split {
            opts.split = s.clone();
        }
        set(&mut opts.k, self.k);
        set(&mut opts.batch_size, self.batch_size);
        set(&mut opts.query_max_len, self.query_max_len);
        set(&mut opts.doc_max_len, self.doc_max_len);
        set(&mut opts.token_k, self.token_k);
        if self.compress {
            let d = crate::eval::options::Compression::default();
            opts.compress = Some(crate::eval::options::Compression {
                nbits: self.nbits.unwrap_or(d.nbits),
                centroids: self.centroids.or(d.centroids),
                nprobe: self.nprobe.unwrap_or(d.nprobe),
                ndocs: self.ndocs.unwrap_or(d.ndocs),
                threshold: self.centroid_threshold.unwrap_or(d.threshold),
                rescore: self.rescore.or(d.rescore),
                ..d
            });
        }
        if self.beam.is_some() {
            opts.beam = self.beam;
        }
        set(&mut opts.beam_rows, self.beam_rows);
        set(&mut opts.memorization_docs, self.memorization_docs);
        if let Some(b) = self.query_block {
            opts.query_block = b;
        }
        if let Some(a) = self.alignment {
            opts.alignment = Some(match a {
                AlignArg::Q2d => Alignment::QueryToDoc,
                AlignArg::D2qSoft => Alignment::DocToQuerySoft,
                AlignArg::D2qMax => Alignment::DocToQueryMax,
            });
        }
        if let Some(mode) = self.rerank {
            let paper = mode == RerankArg::Paper;
            opts.rerank = Some(RerankOptions {
                depth: self.rerank_depth.unwrap_or(RerankOptions::DEFAULT_DEPTH),
                add_gold: self.rerank_add_gold || paper,
                paper,
            });
        }
        if let Some(dir) = &self.fm_index {
            opts.fm_index = Some(dir.clone());
        }
        if opts.rerank.is_some() {
            if self.fm_index.is_some() {
                return Err(Error::usage("--fm-index", "SEAL end to end cannot be combined with --rerank"));
            }
            opts.fm_index = None; // a run's `eval.fm_index` is its end-to-end setting
        }
        set(&mut opts.ngram_len, self.ngram_len);
        opts.calibration |= self.calibration;
        if let Some(t) = self.temperature {
            opts.temperature = t;
        }
        if let Some(g) = &self.gap_k {
            opts.gap_ks = g.clone();
        }
        if kind != ModelKind::Generative {
            opts.memorization_docs = 0;
        }
        Ok(opts)
    }
}
