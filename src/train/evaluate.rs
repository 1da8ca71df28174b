//! Evaluation at the end of a run (`[eval]`): the trained task, still in memory, goes through
//! the same sharded driver as `grdr eval` (`eval::run_eval`: DR/ColBERT encode their row
//! groups and search exactly; GR decodes its share of the queries with trie-constrained beam
//! search and also reports memorisation) with the same options (`EvalOptions::for_run`).
//! Rank 0 writes `RUNDIR/eval/{run.trec, metrics.json, run.json}`; `grdr eval --run RUNDIR`
//! later gives the same files.
use std::path::Path;

use serde_json::json;
use tch::Device;

use crate::config::RunConfig;
use crate::data::docid::DocidTable;
use crate::data::Dataset;
use crate::dist::Comm;
use crate::error::Result;
use crate::eval::run_eval::{self, EvalSummary};
use crate::eval::EvalOptions;
use crate::model::task::Task;

/// Evaluates `task` on every rank; rank 0 writes `out` and gets the summary to show.
pub fn evaluate(
    comm: &dyn Comm,
    task: &Task,
    ds: &Dataset,
    docids: Option<&DocidTable>,
    cfg: &RunConfig,
    device: Device,
    out: &Path,
) -> Result<Option<EvalSummary>> {
    let opts = EvalOptions::for_run(cfg, device);
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
    let metrics = run_eval::write_outcome(tmp.path(), ds, &opts, &outcome, info, "grdr-train")?;
    tmp.commit()?;
    let title =
        format!("{:?} model ({}) on {} ({} queries)", cfg.model.kind, cfg.model.init, opts.split, metrics.queries);
    Ok(Some(EvalSummary { title, metrics, extra: outcome.metrics_extra }))
}
