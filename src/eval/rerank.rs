//! The rerank setting of Wu et al. (Table 5): every model scores the same candidates — BM25's
//! top-`depth` for each query, optionally plus its relevant documents (`add_gold`, off by
//! default: it inflates every score and is reported as such) — with the relevance it was
//! trained with: DR q·d, ColBERT q→d MaxSim or q←d document-to-query alignment, GR the
//! sequence log-likelihood of the document's docid (n-gram docids: of its best pre-sampled
//! n-gram).
//!
//! `paper` (`--rerank paper`) is the setting as Wu et al. compute it: BM25 top-100 plus the
//! relevant documents, and for n-gram docids (T5-SEAL) their code's span score
//! (Furyton/GR-as-MVDR, `gr.py`: `_expand_qrel`, `rank`):
//!
//! ```text
//! score(q, d) = Σ_{s=1..3} (1/|y_s|) Σ_t log p(y_{s,t} | y_{s,<t}, q),   y_s = span_s(d) + eos
//! ```
//!
//! three 10-token spans of the document drawn with replacement, starts i weighted
//! softmax(m_i), m_i = how many of the tokens at i, i+1, i+2 occur in the query. Theirs are
//! 10 *words* weighted by fuzzy 3-gram matches (`utils.py:do_span`); grdr's are the T5 tokens
//! its n-gram docids are made of, and exact token matches — the same query-biased sampling
//! on the model's units. The draws are keyed by (query, document), not by order.
//!
//! Rank 0 runs BM25 and broadcasts the candidates. DR/ColBERT: each rank embeds the
//! candidates in its own row groups once (group-local batches, as end to end) and scores
//! every query against them; rank 0 merges. GR: each rank scores its contiguous share of the
//! queries, a query alone with its candidates in fixed batches of its own list. Either way a
//! score does not depend on the number of ranks.
use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::json;
use tch::Tensor;

use crate::data::docid::Scheme;
use crate::error::{Error, Result};
use crate::eval::options::RerankOptions;
use crate::eval::run_eval::Context;
use crate::model::colbert::LateInteraction;
use crate::model::generative::score_docids;
use crate::model::task::Net;
use crate::parallel::{parallel_map, Shared};
use crate::rng::SplitMix64;
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
            "setting": if r.paper { "paper (Wu et al. §6.3)" } else { "bm25" },
            "gold_added": r.add_gold,
            "note": if r.add_gold { "relevant documents were added to the candidates: every metric is inflated (an upper bound), not comparable with end-to-end retrieval" } else { "BM25 candidates only" },
            "candidate_recall": recall,
            "mean_candidates": cands.iter().map(Vec::len).sum::<usize>() as f64 / cands.len().max(1) as f64,
            "alignment": ctx.interaction().map(LateInteraction::describe),
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
    let spans = r.paper && ctx.docids()?.meta.scheme == Scheme::Ngram;
    let targets = if spans { span_targets(ctx, &ids, &cands, (lo, hi))? } else { doc_targets(ctx)? };
    info.get_mut("rerank").and_then(|v| v.as_object_mut()).expect("inserted above").insert(
        "gr_score".into(),
        json!(if spans {
            "Wu et al.: Σ over 3 query-biased 10-token spans of the mean token log p (eos included)"
        } else {
            "log p(docid | q), a document's best docid"
        }),
    );
    let mut out = vec![Vec::new(); ctx.queries.len()];
    let task = Shared(ctx.task);
    let units: Vec<(usize, Vec<i64>, Input)> = (lo..hi)
        .flat_map(|q| cands[q].chunks(opts.batch_size.max(1)).map(move |part| (q, part.to_vec())))
        .map(|(q, part)| {
            let (q_ids, q_mask) = ctx.query_tok.batch(std::slice::from_ref(&ids[q]), opts.device);
            let target = |d: i64| &targets[&if spans { (q, d) } else { (0, d) }];
            let rows = part.iter().flat_map(|&d| target(d).iter().cloned()).collect();
            let per_doc = part.iter().map(|&d| target(d).len()).collect();
            (q, part, Input { q_ids, q_mask, rows, per_doc, mean_of_sum: spans })
        })
        .collect();
    let lead = ctx.comm.world().is_coordinator();
    let bar = crate::progress::bar(if lead { units.len() as u64 } else { 0 }, "GR rerank");
    let scored = parallel_map(opts.device, units, |(q, part, input)| {
        let s = score_gr(task.get(), input);
        bar.inc(1);
        (q, part.into_iter().zip(s).map(|(doc_idx, score)| Hit { score, doc_idx }).collect::<Vec<_>>())
    });
    bar.finish_and_clear();
    let mut tops: std::collections::BTreeMap<usize, TopK> = (lo..hi).map(|q| (q, TopK::new(opts.k))).collect();
    for (q, hits) in scored {
        tops.get_mut(&q).expect("query of this rank").merge(hits);
    }
    for (q, top) in tops {
        out[q] = top.into_sorted_vec();
    }
    Ok(out)
}

/// Target sequences to score, keyed (query, doc_idx): (0, doc) for a document's docids.
type Targets = HashMap<(usize, i64), Vec<Vec<i64>>>;

/// GR: every document's docid target sequences (model vocabulary), keyed (0, doc_idx).
fn doc_targets(ctx: &Context) -> Result<Targets> {
    let table = ctx.docids()?;
    let targets = ctx.task.targets(table)?;
    let mut by_doc: Targets = HashMap::new();
    for (row, t) in table.rows.iter().zip(targets) {
        by_doc.entry((0, row.doc_idx)).or_default().push(t);
    }
    Ok(by_doc)
}

/// Wu et al.'s spans: for each of this rank's queries `lo..hi` and each of its candidates,
/// [`SPANS`] spans of [`SPAN_LEN`] tokens (+ eos) of the document, starts drawn (with
/// replacement) from softmax(m_i), m_i = tokens at i..i+3 that occur in the query.
fn span_targets(ctx: &Context, ids: &[Vec<i64>], cands: &[Vec<i64>], (lo, hi): (usize, usize)) -> Result<Targets> {
    let Net::Generative { model, .. } = &ctx.task.net else { unreachable!("generative only") };
    if model.np.is_some() {
        return Err(Error::usage(
            "--rerank paper",
            "Wu et al.'s spans are any 10 tokens of a document; an NP-decoding model scores its docids' entries only",
        ));
    }
    let eos = model.config.eos_token_id;
    let mut docs: Vec<i64> = cands[lo..hi].iter().flatten().copied().collect();
    docs.sort_unstable();
    docs.dedup();
    let mut tok = ctx.doc_tok.tokenizer.clone();
    tok.with_truncation(None).map_err(|e| Error::usage("tokenizer", e.to_string()))?;
    let mut store = crate::data::batch::DocStore::new(&ctx.ds.docs_path(), ctx.groups.clone(), 1);
    let mut tokens: HashMap<i64, Vec<i64>> = HashMap::new();
    for &d in &docs {
        let text = store.text(d as u32)?;
        let enc = tok.encode(text.as_str(), false).map_err(|e| Error::usage("tokenizer", e.to_string()))?;
        tokens.insert(d, enc.get_ids().iter().map(|&t| t as i64).collect());
    }
    let mut out: Targets = HashMap::new();
    for q in lo..hi {
        let query: HashSet<i64> = ids[q].iter().copied().filter(|&t| t != eos).collect();
        for &d in &cands[q] {
            let doc = &tokens[&d];
            let starts = sample_span_starts(doc, &query, SplitMix64::keyed(&[SPAN_SEED, q as u64, d as u64]));
            let spans = starts
                .into_iter()
                .map(|i| doc[i..(i + SPAN_LEN).min(doc.len())].iter().copied().chain([eos]).collect())
                .collect();
            out.insert((q, d), spans);
        }
    }
    Ok(out)
}

/// Spans per document, tokens per span, and the seed of the draws (Wu et al.: 3, 10, 12345).
const SPANS: usize = 3;
const SPAN_LEN: usize = 10;
const SPAN_SEED: u64 = 12345;

/// [`SPANS`] span starts drawn from softmax over the query-match weights (one start, 0,
/// when the document is no longer than a span).
fn sample_span_starts(doc: &[i64], query: &HashSet<i64>, mut rng: SplitMix64) -> Vec<usize> {
    if doc.len() <= SPAN_LEN {
        return vec![0];
    }
    let n = doc.len() - SPAN_LEN + 1;
    let weight = |i: usize| doc[i..(i + 3).min(doc.len())].iter().filter(|t| query.contains(t)).count() as f64;
    let m: Vec<f64> = (0..n).map(weight).collect();
    let top = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let cum: Vec<f64> = m
        .iter()
        .scan(0.0, |acc, &x| {
            *acc += (x - top).exp();
            Some(*acc)
        })
        .collect();
    let total = *cum.last().expect("n ≥ 1");
    (0..SPANS).map(|_| cum.partition_point(|&c| c <= rng.unit() * total).min(n - 1)).collect()
}

/// One query and the target rows of a batch of its candidates (`per_doc` rows each).
struct Input {
    q_ids: Tensor,
    q_mask: Tensor,
    rows: Vec<Vec<i64>>,
    per_doc: Vec<usize>,
    /// Score a document Σ over its rows of the mean token log p (Wu et al.'s spans), not
    /// its best row's log p.
    mean_of_sum: bool,
}

/// GR scores of one query's candidates (in a worker): log p(docid | query), a document with
/// several docids (n-grams) scoring its best one; or Wu et al.'s span score.
fn score_gr(task: &crate::model::task::Task, x: Input) -> Vec<f32> {
    let Net::Generative { model, .. } = &task.net else { unreachable!("generative only") };
    let lens: Vec<f32> = x.rows.iter().map(|r| r.len() as f32).collect();
    let lls = score_docids(model, &x.q_ids, &x.q_mask, &[x.rows]).remove(0);
    let mut it = lls.into_iter().zip(lens);
    x.per_doc
        .iter()
        .map(|&n| {
            let rows = it.by_ref().take(n);
            if x.mean_of_sum {
                rows.map(|(ll, len)| ll / len).sum()
            } else {
                rows.map(|(ll, _)| ll).fold(f32::NEG_INFINITY, f32::max)
            }
        })
        .collect()
}
