//! `grdr eval-run`: metrics of any TREC run file, computed the trec_eval way.
use std::path::PathBuf;

use clap::Args;

use crate::error::Result;

#[derive(Debug, Args)]
pub struct EvalRunArgs {
    /// Qrels: BEIR TSV (with header) or TREC 4-column format.
    #[arg(long)]
    pub qrels: PathBuf,
    /// A 6-column TREC run file.
    #[arg(long)]
    pub run: PathBuf,
}

impl EvalRunArgs {
    pub fn run(&self) -> Result<()> {
        let metrics = crate::eval::evaluate_files(&self.qrels, &self.run)?;
        println!("{}", serde_json::to_string_pretty(&metrics.to_json()).expect("metrics serialise"));
        Ok(())
    }
}
