//! `grdr eval`: distributed evaluation of a trained run or a pretrained model on one split,
//! written as a run directory (run.trec, metrics.json, run.json). Launch N ranks with
//! `launcher/grdr-launch -n N -- grdr eval …`; the files equal a one-process run's.
//!
//! Defaults: with `--run`, the run's own `[eval]` section (what the end of `grdr train`
//! evaluated with — `EvalOptions::for_run`); with `--model`, `[eval]`'s defaults. A flag
//! changes only what it names.
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
use crate::eval::run_eval::{self, EvalSummary};
use crate::eval::{EvalOptions, RerankOptions};
use crate::model::colbert::Alignment;
use crate::model::encode::EncodeSpec;
use crate::model::task::{Task, HEAD_PREFIX};
use crate::train::export::ExportInfo;

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
    /// With --run: evaluate this checkpoint (`step-N`) instead of the newest.
    #[arg(long, requires = "run")]
    pub checkpoint: Option<String>,
    /// A model to evaluate as is: an artefact name (`minilm`) or an HF directory.
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: what it is (default dual; a run's config says it).
    #[arg(long, value_enum)]
    pub kind: Option<ModelKindArg>,
    /// The docid file (`grdr docids`) of a generative --model (a run names its own).
    #[arg(long)]
    pub docids: Option<PathBuf>,
    /// A dataset directory (default with --run: the run's `data.path`).
    #[arg(long)]
    pub data: Option<PathBuf>,
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
    /// fp32, or bf16 (CUDA only: model and stored embeddings in bf16, scores in f32).
    #[arg(long, default_value = "auto")]
    pub precision: String,
    /// Intra-op CPU threads per rank (default: libtorch's, i.e. OMP_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<i32>,
    /// ColBERT: pool tokens retrieved per query token (candidate stage; default 100).
    #[arg(long)]
    pub token_k: Option<usize>,
    /// ColBERT: token alignment of the final score (default q2d).
    #[arg(long, value_enum)]
    pub alignment: Option<AlignArg>,
    /// GR: beam width, returns at most this many docids per query (default: `eval.beam`, else k).
    #[arg(long)]
    pub beam: Option<usize>,
    /// GR: beams decoded together (bounds the KV cache; default 1024).
    #[arg(long)]
    pub beam_rows: Option<usize>,
    /// The rerank setting: score BM25's top candidates instead of retrieving end to end.
    #[arg(long)]
    pub rerank: bool,
    /// Rerank: BM25 candidates per query (default 100).
    #[arg(long)]
    pub rerank_depth: Option<usize>,
    /// Rerank: add the relevant documents to the candidates (inflates every metric; recorded).
    #[arg(long)]
    pub rerank_add_gold: bool,
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
    /// With --model, ColBERT: per-token dimension, query length, query augmentation token
    /// (defaults 128, 32, 103; a run's config fixes them).
    #[arg(long)]
    pub colbert_dim: Option<i64>,
    #[arg(long)]
    pub colbert_query_len: Option<i64>,
    #[arg(long)]
    pub query_augment_token: Option<i64>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Recompute the dataset's sha256 checksums first (file sizes are always checked).
    #[arg(long)]
    pub verify: bool,
}

/// What is evaluated: the model's config, its weights, where its data and docids are.
struct Subject {
    model: ModelConfig,
    checkpoint: Option<PathBuf>,
    data: PathBuf,
    docids: Option<PathBuf>,
    /// The options before this invocation's flags: the run's, or the defaults for a model.
    opts: EvalOptions,
}

/// Copies `grdr_head.*` tensors of an HF directory's weights (and of a grdr export's
/// `grdr_head.safetensors`) into `task`'s heads, if any.
fn load_head_weights(dir: &Path, task: &Task) -> Result<usize> {
    let vars = task.vs.variables();
    let mut n = 0;
    let mut files = crate::model::hf::weight_files(dir)?;
    files.extend(Some(dir.join("grdr_head.safetensors")).filter(|f| f.is_file()));
    for file in files {
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
                return Err(Error::usage("--precision", "bf16 needs a CUDA device (--device); use fp32 on the CPU"))
            }
            "fp32" => false,
            other => return Err(Error::usage("--precision", format!("`{other}`: expected auto, fp32 or bf16"))),
        };
        let subject = self.subject(device)?;
        let mut opts = self.apply_flags(subject.opts.clone(), subject.model.kind)?;
        opts.spill = self.spill.as_ref().map(|s| s.join(format!("rank-{}", world.rank)));
        opts.bf16_store = bf16;
        opts.validate()?;
        // Rank 0 owns the output; refuse an existing one before any work.
        let out = if world.is_coordinator() { Some(TempDir::new(&self.output, self.overwrite)?) } else { None };

        let docids = subject.docids.as_deref().map(DocidTable::read).transpose()?;
        let mut task = self.build_task(&subject, device, docids.as_ref())?;
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
        let model_name = self.run.as_ref().map(|r| r.display().to_string()).or(self.model.clone());
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
            if self.rerank_add_gold { " — rerank with gold added: inflated" } else { "" }
        );
        super::print_summary(&EvalSummary { title, metrics, extra: outcome.metrics_extra });
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }

    /// The model and the options it starts from: a run's config + newest checkpoint, or a
    /// model directory as it is.
    fn subject(&self, device: Device) -> Result<Subject> {
        match (&self.run, &self.model) {
            (Some(run), _) => {
                // The run's config fixes what the model is: flags that would contradict it
                // are refused rather than silently ignored.
                let fixed = [
                    ("--kind", self.kind.is_some()),
                    ("--colbert-dim", self.colbert_dim.is_some()),
                    ("--colbert-query-len", self.colbert_query_len.is_some()),
                    ("--query-augment-token", self.query_augment_token.is_some()),
                ];
                if let Some((flag, _)) = fixed.iter().find(|(_, given)| *given) {
                    return Err(Error::usage(*flag, "only with --model: the run's config.toml fixes it"));
                }
                if !run.join("config.toml").is_file() {
                    return Err(Error::usage(
                        "--run",
                        format!("{} is not a run directory (no config.toml)", run.display()),
                    ));
                }
                let cfg = RunConfig::load(&run.join("config.toml"), &[])?;
                let checkpoint = match &self.checkpoint {
                    Some(name) => crate::train::checkpoint::dir(run).join(name),
                    None => crate::train::checkpoint::latest(run)
                        .ok_or_else(|| Error::usage("--run", format!("{} has no checkpoints/step-N", run.display())))?,
                };
                if !checkpoint.is_dir() {
                    let have = crate::train::checkpoint::list(run);
                    return Err(Error::usage(
                        "--checkpoint",
                        format!("{} does not exist (steps: {have:?})", checkpoint.display()),
                    ));
                }
                // Every file of the checkpoint against its recorded size and sha256: a damaged
                // checkpoint is refused (exit 3, the file named), never evaluated.
                crate::train::checkpoint::verify(&checkpoint)?;
                Ok(Subject {
                    opts: EvalOptions::for_run(&cfg, device),
                    data: self.data.clone().unwrap_or(cfg.data.path.clone()),
                    docids: self.docids.clone().or(cfg.docids.path.clone()),
                    checkpoint: Some(checkpoint),
                    model: cfg.model,
                })
            }
            (None, Some(model)) => {
                let dir = crate::assets::resolve(model)?;
                let kind = self.kind.map(|k| match k {
                    ModelKindArg::Dual => ModelKind::Dual,
                    ModelKindArg::Colbert => ModelKind::Colbert,
                    ModelKindArg::Generative => ModelKind::Generative,
                });
                let data = self.data.clone().ok_or_else(|| Error::usage("--data", "required with --model"))?;
                // A grdr export says what it is (grdr.json); any other directory is read as
                // sentence-transformers describes it, with the flags' head settings.
                if let Some(info) = ExportInfo::read(&dir)? {
                    let m = &info.model;
                    if kind.is_some_and(|k| k != m.kind) {
                        return Err(Error::usage(
                            "--kind",
                            format!("{} is a {:?} model (grdr.json)", dir.display(), m.kind),
                        ));
                    }
                    // The run's [model] as trained; the exported weights (and tokenizer) are
                    // what it is initialised from.
                    let cfg = ModelConfig {
                        init: model.clone(),
                        tokenizer: None,
                        colbert_dim: self.colbert_dim.unwrap_or(m.colbert_dim),
                        colbert_query_len: self.colbert_query_len.unwrap_or(m.colbert_query_len),
                        query_augment_token: self.query_augment_token.unwrap_or(m.query_augment_token),
                        ..m.clone()
                    };
                    let mut opts = EvalOptions::for_model(info.doc_max_len, device);
                    opts.query_max_len = info.query_max_len;
                    return Ok(Subject {
                        opts,
                        data,
                        docids: self.docids.clone().or(info.docids),
                        checkpoint: None,
                        model: cfg,
                    });
                }
                let spec = EncodeSpec::from_model_dir(&dir)?;
                let defaults = ModelConfig::default();
                let cfg = ModelConfig {
                    kind: kind.unwrap_or(ModelKind::Dual),
                    init: model.clone(),
                    pooling: format!("{:?}", spec.pooling).to_lowercase(),
                    normalize: spec.normalize,
                    colbert_dim: self.colbert_dim.unwrap_or(defaults.colbert_dim),
                    colbert_query_len: self.colbert_query_len.unwrap_or(defaults.colbert_query_len),
                    query_augment_token: self.query_augment_token.unwrap_or(defaults.query_augment_token),
                    ..defaults
                };
                let opts = EvalOptions::for_model(spec.max_len, device);
                Ok(Subject { opts, data, docids: self.docids.clone(), checkpoint: None, model: cfg })
            }
            (None, None) => unreachable!("clap requires --run or --model"),
        }
    }

    /// `opts` with every flag given on the command line applied (and only those).
    fn apply_flags(&self, mut opts: EvalOptions, kind: ModelKind) -> Result<EvalOptions> {
        if self.rerank_add_gold && !self.rerank {
            return Err(Error::usage("--rerank-add-gold", "only with --rerank"));
        }
        if self.rerank_depth.is_some() && !self.rerank {
            return Err(Error::usage("--rerank-depth", "only with --rerank"));
        }
        let gr_only = [("--beam", self.beam.is_some()), ("--beam-rows", self.beam_rows.is_some())];
        if kind != ModelKind::Generative {
            if let Some((flag, _)) = gr_only.iter().find(|(_, given)| *given) {
                return Err(Error::usage(*flag, "applies to generative models only"));
            }
        }
        let colbert_only = [("--token-k", self.token_k.is_some()), ("--alignment", self.alignment.is_some())];
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
        if self.beam.is_some() {
            opts.beam = self.beam;
        }
        set(&mut opts.beam_rows, self.beam_rows);
        set(&mut opts.memorization_docs, self.memorization_docs);
        if let Some(b) = self.query_block {
            opts.query_block = b;
        }
        if let Some(a) = self.alignment {
            opts.alignment = match a {
                AlignArg::Q2d => Alignment::QueryToDoc,
                AlignArg::D2qSoft => Alignment::DocToQuerySoft,
                AlignArg::D2qMax => Alignment::DocToQueryMax,
            };
        }
        if self.rerank {
            opts.rerank = Some(RerankOptions {
                depth: self.rerank_depth.unwrap_or(RerankOptions::DEFAULT_DEPTH),
                add_gold: self.rerank_add_gold,
            });
        }
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

    /// The model with its trained weights: a run's checkpoint, or a model directory's heads.
    fn build_task(&self, subject: &Subject, device: Device, docids: Option<&DocidTable>) -> Result<Task> {
        let mut model_cfg = subject.model.clone();
        model_cfg.no_dropout = true;
        // Parameters a checkpoint does not provide (an untrained ColBERT head, new docid
        // tokens) are drawn from a fixed seed: the same on every rank and every run.
        tch::manual_seed(0);
        let task = Task::build(&model_cfg, device, docids)?;
        match (&subject.checkpoint, &self.model) {
            (Some(ckpt), _) => crate::train::checkpoint::load_model(ckpt, &task.vs)?,
            (None, Some(m)) => {
                let n = load_head_weights(&crate::assets::resolve(m)?, &task)?;
                if n == 0 && model_cfg.kind == ModelKind::Colbert {
                    tracing::warn!("{m} has no grdr_head weights: the ColBERT projection is random (untrained)");
                }
            }
            _ => {}
        }
        Ok(task)
    }
}
