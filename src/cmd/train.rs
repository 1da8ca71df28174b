//! `grdr train`: one data-parallel training run from a TOML config (see `config.rs` for
//! the sections and `train/trainer.rs` for the run). Launch N ranks with
//! `launcher/grdr-launch -n N -- grdr train …`.
use std::path::PathBuf;

use clap::Args;

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::train::signal::PREEMPTED_EXIT_CODE;
use crate::train::trainer::{self, Outcome, RunOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run config (TOML: [data] [model] [docids] [train] [dist] [eval] [log]). With
    /// --resume it may be left out: the run directory's config.toml is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value: `--set train.batch_size=16` (repeatable; TOML values,
    /// bare words are strings).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// The run directory: config.toml, metrics.jsonl, checkpoints/step-N/, model/, eval/.
    #[arg(long)]
    pub output: PathBuf,
    /// Continue from the newest checkpoint in --output (starts fresh when there is none, so
    /// a requeued Slurm job can always pass it).
    #[arg(long)]
    pub resume: bool,
    /// Replace the checkpoints and logs of an existing run in --output (the old run is kept
    /// until the new one has written its first checkpoint).
    #[arg(long)]
    pub overwrite: bool,
    /// Recompute the dataset's sha256 checksums first (file sizes are always checked).
    #[arg(long)]
    pub verify: bool,
}

impl TrainArgs {
    pub fn run(&self) -> Result<()> {
        let config_path = match (&self.config, self.resume) {
            (Some(p), _) => p.clone(),
            (None, true) => self.output.join("config.toml"),
            (None, false) => return Err(Error::usage("--config", "required (unless resuming a run with --resume)")),
        };
        let config = RunConfig::load(&config_path, &self.sets)?;
        let opts = RunOptions {
            run_dir: self.output.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
            verify: self.verify,
        };
        match trainer::train(&config, &opts)? {
            Outcome::Finished { eval, .. } => {
                if let Some(summary) = &eval {
                    super::print_summary(summary);
                }
                Ok(())
            }
            Outcome::Preempted { step, signal } => {
                tracing::warn!(
                    "{} received: checkpointed step {step}; exiting with {PREEMPTED_EXIT_CODE} (resume with --resume)",
                    crate::train::signal::name(signal)
                );
                // The communicator (MPI) was finalised when `train` returned.
                std::process::exit(PREEMPTED_EXIT_CODE)
            }
        }
    }
}
