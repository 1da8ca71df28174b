//! The training objective of a micro-batch: DR/ColBERT's contrastive loss over the global
//! batch (every rank's queries and documents gathered, so each rank holds the global loss)
//! and GR's token NLL normalised by the global token count. The gathers are here, outside
//! the model (`model::task` builds the networks and never calls collectives).
use tch::{Device, Kind, Tensor};

use super::bank::Bank;
use super::corpus_softmax::CorpusSide;
use super::{grad_cache, loss};
use crate::config::{ContrastiveLoss, NegativeBank};
use crate::data::batch::{GenBatch, PairBatch};
use crate::data::shard::{tag, SplitMix64};
use crate::dist::gather::{all_gather_i64, all_gather_padded_with_grad, all_gather_with_grad, global_mean_share};
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::model::colbert::late_interaction;
use crate::model::encoder::encode_length_sorted;
use crate::model::precision::bf16_autocast;
use crate::model::task::{Net, Task};

/// Loss settings from `[train]` the task needs.
#[derive(Debug, Clone, Copy)]
pub struct LossSettings {
    pub temperature: f64,
    pub num_negatives: Option<usize>,
    pub seed: u64,
    /// `train.length_sorted`: encoders run on length-sorted sub-batches.
    pub length_sorted: bool,
    pub loss: ContrastiveLoss,
    /// `train.grad_cache_chunk`: rows per GradCache chunk (dual encoders).
    pub grad_cache_chunk: Option<usize>,
}

/// `encode(ids, mask)` in length-sorted sub-batches when `sorted`, else of the whole batch.
fn encode_batch(sorted: bool, ids: &Tensor, mask: &Tensor, encode: impl Fn(&Tensor, &Tensor) -> Tensor) -> Tensor {
    if sorted {
        encode_length_sorted(ids, mask, encode)
    } else {
        encode(ids, mask)
    }
}

/// One DR/ColBERT micro-batch of a step and what its loss needs besides the model.
pub struct PairStep<'a> {
    pub comm: &'a dyn Comm,
    pub batch: &'a PairBatch,
    pub settings: LossSettings,
    pub bank: Option<&'a Bank>,
    /// `negative_bank = "corpus"`: the corpus is the document side (through GradCache).
    pub corpus: Option<&'a CorpusSide>,
    pub step: u64,
    /// The micro-batch's index within the step (keys its negative draws).
    pub micro: u64,
    pub device: Device,
    /// bf16 autocast for the forward passes (backward passes run outside it, as PyTorch's).
    pub autocast: bool,
}

/// DR/ColBERT micro-batch: the loss over the global batch (every rank's queries and
/// documents gathered: the same value on every rank), back-propagated scaled by `scale`
/// (the trainer's `backward_scale / grad_accum`) — through GradCache's chunks when
/// `train.grad_cache_chunk` is set, with the whole corpus as the document side when
/// `negative_bank = "corpus"` (config checks that it has chunks). Returns the loss, detached.
pub fn pair_forward_backward(task: &Task, p: &PairStep, scale: f64) -> Result<Tensor> {
    let (b, s, train) = (p.batch, p.settings, task.dropout);
    let forward = |f: &dyn Fn() -> Result<Tensor>| bf16_autocast(p.device, p.autocast, f);
    match (&task.net, s.grad_cache_chunk) {
        (Net::Dual(m), Some(chunk)) => {
            let rank = p.comm.world().rank as u64;
            let docs = match p.corpus {
                Some(c) => grad_cache::Side { ids: &c.ids, mask: &c.mask }, // this rank's shard
                None => grad_cache::Side { ids: &b.d_ids, mask: &b.d_mask },
            };
            let sides = [grad_cache::Side { ids: &b.q_ids, mask: &b.q_mask }, docs];
            let loss_of = |q: &Tensor, d: &Tensor| match p.corpus {
                Some(c) => c.loss(p.comm, q, d, &b.positives, s.temperature),
                None => dual_loss(p, q, d),
            };
            grad_cache::forward_backward(
                &sides,
                chunk,
                s.length_sorted,
                |ids, mask| bf16_autocast(p.device, p.autocast, || m.embed(ids, mask, train)),
                |side, c| {
                    SplitMix64::torch_seed(&[s.seed, tag::GRAD_CACHE, rank, p.step, p.micro, side as u64, c as u64])
                },
                |reps| forward(&|| loss_of(&reps[0], &reps[1])),
                scale,
            )
        }
        _ => {
            let loss = forward(&|| pair_loss(task, p))?;
            (&loss * scale).backward();
            Ok(loss.detach())
        }
    }
}

/// DR/ColBERT micro-batch loss over the global batch, with its graph.
fn pair_loss(task: &Task, p: &PairStep) -> Result<Tensor> {
    let (b, s, train) = (p.batch, p.settings, task.dropout);
    match &task.net {
        Net::Dual(m) => {
            let embed = |ids: &Tensor, mask: &Tensor| m.embed(ids, mask, train);
            let q = encode_batch(s.length_sorted, &b.q_ids, &b.q_mask, embed); // (B, d)
            let d = encode_batch(s.length_sorted, &b.d_ids, &b.d_mask, embed); // (B·group, d)
            dual_loss(p, &q, &d)
        }
        Net::Colbert(m) => {
            let (q, qm) = m.embed_queries(&b.q_ids, &b.q_mask, train); // (B, Lq, dim)
            let (d, dm) = m.embed_docs(&b.d_ids, &b.d_mask, train); // (B·group, Ld, dim)
            let (q, qm) = all_gather_padded_with_grad(p.comm, &q, &qm)?;
            let (d, dm) = all_gather_padded_with_grad(p.comm, &d, &dm)?;
            let scores =
                late_interaction(&q, &qm.to_kind(Kind::Bool), &d, &dm.to_kind(Kind::Bool), m.head.config.interaction);
            Ok(batch_scores_loss(p, &scores))
        }
        Net::Generative { .. } => Err(Error::usage("model.kind", "generative models take GR batches")),
    }
}

/// A dual encoder's loss from this rank's embeddings `q (B, d)` and `d (B·group, d)`:
/// against the bank when there is one, else over the global batch.
fn dual_loss(p: &PairStep, q: &Tensor, d: &Tensor) -> Result<Tensor> {
    let q = all_gather_with_grad(p.comm, q)?; // (Q, d), Q = ΣB
    let d = all_gather_with_grad(p.comm, d)?; // (Q·group, d)
    match p.bank {
        Some(bank) => {
            let positives = all_gather_i64(p.comm, &p.batch.positives)?; // (Q,) doc_idx
                                                                         // Only a hard bank needs each row's query (to leave out its relevant documents).
            let queries = match bank.mode {
                NegativeBank::Hard => all_gather_i64(p.comm, &p.batch.queries)?, // (Q,) query_idx
                _ => Vec::new(),
            };
            Ok(bank_loss(p, bank, &q, &d, &positives, &queries))
        }
        None => Ok(batch_scores_loss(p, &q.matmul(&d.tr()))), // scores (Q, Q·group)
    }
}

/// InfoNCE over the global batch's `scores (Q, Q·group)`, restricted to the query's own
/// group (`pairwise`) or to `num_negatives` drawn negatives when asked.
fn batch_scores_loss(p: &PairStep, scores: &Tensor) -> Tensor {
    let (s, group) = (p.settings, p.batch.group);
    let (nq, nd) = scores.size2().expect("(Q, N) scores");
    let labels = loss::positive_rows(nq, group, scores.device());
    let scores = match (s.loss, s.num_negatives) {
        (ContrastiveLoss::Pairwise, _) => {
            scores.masked_fill(&loss::outside_own_group(nq, nd, group).to_device(scores.device()), f64::NEG_INFINITY)
        }
        (_, Some(k)) if (k as i64) < nd - 1 => scores.masked_fill(
            &negative_subsample(nq, nd, group, k, s.seed, p.step, p.micro, scores.device()),
            f64::NEG_INFINITY,
        ),
        _ => scores.shallow_clone(),
    };
    loss::info_nce_from_scores(&scores, &labels, s.temperature)
}

/// The contrastive loss against the bank (see `bank.rs`): the fresh positive's score beside
/// bank scores of every other document (`full`), of sampled ones (`sampled`) or of the
/// highest-scoring non-relevant ones (`hard`). `q (Q, d)`, `d (Q, d)` the positives,
/// `positives (Q,)` their doc_idx, `queries (Q,)` the query_idx (`hard` only; else empty).
fn bank_loss(p: &PairStep, bank: &Bank, q: &Tensor, d: &Tensor, positives: &[i64], queries: &[i64]) -> Tensor {
    let s = p.settings;
    let q = q.to_kind(Kind::Float);
    let fresh = (&q * d.to_kind(Kind::Float)).sum_dim_intlist(-1, true, Kind::Float); // (Q, 1)
    let nq = positives.len() as i64;
    let device = q.device();
    let k = bank.negatives as i64;
    // The fresh positive in column 0 beside K bank negatives; CE at column 0.
    let against = |neg_scores: Tensor| {
        let scores = Tensor::cat(&[fresh.shallow_clone(), neg_scores], 1); // (Q, 1 + K)
        loss::info_nce_from_scores(&scores, &Tensor::zeros([nq], (Kind::Int64, device)), s.temperature)
    };
    match bank.mode {
        NegativeBank::Full => {
            let pos = Tensor::from_slice(positives).to_device(device); // (Q,)
            let scores = q.matmul(&bank.vectors.tr()); // (Q, N)
            let scores = scores.scatter(1, &pos.unsqueeze(1), &fresh); // the positive's column: fresh
            loss::info_nce_from_scores(&scores, &pos, s.temperature)
        }
        NegativeBank::Sampled => {
            let neg = Tensor::from_slice(&bank.sample(positives, s.seed, p.step, p.micro)).to_device(device); // (Q·K,)
            let dim = bank.vectors.size()[1];
            let negs = bank.vectors.index_select(0, &neg).view([nq, k, dim]); // (Q, K, d)
            against(negs.bmm(&q.unsqueeze(2)).squeeze_dim(2)) // (Q, K)
        }
        NegativeBank::Hard => {
            let scores = q.matmul(&bank.vectors.tr()); // (Q, N)
            let eligible = scores.detach().masked_fill(&bank.not_negatives(queries, positives), f64::NEG_INFINITY);
            let (_, top) = eligible.topk(k, 1, true, true); // (Q, K) doc_idx
            against(scores.gather(1, &top, false)) // (Q, K)
        }
        NegativeBank::None | NegativeBank::Corpus => unreachable!("no bank in these modes"),
    }
}

/// GR micro-batch: (this rank's share to back-propagate, NLL sum / global tokens).
pub fn generative_loss(
    task: &Task,
    comm: &dyn Comm,
    b: &GenBatch,
    global_tokens: i64,
    s: LossSettings,
) -> Result<(Tensor, Tensor)> {
    let Net::Generative { model, .. } = &task.net else {
        return Err(Error::usage("model.kind", "DR models take pair batches"));
    };
    let decoder_input = model.shift_right(&b.labels);
    // GR batches mix short queries with long documents: the encoder runs on length-sorted
    // sub-batches, the decoder on the whole batch.
    let enc = encode_batch(s.length_sorted, &b.input_ids, &b.attention_mask, |ids, mask| {
        model.encode(ids, mask, task.dropout)
    });
    let out = model.forward_encoded(enc, &b.attention_mask, &decoder_input, task.dropout, false);
    let sum = loss::token_nll_sum(&out.logits, &b.labels, &b.labels.ne(-100)); // scalar
    let share = global_mean_share(comm.world(), &sum, global_tokens);
    Ok((share, sum.detach() / global_tokens.max(1) as f64))
}

/// The mask (true = dropped) keeping, per query, its positive and `k` other documents drawn
/// per (seed, step, micro-batch, query) — the same on every rank and for any rank count.
#[allow(clippy::too_many_arguments)]
fn negative_subsample(
    nq: i64,
    nd: i64,
    group: i64,
    k: usize,
    seed: u64,
    step: u64,
    micro: u64,
    device: Device,
) -> Tensor {
    let mut drop = vec![true; (nq * nd) as usize];
    for i in 0..nq {
        let pos = i * group;
        let mut others: Vec<i64> = (0..nd).filter(|&j| j != pos).collect();
        SplitMix64::keyed(&[seed, tag::SUBSAMPLE, step, micro, i as u64]).shuffle(&mut others);
        drop[(i * nd + pos) as usize] = false;
        for &j in others.iter().take(k) {
            drop[(i * nd + j) as usize] = false;
        }
    }
    Tensor::from_slice(&drop).view([nq, nd]).to_device(device)
}
