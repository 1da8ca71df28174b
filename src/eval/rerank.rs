//! The rerank setting of Wu et al. (Table 5): every model scores the same candidates — BM25's
//! top-`depth` for each query, optionally plus its relevant documents (`add_gold`, off by
//! default: it inflates every score and is reported as such) — with the relevance it was
//! trained with: DR q·d, ColBERT q→d MaxSim or q←d document-to-query alignment, GR the
//! sequence log-likelihood of the document's docid.
//!
//! Rank 0 runs BM25 and broadcasts the candidates. DR/ColBERT: each rank embeds the
//! candidates in its own row groups once (group-local batches, as end to end) and scores
//! every query against them; rank 0 merges. GR: each rank scores its contiguous share of the
//! queries, a query alone with its candidates in fixed batches of its own list. Either way a
//! score does not depend on the number of ranks.
use std::collections::BTreeSet;

use serde_json::json;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::eval::options::RerankOptions;
use crate::eval::run_eval::Context;
use crate::model::generative::score_docids;
use crate::model::task::Net;
use crate::parallel::{parallel_map, Shared};
use crate::search::bm25::Bm25Index;
use crate::search::topk::{Hit, TopK};

type Info = serde_json::Map<String, serde_json::Value>;

/// Candidate doc indices of every query (ascending), the same on every rank.
pub fn candidates(ctx: &Context, r: &RerankOptions, relevant: &[Vec<i64>]) -> Result<Vec<Vec<i64>>> {
    let mut bytes = Vec::new();
    if ctx.comm.world().is_coordinator() {
        let docs = ctx.ds.docs()?;
        let index = Bm25Index::build(&docs)?;
        let texts: Vec<&str> = ctx.queries.iter().map(|q| q.text.as_str()).collect();
        let lists: Vec<Vec<i64>> = index
            .search_all(&texts, r.depth)?
            .into_iter()
            .zip(relevant)
            .map(|(hits, rel)| {
                let mut set: BTreeSet<i64> = hits.iter().map(|h| h.doc_idx).collect();
                if r.add_gold {
                    set.extend(rel.iter().copied());
                }
                set.into_iter().collect()
            })
            .collect();
        bytes = serde_json::to_vec(&lists).expect("candidates serialise");
    }
    ctx.comm.broadcast_bytes(&mut bytes, 0)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::dist(ctx.comm.world().rank, format!("rerank candidates: {e}")))
}

/// Scores this rank's share of the queries; hits of the other queries stay empty.
pub fn run(ctx: &Context, r: &RerankOptions, info: &mut Info) -> Result<Vec<Vec<Hit>>> {
    let opts = ctx.opts;
    let relevant = ctx.relevant()?;
    let t_cand = std::time::Instant::now();
    let cands = candidates(ctx, r, &relevant)?;
    let recall: f64 = cands
        .iter()
        .zip(&relevant)
        .filter(|(_, rel)| !rel.is_empty())
        .map(|(c, rel)| rel.iter().filter(|d| c.binary_search(d).is_ok()).count() as f64 / rel.len() as f64)
        .sum::<f64>()
        / relevant.iter().filter(|r| !r.is_empty()).count().max(1) as f64;
    info.insert(
        "rerank".into(),
        json!({
            "candidates": format!("BM25 top-{}{}", r.depth, if r.add_gold { " + the relevant documents" } else { "" }),
            "gold_added": r.add_gold,
            "note": if r.add_gold { "relevant documents were added to the candidates: every metric is inflated (an upper bound), not comparable with end-to-end retrieval" } else { "BM25 candidates only" },
            "candidate_recall": recall,
            "mean_candidates": cands.iter().map(Vec::len).sum::<usize>() as f64 / cands.len().max(1) as f64,
            "alignment": matches!(ctx.task.net, Net::Colbert(_)).then(|| format!("{:?}", opts.alignment)),
            "candidate_seconds": t_cand.elapsed().as_secs_f64(),
        }),
    );
    if opts.rerank.as_ref().is_some_and(|r| r.add_gold) {
        tracing::warn!("rerank with gold documents added: scores are inflated (an upper bound)");
    }

    // DR and ColBERT: each rank embeds its own candidate documents once (as end to end).
    match &ctx.task.net {
        Net::Dual(_) => return crate::eval::run_dense::dual_rerank(ctx, &cands),
        Net::Colbert(_) => return crate::eval::run_dense::colbert_rerank(ctx, &cands),
        Net::Generative { .. } => {}
    }
    // GR: sequence likelihoods need no document encoding; ranks take shares of the queries.
    let (lo, hi) = ctx.query_share();
    let ids = ctx.query_ids()?;
    let targets = doc_targets(ctx)?;
    let mut out = vec![Vec::new(); ctx.queries.len()];
    let task = Shared(ctx.task);
    let units: Vec<(usize, Vec<i64>, Input)> = (lo..hi)
        .flat_map(|q| cands[q].chunks(opts.batch_size.max(1)).map(move |part| (q, part.to_vec())))
        .map(|(q, part)| {
            let (q_ids, q_mask) = ctx.query_tok.batch(std::slice::from_ref(&ids[q]), opts.device);
            let rows = part.iter().flat_map(|&d| targets[d as usize].iter().cloned()).collect();
            let per_doc = part.iter().map(|&d| targets[d as usize].len()).collect();
            (q, part, Input { q_ids, q_mask, rows, per_doc })
        })
        .collect();
    let scored = parallel_map(opts.device, units, |(q, part, input)| {
        let s = score_gr(task.get(), input);
        (q, part.into_iter().zip(s).map(|(doc_idx, score)| Hit { score, doc_idx }).collect::<Vec<_>>())
    });
    let mut tops: std::collections::BTreeMap<usize, TopK> = (lo..hi).map(|q| (q, TopK::new(opts.k))).collect();
    for (q, hits) in scored {
        tops.get_mut(&q).expect("query of this rank").merge(hits);
    }
    for (q, top) in tops {
        out[q] = top.into_sorted_vec();
    }
    Ok(out)
}

/// GR: every document's docid target sequences (model vocabulary), by doc_idx.
fn doc_targets(ctx: &Context) -> Result<Vec<Vec<Vec<i64>>>> {
    let table = ctx.docids()?;
    let targets = ctx.task.targets(table)?;
    let mut by_doc = vec![Vec::new(); ctx.n_docs()];
    for (row, t) in table.rows.iter().zip(targets) {
        by_doc[row.doc_idx as usize].push(t);
    }
    Ok(by_doc)
}

/// One query and the docid targets of a batch of its candidates (`per_doc` rows each).
struct Input {
    q_ids: Tensor,
    q_mask: Tensor,
    rows: Vec<Vec<i64>>,
    per_doc: Vec<usize>,
}

/// GR scores of one query's candidates (in a worker): log p(docid | query); a document with
/// several docids (n-grams) scores its best one.
fn score_gr(task: &crate::model::task::Task, x: Input) -> Vec<f32> {
    let Net::Generative { model, .. } = &task.net else { unreachable!("generative only") };
    let lls = score_docids(model, &x.q_ids, &x.q_mask, &[x.rows]).remove(0);
    let mut it = lls.into_iter();
    x.per_doc.iter().map(|&n| it.by_ref().take(n).fold(f32::NEG_INFINITY, f32::max)).collect()
}
