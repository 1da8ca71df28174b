//! The model a command works on, named the same way by `grdr eval` and `grdr analyze`: a
//! training run (`--run RUNDIR [--checkpoint step-N]`, its config fixing what the model is)
//! or a model as it is (`--model minilm|DIR [--kind …]`), with the data and docids it goes with.
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use tch::Device;

use crate::config::{ModelConfig, ModelKind, RunConfig};
use crate::data::docid::DocidTable;
use crate::error::{Error, Result};
use crate::eval::EvalOptions;
use crate::model::encode::EncodeSpec;
use crate::model::task::{Task, HEAD_PREFIX};
use crate::train::export::ExportInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKindArg {
    Dual,
    Colbert,
    Generative,
}

#[derive(Debug, Default, Args)]
#[command(group(clap::ArgGroup::new("model_or_run").args(["run", "model"])))]
pub struct SubjectArgs {
    /// A training run directory: its config.toml and newest checkpoints/step-N/.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// With --run: this checkpoint (`step-N`) instead of the newest.
    #[arg(long, requires = "run")]
    pub checkpoint: Option<String>,
    /// A model as it is: an artefact name (`minilm`) or an HF directory (a grdr export too).
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
    /// With --model, ColBERT: per-token dimension, query length, query augmentation token
    /// (defaults 128, 32, 103; a run's config fixes them).
    #[arg(long)]
    pub colbert_dim: Option<i64>,
    #[arg(long)]
    pub colbert_query_len: Option<i64>,
    #[arg(long)]
    pub query_augment_token: Option<i64>,
}

/// What is evaluated or analysed: the model's config, its weights, where its data and docids are.
pub struct Subject {
    pub model: ModelConfig,
    pub checkpoint: Option<PathBuf>,
    pub data: PathBuf,
    pub docids: Option<PathBuf>,
    /// The options before this invocation's flags: the run's, or the defaults for a model.
    pub opts: EvalOptions,
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

impl SubjectArgs {
    /// The name the outputs record: the run directory or the model.
    pub fn name(&self) -> Option<String> {
        self.run.as_ref().map(|r| r.display().to_string()).or(self.model.clone())
    }

    /// The model and the options it starts from: a run's config + newest checkpoint, or a
    /// model directory as it is.
    pub fn resolve(&self, device: Device) -> Result<Subject> {
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
            (None, None) => Err(Error::usage("--run", "name the model: --run RUNDIR or --model NAME|DIR")),
        }
    }

    /// The model with its trained weights: a run's checkpoint, or a model directory's heads.
    pub fn build_task(&self, subject: &Subject, device: Device, docids: Option<&DocidTable>) -> Result<Task> {
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
