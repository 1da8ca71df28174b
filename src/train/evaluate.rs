//! Evaluation at the end of a run (`[eval]`): the trained task, still in memory, goes through
//! the same sharded driver as `grdr eval` (`eval::run_eval`: DR/ColBERT encode their row
//! groups and search exactly; GR decodes its share of the queries with trie-constrained beam
//! search and also reports memorisation). Rank 0 writes `RUNDIR/eval/{run.trec, metrics.json,
//! run.json}` and prints the table. `grdr eval --run RUNDIR` later gives the same files.
use std::path::Path;

use serde_json::json;
use tch::Device;

use super::task::Task;
use crate::config::RunConfig;
use crate::data::docid::DocidTable;
use crate::data::Dataset;
use crate::dist::Comm;
use crate::error::Result;
use crate::eval::run_eval::{self, EvalOptions};
use crate::model::colbert::Alignment;

/// The options of `grdr eval --run` with its defaults, from the run's `[eval]` section.
pub fn options(cfg: &RunConfig, device: Device) -> EvalOptions {
    let e = &cfg.eval;
    EvalOptions {
        split: e.split.clone(),
        k: e.k,
        batch_size: e.batch_size,
        query_max_len: cfg.data.query_max_len,
        doc_max_len: e.doc_max_len.unwrap_or(cfg.data.doc_max_len),
        query_block: 1024,
        spill: None,
        device,
        bf16_store: false,
        token_k: 100,
        alignment: Alignment::QueryToDoc,
        // GR: a beam as wide as the run file is deep.
        beam: e.k,
        beam_rows: 1024,
        rerank: None,
        calibration: false,
        temperature: cfg.train.temperature,
        gap_ks: vec![],
        memorization_docs: e.memorization_docs,
        memorization_seed: cfg.train.seed,
    }
}

/// Evaluates `task` on every rank; rank 0 writes `out` and returns metrics.json's object.
pub fn evaluate(
    comm: &dyn Comm,
    task: &Task,
    ds: &Dataset,
    docids: Option<&DocidTable>,
    cfg: &RunConfig,
    device: Device,
    out: &Path,
) -> Result<Option<serde_json::Value>> {
    let opts = options(cfg, device);
    let Some(mut outcome) = run_eval::evaluate(comm, task, ds, docids, &opts)? else { return Ok(None) };
    // metrics.json also records the evaluation's wall time (sweep reports read it).
    outcome.metrics_extra.insert("eval_seconds".into(), outcome.info["seconds"].clone());
    let tmp = crate::atomic::TempDir::new(out, true)?;
    let mut info = serde_json::Map::new();
    info.insert("command".into(), json!("train (evaluation at the end)"));
    info.insert("grdr_version".into(), json!(crate::VERSION));
    info.insert("kind".into(), json!(format!("{:?}", cfg.model.kind).to_lowercase()));
    info.insert("data".into(), json!(cfg.data.path.display().to_string()));
    info.insert("split".into(), json!(opts.split));
    info.insert("k".into(), json!(opts.k));
    info.insert("query_max_len".into(), json!(opts.query_max_len));
    info.insert("doc_max_len".into(), json!(opts.doc_max_len));
    let (metrics, json) = run_eval::write_outcome(tmp.path(), ds, &opts.split, &outcome, info, "grdr-train")?;
    tmp.commit()?;
    let title =
        format!("{:?} model ({}) on {} ({} queries)", cfg.model.kind, cfg.model.init, opts.split, metrics.queries);
    crate::cmd::print_metrics_table(&title, &metrics);
    crate::cmd::eval::print_extras(&outcome.metrics_extra);
    Ok(Some(json))
}
