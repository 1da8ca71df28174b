//! `grdr report`: a sweep directory's results as tables and plots.
//!
//! ```text
//! SWEEPDIR/sweep.json                     points: name, family, axis values, dir (grdr sweep)
//! SWEEPDIR/points/<name>/state.json       pending|submitted|running|preempted|done|failed
//! SWEEPDIR/points/<name>/run/train.json   parameters, steps, world_size, train_seconds
//! SWEEPDIR/points/<name>/run/world.json   nodes (distinct hosts of the ranks)
//! SWEEPDIR/points/<name>/run/metrics.jsonl  one record per log interval (loss, samples/s)
//! SWEEPDIR/points/<name>/run/eval/metrics.json  nDCG@10, R@k, ...
//!        │ collect.rs   one row per point (unfinished points too, metrics null)
//!        │ columns.rs   typed columns: int / float / bool / string, inferred per column
//!        ▼
//! SWEEPDIR/report/results.parquet, results.csv     table.rs (+ markdown on stdout)
//! SWEEPDIR/report/<metric>-vs-<axis>.{png,svg}     plot.rs, scale.rs, font.rs
//! SWEEPDIR/report/report.html (--html)             html_sweep.rs on html.rs (one page,
//!                                                  inline SVG, no network)
//! RUNDIR/report/report.html   (--html on a run)    html_run.rs: curves, metrics, config
//! ```
//! `heatmap.rs` draws the alignment matrices of `grdr analyze heatmap` (plot.rs the line
//! figures of the other analyses). Every file is written under a temporary name and renamed,
//! so a report is never seen half-written. See docs/REPORT.md for the conventions of the plots.
pub mod collect;
pub mod columns;
pub mod font;
pub mod heatmap;
pub mod html;
pub mod html_run;
pub mod html_sweep;
pub mod plot;
pub mod scale;
pub mod table;

pub use collect::{collect, PointRow, Results, Training};
pub use columns::{Column, ColumnData};

/// Metrics drawn and shown in the markdown table unless more are asked for: the headline
/// measures of the seed papers (nDCG@10 for BEIR, R@100 for first-stage recall).
pub const DEFAULT_METRICS: [&str; 2] = ["nDCG@10", "R@100"];
