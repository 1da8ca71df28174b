//! ColBERT end to end over a compressed token index (`grdr eval --compress`): ColBERTv2's
//! residual compression and PLAID's candidate stage, so that a corpus whose token vectors do
//! not fit in memory as f32 can be searched.
//!
//! ```text
//! 1. codec    the documents whose keyed hash falls under sample_docs / N, encoded on their
//!             ranks, all-gathered and ordered by token key (the same sample on any number
//!             of ranks) → k-means centroids + residual buckets (search/codec.rs)
//! 2. index    every document of the shard encoded and compressed (search/compressed.rs);
//!             no f32 vector outlives its row group
//! 3. search   per query (PLAID's stages, search/compressed.rs):
//!             each shard's probed documents scored by pruned centroid interaction → the best
//!             `ndocs` over all shards (all-gathered) → with `--rescore` below `ndocs`, their
//!             exact centroid interaction and the best `rescore` over all shards → MaxSim over
//!             the survivors' decompressed vectors on their shards → per-rank top-k, merged as
//!             usual. Each cut is global, so the survivors are the same on any number of ranks.
//! ```
use std::time::Instant;

use serde_json::json;
use tch::{Kind, Tensor};

use super::options::Compression;
use super::run_dense::{colbert_queries, embed_colbert_docs, rescore_all};
use super::run_eval::{decode_hit_lists, encode_hit_lists, Context};
use crate::dist::gather::all_gather_i64;
use crate::error::Result;
use crate::model::task::Net;
use crate::parallel::{parallel_map, Shared};
use crate::rng::SplitMix64;
use crate::search::codec::Codec;
use crate::search::compressed::CompressedPool;
use crate::search::maxsim::{real_tokens, MAX_TOKENS};
use crate::search::topk::{Hit, TopK};

type Info = serde_json::Map<String, serde_json::Value>;

/// Keys the document sample and the k-means initialisation.
const SEED: u64 = 0x70_6c61_6964; // "plaid"

/// Sample rows per centroid that k-means trains on (ColBERTv2 uses a similar budget).
const SAMPLE_PER_CENTROID: i64 = 32;

pub fn colbert(ctx: &Context, info: &mut Info, c: &Compression) -> Result<Vec<Vec<Hit>>> {
    let Net::Colbert(m) = &ctx.task.net else { unreachable!("colbert only") };
    let opts = ctx.opts;
    let dim = m.head.config.dim;

    // 1. The codec.
    let t_train = Instant::now();
    let n_docs = ctx.n_docs();
    let sample_docs = c.sample_docs.unwrap_or_else(|| default_sample_docs(n_docs));
    let (sample, rate) = token_sample(ctx, sample_docs, dim)?; // (S, dim), by token key
    let s = sample.size()[0];
    let tokens_estimate = s as f64 / rate;
    let k = c.centroids.unwrap_or_else(|| default_centroids(tokens_estimate)).min(s.max(1) as usize);
    let train_rows = keyed_rows(s, SAMPLE_PER_CENTROID * k as i64);
    let codec = Codec::train(
        &sample.index_select(0, &train_rows.to_device(sample.device())),
        k,
        c.nbits,
        c.kmeans_iters,
        SEED,
    )?;
    drop(sample);
    let train_secs = t_train.elapsed().as_secs_f64();

    // 2. This shard's index.
    let t_index = Instant::now();
    let mut pool = CompressedPool::new(codec);
    embed_colbert_docs(ctx, &|_| true, |docs, v, vm| pool.push(docs, v, vm))?;
    pool.finish();
    let index_secs = t_index.elapsed().as_secs_f64();

    // 3. Search, a block of queries at a time.
    let t_search = Instant::now();
    let ids = ctx.query_ids()?;
    let relevant = ctx.relevant()?;
    let block = opts.query_block.max(1) as usize;
    let rescore = c.rescored();
    let mut results = Vec::with_capacity(ids.len());
    let mut recall = [Recall::default(), Recall::default()]; // after the pruned stage, after the exact one
    let (mut probed_sum, mut kept_sum, mut candidate_secs) = (0usize, 0usize, 0.0f64);
    for (b, chunk) in ids.chunks(block).enumerate() {
        let (qv, qmask) = colbert_queries(ctx, chunk); // (B, Lq, dim), (B, Lq)
        let queries: Vec<Tensor> = (0..qv.size()[0])
            .map(|i| qv.get(i).to_kind(Kind::Float).index(&[Some(qmask.get(i).to_kind(Kind::Bool))]))
            .collect(); // each (Lq_real, dim)
        let t_candidates = Instant::now();
        let shared = Shared(&pool);
        let relevant = &relevant[b * block..b * block + chunk.len()];
        // Stages 1–2: probing and pruned centroid interaction → the best `ndocs` over every shard.
        let local: Vec<(usize, Vec<Hit>)> =
            parallel_map(opts.device, queries.iter().map(Tensor::shallow_clone).collect(), |q| {
                // As f32, the scores' type: 0.45 compares as it reads.
                let hits = shared.get().candidates(&shared.get().centroid_scores(&q), c.nprobe, c.threshold as f32);
                (hits.len(), top(hits, c.ndocs))
            });
        probed_sum += local.iter().map(|l| l.0).sum::<usize>();
        let survivors = best_over_shards(ctx, local.into_iter().map(|l| l.1).collect(), c.ndocs)?;
        recall[0].add(&survivors, relevant);
        // Stage 3: exact centroid interaction of the survivors → the best `rescore` over every
        // shard (nothing to cut when MaxSim takes them all, the default).
        let kept = if rescore < c.ndocs {
            let units: Vec<(Tensor, Vec<i64>)> = queries.into_iter().zip(survivors).collect();
            // The centroid scores are made again rather than kept from stage 2: a block's worth
            // of them is queries × C × Lq floats (16 MB a query at 131,072 centroids).
            let local: Vec<Vec<Hit>> = parallel_map(opts.device, units, |(q, docs)| {
                top(shared.get().interaction(&shared.get().centroid_scores(&q), &docs), rescore)
            });
            best_over_shards(ctx, local, rescore)?
        } else {
            survivors
        };
        recall[1].add(&kept, relevant);
        kept_sum += kept.iter().map(Vec::len).sum::<usize>();
        candidate_secs += t_candidates.elapsed().as_secs_f64();
        results.extend(rescore_all(ctx, &pool, &qv, &qmask, kept)?);
    }
    let n_queries = ids.len().max(1) as f64;
    info.insert("encode_seconds_rank0".into(), json!(index_secs));
    info.insert("pool_tokens_rank0".into(), json!(pool.num_tokens()));
    info.insert("search_seconds_rank0".into(), json!(t_search.elapsed().as_secs_f64()));
    info.insert("candidate_seconds_rank0".into(), json!(candidate_secs));
    info.insert(
        "compression".into(),
        json!({
            "nbits": c.nbits,
            "centroids": pool.codec.num_centroids(),
            "sample_docs": sample_docs,
            "sample_tokens": s,
            "kmeans_rows": train_rows.size()[0],
            "kmeans_iters": c.kmeans_iters,
            "bytes_per_token_rank0": pool.bytes_per_token(),
            "f32_bytes_per_token": 4 * dim,
            "train_seconds": train_secs,
        }),
    );
    info.insert(
        "candidate_stage".into(),
        json!({
            "nprobe": c.nprobe,
            "centroid_threshold": c.threshold, // -inf (every centroid kept) as null
            "ndocs": c.ndocs,
            "rescored": rescore,
            "recall": recall[1].mean(),
            "recall_ndocs": recall[0].mean(),
            "mean_probed_rank0": probed_sum as f64 / n_queries,
            "mean_candidates": kept_sum as f64 / n_queries,
            "alignment": ctx.interaction().map(|i| i.describe()),
        }),
    );
    Ok(results)
}

/// The token vectors of the sampled documents of every rank, ordered by token key
/// (doc_idx · MAX_TOKENS + position), and the sampling rate.
fn token_sample(ctx: &Context, sample_docs: usize, dim: i64) -> Result<(Tensor, f64)> {
    let rate = (sample_docs as f64 / ctx.n_docs().max(1) as f64).min(1.0);
    let sampled = |d: i64| SplitMix64::keyed(&[SEED, d as u64]).unit() < rate;
    let (mut parts, mut keys) = (Vec::new(), Vec::new());
    embed_colbert_docs(ctx, &sampled, |docs, v, vm| {
        let (flat, lens) = real_tokens(v, vm)?;
        for (&d, &len) in docs.iter().zip(&lens) {
            keys.extend((0..len).map(|p| d * MAX_TOKENS + p));
        }
        parts.push(flat);
        Ok(())
    })?;
    let device = ctx.opts.device;
    let local = if parts.is_empty() { Tensor::zeros([0, dim], (Kind::Float, device)) } else { Tensor::cat(&parts, 0) };
    let (all, _) = ctx.comm.all_gather_varsize(&local)?;
    let all_keys = all_gather_i64(ctx.comm, &keys)?; // in the same rank order as `all`
    let mut order: Vec<i64> = (0..all_keys.len() as i64).collect();
    order.sort_by_key(|&r| all_keys[r as usize]);
    Ok((all.index_select(0, &Tensor::from_slice(&order).to_device(all.device())), rate))
}

/// 2^⌊log2(16·√tokens)⌋, at least 16: ColBERTv2's rule. On SciFact it keeps 0.978 of the
/// relevant documents among the candidates where a quarter of the centroids kept 0.950
/// (docs/BENCHMARKS.md); k-means costs 4× more, which `--centroids` trades back on a CPU.
fn default_centroids(tokens: f64) -> usize {
    let target = (16.0 * tokens.sqrt()).max(16.0);
    1usize << (target.log2().floor() as u32)
}

/// max(1024, 16·√documents): the documents whose tokens train the codec.
fn default_sample_docs(n_docs: usize) -> usize {
    ((16.0 * (n_docs as f64).sqrt()).ceil() as usize).max(1024)
}

/// At most `max` of `0..n`, drawn by a keyed shuffle, in ascending order: (≤ max,) i64.
fn keyed_rows(n: i64, max: i64) -> Tensor {
    let mut rows: Vec<i64> = (0..n).collect();
    if n > max {
        SplitMix64::keyed(&[SEED, 1]).shuffle(&mut rows);
        rows.truncate(max as usize);
        rows.sort_unstable();
    }
    Tensor::from_slice(&rows)
}

/// Per query, the best `n` of the hits of every shard (all-gathered, so the same on every
/// rank), as ascending doc_idx.
fn best_over_shards(ctx: &Context, local: Vec<Vec<Hit>>, n: usize) -> Result<Vec<Vec<i64>>> {
    let parts = ctx.comm.all_gather_bytes(&encode_hit_lists(&local))?;
    let mut merged: Vec<TopK> = (0..local.len()).map(|_| TopK::new(n)).collect();
    for part in parts.iter().map(|p| decode_hit_lists(p, local.len())) {
        for (t, hits) in merged.iter_mut().zip(part) {
            t.merge(hits);
        }
    }
    Ok(merged
        .into_iter()
        .map(|t| {
            let mut docs: Vec<i64> = t.into_sorted_vec().into_iter().map(|h| h.doc_idx).collect();
            docs.sort_unstable();
            docs
        })
        .collect())
}

/// The mean, over queries with relevant documents, of the share of them a cut kept.
#[derive(Default)]
struct Recall {
    sum: f64,
    queries: usize,
}

impl Recall {
    /// `kept[i]` ascending doc_idx, `relevant[i]` query i's relevant documents.
    fn add(&mut self, kept: &[Vec<i64>], relevant: &[Vec<i64>]) {
        for (docs, rel) in kept.iter().zip(relevant).filter(|(_, rel)| !rel.is_empty()) {
            self.sum += rel.iter().filter(|d| docs.binary_search(d).is_ok()).count() as f64 / rel.len() as f64;
            self.queries += 1;
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.queries.max(1) as f64
    }
}

/// The `k` best hits (ties by doc_idx, as everywhere).
fn top(hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let mut t = TopK::new(k);
    t.merge(hits);
    t.into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_centroids_follow_the_square_root_rule() {
        assert_eq!(default_centroids(1.3e6), 16384); // SciFact's ~1.3M tokens: 16·1140 → 16384
        assert_eq!(default_centroids(1e8), 131072);
        assert_eq!((default_sample_docs(5183), default_sample_docs(1_000_000)), (1152, 16000));
        assert_eq!(default_centroids(1.0), 16);
        let rows: Vec<i64> = Vec::try_from(keyed_rows(10, 4)).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Vec::<i64>::try_from(keyed_rows(3, 4)).unwrap(), [0, 1, 2]);
    }
}
