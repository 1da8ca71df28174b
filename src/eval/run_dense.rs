//! End-to-end dense retrieval of one shard: single-vector DR (exact inner-product top-k,
//! with the full-softmax normaliser for calibration in the same pass) and multi-vector
//! ColBERT (per-token candidates from the token pool, exact late-interaction rescoring).
use serde_json::json;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::eval::calibration::{self, SoftmaxAccumulator};
use crate::eval::run_eval::{decode_hit_lists, encode_hit_lists, store_kind, Context};
use crate::model::colbert::LateInteraction;
use crate::model::task::Net;
use crate::parallel::{parallel_map, ForwardOnly, Shared};
use crate::search::flat::{self, EmbeddingStore};
use crate::search::maxsim::{self, TokenPool, TokenSource};
use crate::search::topk::{Hit, TopK};

type Info = serde_json::Map<String, serde_json::Value>;

/// Query embeddings (Q, d), in batches of `batch_size` queries in query order — the same
/// batches on every rank, so every rank holds bit-identical query vectors.
fn embed_queries(ctx: &Context) -> Result<Tensor> {
    let Net::Dual(m) = &ctx.task.net else { unreachable!("dual only") };
    let ids = ctx.query_ids()?;
    let batches: Vec<(Tensor, Tensor)> =
        ids.chunks(ctx.opts.batch_size.max(1)).map(|c| ctx.query_tok.batch(c, ctx.opts.device)).collect();
    let net = Shared(m);
    let parts =
        parallel_map(ctx.opts.device, batches, |(i, msk)| net.get().embed(&i, &msk, false).to_kind(Kind::Float));
    Ok(if parts.is_empty() { Tensor::zeros([0, 1], (Kind::Float, ctx.opts.device)) } else { Tensor::cat(&parts, 0) })
}

/// DR: encode the shard, search it exactly; with `calibration`, also the Brier score and the
/// in-batch gaps from the full softmax over the whole corpus (normalisers all-reduced).
pub fn dual(ctx: &Context, info: &mut Info, metrics: &mut Info) -> Result<Vec<Vec<Hit>>> {
    let Net::Dual(m) = &ctx.task.net else { unreachable!("dual only") };
    let opts = ctx.opts;
    let q = embed_queries(ctx)?; // (Q, d)
    let dim = q.size()[1];
    let t_enc = std::time::Instant::now();
    let mut store = EmbeddingStore::new(dim, opts.device, opts.spill.as_deref())?;
    let net = Shared(m);
    ctx.for_each_group(|g, batches| {
        let mut out = Tensor::zeros([g.rows as i64, dim], (Kind::Float, opts.device));
        let embedded = parallel_map(opts.device, batches, |(pos, ids, mask)| {
            (pos, net.get().embed(&ids, &mask, false).to_kind(Kind::Float))
        });
        for (pos, emb) in embedded {
            let at = Tensor::from_slice(&pos.iter().map(|&p| p as i64).collect::<Vec<_>>()).to_device(opts.device);
            out = out.index_copy(0, &at, &emb);
        }
        store.push(g.first_row as i64, &store_kind(opts, &out))
    })?;
    let enc_secs = t_enc.elapsed().as_secs_f64();
    let local_docs = store.rows();

    let t_search = std::time::Instant::now();
    let acc = std::sync::Mutex::new(SoftmaxAccumulator::new(ctx.queries.len(), opts.temperature));
    let calibrate = opts.calibration;
    let tops = flat::search_observed(&store, &q, opts.k, opts.query_block, &|q0, _, scores| {
        if calibrate {
            let (l1, l2) = SoftmaxAccumulator::block_lse(scores, opts.temperature);
            acc.lock().expect("accumulator").add_lse(q0, &l1, &l2);
        }
    })?;
    let mut acc = acc.into_inner().expect("accumulator");
    let search_secs = t_search.elapsed().as_secs_f64();
    info.insert("local_docs_rank0".into(), json!(local_docs));
    info.insert("encode_seconds_rank0".into(), json!(enc_secs));
    info.insert("encode_docs_per_second_rank0".into(), json!(local_docs as f64 / enc_secs.max(1e-9)));
    info.insert("search_seconds_rank0".into(), json!(search_secs));

    if calibrate {
        acc.all_reduce(ctx.comm)?;
        // Raw scores of the relevant documents, from the rank that holds each of them.
        let relevant = ctx.relevant()?;
        let pairs: Vec<(usize, i64)> =
            relevant.iter().enumerate().flat_map(|(qi, ds)| ds.iter().map(move |&d| (qi, d))).collect();
        let mut rel_scores = vec![0.0f64; pairs.len()];
        let mine =
            |d: i64| ctx.my_groups.iter().any(|g| (g.first_row as i64..(g.first_row + g.rows) as i64).contains(&d));
        for (i, &(qi, d)) in pairs.iter().enumerate() {
            if mine(d) {
                let dv = store.gather(&[d])?.to_kind(Kind::Float); // (1, d)
                rel_scores[i] = q.get(qi as i64).dot(&dv.get(0)).double_value(&[]);
            }
        }
        ctx.comm.all_reduce_f64(&mut rel_scores, crate::dist::ReduceOp::Sum)?;
        let n_docs = ctx.n_docs();
        let mut per_query = Vec::new();
        let mut at = 0;
        for (qi, ds) in relevant.iter().enumerate() {
            let s = &rel_scores[at..at + ds.len()];
            at += ds.len();
            if !ds.is_empty() {
                per_query.push(calibration::dr_query(
                    acc.lse1[qi],
                    acc.lse2[qi],
                    opts.temperature,
                    s,
                    n_docs,
                    &opts.gap_ks,
                ));
            }
        }
        let summary = calibration::summarize(&per_query, "the whole corpus (full softmax)");
        metrics.insert("Brier".into(), summary["Brier"].clone());
        metrics.insert("Brier_exact".into(), json!(true));
        // The in-batch gaps too, so that a sweep's table and plots can show them.
        if let Some(gaps) = summary["in_batch_gap"].as_object() {
            metrics.extend(gaps.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut s = summary;
        s["temperature"] = json!(opts.temperature);
        info.insert("calibration".into(), s);
    }
    Ok(tops.into_iter().map(TopK::into_sorted_vec).collect())
}

/// The token pool of this shard's documents that `keep` accepts (every document end to end,
/// the candidates when reranking), in doc order.
pub fn build_pool(ctx: &Context, keep: &(dyn Fn(i64) -> bool + Sync)) -> Result<TokenPool> {
    let Net::Colbert(m) = &ctx.task.net else { unreachable!("colbert only") };
    let mut pool = TokenPool::new(m.head.config.dim, ctx.opts.device)?;
    embed_colbert_docs(ctx, keep, |docs, v, vm| pool.push(docs, v, vm))?;
    Ok(pool)
}

/// This shard's documents that `keep` accepts as ColBERT token vectors, one row group at a
/// time in doc order: `sink(doc_idx, vecs (n, L, dim), mask (n, L))`.
pub(super) fn embed_colbert_docs(
    ctx: &Context,
    keep: &(dyn Fn(i64) -> bool + Sync),
    mut sink: impl FnMut(&[i64], &Tensor, &Tensor) -> Result<()>,
) -> Result<()> {
    let Net::Colbert(m) = &ctx.task.net else { unreachable!("colbert only") };
    let opts = ctx.opts;
    let dim = m.head.config.dim;
    let net = Shared(m);
    ctx.for_each_group_of(keep, |g, batches| {
        // The kept documents' token vectors back in doc order, padded to the longest.
        let parts = parallel_map(opts.device, batches, |(pos, ids, mask)| {
            let (v, vm) = net.get().embed_docs(&ids, &mask, false);
            (pos, v.to_kind(Kind::Float), vm)
        });
        let mut kept: Vec<usize> = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
        kept.sort_unstable();
        if kept.is_empty() {
            return Ok(());
        }
        let l = parts.iter().map(|p| p.1.size()[1]).max().unwrap_or(1);
        let n = kept.len() as i64;
        let mut all = Tensor::zeros([n, l, dim], (Kind::Float, opts.device));
        let mut all_m = Tensor::zeros([n, l], (Kind::Int64, opts.device));
        for (pos, v, vm) in parts {
            let rows: Vec<i64> = pos.iter().map(|p| kept.binary_search(p).expect("kept") as i64).collect();
            let at = Tensor::from_slice(&rows).to_device(opts.device);
            let pad = l - v.size()[1];
            all = all.index_copy(0, &at, &v.constant_pad_nd([0, 0, 0, pad]));
            all_m = all_m.index_copy(0, &at, &vm.to_kind(Kind::Int64).constant_pad_nd([0, pad]));
        }
        let docs: Vec<i64> = kept.iter().map(|&p| g.first_row as i64 + p as i64).collect();
        sink(&docs, &all, &all_m)
    })
}

/// ColBERT query token vectors of `ids` in batches of `batch_size`: ((B, Lq, dim), (B, Lq)).
pub(super) fn colbert_queries(ctx: &Context, ids: &[Vec<i64>]) -> (Tensor, Tensor) {
    let Net::Colbert(m) = &ctx.task.net else { unreachable!("colbert only") };
    let net = Shared(m);
    let sub: Vec<(Tensor, Tensor)> =
        ids.chunks(ctx.opts.batch_size.max(1)).map(|c| ctx.query_tok.batch(c, ctx.opts.device)).collect();
    let embedded = parallel_map(ctx.opts.device, sub, |(qi, qm)| net.get().embed_queries(&qi, &qm, false));
    let qv = Tensor::cat(&embedded.iter().map(|e| e.0.shallow_clone()).collect::<Vec<_>>(), 0);
    let qmask = Tensor::cat(&embedded.iter().map(|e| e.1.shallow_clone()).collect::<Vec<_>>(), 0);
    (qv, qmask)
}

/// Late interaction of every query with its candidates that `pool` holds (exact vectors, or
/// decompressed ones); per query the local top-k.
pub(super) fn rescore_all<P: TokenSource + ForwardOnly>(
    ctx: &Context,
    pool: &P,
    qv: &Tensor,
    qmask: &Tensor,
    cands: Vec<Vec<i64>>,
) -> Result<Vec<Vec<Hit>>> {
    let opts = ctx.opts;
    let units: Vec<(Tensor, Tensor, Vec<i64>)> = cands
        .into_iter()
        .enumerate()
        .map(|(i, c)| (qv.get(i as i64), qmask.get(i as i64), c.into_iter().filter(|&d| pool.owns(d)).collect()))
        .collect();
    let shared_pool = Shared(pool);
    let score = ctx.interaction().expect("ColBERT model");
    parallel_map(opts.device, units, |(q, qm, mine)| {
        maxsim::rescore(shared_pool.get(), &q, &qm, &mine, score, opts.batch_size)
    })
    .into_iter()
    .map(|hits| {
        let mut top = TopK::new(opts.k);
        top.merge(hits?);
        Ok(top.into_sorted_vec())
    })
    .collect()
}

/// ColBERT in the rerank setting: the pool holds this shard's candidate documents only.
pub fn colbert_rerank(ctx: &Context, cands: &[Vec<i64>]) -> Result<Vec<Vec<Hit>>> {
    let wanted: std::collections::HashSet<i64> = cands.iter().flatten().copied().collect();
    let pool = build_pool(ctx, &|d| wanted.contains(&d))?;
    let (qv, qmask) = colbert_queries(ctx, &ctx.query_ids()?);
    rescore_all(ctx, &pool, &qv, &qmask, cands.to_vec())
}

/// DR in the rerank setting: this shard's candidate documents embedded once (group-local
/// batches), every query scored against its candidates here.
pub fn dual_rerank(ctx: &Context, cands: &[Vec<i64>]) -> Result<Vec<Vec<Hit>>> {
    let Net::Dual(m) = &ctx.task.net else { unreachable!("dual only") };
    let opts = ctx.opts;
    let wanted: std::collections::HashSet<i64> = cands.iter().flatten().copied().collect();
    let q = embed_queries(ctx)?; // (Q, d)
    let net = Shared(m);
    let mut rows: std::collections::HashMap<i64, Tensor> = std::collections::HashMap::new();
    ctx.for_each_group_of(&|d| wanted.contains(&d), |g, batches| {
        for (pos, emb) in parallel_map(opts.device, batches, |(pos, ids, mask)| {
            (pos, net.get().embed(&ids, &mask, false).to_kind(Kind::Float))
        }) {
            for (j, p) in pos.into_iter().enumerate() {
                rows.insert(g.first_row as i64 + p as i64, emb.get(j as i64));
            }
        }
        Ok(())
    })?;
    let units: Vec<(Tensor, Vec<i64>, Vec<Tensor>)> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mine: Vec<i64> = c.iter().copied().filter(|d| rows.contains_key(d)).collect();
            let vecs = mine.iter().map(|d| rows[d].shallow_clone()).collect();
            (q.get(i as i64), mine, vecs)
        })
        .collect();
    Ok(parallel_map(opts.device, units, |(qv, mine, vecs)| {
        if mine.is_empty() {
            return Vec::new();
        }
        // One row-wise reduction per document: a score does not depend on its neighbours.
        let s: Vec<f32> =
            Vec::try_from((Tensor::stack(&vecs, 0) * qv.unsqueeze(0)).sum_dim_intlist(1, false, Kind::Float))
                .expect("f32");
        let mut top = TopK::new(opts.k);
        top.merge(mine.into_iter().zip(s).map(|(doc_idx, score)| Hit { score: score + 0.0, doc_idx }));
        top.into_sorted_vec()
    }))
}

/// ColBERT end to end (T5-ColBERT's procedure): candidates from per-token top-`token_k`
/// over the token pools of all shards, then exact late interaction. Reports the recall of
/// the candidate stage (relevant documents among the candidates). With `--compress`, the
/// compressed index instead (`run_compressed.rs`).
pub fn colbert(ctx: &Context, info: &mut Info) -> Result<Vec<Vec<Hit>>> {
    let Net::Colbert(m) = &ctx.task.net else { unreachable!("colbert only") };
    let opts = ctx.opts;
    if let Some(c) = &opts.compress {
        return super::run_compressed::colbert(ctx, info, c);
    }
    let dim = m.head.config.dim;
    let t_enc = std::time::Instant::now();
    let pool = build_pool(ctx, &|_| true)?;
    let enc_secs = t_enc.elapsed().as_secs_f64();

    let t_search = std::time::Instant::now();
    let ids = ctx.query_ids()?;
    let relevant = ctx.relevant()?;
    let mut results = Vec::with_capacity(ids.len());
    let (mut recall_sum, mut recall_n, mut cand_sum) = (0.0f64, 0usize, 0usize);
    // Query blocks bound the all-gathered per-token hits (block × Lq × token_k × ranks).
    let block = opts.query_block.max(1) as usize;
    for (b, chunk) in ids.chunks(block).enumerate() {
        let (qv, qmask) = colbert_queries(ctx, chunk); // (B, Lq, dim), (B, Lq)
        let (nb, lq) = (qv.size()[0], qv.size()[1]);
        let flat_q = qv.to_kind(Kind::Float).reshape([nb * lq, dim]);
        let local = pool.search_tokens(&flat_q, opts.token_k, 4096)?;
        let parts: Vec<Vec<Vec<Hit>>> = ctx
            .comm
            .all_gather_bytes(&encode_hit_lists(&local))?
            .iter()
            .map(|p| decode_hit_lists(p, local.len()))
            .collect();
        let merged = maxsim::merge_token_hits(parts, opts.token_k);
        let qmask_host: Vec<i64> =
            Vec::try_from(qmask.to_kind(Kind::Int64).reshape([-1]).to_device(tch::Device::Cpu)).unwrap_or_default();
        let per_query: Vec<Vec<Vec<Hit>>> = (0..nb as usize)
            .map(|i| {
                (0..lq as usize)
                    .filter(|&j| qmask_host[i * lq as usize + j] != 0)
                    .map(|j| merged[i * lq as usize + j].clone())
                    .collect()
            })
            .collect();
        let cands = maxsim::candidates(&per_query);
        for (i, c) in cands.iter().enumerate() {
            let rel = &relevant[b * block + i];
            if !rel.is_empty() {
                recall_sum += rel.iter().filter(|d| c.binary_search(d).is_ok()).count() as f64 / rel.len() as f64;
                recall_n += 1;
            }
            cand_sum += c.len();
        }
        results.extend(rescore_all(ctx, &pool, &qv, &qmask, cands)?);
    }
    info.insert("encode_seconds_rank0".into(), json!(enc_secs));
    info.insert("pool_tokens_rank0".into(), json!(pool.num_tokens()));
    info.insert("search_seconds_rank0".into(), json!(t_search.elapsed().as_secs_f64()));
    info.insert(
        "candidate_stage".into(),
        json!({
            "token_k": opts.token_k,
            "recall": recall_sum / recall_n.max(1) as f64,
            "mean_candidates": cand_sum as f64 / ids.len().max(1) as f64,
            "alignment": ctx.interaction().map(LateInteraction::describe),
        }),
    );
    Ok(results)
}
