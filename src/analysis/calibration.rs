//! GR's calibration (Zhang et al. Proposition 3.2: GR's sequence likelihood is normalised
//! globally, over every docid): the Brier score of p(docid | q) normalised over *all*
//! docids, against what `grdr eval --calibration` reports at the run's beam, normalised over
//! the docids the beam returned (an approximation whenever beam < number of docids).
//!
//! The exact distribution needs every docid's sequence log-likelihood. Trie-constrained beam
//! search with a beam as wide as the docid set prunes nothing (`search/beam.rs`,
//! `tests/eval_beam.rs`), so it *is* that computation, batched through the trie: a prefix
//! shared by many docids is decoded once, its KV cache reused by every continuation. Cost:
//! one decoder step per trie node per query (atomic docids: 1 + number of docids; titles:
//! about the number of title tokens), so `--limit` the queries of a large docid set on a CPU.
use std::collections::HashMap;

use serde_json::json;

use super::table::{write_table, Col, Table};
use super::{AnalyzeOptions, Outcome, Plot};
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::eval::run_gr;
use crate::model::task::Net;

type Info = serde_json::Map<String, serde_json::Value>;
/// Query id → (Brier, mean p of the relevant docids).
type PerQuery = HashMap<String, (f64, f64)>;

/// Per query id: (Brier, mean p of the relevant docids), and the summary of one evaluation.
fn calibrate(ctx: &Context, beam: usize, limit: usize) -> Result<(PerQuery, serde_json::Value)> {
    let mut opts = ctx.opts.clone();
    opts.calibration = true;
    opts.beam = Some(beam);
    opts.k = opts.k.min(beam);
    opts.memorization_docs = 0;
    let mut sub = Context::new(ctx.comm, ctx.task, ctx.ds, ctx.docids, &opts)?;
    sub.queries.truncate(limit);
    let (mut info, mut metrics) = (Info::new(), Info::new());
    run_gr::generative(&sub, &mut info, &mut metrics)?;
    let per_query = info
        .get("calibration_per_query")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["query_id"].as_str()?.to_string(), (r["Brier"].as_f64()?, r["p_relevant"].as_f64()?))))
        .collect();
    Ok((per_query, info.get("calibration").cloned().unwrap_or_default()))
}

pub fn run(ctx: &Context, opts: &AnalyzeOptions, out: Option<&std::path::Path>) -> Result<Option<Outcome>> {
    if !matches!(ctx.task.net, Net::Generative { .. }) {
        return Err(super::needs(super::What::Calibration, "GR"));
    }
    let table = ctx.docids()?;
    let n_docids = run_gr::build_trie(ctx.task, table)?.num_docids();
    let beam = ctx.opts.beam_width();
    let limit = opts.limit.unwrap_or(usize::MAX).min(ctx.queries.len());
    if !opts.exact && beam >= n_docids {
        return Err(Error::usage("--exact", "the run's beam already covers every docid: nothing to approximate"));
    }
    let (approx, approx_summary) = calibrate(ctx, beam, limit)?;
    let exact = if opts.exact { Some(calibrate(ctx, n_docids, limit)?) } else { None };
    let Some(out) = out else { return Ok(None) };
    let ids: Vec<String> =
        ctx.queries[..limit].iter().map(|q| q.query_id.clone()).filter(|q| approx.contains_key(q)).collect();
    let col = |m: &PerQuery, f: fn(&(f64, f64)) -> f64| {
        Col::F64(ids.iter().map(|q| m.get(q).map(f).unwrap_or(f64::NAN)).collect())
    };
    let mut columns = vec![
        ("query_id", Col::Str(ids.clone())),
        ("brier_beam", col(&approx, |v| v.0)),
        ("p_relevant_beam", col(&approx, |v| v.1)),
    ];
    let mut summary = json!({
        "model": "gr", "docids": n_docids, "queries": ids.len(),
        "beam": {"width": beam, "calibration": approx_summary},
    });
    let mut plots = vec![];
    if let Some((exact, exact_summary)) = &exact {
        columns.push(("brier_exact", col(exact, |v| v.0)));
        columns.push(("p_relevant_exact", col(exact, |v| v.1)));
        let diffs: Vec<f64> = ids.iter().filter_map(|q| Some(approx.get(q)?.0 - exact.get(q)?.0)).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        summary["exact"] = json!({"width": n_docids, "calibration": exact_summary});
        summary["brier_beam_minus_exact"] = json!({
            "mean": mean(&diffs), "max_abs": diffs.iter().fold(0.0f64, |a, d| a.max(d.abs())),
        });
        let mut pts: Vec<(f64, f64)> = ids.iter().filter_map(|q| Some((exact.get(q)?.0, approx.get(q)?.0))).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        plots.push(Plot::Lines {
            stem: "brier-beam-vs-exact".into(),
            title: format!("Per-query Brier: beam {beam} (normalised over its docids) vs all {n_docids} docids"),
            x_label: "Brier, exact (all docids)".into(),
            y_label: "Brier, beam approximation".into(),
            series: vec![("queries (sorted by exact Brier)".into(), pts)],
        });
    }
    let table = Table::new(columns);
    write_table(&out.join("calibration.parquet"), &table)?;
    Ok(Some(Outcome { summary, plots }))
}
