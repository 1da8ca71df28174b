//! SEAL end to end (Bevilacqua et al. 2022) for one rank's share of the queries: the n-grams
//! of the corpus the model generates for a query — the beam engine under the FM-index
//! constraint, keeping every continuation it scores (SEAL's `keep_history`) — and the
//! documents ranked by SEAL's intersective scoring ([`crate::search::seal`]). Every rank maps
//! the same index shards; queries go in the fixed batches of GR decoding, so a query's
//! n-grams and ranking do not depend on the number of ranks.
use std::path::Path;

use serde_json::json;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::eval::run_gr::query_batches;
use crate::model::task::Net;
use crate::model::T5ForConditionalGeneration;
use crate::parallel::{parallel_map, Shared};
use crate::search::beam::BeamSearch;
use crate::search::constraint::FmConstraint;
use crate::search::fm_index;
use crate::search::seal::{self, Corpus, Ngram};
use crate::search::topk::Hit;

type Info = serde_json::Map<String, serde_json::Value>;

/// SEAL's beam (its `beam` default) when neither `--beam` nor `eval.beam` sets one.
pub const DEFAULT_BEAM: usize = 15;

pub fn seal(ctx: &Context, dir: &Path, info: &mut Info) -> Result<Vec<Vec<Hit>>> {
    let Net::Generative { model, .. } = &ctx.task.net else { unreachable!("generative only") };
    let opts = ctx.opts;
    let table = ctx.docids()?;
    if model.np.is_some() {
        return Err(Error::usage(
            "--fm-index / eval.fm_index",
            "SEAL decodes the tokens of any corpus n-gram; an NP-decoding model outputs its docids' entries only",
        ));
    }
    if !table.meta.scheme.is_text() {
        return Err(Error::usage(
            "--fm-index / eval.fm_index",
            format!("SEAL decodes text tokens; these docids are {:?} (use n-gram or title docids)", table.meta.scheme),
        ));
    }
    let tokenizer = table.meta.tokenizer.clone().unwrap_or_default();
    let t_open = std::time::Instant::now();
    let shards = fm_index::open_dir(dir, ctx.n_docs(), &tokenizer)?;
    let open_secs = t_open.elapsed().as_secs_f64();
    let constraint = FmConstraint::new(&shards, opts.ngram_len, false);
    let width = opts.beam.unwrap_or(DEFAULT_BEAM);
    let beam = BeamSearch::new(model, &constraint, width).with_history();
    let corpus = Corpus { shards: &shards };

    let ids = ctx.query_ids()?;
    let (units, (lo, hi)) = query_batches(ctx, &ids, width);
    tracing::info!("SEAL: {} queries on this rank, beam {width}, n-grams of ≤ {} tokens", hi - lo, opts.ngram_len);
    let lead = ctx.comm.world().is_coordinator();
    let bar = crate::progress::bar(if lead { (hi - lo) as u64 } else { 0 }, "SEAL queries");
    let t0 = std::time::Instant::now();
    let shared = Shared(&beam);
    // Per batch: decode the n-grams (and the first step's log-probabilities), then rank the
    // documents of each query by them.
    let done = parallel_map(opts.device, units, |(start, qi, qm)| {
        let b = shared.get();
        let t = std::time::Instant::now();
        let gens = b.search(&qi, &qm);
        let first = opts.seal.unigrams.then(|| first_step_log_probs(b.model, &qi, &qm));
        let decode = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let mut n_ngrams = 0;
        let hits: Vec<Vec<Hit>> = gens
            .into_iter()
            .enumerate()
            .map(|(i, gens)| {
                let ngrams: Vec<Ngram> =
                    gens.into_iter().map(|g| Ngram { tokens: g.tokens, log_prob: g.score }).collect();
                n_ngrams += ngrams.len();
                let logp = first.as_ref().map(|f| &f[i][..]);
                seal::rank(&corpus, &ngrams, logp, &opts.seal, opts.k)
            })
            .collect();
        bar.inc(hits.len() as u64);
        (start, hits, n_ngrams, decode, t.elapsed().as_secs_f64())
    });
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let mut hits: Vec<Vec<Hit>> = vec![Vec::new(); ctx.queries.len()];
    let (mut n_ngrams, mut decode_secs, mut score_secs) = (0usize, 0.0, 0.0);
    for (start, batch, n, decode, score) in done {
        for (i, h) in batch.into_iter().enumerate() {
            hits[start + i] = h;
        }
        n_ngrams += n;
        decode_secs += decode;
        score_secs += score;
    }
    let queries = (hi - lo).max(1) as f64;
    info.insert(
        "seal".into(),
        json!({
            "fm_index": dir.display().to_string(),
            "shards": shards.len(),
            "index_tokens": corpus.tokens(),
            "index_bytes": shards.iter().map(|s| s.bytes()).sum::<usize>(),
            "open_seconds": open_secs,
            "beam": width,
            "ngram_len": opts.ngram_len,
            "scoring": opts.seal,
            "ngrams_per_query_rank0": n_ngrams as f64 / queries,
            "decode_seconds_rank0": decode_secs,
            "score_seconds_rank0": score_secs,
            "seconds_rank0": wall,
            "queries_per_second_rank0": queries / wall.max(1e-9),
        }),
    );
    info.insert("beam".into(), json!(width));
    Ok(hits)
}

/// log p(first token | query) over the whole vocabulary, per query (SEAL's unigram scores).
pub fn first_step_log_probs(model: &T5ForConditionalGeneration, ids: &Tensor, mask: &Tensor) -> Vec<Vec<f32>> {
    tch::no_grad(|| {
        let enc = model.encode(ids, mask, false); // (B, L, D)
        let mut cache = model.new_cache(&enc, mask);
        let b = ids.size()[0];
        let start = Tensor::full([b, 1], model.config.decoder_start_token_id, (Kind::Int64, ids.device()));
        let hidden = model.decoder.decode_step(&start, &mut cache, false).hidden.squeeze_dim(1); // (B, D)
        let logp = model.lm_logits(&hidden).log_softmax(-1, Kind::Float).to_device(tch::Device::Cpu); // (B, V)
        (0..b).map(|i| Vec::<f32>::try_from(logp.get(i)).expect("f32 row")).collect()
    })
}
