//! Generative retrieval of one rank's share of the queries: trie-constrained beam search
//! over the run's docids (every rank builds the same trie; it is read-only and shared by
//! all beams). With calibration, each query's returned docids are normalised into p(docid|q):
//! over the whole docid set when the beam covers it, else over the beam's docids (flagged).
use std::collections::HashSet;

use serde_json::json;

use crate::data::docid::DocidTable;
use crate::error::{Error, Result};
use crate::eval::calibration::{self, QueryCalibration};
use crate::eval::run_eval::Context;
use crate::model::task::{Net, Task};
use crate::parallel::{parallel_map, Shared};
use crate::search::beam::{to_hits, BeamSearch};
use crate::search::topk::Hit;
use crate::search::trie::DocidTrie;
use tch::Tensor;

type Info = serde_json::Map<String, serde_json::Value>;

/// The docid trie of a GR task: each docid row's target tokens (model vocabulary, eos last).
pub fn build_trie(task: &Task, table: &DocidTable) -> Result<DocidTrie> {
    let Net::Generative { model, .. } = &task.net else {
        return Err(Error::usage("--kind", "docids belong to generative models"));
    };
    let targets = task.targets(table)?;
    let seqs: Vec<(i64, Vec<u32>)> =
        table.rows.iter().zip(targets).map(|(r, t)| (r.doc_idx, t.into_iter().map(|x| x as u32).collect())).collect();
    DocidTrie::build(&seqs, model.config.eos_token_id as u32)
}

pub fn generative(ctx: &Context, info: &mut Info, metrics: &mut Info) -> Result<Vec<Vec<Hit>>> {
    let Net::Generative { model, .. } = &ctx.task.net else { unreachable!("generative only") };
    let opts = ctx.opts;
    let table = ctx.docids()?;
    let t_trie = std::time::Instant::now();
    let trie = build_trie(ctx.task, table)?;
    info.insert(
        "trie".into(),
        json!({"docids": trie.num_docids(), "nodes": trie.num_nodes(), "max_depth": trie.max_depth(), "bytes": trie.memory_bytes(), "build_seconds": t_trie.elapsed().as_secs_f64()}),
    );
    let beam = BeamSearch::new(model, &trie, opts.beam_width());
    let exhaustive = opts.beam_width() >= trie.num_docids();
    let ids = ctx.query_ids()?;
    let relevant = if opts.calibration { ctx.relevant()? } else { vec![] };
    let (units, (lo, hi)) = query_batches(ctx, &ids, opts.beam_width());
    let mut hits: Vec<Vec<Hit>> = vec![Vec::new(); ctx.queries.len()];
    let mut calib: Vec<(usize, QueryCalibration)> = Vec::new();
    let t0 = std::time::Instant::now();
    let shared = Shared(&beam);
    let lead = ctx.comm.world().is_coordinator();
    let bar = crate::progress::bar(if lead { (hi - lo) as u64 } else { 0 }, "GR queries");
    let decoded = parallel_map(opts.device, units, |(start, qi, qm)| {
        let gens = shared.get().search(&qi, &qm);
        bar.inc(gens.len() as u64);
        (start, gens)
    });
    bar.finish_and_clear();
    for (start, batch) in decoded {
        for (i, gens) in batch.into_iter().enumerate() {
            let q = start + i;
            hits[q] = to_hits(&trie, &gens, opts.k);
            if opts.calibration && !relevant[q].is_empty() {
                let rel: HashSet<i64> = relevant[q].iter().copied().collect();
                let lls: Vec<f64> = gens.iter().map(|g| g.score as f64).collect();
                let is_rel: Vec<bool> =
                    gens.iter().map(|g| trie.docs(g.state).iter().any(|d| rel.contains(d))).collect();
                // Relevant docids: distinct leaves of the relevant documents.
                let n_rel = relevant_docids(table, &relevant[q]);
                calib.push((q, calibration::gr_query(&lls, &is_rel, n_rel)));
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if opts.memorization_docs > 0 {
        memorization(ctx, &beam, &trie, metrics)?;
    }
    info.insert("decode_seconds_rank0".into(), json!(secs));
    info.insert("queries_per_second_rank0".into(), json!((hi - lo) as f64 / secs.max(1e-9)));
    info.insert("beam".into(), json!(opts.beam_width()));
    if opts.calibration {
        // Every rank's per-query calibration to all (small), summarised in query order.
        let mine: Vec<(usize, f64, f64)> = calib.iter().map(|(q, c)| (*q, c.brier, c.p_relevant)).collect();
        let parts = ctx.comm.all_gather_bytes(&serde_json::to_vec(&mine).expect("serialise"))?;
        let mut all: Vec<(usize, f64, f64)> = Vec::new();
        for p in parts {
            all.extend(
                serde_json::from_slice::<Vec<(usize, f64, f64)>>(&p).map_err(|e| Error::dist(0, e.to_string()))?,
            );
        }
        all.sort_by_key(|x| x.0);
        info.insert(
            "calibration_per_query".into(),
            json!(all
                .iter()
                .map(|(q, b, p)| json!({"query_id": ctx.queries[*q].query_id, "Brier": b, "p_relevant": p}))
                .collect::<Vec<_>>()),
        );
        let per_query: Vec<QueryCalibration> = all
            .into_iter()
            .map(|(_, brier, p_relevant)| QueryCalibration { brier, p_relevant, gaps: vec![] })
            .collect();
        let how = if exhaustive {
            "every docid (beam ≥ number of docids: exact)"
        } else {
            "the docids the beam returned (approximation: beam < number of docids)"
        };
        let summary = calibration::summarize(&per_query, how);
        metrics.insert("Brier".into(), summary["Brier"].clone());
        // A beam narrower than the docid set normalises over what it returned: flagged, so a
        // sweep table never mixes approximate and exact Brier scores unseen.
        metrics.insert("Brier_exact".into(), json!(exhaustive));
        info.insert("calibration".into(), summary);
    }
    Ok(hits)
}

/// A batch of queries to decode: its first query's index, input ids (B, L), mask (B, L).
pub type QueryBatch = (usize, Tensor, Tensor);

/// This rank's batches of queries (first query index, ids, mask) and its share `[lo, hi)`.
/// Batches are fixed by query index — as many queries as fill `beam_rows` running beams of
/// width `beam` — and dealt to ranks whole, so a query is decoded in the same padded batch
/// on any number of ranks.
pub fn query_batches(ctx: &Context, ids: &[Vec<i64>], beam: usize) -> (Vec<QueryBatch>, (usize, usize)) {
    let per_batch = (ctx.opts.beam_rows / beam.max(1)).max(1);
    let n_batches = ids.len().div_ceil(per_batch);
    let w = ctx.comm.world();
    let (lo, hi) = (
        (n_batches * w.rank / w.size * per_batch).min(ids.len()),
        (n_batches * (w.rank + 1) / w.size * per_batch).min(ids.len()),
    );
    let units = (lo..hi)
        .step_by(per_batch)
        .map(|start| {
            let (qi, qm) = ctx.query_tok.batch(&ids[start..(start + per_batch).min(hi)], ctx.opts.device);
            (start, qi, qm)
        })
        .collect();
    (units, (lo, hi))
}

/// DSI's indexing accuracy: R@1 of decoding each sampled document's own indexing input (its
/// first `doc_max_len` tokens, as `index_view = "first"` trains it). The sample is a fixed
/// permutation of the corpus keyed by `memorization_seed`; each rank decodes a contiguous
/// share, read in doc order so each row group is read once.
fn memorization(ctx: &Context, beam: &BeamSearch<DocidTrie>, trie: &DocidTrie, metrics: &mut Info) -> Result<()> {
    let opts = ctx.opts;
    let n_docs = ctx.n_docs();
    let mut sample: Vec<u32> = (0..n_docs as u32).collect();
    crate::rng::SplitMix64::keyed(&[opts.memorization_seed, 0xe7]).shuffle(&mut sample);
    sample.truncate(opts.memorization_docs.min(n_docs));
    let w = ctx.comm.world();
    let (lo, hi) = (sample.len() * w.rank / w.size, sample.len() * (w.rank + 1) / w.size);
    let mut mine = sample[lo..hi].to_vec();
    mine.sort_unstable();
    let mut store = crate::data::batch::DocStore::new(&ctx.ds.docs_path(), ctx.groups.clone(), 1);
    let per_batch = (opts.beam_rows / opts.beam_width().max(1)).max(1);
    let mut correct = 0i64;
    for chunk in mine.chunks(per_batch) {
        let texts: Vec<String> = chunk.iter().map(|&d| store.text(d)).collect::<Result<_>>()?;
        let ids = ctx.doc_tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
        let (ids, mask) = ctx.doc_tok.batch(&ids, opts.device);
        for (&d, gens) in chunk.iter().zip(beam.search(&ids, &mask)) {
            correct += i64::from(to_hits(trie, &gens, 1).first().is_some_and(|h| h.doc_idx == d as i64));
        }
    }
    let total = crate::dist::gather::global_count(ctx.comm, correct)?;
    metrics.insert("memorization_R@1".into(), json!(total as f64 / sample.len().max(1) as f64));
    metrics.insert("memorization_docs".into(), json!(sample.len()));
    Ok(())
}

/// Number of distinct docids (trie leaves) the relevant documents have.
fn relevant_docids(table: &DocidTable, relevant: &[i64]) -> usize {
    let rel: HashSet<i64> = relevant.iter().copied().collect();
    let leaves: HashSet<&[i64]> =
        table.rows.iter().filter(|r| rel.contains(&r.doc_idx)).map(|r| r.tokens.as_slice()).collect();
    leaves.len().max(1)
}
