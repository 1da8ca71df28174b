//! `grdr report SWEEPDIR`: a sweep's results as `results.parquet`, `results.csv`, a
//! markdown table on stdout, and PNG/SVG plots of each metric against each swept axis
//! (modules in `src/report/`, conventions in docs/REPORT.md).
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::report::{self, collect::DONE, plot, table, DEFAULT_METRICS};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A sweep directory made by `grdr sweep` (holds sweep.json).
    #[arg(value_name = "SWEEPDIR")]
    pub sweep_dir: PathBuf,
    /// Also show and plot this metric (repeatable; nDCG@10 and R@100 always are).
    #[arg(long = "metric", value_name = "METRIC")]
    pub metrics: Vec<String>,
    /// Where to write the report files (default SWEEPDIR/report).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Write the tables only.
    #[arg(long)]
    pub no_plots: bool,
    /// A TrueType font for plot text (default: DejaVu Sans, Debian's fonts-dejavu-core).
    #[arg(long, value_name = "FILE", env = "GRDR_PLOT_FONT")]
    pub font: Option<PathBuf>,
}

impl ReportArgs {
    pub fn run(&self) -> Result<()> {
        let results = report::collect(&self.sweep_dir)?;
        let metrics = self.metric_list(&results)?;
        let columns = report::columns::columns(&results);
        let out = self.output.clone().unwrap_or_else(|| self.sweep_dir.join("report"));
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, "cannot create directory", e))?;

        // Tables first: they are the record, and a missing plot font must not cost them.
        table::write_parquet(&out.join(table::PARQUET_FILE), &columns)?;
        table::write_csv(&out.join(table::CSV_FILE), &columns)?;
        let done = results.rows.iter().filter(|r| r.state == DONE).count();
        println!("\nSweep {}: {done} of {} points done\n", results.sweep, results.rows.len());
        println!("{}", table::markdown(&results, &columns, &metrics));
        tracing::info!("wrote {} and {} in {}", table::PARQUET_FILE, table::CSV_FILE, out.display());

        if self.no_plots {
            return Ok(());
        }
        let figures = plot::plan(&results, &columns, &metrics);
        if figures.is_empty() {
            tracing::info!("nothing to plot yet");
            return Ok(());
        }
        let font = report::font::ensure_registered(self.font.as_deref())?;
        tracing::debug!("plot font: {}", font.display());
        for fig in &figures {
            plot::write_figure(&out, fig)?;
        }
        tracing::info!("wrote {} plots (PNG and SVG) in {}", figures.len(), out.display());
        Ok(())
    }

    /// The default metrics, then `--metric`s in order, without repeats. A `--metric` that
    /// no point reports is a typo rather than a pending result once any point has metrics.
    fn metric_list(&self, results: &report::Results) -> Result<Vec<String>> {
        let mut list: Vec<String> = DEFAULT_METRICS.map(String::from).to_vec();
        for m in &self.metrics {
            if !results.metric_names.is_empty() && !results.metric_names.contains(m) {
                return Err(Error::usage(
                    "--metric",
                    format!("no point reports `{m}`; the metrics are: {}", results.metric_names.join(", ")),
                ));
            }
            if !list.contains(m) {
                list.push(m.clone());
            }
        }
        Ok(list)
    }
}
