//! Evaluation at the end of a run (`[eval]`), sharded like `grdr eval`: DR and ColBERT —
//! each rank encodes its row groups of the corpus and keeps every query's top-k of its
//! shard; GR — each rank decodes its share of the queries with trie-constrained beam search.
//! Rank 0 merges the hits with `TopK` (grdr's one order), writes `RUNDIR/eval/run.trec`
//! and `metrics.json`, and prints the table. GR also reports memorisation: R@1 of
//! decoding each sampled document's own indexing input.
use std::path::Path;

use tch::{Kind, Tensor};

use super::task::{Net, Task};
use crate::config::RunConfig;
use crate::data::batch::Batcher;
use crate::data::docid::DocidTable;
use crate::data::shard::{self, RowGroup, SplitMix64};
use crate::data::Dataset;
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::eval::trec::Run;
use crate::search::topk::{Hit, TopK};
use crate::train::loss;

type Hits = Vec<Vec<(f32, i64)>>;

#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    comm: &dyn Comm,
    task: &Task,
    ds: &Dataset,
    groups: &[RowGroup],
    docids: Option<&DocidTable>,
    batcher: &mut Batcher,
    cfg: &RunConfig,
    out: &Path,
) -> Result<Option<serde_json::Value>> {
    let world = comm.world();
    let e = &cfg.eval;
    let queries = ds.split_queries(&e.split)?;
    let texts: Vec<String> = queries.iter().map(|q| q.text.clone()).collect();
    let t0 = std::time::Instant::now();
    let mut extra = serde_json::Map::new();
    let local: Hits = tch::no_grad(|| -> Result<Hits> {
        match &task.net {
            Net::Dual(_) | Net::Colbert(_) => {
                dense_shard(task, batcher, &texts, &shard::assign(groups, world), e.k, e.batch_size)
            }
            Net::Generative { model, .. } => {
                let table = docids.expect("generative runs have docids");
                let targets = task.targets(table)?;
                let seqs: Vec<(i64, Vec<u32>)> = table
                    .rows
                    .iter()
                    .zip(&targets)
                    .map(|(r, t)| (r.doc_idx, t.iter().map(|&x| x as u32).collect()))
                    .collect();
                let trie = crate::search::trie::DocidTrie::build(&seqs, model.config.eos_token_id as u32)?;
                let beam = crate::search::beam::BeamSearch::new(model, &trie, e.k);
                // Memorisation: sampled documents' indexing inputs must decode to their own id.
                let n_docs = table.meta.n_docs;
                let mut sample: Vec<u32> = (0..n_docs as u32).collect();
                SplitMix64::keyed(&[cfg.train.seed, 0xe7]).shuffle(&mut sample);
                sample.truncate(e.memorization_docs.min(n_docs));
                let (lo, hi) = share(sample.len(), world.rank, world.size);
                let mut correct = 0i64;
                for chunk in sample[lo..hi].chunks(e.batch_size) {
                    let docs: Vec<String> = chunk.iter().map(|&d| batcher.docs.text(d)).collect::<Result<_>>()?;
                    let ids = batcher.doc_tok.encode(&docs.iter().map(String::as_str).collect::<Vec<_>>())?;
                    let (ids, mask) = batcher.doc_tok.batch(&ids, batcher.device);
                    for (d, gen) in chunk.iter().zip(beam.search(&ids, &mask)) {
                        let hits = crate::search::beam::to_hits(&trie, &gen, 1);
                        correct += i64::from(hits.first().is_some_and(|h| h.doc_idx == *d as i64));
                    }
                }
                let total = crate::dist::gather::global_count(comm, correct)?;
                extra.insert("memorization_R@1".into(), serde_json::json!(total as f64 / sample.len().max(1) as f64));
                extra.insert("memorization_docs".into(), serde_json::json!(sample.len()));
                // Retrieval: this rank's share of the queries.
                let (lo, hi) = share(texts.len(), world.rank, world.size);
                let mut hits: Hits = vec![Vec::new(); texts.len()];
                for start in (lo..hi).step_by(e.batch_size) {
                    let end = (start + e.batch_size).min(hi);
                    let ids =
                        batcher.query_tok.encode(&texts[start..end].iter().map(String::as_str).collect::<Vec<_>>())?;
                    let (ids, mask) = batcher.query_tok.batch(&ids, batcher.device);
                    for (i, gen) in beam.search(&ids, &mask).into_iter().enumerate() {
                        hits[start + i] = crate::search::beam::to_hits(&trie, &gen, e.k)
                            .iter()
                            .map(|h| (h.score, h.doc_idx))
                            .collect();
                    }
                }
                Ok(hits)
            }
        }
    })?;

    // Merge on the coordinator in grdr's order.
    let parts = comm.all_gather_bytes(&serde_json::to_vec(&local).expect("hits serialise"))?;
    if !world.is_coordinator() {
        return Ok(None);
    }
    let docs = ds.docs()?;
    let mut run = Run::new();
    for (qi, q) in queries.iter().enumerate() {
        let mut top = TopK::new(e.k);
        for p in &parts {
            let hits: Hits = serde_json::from_slice(p).map_err(|err| Error::dist(0, format!("eval hits: {err}")))?;
            top.merge(hits[qi].iter().map(|&(score, doc_idx)| Hit { score, doc_idx }));
        }
        run.insert(
            q.query_id.clone(),
            top.into_sorted_vec().iter().map(|h| (docs[h.doc_idx as usize].doc_id.clone(), h.score as f64)).collect(),
        );
    }
    let metrics = crate::eval::metrics::evaluate(&crate::cmd::bm25::split_qrels(ds, &e.split)?, &run);
    let tmp = crate::atomic::TempDir::new(out, true)?;
    crate::eval::trec::write_run(&tmp.path().join("run.trec"), &run, "grdr-train")?;
    let mut json = metrics.to_json();
    if let serde_json::Value::Object(m) = &mut json {
        m.extend(extra);
        m.insert("eval_seconds".into(), serde_json::json!(t0.elapsed().as_secs_f64()));
    }
    crate::atomic::write_json(&tmp.path().join("metrics.json"), &json)?;
    tmp.commit()?;
    let title = format!("{:?} model ({}) on {} ({} queries)", cfg.model.kind, cfg.model.init, e.split, queries.len());
    crate::cmd::print_metrics_table(&title, &metrics);
    if let Some(m) = json.get("memorization_R@1") {
        println!(
            "memorization (R@1 of {} documents' indexing inputs): {:.4}\n",
            json["memorization_docs"],
            m.as_f64().unwrap_or(0.0)
        );
    }
    Ok(Some(json))
}

/// Contiguous share `[lo, hi)` of `n` items for `rank` of `size`.
fn share(n: usize, rank: usize, size: usize) -> (usize, usize) {
    (n * rank / size, n * (rank + 1) / size)
}

/// DR/ColBERT over this rank's row groups: every query's top-k of the shard.
fn dense_shard(
    task: &Task,
    batcher: &mut Batcher,
    queries: &[String],
    groups: &[RowGroup],
    k: usize,
    bs: usize,
) -> Result<Hits> {
    let dev = batcher.device;
    let q_ids = batcher.query_tok.encode(&queries.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut tops: Vec<TopK> = (0..queries.len()).map(|_| TopK::new(k)).collect();
    let docs: Vec<u32> = groups.iter().flat_map(|g| g.first_row as u32..(g.first_row + g.rows) as u32).collect();
    match &task.net {
        Net::Dual(m) => {
            let q: Vec<Tensor> = q_ids
                .chunks(bs)
                .map(|c| {
                    let (i, msk) = batcher.query_tok.batch(c, dev);
                    m.embed(&i, &msk, false)
                })
                .collect();
            let q = Tensor::cat(&q, 0).to_kind(Kind::Float); // (Q, d)
            let dim = q.size()[1];
            let mut store = crate::search::flat::EmbeddingStore::new(dim, dev, None)?;
            for chunk in docs.chunks(bs * 16) {
                let mut embs = Vec::new();
                for c in chunk.chunks(bs) {
                    let texts: Vec<String> = c.iter().map(|&d| batcher.docs.text(d)).collect::<Result<_>>()?;
                    let ids = batcher.doc_tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
                    let (i, msk) = batcher.doc_tok.batch(&ids, dev);
                    embs.push(m.embed(&i, &msk, false).to_kind(Kind::Float));
                }
                store.push(chunk[0] as i64, &Tensor::cat(&embs, 0))?;
            }
            tops = crate::search::flat::search(&store, &q, k, 256)?;
        }
        Net::Colbert(m) => {
            let (qi, qm) = batcher.query_tok.batch(&q_ids, dev);
            let (qv, qmask) = m.embed_queries(&qi, &qm, false); // (Q, Lq, dim)
            let qmask = qmask.to_kind(Kind::Bool);
            for c in docs.chunks(bs) {
                let texts: Vec<String> = c.iter().map(|&d| batcher.docs.text(d)).collect::<Result<_>>()?;
                let ids = batcher.doc_tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
                let (i, msk) = batcher.doc_tok.batch(&ids, dev);
                let (dv, dm) = m.embed_docs(&i, &msk, false);
                let scores = loss::maxsim(&qv, &qmask, &dv, &dm.to_kind(Kind::Bool)).to_kind(Kind::Float); // (Q, C)
                crate::search::flat::push_block(&scores, c[0] as i64, &mut tops);
            }
        }
        Net::Generative { .. } => unreachable!("GR is evaluated by decoding"),
    }
    Ok(tops.into_iter().map(|t| t.into_sorted_vec().iter().map(|h| (h.score, h.doc_idx)).collect()).collect())
}
