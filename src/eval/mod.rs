//! Evaluation: TREC run and qrels files in, trec_eval-identical metrics out.
//!
//! Every number grdr reports must be checkable against the standard tool, so the
//! measures here reproduce trec_eval (through pytrec_eval, which wraps it) to 1e-6:
//! `tests/metrics_parity.rs` compares them on real SciFact qrels with
//! `scripts/pytrec_reference.py`. Stages hand runs to each other as TREC files
//! (`data::trec`), so a run written by `grdr eval` can be re-scored by any tool.
use std::path::Path;

use crate::error::Result;

pub mod calibration;
pub mod metrics;
pub mod options;
pub mod rerank;
pub mod run_compressed;
pub mod run_dense;
pub mod run_eval;
pub mod run_gr;
pub mod run_seal;

pub use crate::data::trec::{read_qrels, read_run, write_run, write_run_rows, Qrels, Run};
pub use metrics::{evaluate, Metrics, MEASURES};
pub use options::{EvalOptions, RerankOptions};

/// Scores the TREC run at `run` against the qrels at `qrels` (BEIR TSV or TREC format),
/// as `grdr eval-run` does. Judged queries absent from the run count as zeros; a warning
/// names how many, so a half-finished run is never mistaken for a weak one.
pub fn evaluate_files(qrels: &Path, run: &Path) -> Result<Metrics> {
    let judged = read_qrels(qrels)?;
    let ranked = read_run(run)?;
    let metrics = evaluate(&judged, &ranked);
    if metrics.missing_from_run > 0 {
        tracing::warn!(
            "{}: {} of {} judged queries have no results; they score 0",
            run.display(),
            metrics.missing_from_run,
            metrics.queries
        );
    }
    if metrics.unjudged_in_run > 0 {
        tracing::warn!(
            "{}: {} queries have no judgements in {} and are not scored",
            run.display(),
            metrics.unjudged_in_run,
            qrels.display()
        );
    }
    Ok(metrics)
}
