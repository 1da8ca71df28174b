//! The founding papers' evidence, computed from a trained model (`grdr analyze`):
//!
//! | analysis | paper | model | output |
//! | --- | --- | --- | --- |
//! | `alignment` | Wu et al. Eq. 11–16, §7.2 | GR, ColBERT | `alignment.parquet`, GR: `mvdr_form.parquet` |
//! | `exact-match` | Wu et al. Figs. 2–3 | ColBERT, GR with text docids | `exact_match.parquet`, `exact_match_tokens.parquet`, `idf.parquet` |
//! | `low-rank` | Wu et al. Lemma 5.1, Fig. 4 | GR | `low_rank.parquet` |
//! | `heatmap` | Wu et al. Fig. 5 | GR, ColBERT | `heatmap.parquet` |
//! | `spectrum` | Zhang et al. Cor. 3.3 | DR | `spectrum.parquet` |
//! | `calibration` | Zhang et al. Prop. 3.2 | GR | `calibration.parquet` (Brier, beam vs exact) |
//!
//! Every analysis reads (query, relevant document) pairs of one split (`pairs.rs`; written
//! to `pairs.parquet` with the exact ids the model read) — except `spectrum`, which reads the
//! split's queries and a document sample, and `calibration`, which decodes the queries. Pairs are cut into fixed batches that are dealt to
//! the ranks round-robin; each step's rows are gathered to rank 0 in batch order and
//! streamed to Parquet, so N ranks write the same files as one and memory holds one step.
//!
//! ```text
//! pairs (query order, doc order) → batches b0 b1 b2 …  rank r computes b(s·W + r) at step s
//!   └─ per batch: rows (Table) ─all-gather bytes→ rank 0: ParquetSink.write, in batch order
//! rank 0: summary.json (+ figures, drawn by `cmd` through `report`)
//! ```
pub mod alignment;
pub mod calibration;
pub mod exact_match;
pub mod heatmap;
pub mod idf;
pub mod low_rank;
pub mod pairs;
pub mod spectrum;
pub mod table;

use std::path::Path;

use serde_json::json;
use tch::Device;

use crate::data::docid::DocidTable;
use crate::data::Dataset;
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::eval::EvalOptions;
use crate::model::task::Task;
use table::{ParquetSink, Table};

/// What `grdr analyze` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Alignment,
    ExactMatch,
    LowRank,
    Heatmap,
    Spectrum,
    Calibration,
}

impl What {
    pub fn name(self) -> &'static str {
        match self {
            What::Alignment => "alignment",
            What::ExactMatch => "exact-match",
            What::LowRank => "low-rank",
            What::Heatmap => "heatmap",
            What::Spectrum => "spectrum",
            What::Calibration => "calibration",
        }
    }
}

/// Settings of an analysis beyond the evaluation options it shares with `grdr eval`
/// (split, batch size, truncation, device: `EvalOptions`).
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Only the first N judged queries of the split (in query order).
    pub limit: Option<usize>,
    /// Equal-count IDF buckets of `exact-match`.
    pub buckets: usize,
    /// The pair of `heatmap`.
    pub query_id: Option<String>,
    pub doc_id: Option<String>,
    /// `heatmap` (GR): the decoder layer drawn (default: the last).
    pub layer: Option<usize>,
    /// `spectrum`: documents in the sample (evenly spaced doc_idx; all if fewer).
    pub docs: usize,
    /// `heatmap`: another heatmap output whose panel is drawn beside this one.
    pub beside: Option<std::path::PathBuf>,
    /// `calibration`: also normalise over every docid (a beam as wide as the docid set).
    pub exact: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            limit: None,
            buckets: 10,
            query_id: None,
            doc_id: None,
            layer: None,
            docs: 2000,
            beside: None,
            exact: false,
        }
    }
}

/// A figure for `cmd` to draw through `report` (analysis sits below report).
#[derive(Debug, Clone)]
pub enum Plot {
    /// y against x, one line per series.
    Lines { stem: String, title: String, x_label: String, y_label: String, series: Vec<(String, Vec<(f64, f64)>)> },
    /// Alignment matrices side by side: rows × cols of weights with token labels.
    Heatmaps { stem: String, title: String, panels: Vec<HeatmapPanel> },
}

#[derive(Debug, Clone)]
pub struct HeatmapPanel {
    pub title: String,
    pub row_label: String,
    pub col_label: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// rows × cols
    pub values: Vec<Vec<f64>>,
}

/// What rank 0 gets back: `summary.json`'s content and the figures to draw.
pub struct Outcome {
    pub summary: serde_json::Value,
    pub plots: Vec<Plot>,
}

/// Runs `what` over `ds` on every rank of `comm`; rank 0 writes into `out` (the caller's temp
/// dir) and gets the outcome.
#[allow(clippy::too_many_arguments)]
pub fn analyze(
    comm: &dyn Comm,
    task: &Task,
    ds: &Dataset,
    docids: Option<&DocidTable>,
    eval: &EvalOptions,
    opts: &AnalyzeOptions,
    what: What,
    out: Option<&Path>,
) -> Result<Option<Outcome>> {
    ds.check_split(&eval.split)?;
    let ctx = Context::new(comm, task, ds, docids, eval)?;
    let t0 = std::time::Instant::now();
    let outcome = tch::no_grad(|| match what {
        What::Alignment => alignment::run(&ctx, opts, out),
        What::ExactMatch => exact_match::run(&ctx, opts, out),
        What::LowRank => low_rank::run(&ctx, opts, out),
        What::Heatmap => heatmap::run(&ctx, opts, out),
        What::Spectrum => spectrum::run(&ctx, opts, out),
        What::Calibration => calibration::run(&ctx, opts, out),
    })?;
    Ok(outcome.map(|mut o| {
        if let serde_json::Value::Object(m) = &mut o.summary {
            m.insert("analysis".into(), json!(what.name()));
            m.insert("split".into(), json!(eval.split));
            m.insert("ranks".into(), json!(comm.world().size));
            m.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
        }
        o
    }))
}

/// One output file fed batch by batch on rank 0 (`None` on the other ranks).
pub struct Sinks {
    pub sinks: Vec<Option<(ParquetSink, Table)>>,
}

impl Sinks {
    /// One file per (name, table without rows) under `out`; rank 0 only, `None` elsewhere.
    pub fn new(out: Option<&Path>, files: Vec<(&str, Table)>) -> Sinks {
        Sinks {
            sinks: files
                .into_iter()
                .map(|(name, empty)| out.map(|d| (ParquetSink::new(&d.join(name)), empty)))
                .collect(),
        }
    }

    /// Finishes every file; returns the rows written to each (rank 0).
    pub fn finish(self) -> Result<Vec<usize>> {
        self.sinks.into_iter().flatten().map(|(sink, empty)| sink.finish(&empty)).collect()
    }
}

/// Computes `batch(i)` for batch indices `0..n_batches` dealt round-robin to the ranks; each
/// batch yields one table per output. Every step's tables are gathered to rank 0 in batch
/// order: `sink(b, tables)` sees every batch there, once, in order (so N ranks write the
/// rows one rank would). Collective: every rank calls it with the same `n_batches`.
pub fn for_each_batch(
    comm: &dyn Comm,
    n_batches: usize,
    label: &str,
    mut batch: impl FnMut(usize) -> Result<Vec<Table>>,
    mut sink: impl FnMut(usize, Vec<Table>) -> Result<()>,
) -> Result<()> {
    let w = comm.world();
    let steps = n_batches.div_ceil(w.size);
    let bar = crate::progress::bar(if w.is_coordinator() { n_batches as u64 } else { 0 }, label);
    for s in 0..steps {
        let mine = s * w.size + w.rank;
        let tables = if mine < n_batches { batch(mine)? } else { vec![] };
        let bytes = encode_tables(&tables);
        let all = comm.all_gather_bytes(&bytes)?;
        if w.is_coordinator() {
            for (r, bytes) in all.iter().enumerate() {
                let b = s * w.size + r;
                if b < n_batches {
                    sink(b, decode_tables(bytes))?;
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn encode_tables(tables: &[Table]) -> Vec<u8> {
    let mut out = (tables.len() as u64).to_le_bytes().to_vec();
    for t in tables {
        let b = t.to_bytes();
        out.extend((b.len() as u64).to_le_bytes());
        out.extend(b);
    }
    out
}

fn decode_tables(bytes: &[u8]) -> Vec<Table> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut at = 8;
    (0..n)
        .map(|_| {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let t = Table::from_bytes(&bytes[at + 8..at + 8 + len]);
            at += 8 + len;
            t
        })
        .collect()
}

/// The model kinds an analysis reads, as an error for the others.
pub fn needs(what: What, kinds: &str) -> Error {
    Error::usage("--run/--model", format!("`{}` analyses {kinds} models", what.name()))
}

/// Writes `summary.json` into `out`.
pub fn write_summary(out: &Path, summary: &serde_json::Value) -> Result<()> {
    crate::atomic::write_json(&out.join("summary.json"), summary)
}

/// Pearson correlation of two equally long samples (NaN for fewer than two or no spread).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// `t` on the CPU as contiguous f32: where the rows of the output tables are read from.
pub fn cpu(t: &tch::Tensor) -> tch::Tensor {
    t.to_device(Device::Cpu).to_kind(tch::Kind::Float).contiguous()
}

/// Singular values, descending, in f64. (`torch.linalg.svdvals` takes a driver only on CUDA,
/// and tch always passes one: `svd` without U, V is the same computation.)
pub fn singular_values(t: &tch::Tensor) -> Vec<f64> {
    let (_, s, _) = t.to_kind(tch::Kind::Double).svd(true, false);
    Vec::<f64>::try_from(s).unwrap_or_default()
}
