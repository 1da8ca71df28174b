//! `grdr sweep SWEEP.toml --backend local|slurm --output SWEEPDIR` and
//! `grdr sweep status SWEEPDIR` (see `src/sweep/` and docs/SWEEPS.md).
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use crate::error::{Error, Result};
use crate::sweep::launch::Programs;
use crate::sweep::layout::SweepDir;
use crate::sweep::local::{self, LocalPoint};
use crate::sweep::profile::{SlurmOptions, SlurmSettings};
use crate::sweep::resolve::{self, ResolvedPoint};
use crate::sweep::slurm::{self, SlurmPoint};
use crate::sweep::spec::SweepSpec;
use crate::sweep::{setup, status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// One point after another on this machine (launcher/grdr-launch, mpirun).
    Local,
    /// Job arrays on a Slurm cluster (sbatch; srun --mpi=pmix inside each job).
    Slurm,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Slurm => "slurm",
        }
    }
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  \
        grdr sweep configs/sweeps/negatives-dr-scifact.toml --backend local --output sweeps/neg\n  \
        grdr sweep configs/sweeps/negatives-dr-scifact.toml --backend slurm \
        --profile slurm/profiles/example-gpu-cluster.toml --output /scratch/sweeps/neg\n  \
        grdr sweep status /scratch/sweeps/neg\n\n\
        Running the same command again skips finished points, resumes or resubmits the others, \
        and refuses points whose resolved config changed (--overwrite restarts them). See docs/SWEEPS.md."
)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub command: Option<SweepCommand>,
    #[command(flatten)]
    pub run: SweepRunArgs,
}

#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// A table of the points of SWEEPDIR: values, state (refreshed from sacct/squeue on
    /// Slurm), job id, attempts, nDCG@10 of finished points.
    Status(SweepStatusArgs),
}

#[derive(Debug, Args)]
pub struct SweepRunArgs {
    /// The sweep file (configs/sweeps/*.toml): base run config, [set], [[axis]], [slurm].
    #[arg(value_name = "SWEEP.toml", required = true)]
    pub spec: Option<PathBuf>,
    /// Where the points run: `local` (one after another here) or `slurm` (job arrays).
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// The sweep directory: sweep.json, points/<name>/{config.toml,run/,state.json}, data/, slurm/.
    #[arg(long, value_name = "SWEEPDIR", required = true)]
    pub output: Option<PathBuf>,
    /// Slurm: the cluster profile (slurm/profiles/*.toml: partition, account, time, GPUs,
    /// ranks per node, module loads); the sweep file's [slurm] table wins over it.
    #[arg(long, value_name = "PROFILE.toml")]
    pub profile: Option<PathBuf>,
    /// Override a run-config value of every point (after the sweep's [set]; not an axis key).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Resolve and validate every point and print the plan (train commands or sbatch
    /// scripts) without writing or running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Restart points whose resolved config differs from the one in SWEEPDIR.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct SweepStatusArgs {
    /// A directory written by `grdr sweep`.
    #[arg(value_name = "SWEEPDIR")]
    pub dir: PathBuf,
    /// Only state.json, without asking Slurm.
    #[arg(long)]
    pub no_refresh: bool,
}

impl SweepArgs {
    pub fn run(&self) -> Result<()> {
        match &self.command {
            Some(SweepCommand::Status(a)) => a.run(),
            None => self.run.run(),
        }
    }
}

impl SweepStatusArgs {
    pub fn run(&self) -> Result<()> {
        if !self.dir.is_dir() {
            return Err(Error::usage("SWEEPDIR", format!("{} is not a directory", self.dir.display())));
        }
        let dir = SweepDir::new(&self.dir);
        let manifest = dir.read_manifest()?;
        let rows = status::collect(&dir, &manifest, !self.no_refresh)?;
        println!("{}", status::table(&dir, &manifest, &rows));
        Ok(())
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", "cannot read the working directory", e))?;
    Ok(cwd.join(p))
}

impl SweepRunArgs {
    pub fn run(&self) -> Result<()> {
        let spec_path = self.spec.as_ref().expect("clap: required");
        let out = absolute(self.output.as_ref().expect("clap: required"))?;
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", "cannot read the working directory", e))?;
        let spec = SweepSpec::load(spec_path)?;
        let points = resolve::resolve_all(&spec, &self.sets, &out, &cwd)?;
        let dir = SweepDir::new(&out);

        // World sizes: the sweep's, else 1 locally or a full profile allocation on Slurm.
        let slurm_settings: Option<SlurmSettings> = match self.backend {
            Backend::Local => {
                if self.profile.is_some() {
                    return Err(Error::usage("--profile", "only with --backend slurm"));
                }
                None
            }
            Backend::Slurm => {
                let profile = match &self.profile {
                    Some(p) => SlurmOptions::load(p)?,
                    None => SlurmOptions::default(),
                };
                Some(spec.slurm.over(&profile)?)
            }
        };
        let ranks: Vec<usize> = points
            .iter()
            .map(|p| p.ranks.unwrap_or_else(|| slurm_settings.as_ref().map_or(1, SlurmSettings::default_ranks)))
            .collect();
        if let Some(s) = &slurm_settings {
            for (p, &r) in points.iter().zip(&ranks) {
                s.layout(r).map_err(|e| Error::usage(format!("point {}", p.name()), e.to_string()))?;
            }
        }
        print_plan(&spec, &points, &ranks, self.backend, &out);
        let programs = Programs::find(slurm_settings.as_ref().and_then(|s| s.binary.as_deref()))?;

        // What the real run would restart (and refuse without --overwrite), asked the same
        // way by a dry run, which writes nothing.
        let restarted = setup::changed_points(&dir, &points, &ranks, self.overwrite)?;
        if !self.dry_run {
            let report = setup::write(&dir, &spec, &points, &ranks, self.backend.name(), self.overwrite)?;
            for name in &report.reset_points {
                tracing::warn!("{name}: its config changed; restarted (--overwrite)");
            }
            if !report.dropped.is_empty() {
                tracing::warn!(
                    "points of an earlier spec not in this one, left as they are: {}",
                    report.dropped.join(", ")
                );
            }
        }
        match &slurm_settings {
            None => {
                let todo: Vec<LocalPoint> = points
                    .iter()
                    .zip(&ranks)
                    .map(|(p, &r)| LocalPoint { name: p.name().to_string(), ranks: r })
                    .collect();
                let mut plan = Vec::new();
                let dry_run = self.dry_run.then_some(local::DryRun { plan: &mut plan, restarted: &restarted });
                local::run(&dir, &todo, &programs, dry_run)?;
                for line in &plan {
                    println!("{line}");
                }
                if !self.dry_run {
                    run_local_report(&programs, &dir);
                    let manifest = dir.read_manifest()?;
                    let rows = status::collect(&dir, &manifest, false)?;
                    println!("{}", status::table(&dir, &manifest, &rows));
                }
                Ok(())
            }
            Some(settings) => self.submit(&spec, &dir, &cwd, settings, &programs, &points, &ranks),
        }
    }

    /// Submits the points that are neither done nor queued/running (all of them on a new
    /// SWEEPDIR), so a re-run resubmits failed and stopped points only.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        spec: &SweepSpec,
        dir: &SweepDir,
        cwd: &Path,
        settings: &SlurmSettings,
        programs: &Programs,
        points: &[ResolvedPoint],
        ranks: &[usize],
    ) -> Result<()> {
        let names: Vec<String> = points.iter().map(|p| p.name().to_string()).collect();
        let mut todo = Vec::new();
        // Arrays still running points of this sweep: the new report job waits for them too.
        let mut in_flight_arrays: Vec<String> = Vec::new();
        if self.dry_run {
            todo = points
                .iter()
                .zip(ranks)
                .map(|(p, &r)| SlurmPoint { index: p.grid.index, name: p.name().to_string(), ranks: r })
                .collect();
        } else {
            let manifest = dir.read_manifest()?;
            let rows = status::collect(dir, &manifest, true)?;
            for ((p, &r), (file, shown)) in points.iter().zip(ranks).zip(&rows) {
                if shown.state == crate::sweep::layout::State::Done {
                    tracing::info!("{}: done, skipped", p.name());
                } else if shown.in_flight {
                    tracing::info!("{}: {} in Slurm, left alone", p.name(), shown.state.as_str());
                    if let Some(array) = file.job_id.as_deref().and_then(|j| j.split('_').next()) {
                        if !in_flight_arrays.iter().any(|a| a == array) {
                            in_flight_arrays.push(array.to_string());
                        }
                    }
                } else {
                    todo.push(SlurmPoint { index: p.grid.index, name: p.name().to_string(), ranks: r });
                }
            }
        }
        if todo.is_empty() {
            tracing::info!(
                "nothing to submit: every point is done or in flight (`grdr sweep status {}`)",
                dir.root.display()
            );
            return Ok(());
        }
        let mut plan = Vec::new();
        let dry_run = self.dry_run.then_some(&mut plan);
        let subs = slurm::submit(&spec.name, dir, cwd, settings, programs, &todo, &names, &in_flight_arrays, dry_run)?;
        for text in &plan {
            println!("{text}");
        }
        if !self.dry_run {
            let ids: Vec<String> = subs.iter().map(|s| format!("{} {}", s.kind, s.job_id)).collect();
            println!(
                "submitted {} point(s): {}; follow with `grdr sweep status {}`",
                todo.len(),
                ids.join(", "),
                dir.root.display()
            );
        }
        Ok(())
    }
}

fn print_plan(spec: &SweepSpec, points: &[ResolvedPoint], ranks: &[usize], backend: Backend, out: &Path) {
    println!(
        "sweep {} ({}): {} point(s), {} backend → {}",
        spec.name,
        spec.path.display(),
        points.len(),
        backend.name(),
        out.display()
    );
    for (p, r) in points.iter().zip(ranks) {
        let corpus = p.corpus.as_ref().map(|c| format!(", corpus {} docs", c.docs)).unwrap_or_default();
        println!("  {}  [{}{}, {} rank(s)]", p.name(), p.family, corpus, r);
    }
}

/// `grdr report SWEEPDIR` after local points; a failing report does not fail the sweep
/// (the runs are there; the report can be re-run).
fn run_local_report(programs: &Programs, dir: &SweepDir) {
    let status = std::process::Command::new(&programs.grdr).arg("report").arg(&dir.root).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!("`grdr report {}` failed ({s}); the runs are complete", dir.root.display()),
        Err(e) => tracing::warn!("cannot run `grdr report`: {e}"),
    }
}
