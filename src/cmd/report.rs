//! `grdr report SWEEPDIR`: a sweep's results as `results.parquet`, `results.csv`, a
//! markdown table on stdout, PNG/SVG plots of each metric against each swept axis, and with
//! `--html` one self-contained `report.html`; `grdr report RUNDIR --html`: one run's page
//! (modules in `src/report/`, conventions in docs/REPORT.md).
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::report::{self, collect::DONE, html_run, html_sweep, plot, table, DEFAULT_METRICS};
use crate::sweep::layout::SWEEP_JSON;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A sweep directory made by `grdr sweep` (holds sweep.json), or with --html a run
    /// directory made by `grdr train`.
    #[arg(value_name = "SWEEPDIR|RUNDIR")]
    pub dir: PathBuf,
    /// Also show and plot this metric (repeatable; nDCG@10 and R@100 always are).
    #[arg(long = "metric", value_name = "METRIC")]
    pub metrics: Vec<String>,
    /// Where to write the report files (default SWEEPDIR/report).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Write the tables only (with --html, the page still has its figures).
    #[arg(long)]
    pub no_plots: bool,
    /// Also write report.html: one self-contained page (tables, inline SVG figures, links
    /// to the run files; nothing loaded from the network).
    #[arg(long)]
    pub html: bool,
    /// A TrueType font for plot text (default: DejaVu Sans, Debian's fonts-dejavu-core).
    #[arg(long, value_name = "FILE", env = "GRDR_PLOT_FONT")]
    pub font: Option<PathBuf>,
}

impl ReportArgs {
    pub fn run(&self) -> Result<()> {
        let out = self.output.clone().unwrap_or_else(|| self.dir.join("report"));
        if !self.dir.join(SWEEP_JSON).exists() && html_run::is_run_dir(&self.dir) {
            return self.run_report(&out);
        }
        let results = report::collect(&self.dir)?;
        let metrics = self.metric_list(&results)?;
        let columns = report::columns::columns(&results);
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, "cannot create directory", e))?;

        // Tables first: they are the record, and a missing plot font must not cost them.
        table::write_parquet(&out.join(table::PARQUET_FILE), &columns)?;
        table::write_csv(&out.join(table::CSV_FILE), &columns)?;
        let done = results.rows.iter().filter(|r| r.state == DONE).count();
        println!("\nSweep {}: {done} of {} points done\n", results.sweep, results.rows.len());
        println!("{}", table::markdown(&results, &columns, &metrics));
        tracing::info!("wrote {} and {} in {}", table::PARQUET_FILE, table::CSV_FILE, out.display());

        if self.no_plots && !self.html {
            return Ok(());
        }
        let figures = plot::plan(&results, &columns, &metrics);
        if figures.is_empty() {
            tracing::info!("nothing to plot yet");
        } else {
            let font = report::font::ensure_registered(self.font.as_deref())?;
            tracing::debug!("plot font: {}", font.display());
        }
        if !self.no_plots {
            for fig in &figures {
                plot::write_figure(&out, fig)?;
            }
            tracing::info!("wrote {} plots (PNG and SVG) in {}", figures.len(), out.display());
        }
        if self.html {
            let page = html_sweep::write(&self.dir, &out, &results, &columns, &figures)?;
            println!("HTML report: {}", page.display());
        }
        Ok(())
    }

    /// A run directory's page.
    fn run_report(&self, out: &std::path::Path) -> Result<()> {
        if !self.html {
            return Err(Error::usage(
                "--html",
                format!("{} is a run directory: its report is a page (pass --html)", self.dir.display()),
            ));
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, "cannot create directory", e))?;
        report::font::ensure_registered(self.font.as_deref())?;
        let page = html_run::write(&self.dir, out)?;
        println!("HTML report: {}", page.display());
        Ok(())
    }

    /// The default metrics, Brier when the sweep computed it, then `--metric`s in order,
    /// without repeats. A `--metric` that no point reports is a typo rather than a pending
    /// result once any point has metrics.
    fn metric_list(&self, results: &report::Results) -> Result<Vec<String>> {
        let mut list: Vec<String> = DEFAULT_METRICS.map(String::from).to_vec();
        if results.has_metric(report::plot::SECONDARY_METRIC) {
            list.push(report::plot::SECONDARY_METRIC.into());
        }
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
