//! The command line (clap derive). Each subcommand's arguments live beside its
//! implementation in `src/cmd/`; this file only names them.
use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Debug, Parser)]
#[command(name = "grdr", version, about = "Train and evaluate generative and dense retrieval models at scale", long_about = None)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant (`grdr eval`'s flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a collection and import it as a dataset directory (Parquet + manifest.json).
    #[command(subcommand)]
    Prepare(cmd::prepare::PrepareCommand),
    /// BM25 retrieval (tantivy) for one split: RUNDIR/run.trec and RUNDIR/metrics.json.
    Bm25(cmd::bm25::Bm25Args),
    /// Evaluate a TREC run against qrels; prints one JSON object of metrics.
    EvalRun(cmd::eval_run::EvalRunArgs),
    /// Show this installation: versions, libtorch, named artefacts.
    Info(cmd::info::InfoArgs),
    /// Embed a dataset's documents or queries with a dense encoder into a Parquet file.
    Encode(cmd::encode::EncodeArgs),
    /// Build a docid file for generative retrieval: atomic, semantic, title or n-gram ids.
    Docids(cmd::docids::DocidsArgs),
    /// Build a retrieval index over a dataset: `grdr index fm` (SEAL's FM-index over token ids).
    #[command(subcommand)]
    Index(cmd::index::IndexCommand),
    /// Train a DR, ColBERT or GR model from a TOML config (launch N ranks with grdr-launch).
    Train(cmd::train::TrainArgs),
    /// Distributed evaluation (DR, ColBERT, GR; end to end or rerank): run.trec, metrics.json.
    Eval(cmd::eval::EvalArgs),
    /// The papers' analyses of a trained model: alignment, exact-match, low-rank, heatmap, spectrum, calibration.
    Analyze(cmd::analyze::AnalyzeArgs),
    /// Write a synthetic dataset (random words, random qrels) for throughput and memory tests.
    Synth(cmd::synth::SynthArgs),
    /// A sweep's results: results.parquet/.csv, a markdown table, PNG/SVG plots per metric and axis.
    Report(cmd::report::ReportArgs),
    /// Run a grid of training runs from a sweep file, locally or as Slurm job arrays
    /// (`grdr sweep status SWEEPDIR` shows where each point is).
    Sweep(cmd::sweep::SweepArgs),
    /// A paper's tables reproduced: every row trained and evaluated, the tables written as
    /// Markdown, CSV and Parquet (`grdr paper wu2024`: Wu et al.'s Tables 5–7); resumable.
    Paper(cmd::paper::PaperArgs),
    /// Measure which library (MKL or oneDNN) multiplies each model product faster on this
    /// CPU and keep the table for later runs (GRDR_GEMM=mkl|onednn|auto overrides).
    Tune(cmd::tune::TuneArgs),
}

impl Command {
    pub fn run(&self) -> crate::Result<()> {
        // A bad GRDR_GEMM is a usage error before any work, not a silent default later.
        crate::model::gemm_choice::forced_by_env()?;
        match self {
            Command::Prepare(c) => c.run(),
            Command::Bm25(a) => a.run(),
            Command::EvalRun(a) => a.run(),
            Command::Info(a) => a.run(),
            Command::Encode(a) => a.run(),
            Command::Eval(a) => a.run(),
            Command::Analyze(a) => a.run(),
            Command::Synth(a) => a.run(),
            Command::Report(a) => a.run(),
            Command::Sweep(a) => a.run(),
            Command::Paper(a) => a.run(),
            Command::Docids(a) => a.run(),
            Command::Index(c) => c.run(),
            Command::Train(a) => a.run(),
            Command::Tune(a) => a.run(),
        }
    }
}
