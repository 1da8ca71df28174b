//! `grdr analyze`: the founding papers' analyses of a trained model (see `analysis/`), on N
//! ranks like `grdr eval` (`launcher/grdr-launch -n N -- grdr analyze …`), written as one
//! output directory: Parquet tables, `pairs.parquet`, `summary.json` and PNG/SVG figures,
//! committed whole at the end.
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tch::Device;

use super::subject::SubjectArgs;
use crate::analysis::{self, AnalyzeOptions, Plot, What};
use crate::atomic::TempDir;
use crate::data::docid::DocidTable;
use crate::data::Dataset;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::report::plot::{write_figure, Figure, Series};
use crate::report::scale::XAxis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhatArg {
    /// GR: cross-attention A per layer/head and the MVDR form's share of the logits; ColBERT: q→d, q←d.
    Alignment,
    /// Hard/soft exact-match rates by IDF bucket (ColBERT; GR with title or n-gram docids).
    ExactMatch,
    /// GR: ‖A − R‖ against ‖W‖ and rank-one relative errors (Lemma 5.1).
    LowRank,
    /// The alignment matrices of one pair (--query-id, --doc-id), tokens as labels.
    Heatmap,
    /// DR: singular values and effective rank of the query × document score matrix.
    Spectrum,
    /// GR: Brier normalised over the beam's docids and, with --exact, over every docid.
    Calibration,
}

impl From<WhatArg> for What {
    fn from(w: WhatArg) -> What {
        match w {
            WhatArg::Alignment => What::Alignment,
            WhatArg::ExactMatch => What::ExactMatch,
            WhatArg::LowRank => What::LowRank,
            WhatArg::Heatmap => What::Heatmap,
            WhatArg::Spectrum => What::Spectrum,
            WhatArg::Calibration => What::Calibration,
        }
    }
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// What to compute.
    #[arg(value_enum)]
    pub what: WhatArg,
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// The split whose judged queries are read (default: the run's `eval.split`, i.e. test).
    #[arg(long)]
    pub split: Option<String>,
    /// Only the first N judged queries of the split (all their relevant documents).
    #[arg(long)]
    pub limit: Option<usize>,
    /// The output directory: Parquet tables, pairs.parquet, summary.json, figures.
    #[arg(long)]
    pub output: PathBuf,
    /// Pairs (or texts) per forward pass (default: `eval.batch_size`).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Query truncation (default: the run's, else the model's).
    #[arg(long)]
    pub query_max_len: Option<usize>,
    /// Document truncation (default: the run's, else the model's).
    #[arg(long)]
    pub doc_max_len: Option<usize>,
    /// exact-match: equal-count IDF buckets.
    #[arg(long, default_value_t = 10)]
    pub buckets: usize,
    /// heatmap: the pair drawn.
    #[arg(long)]
    pub query_id: Option<String>,
    #[arg(long)]
    pub doc_id: Option<String>,
    /// heatmap (GR): the decoder layer drawn (default: the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// heatmap: another `grdr analyze heatmap` output drawn beside this one (MVDR beside GR).
    #[arg(long)]
    pub beside: Option<PathBuf>,
    /// spectrum: every finished point of this sweep (`grdr sweep`) instead of --run/--model,
    /// and the effective rank against the swept `model.dim` (Zhang et al. Cor. 3.3).
    #[arg(long, conflicts_with_all = ["run", "model"])]
    pub sweep: Option<PathBuf>,
    /// spectrum: documents in the sample (evenly spaced; all when the corpus has fewer; default 2000).
    #[arg(long)]
    pub docs: Option<usize>,
    /// calibration: also over every docid (decodes with a beam as wide as the docid set).
    #[arg(long)]
    pub exact: bool,
    /// calibration: the beam of the approximation (default: the run's `eval.beam`, else k).
    #[arg(long)]
    pub beam: Option<usize>,
    /// cpu, cuda, cuda:N or auto (the rank's local GPU when there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Intra-op CPU threads per rank (default: libtorch's, i.e. OMP_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Recompute the dataset's sha256 checksums first (file sizes are always checked).
    #[arg(long)]
    pub verify: bool,
}

impl AnalyzeArgs {
    pub fn run(&self) -> Result<()> {
        if self.threads.is_some_and(|t| t < 1) {
            return Err(Error::usage("--threads", "must be at least 1"));
        }
        let _threads = self.threads.map(crate::parallel::IntraOpThreads::set);
        let comm = dist::init(dist::Backend::Mpi, Device::Cpu)?;
        let result = self.run_rank(&*comm);
        dist::exit_on_error(&*comm, result)
    }

    fn options(&self) -> Result<AnalyzeOptions> {
        let what = What::from(self.what);
        let only = |flag: &str, given: bool, for_what: What| -> Result<()> {
            if given && what != for_what {
                return Err(Error::usage(flag, format!("applies to `{}` only", for_what.name())));
            }
            Ok(())
        };
        only("--layer", self.layer.is_some(), What::Heatmap)?;
        only("--beside", self.beside.is_some(), What::Heatmap)?;
        only("--exact", self.exact, What::Calibration)?;
        only("--beam", self.beam.is_some(), What::Calibration)?;
        only("--docs", self.docs.is_some(), What::Spectrum)?;
        only("--sweep", self.sweep.is_some(), What::Spectrum)?;
        if what == What::Heatmap && self.limit.is_some() {
            return Err(Error::usage("--limit", "heatmap draws the one pair of --query-id/--doc-id"));
        }
        if what != What::Heatmap && (self.query_id.is_some() || self.doc_id.is_some()) {
            return Err(Error::usage("--query-id", "applies to `heatmap` only"));
        }
        if self.limit == Some(0) {
            return Err(Error::usage("--limit", "must be at least 1"));
        }
        Ok(AnalyzeOptions {
            limit: self.limit,
            buckets: self.buckets,
            query_id: self.query_id.clone(),
            doc_id: self.doc_id.clone(),
            layer: self.layer,
            docs: self.docs.unwrap_or(AnalyzeOptions::default().docs),
            beside: self.beside.clone(),
            exact: self.exact,
        })
    }

    fn run_rank(&self, comm: &dyn Comm) -> Result<()> {
        let opts = self.options()?;
        if let Some(sweep) = &self.sweep {
            return self.spectrum_sweep(comm, sweep, &opts);
        }
        let out = if comm.world().is_coordinator() { Some(TempDir::new(&self.output, self.overwrite)?) } else { None };
        let Some((mut outcome, data)) = self.analyze_one(comm, &self.subject, &opts, out.as_ref().map(|o| o.path()))?
        else {
            return Ok(());
        };
        let out = out.expect("rank 0 has the output");
        label(&mut outcome, &self.subject, data);
        finish(out.path(), &outcome)?;
        let dest = out.commit()?;
        println!("{}", serde_json::to_string_pretty(&outcome.summary).unwrap_or_default());
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }

    /// Spectrum of every finished point of a sweep: one subdirectory per point, and
    /// `spectrum_sweep.parquet` + effective rank against `model.dim`.
    fn spectrum_sweep(&self, comm: &dyn Comm, sweep: &std::path::Path, opts: &AnalyzeOptions) -> Result<()> {
        let results = crate::report::collect(sweep)?;
        let done: Vec<_> = results.rows.iter().filter(|r| r.state == crate::report::collect::DONE).collect();
        if done.is_empty() {
            return Err(Error::usage("--sweep", format!("{} has no finished point", sweep.display())));
        }
        let out = if comm.world().is_coordinator() { Some(TempDir::new(&self.output, self.overwrite)?) } else { None };
        let mut rows = Vec::new();
        for point in &done {
            let subject =
                SubjectArgs { run: Some(point.run_dir.clone()), data: self.subject.data.clone(), ..Default::default() };
            let dir = out.as_ref().map(|o| o.path().join(&point.name));
            if let Some(d) = &dir {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, "cannot create", e))?;
            }
            if let (Some((mut outcome, data)), Some(d)) =
                (self.analyze_one(comm, &subject, opts, dir.as_deref())?, &dir)
            {
                label(&mut outcome, &subject, data);
                finish(d, &outcome)?;
                rows.push((
                    point.name.clone(),
                    point.values.get("model.dim").and_then(|v| v.as_f64()),
                    outcome.summary,
                ));
            }
        }
        let Some(out) = out else { return Ok(()) };
        let table = crate::analysis::spectrum::sweep_table(&rows);
        crate::analysis::table::write_table(&out.path().join("spectrum_sweep.parquet"), &table)?;
        let summary = serde_json::json!({
            "analysis": "spectrum", "sweep": sweep.display().to_string(),
            "points": rows.iter().map(|(name, dim, s)| serde_json::json!({"point": name, "model.dim": dim,
                "dim": s["dim"], "effective_rank": s["effective_rank"], "stable_rank": s["stable_rank"],
                "numerical_rank": s["numerical_rank"]})).collect::<Vec<_>>(),
        });
        let outcome = analysis::Outcome { summary, plots: crate::analysis::spectrum::sweep_plots(&rows) };
        finish(out.path(), &outcome)?;
        let dest = out.commit()?;
        println!("{}", serde_json::to_string_pretty(&outcome.summary).unwrap_or_default());
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }

    /// One model's analysis; rank 0 gets the outcome and the dataset it read.
    fn analyze_one(
        &self,
        comm: &dyn Comm,
        subject_args: &SubjectArgs,
        opts: &AnalyzeOptions,
        out: Option<&std::path::Path>,
    ) -> Result<Option<(analysis::Outcome, String)>> {
        let world = comm.world();
        let device = crate::device::parse_device(&self.device, world.local_rank, "--device")?;
        let subject = subject_args.resolve(device)?;
        let mut eval = subject.opts.clone();
        if let Some(s) = &self.split {
            eval.split = s.clone();
        }
        for (slot, v) in [
            (&mut eval.batch_size, self.batch_size),
            (&mut eval.query_max_len, self.query_max_len),
            (&mut eval.doc_max_len, self.doc_max_len),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        if self.beam.is_some() {
            eval.beam = self.beam;
        }
        eval.validate()?;
        let docids = subject.docids.as_deref().map(DocidTable::read).transpose()?;
        let task = subject_args.build_task(&subject, device, docids.as_ref())?;
        task.check_lengths(&[("--query-max-len", eval.query_max_len), ("--doc-max-len", eval.doc_max_len)])?;
        let ds = Dataset::open(&subject.data)?;
        if self.verify {
            ds.verify()?;
        }
        let what = What::from(self.what);
        let outcome = analysis::analyze(comm, &task, &ds, docids.as_ref(), &eval, opts, what, out)?;
        Ok(outcome.map(|o| (o, subject.data.display().to_string())))
    }
}

/// Records in the summary what was analysed: the run or model, and the dataset.
fn label(outcome: &mut analysis::Outcome, subject: &SubjectArgs, data: String) {
    if let serde_json::Value::Object(m) = &mut outcome.summary {
        m.insert("subject".into(), subject.name().into());
        m.insert("data".into(), data.into());
    }
}

/// Rank 0: `summary.json` and the figures of an outcome, into `dir`.
fn finish(dir: &std::path::Path, outcome: &analysis::Outcome) -> Result<()> {
    let mut summary = outcome.summary.clone();
    if let serde_json::Value::Object(m) = &mut summary {
        m.insert("grdr_version".into(), crate::VERSION.into());
    }
    analysis::write_summary(dir, &summary)?;
    if !outcome.plots.is_empty() {
        crate::report::font::ensure_registered(None)?;
    }
    for plot in &outcome.plots {
        draw(dir, plot)?;
    }
    Ok(())
}

/// Draws an analysis figure through the report plotting.
fn draw(dir: &std::path::Path, plot: &Plot) -> Result<()> {
    match plot {
        Plot::Lines { stem, title, x_label, y_label, series } => {
            let xs: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).collect();
            let fig = Figure {
                metric: y_label.clone(),
                axis: x_label.clone(),
                stem: stem.clone(),
                title: title.clone(),
                x: XAxis::numeric(&xs),
                series: series
                    .iter()
                    .map(|(label, points)| Series::new(label.clone(), label.clone(), points.clone()))
                    .collect(),
                secondary: None,
            };
            write_figure(dir, &fig)?;
        }
        Plot::Heatmaps { stem, title, panels } => {
            crate::report::heatmap::write_heatmaps(dir, stem, title, panels)?;
        }
    }
    Ok(())
}
