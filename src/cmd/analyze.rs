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
        let world = comm.world();
        let opts = self.options()?;
        let device = crate::device::parse_device(&self.device, world.local_rank, "--device")?;
        let subject = self.subject.resolve(device)?;
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
        let out = if world.is_coordinator() { Some(TempDir::new(&self.output, self.overwrite)?) } else { None };
        let docids = subject.docids.as_deref().map(DocidTable::read).transpose()?;
        let task = self.subject.build_task(&subject, device, docids.as_ref())?;
        task.check_lengths(&[("--query-max-len", eval.query_max_len), ("--doc-max-len", eval.doc_max_len)])?;
        let ds = Dataset::open(&subject.data)?;
        if self.verify {
            ds.verify()?;
        }
        let what = What::from(self.what);
        let outcome =
            analysis::analyze(comm, &task, &ds, docids.as_ref(), &eval, &opts, what, out.as_ref().map(|o| o.path()))?;
        let (Some(mut outcome), Some(out)) = (outcome, out) else { return Ok(()) };

        // ---- Rank 0: summary and figures --------------------------------------------------
        if let serde_json::Value::Object(m) = &mut outcome.summary {
            m.insert("grdr_version".into(), crate::VERSION.into());
            m.insert("subject".into(), self.subject.name().into());
            m.insert("data".into(), subject.data.display().to_string().into());
        }
        analysis::write_summary(out.path(), &outcome.summary)?;
        if !outcome.plots.is_empty() {
            crate::report::font::ensure_registered(None)?;
        }
        for plot in &outcome.plots {
            draw(out.path(), plot)?;
        }
        let dest = out.commit()?;
        println!("{}", serde_json::to_string_pretty(&outcome.summary).unwrap_or_default());
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }
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
                    .map(|(label, points)| Series {
                        family: label.clone(),
                        label: label.clone(),
                        points: points.clone(),
                    })
                    .collect(),
            };
            write_figure(dir, &fig)?;
        }
        Plot::Heatmaps { stem, title, panels } => {
            crate::report::heatmap::write_heatmaps(dir, stem, title, panels)?;
        }
    }
    Ok(())
}
