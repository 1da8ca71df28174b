//! `grdr eval`: distributed evaluation of a trained run or a pretrained model on one split,
//! written as a run directory (run.trec, metrics.json, run.json). Launch N ranks with
//! `launcher/grdr-launch -n N -- grdr eval …`; the files equal a one-process run's.
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::json;
use tch::Device;

use crate::atomic::TempDir;
use crate::config::{ModelConfig, ModelKind, RunConfig};
use crate::data::docid::DocidTable;
use crate::data::Dataset;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::eval::run_eval::{self, EvalOptions, RerankOptions};
use crate::model::colbert::Alignment;
use crate::model::encode::EncodeSpec;
use crate::train::task::{Task, HEAD_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKindArg {
    Dual,
    Colbert,
    Generative,
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
#[command(group(clap::ArgGroup::new("what").required(true).args(["run", "model"])))]
pub struct EvalArgs {
    /// A training run directory: its config.toml and newest checkpoints/step-N/ are evaluated.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// A model to evaluate as is: an artefact name (`minilm`) or an HF directory.
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: what it is.
    #[arg(long, value_enum, default_value = "dual")]
    pub kind: ModelKindArg,
    /// The docid file (`grdr docids`) of a generative --model (a run names its own).
    #[arg(long)]
    pub docids: Option<PathBuf>,
    /// A dataset directory (default with --run: the run's `data.path`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The split whose judged queries are evaluated (default with --run: `eval.split`, else test).
    #[arg(long)]
    pub split: Option<String>,
    /// The run directory to write: run.trec, metrics.json, run.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Documents per query in the run file.
    #[arg(long, default_value_t = 1000)]
    pub k: usize,
    /// Texts per encoder forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Query truncation (tokens, special ones included). Default: the run's, else the model's.
    #[arg(long)]
    pub query_max_len: Option<usize>,
    /// Document truncation. Default: the run's, else the model's (sentence-transformers' max_seq_length).
    #[arg(long)]
    pub doc_max_len: Option<usize>,
    /// Queries per score block (memory: block × row-group rows scores).
    #[arg(long, default_value_t = 1024)]
    pub query_block: i64,
    /// Spill document embeddings to this directory instead of keeping them in memory (DR).
    #[arg(long)]
    pub spill: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (the rank's local GPU when there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// fp32, or bf16 (CUDA only: model and stored embeddings in bf16, scores in f32).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Intra-op CPU threads per rank (default: libtorch's, i.e. OMP_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<i32>,
    /// ColBERT: pool tokens retrieved per query token (candidate stage).
    #[arg(long, default_value_t = 100)]
    pub token_k: usize,
    /// ColBERT: token alignment of the final score.
    #[arg(long, value_enum, default_value = "q2d")]
    pub alignment: AlignArg,
    /// GR: beam width (returns at most this many docids per query).
    #[arg(long, default_value_t = 100)]
    pub beam: usize,
    /// GR: beams decoded together (bounds the KV cache).
    #[arg(long, default_value_t = 1024)]
    pub beam_rows: usize,
    /// The rerank setting: score BM25's top candidates instead of retrieving end to end.
    #[arg(long)]
    pub rerank: bool,
    /// Rerank: BM25 candidates per query.
    #[arg(long, default_value_t = 100)]
    pub rerank_depth: usize,
    /// Rerank: add the relevant documents to the candidates (inflates every metric; recorded).
    #[arg(long)]
    pub rerank_add_gold: bool,
    /// Brier score (DR: full softmax over the corpus; GR: over the docid set) and DR's
    /// in-batch-vs-full-softmax gap.
    #[arg(long)]
    pub calibration: bool,
    /// Softmax temperature of the calibration (default: the run's train.temperature, else 0.05).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Batch sizes K of the in-batch gap, comma-separated.
    #[arg(long, default_value = "16,64,256,1024", value_delimiter = ',')]
    pub gap_k: Vec<usize>,
    /// GR: decode this many sampled documents' indexing inputs and report memorisation R@1
    /// (default with --run: the run's `eval.memorization_docs`, else 0).
    #[arg(long)]
    pub memorization_docs: Option<usize>,
    /// With --model, ColBERT: per-token dimension, query length, query augmentation token.
    #[arg(long, default_value_t = 128)]
    pub colbert_dim: i64,
    #[arg(long, default_value_t = 32)]
    pub colbert_query_len: i64,
    #[arg(long, default_value_t = 103)]
    pub query_augment_token: i64,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
}

/// Copies `grdr_head.*` tensors of an HF directory's weights into `task`'s heads, if any.
fn load_head_weights(dir: &Path, task: &Task) -> Result<usize> {
    let vars = task.vs.variables();
    let mut n = 0;
    for file in crate::model::hf::weight_files(dir)? {
        crate::model::safetensors::for_each_tensor(&file, |name, t| {
            if let (true, Some(v)) = (name.starts_with(HEAD_PREFIX), vars.get(name)) {
                tch::no_grad(|| v.shallow_clone().copy_(&t.to_kind(v.kind())));
                n += 1;
            }
            Ok(())
        })?;
    }
    Ok(n)
}

impl EvalArgs {
    pub fn run(&self) -> Result<()> {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        // Hits and normalisers travel as small CPU tensors: MPI (or the world of one) suffices.
        let comm = dist::init(dist::Backend::Mpi, Device::Cpu)?;
        let result = self.run_rank(&*comm);
        dist::exit_on_error(&*comm, result)
    }

    fn run_rank(&self, comm: &dyn Comm) -> Result<()> {
        let world = comm.world();
        let local_rank = world.local_rank;
        let device = crate::train::trainer::pick_device(&self.device, local_rank)?;
        let bf16 = match self.precision.as_str() {
            "auto" => device.is_cuda(),
            "bf16" => true,
            "fp32" => false,
            other => return Err(Error::usage("--precision", format!("`{other}`: expected auto, fp32 or bf16"))),
        };
        // Rank 0 owns the output; refuse an existing one before any work.
        let out = if world.is_coordinator() { Some(TempDir::new(&self.output, self.overwrite)?) } else { None };

        // ---- The model: a run's config + newest checkpoint, or a model as is -------------
        let (mut model_cfg, data, split, temperature, q_len, d_len, docids_path, ckpt, memorization) =
            match (&self.run, &self.model) {
                (Some(run), _) => {
                    let cfg = RunConfig::load(&run.join("config.toml"), &[])?;
                    let ckpt = crate::train::checkpoint::latest(run)
                        .ok_or_else(|| Error::usage("--run", format!("{} has no checkpoints/step-N", run.display())))?;
                    (
                        cfg.model.clone(),
                        self.data.clone().unwrap_or(cfg.data.path.clone()),
                        self.split.clone().unwrap_or(cfg.eval.split.clone()),
                        self.temperature.unwrap_or(cfg.train.temperature),
                        self.query_max_len.unwrap_or(cfg.data.query_max_len),
                        self.doc_max_len.unwrap_or(cfg.eval.doc_max_len.unwrap_or(cfg.data.doc_max_len)),
                        self.docids.clone().or(cfg.docids.path.clone()),
                        Some(ckpt),
                        (self.memorization_docs.unwrap_or(cfg.eval.memorization_docs), cfg.train.seed),
                    )
                }
                (None, Some(model)) => {
                    let dir = crate::assets::resolve(model)?;
                    let spec = EncodeSpec::from_model_dir(&dir);
                    let cfg = ModelConfig {
                        kind: match self.kind {
                            ModelKindArg::Dual => ModelKind::Dual,
                            ModelKindArg::Colbert => ModelKind::Colbert,
                            ModelKindArg::Generative => ModelKind::Generative,
                        },
                        init: model.clone(),
                        pooling: format!("{:?}", spec.pooling).to_lowercase(),
                        normalize: spec.normalize,
                        colbert_dim: self.colbert_dim,
                        colbert_query_len: self.colbert_query_len,
                        query_augment_token: self.query_augment_token,
                        ..ModelConfig::default()
                    };
                    let data = self.data.clone().ok_or_else(|| Error::usage("--data", "required with --model"))?;
                    (
                        cfg,
                        data,
                        self.split.clone().unwrap_or_else(|| "test".into()),
                        self.temperature.unwrap_or(0.05),
                        self.query_max_len.unwrap_or(spec.max_len),
                        self.doc_max_len.unwrap_or(spec.max_len),
                        self.docids.clone(),
                        None,
                        (self.memorization_docs.unwrap_or(0), 42),
                    )
                }
                (None, None) => unreachable!("clap requires --run or --model"),
            };
        model_cfg.no_dropout = true;
        let docids = docids_path.as_deref().map(DocidTable::read).transpose()?;
        // Parameters a checkpoint does not provide (an untrained ColBERT head, new docid
        // tokens) are drawn from a fixed seed: the same on every rank and every run.
        tch::manual_seed(0);
        let mut task = Task::build(&model_cfg, device, docids.as_ref())?;
        match (&ckpt, &self.model) {
            (Some(ckpt), _) => crate::train::checkpoint::load_model(ckpt, &task.vs)?,
            (None, Some(m)) => {
                let n = load_head_weights(&crate::assets::resolve(m)?, &task)?;
                if n == 0 && model_cfg.kind == ModelKind::Colbert {
                    tracing::warn!("{m} has no grdr_head weights: the ColBERT projection is random (untrained)");
                }
            }
            _ => {}
        }
        if bf16 {
            task.vs.bfloat16();
        }
        let ds = Dataset::open(&data)?;
        let opts = EvalOptions {
            split: split.clone(),
            k: self.k,
            batch_size: self.batch_size,
            query_max_len: q_len,
            doc_max_len: d_len,
            query_block: self.query_block,
            spill: self.spill.as_ref().map(|s| s.join(format!("rank-{}", world.rank))),
            device,
            bf16_store: bf16,
            token_k: self.token_k,
            alignment: match self.alignment {
                AlignArg::Q2d => Alignment::QueryToDoc,
                AlignArg::D2qSoft => Alignment::DocToQuerySoft,
                AlignArg::D2qMax => Alignment::DocToQueryMax,
            },
            beam: self.beam,
            beam_rows: self.beam_rows,
            rerank: self.rerank.then_some(RerankOptions { depth: self.rerank_depth, add_gold: self.rerank_add_gold }),
            calibration: self.calibration,
            temperature,
            gap_ks: self.gap_k.clone(),
            memorization_docs: if model_cfg.kind == ModelKind::Generative { memorization.0 } else { 0 },
            memorization_seed: memorization.1,
        };
        let outcome = run_eval::evaluate(comm, &task, &ds, docids.as_ref(), &opts)?;
        let (Some(outcome), Some(out)) = (outcome, out) else { return Ok(()) };

        // ---- Rank 0: metrics and files -------------------------------------------------
        let mut info = serde_json::Map::new();
        info.insert("command".into(), json!("eval"));
        info.insert("grdr_version".into(), json!(crate::VERSION));
        info.insert("model".into(), json!(self.run.as_ref().map(|r| r.display().to_string()).or(self.model.clone())));
        info.insert("checkpoint".into(), json!(ckpt.map(|c| c.display().to_string())));
        info.insert("kind".into(), json!(format!("{:?}", model_cfg.kind).to_lowercase()));
        info.insert("data".into(), json!(data.display().to_string()));
        info.insert("split".into(), json!(split));
        info.insert("k".into(), json!(self.k));
        info.insert("device".into(), json!(format!("{device:?}")));
        info.insert("precision".into(), json!(if bf16 { "bf16" } else { "fp32" }));
        info.insert("query_max_len".into(), json!(q_len));
        info.insert("doc_max_len".into(), json!(d_len));
        info.insert("threads".into(), json!(tch::get_num_threads()));
        let title_model = info["model"].as_str().unwrap_or("model").to_string();
        let (metrics, _) = run_eval::write_outcome(out.path(), &ds, &split, &outcome, info, "grdr-eval")?;
        let dest = out.commit()?;
        let title = format!(
            "{} {} ({} queries){}",
            title_model,
            split,
            metrics.queries,
            if self.rerank_add_gold { " — rerank with gold added: inflated" } else { "" }
        );
        crate::cmd::print_metrics_table(&title, &metrics);
        print_extras(&outcome.metrics_extra);
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }
}

/// The figures beside the metrics table: calibration, GR memorisation.
pub fn print_extras(extra: &serde_json::Map<String, serde_json::Value>) {
    if let Some(b) = extra.get("Brier") {
        println!("Brier: {b}\n");
    }
    if let Some(m) = extra.get("memorization_R@1") {
        println!(
            "memorization (R@1 of {} documents' indexing inputs): {:.4}\n",
            extra.get("memorization_docs").unwrap_or(&json!(0)),
            m.as_f64().unwrap_or(0.0)
        );
    }
}
