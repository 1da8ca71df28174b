//! `grdr paper wu2024 --data DATASET --output DIR`: every row of a paper's tables trained and
//! evaluated, then the tables written (modules in `src/paper/`). Resumable: run it again and
//! finished steps are skipped, an interrupted training resumes from its checkpoint.
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::paper::{self, PaperRun};
use crate::sweep::launch::Programs;

#[derive(Debug, Args)]
pub struct PaperArgs {
    /// The paper: `wu2024` (Wu et al., SIGIR 2024: Tables 5, 6, 7).
    #[arg(value_name = "PAPER")]
    pub paper: String,
    /// A dataset directory made by `grdr prepare` (the rows' configs are for SciFact).
    #[arg(long)]
    pub data: PathBuf,
    /// Where everything goes: prep/ (docids, indexes), rows/<row>/ (runs), logs/, the tables.
    #[arg(long)]
    pub output: PathBuf,
    /// Ranks per training run and evaluation (launcher/grdr-launch -n).
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Only these rows (comma-separated names; default all).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Override a value of every row's training config, as `grdr train --set` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// The checkout whose configs/runs/ holds the rows' configs (default: the launcher's).
    #[arg(long, env = "GRDR_ROOT")]
    pub root: Option<PathBuf>,
    /// Print the commands of the unfinished steps; run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl PaperArgs {
    pub fn run(&self) -> Result<()> {
        let paper = paper::by_name(&self.paper)?;
        if self.ranks == 0 {
            return Err(Error::usage("--ranks", "must be at least 1"));
        }
        let rows: Vec<&paper::Row> = if self.rows.is_empty() {
            paper.rows.iter().collect()
        } else {
            self.rows
                .iter()
                .map(|n| {
                    paper.rows.iter().find(|r| r.name == n).ok_or_else(|| {
                        let known: Vec<&str> = paper.rows.iter().map(|r| r.name).collect();
                        Error::usage("--rows", format!("{n:?} is not a row of {} ({})", paper.name, known.join(", ")))
                    })
                })
                .collect::<Result<_>>()?
        };
        if !self.data.join("manifest.json").is_file() {
            return Err(Error::usage(
                "--data",
                format!("{} is not a dataset made by `grdr prepare`", self.data.display()),
            ));
        }
        let programs = Programs::find(None)?;
        let root = match &self.root {
            Some(r) => r.clone(),
            None => programs.launcher.parent().and_then(|l| l.parent()).map(PathBuf::from).unwrap_or_default(),
        };
        let configs = root.join("configs").join("runs");
        for r in rows.iter().filter(|r| r.name != "bm25") {
            if !configs.join(format!("{}.toml", r.name)).is_file() {
                return Err(Error::usage("--root", format!("{} has no {}.toml", configs.display(), r.name)));
            }
        }
        let absolute = |p: &PathBuf| std::path::absolute(p).map_err(|e| Error::io(p, "cannot resolve", e));
        let run = PaperRun {
            data: absolute(&self.data)?,
            out: absolute(&self.output)?,
            ranks: self.ranks,
            sets: self.sets.clone(),
            programs,
            configs,
        };
        let mut plan = Vec::new();
        run.run(&paper, &rows, self.dry_run.then_some(&mut plan))?;
        for line in plan {
            println!("{line}");
        }
        Ok(())
    }
}
