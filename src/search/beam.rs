//! Constrained beam search over a T5 model with the KV cache: generative retrieval's
//! decoding, the one search loop for every [`Constraint`] (the docid trie of DSI/GENRE, the
//! FM-index of SEAL). Every query keeps `beam` running prefixes; each step decodes one token
//! for all running beams of a batch of queries at once, restricted to the tokens the
//! constraint allows after each prefix, so only valid sequences are ever produced.
//!
//! The selection rule is HF transformers' `generate(num_beams=W, length_penalty=0)`: per
//! query, the best 2W continuations over all running beams (score = Σ log p(token), the
//! log-softmax over the whole vocabulary, as HF applies `prefix_allowed_tokens_fn` after it);
//! among them an `eos` ranked < W finishes a docid, the best W others run on; the W best
//! finished docids are kept; a query stops when its worst kept docid beats its best running
//! prefix; beams still running after the constraint's longest sequence finish as they are
//! (HF's `finalize`). With W ≥ number of docids nothing is ever pruned, so the search returns
//! every docid with its exact sequence log-likelihood (constrained decoding is exact,
//! `tests/eval_beam.rs`).
//!
//! With `history` (SEAL's `keep_history`, its default decoding) a query's output is instead
//! every one of the best 2W continuations of every step — all the partial n-grams the search
//! scored — and a query runs for the constraint's whole length.
//!
//! A step's work (profiled in docs/BENCHMARKS.md): one decoder forward of every running beam
//! of the batch, whose cross-attention keys/values stay one per query (`T5Cache::reorder`
//! gathers only the self-attention cache); then the vocabulary logits and their log-softmax
//! over the whole vocabulary — the exact normaliser — a chunk of rows at a time, gathered at
//! the allowed tokens. Those rows are most of the work, and a beam needs one only while its
//! score can still reach its query's selection: beams are scored best first in rounds and
//! the rest are pruned, exactly (`continuations`; 21–31% of all rows on the shipped DSI
//! model). On the CPU in f32 every product runs through oneDNN ([`crate::model::Gemm`]); scores
//! equal `linear`'s up to f32 rounding.
use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::model::GrModel;
use crate::search::constraint::Constraint;
use crate::search::topk::{Hit, TopK};
use crate::search::trie::{DocidTrie, NodeId};

/// Rows whose state allows more tokens than this select their best continuations on the
/// device (e.g. the root of atomic docids: one token per document).
const DEVICE_FANOUT: usize = 4096;

/// Elements of vocabulary logits made and normalised at once (16 MB in f32): rows × V,
/// unless V is so large that this is fewer than [`MIN_CHUNK_ROWS`] rows.
const CHUNK_ELEMS: i64 = 1 << 22;

/// The fewest rows per chunk, whatever V: each chunk's product reads the whole (V, d) output
/// matrix, so with 1M atomic docids (4 rows in CHUNK_ELEMS) decoding was bound by reading
/// that gigabyte 25 times per 100 beams (docs/BENCHMARKS.md, "GR at a million docids").
const MIN_CHUNK_ROWS: i64 = 64;

/// The fewest beams (over all queries of a batch) whose vocabulary rows one pruning round
/// makes; measured on the shipped DSI model (docs/BENCHMARKS.md).
const MIN_ROUND_ROWS: usize = 48;

/// A generated sequence: its tokens (eos included where it finished on one), its state in the
/// constraint (the trie's leaf; the n-gram's FM-index rows), Σ log p.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated<S> {
    pub tokens: Vec<u32>,
    pub state: S,
    pub score: f32,
}

struct Beam<S> {
    query: usize,
    state: S,
    score: f32,
    tokens: Vec<u32>,
}

/// What the steps of one search share.
struct Scratch<S> {
    /// Continuations kept per beam: 2W.
    limit: usize,
    /// Allowed tokens of states with more than [`DEVICE_FANOUT`] of them, on the device.
    big: HashMap<S, Tensor>,
    /// The log-softmax of a chunk of rows (see `continuations`).
    logp: Option<Tensor>,
}

/// One candidate continuation: (score, parent row, token).
#[derive(Clone, Copy)]
struct Cand {
    score: f32,
    row: usize,
    token: u32,
}

/// Where a search spends its wall time, summed over its steps (seconds): the benchmark's
/// profile (`tests/eval_bench.rs`). CPU ops run synchronously, so on the CPU each part is
/// its own; on CUDA the time of queued kernels lands on the next part that waits for them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BeamProfile {
    /// Encoder forward and the cross-attention keys/values.
    pub encode: f64,
    /// Decoder blocks of every step.
    pub decoder: f64,
    /// Vocabulary logits (lm_head).
    pub lm_head: f64,
    /// Log-probabilities of the allowed tokens: normaliser, gather, copy to the host.
    pub log_probs: f64,
    /// Host: HF's selection rule, finished docids, the next beams.
    pub select: f64,
    /// Reordering the decoding cache to the surviving beams.
    pub reorder: f64,
    pub steps: usize,
    /// Decoder rows summed over steps.
    pub rows: usize,
    /// Of those, the rows whose vocabulary logits were computed (the others were pruned).
    pub vocab_rows: usize,
}

impl BeamProfile {
    pub fn add(&mut self, o: &BeamProfile) {
        self.encode += o.encode;
        self.decoder += o.decoder;
        self.lm_head += o.lm_head;
        self.log_probs += o.log_probs;
        self.select += o.select;
        self.reorder += o.reorder;
        self.steps += o.steps;
        self.rows += o.rows;
        self.vocab_rows += o.vocab_rows;
    }
}

/// Seconds since `t`, restarting it.
fn lap(t: &mut Instant) -> f64 {
    let now = Instant::now();
    let s = now.duration_since(*t).as_secs_f64();
    *t = now;
    s
}

// SAFETY (ForwardOnly): `search` runs the model's no-grad forward passes and reads the
// constraint; each call keeps its beams and KV cache in locals, so workers share no mutable state.
unsafe impl<C: Constraint> crate::parallel::ForwardOnly for BeamSearch<'_, C> {}

pub struct BeamSearch<'a, C: Constraint> {
    pub model: &'a GrModel,
    pub constraint: &'a C,
    /// Running beams per query (W).
    pub beam: usize,
    /// Skip the vocabulary row of a beam none of whose continuations can change its query's
    /// selection (see `continuations`). Exact; on by default, off only to test that.
    pub prune: bool,
    /// Return every scored continuation of every step (SEAL's `keep_history`), not the W best
    /// finished sequences.
    pub history: bool,
}

impl<'a, C: Constraint> BeamSearch<'a, C> {
    pub fn new(model: &'a GrModel, constraint: &'a C, beam: usize) -> Self {
        BeamSearch { model, constraint, beam: beam.max(1), prune: true, history: false }
    }

    /// SEAL's decoding: every continuation the search scores, for the constraint's length.
    pub fn with_history(mut self) -> Self {
        self.history = true;
        self
    }

    /// Decodes a batch of queries `input_ids` (B, L) under `attention_mask` (B, L). Returns per
    /// query up to W finished docids, best first (ties: earlier found first).
    pub fn search(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Vec<Vec<Generated<C::State>>> {
        tch::no_grad(|| self.search_inner(input_ids, attention_mask, &mut BeamProfile::default()))
    }

    /// [`Self::search`], adding where the time went to `profile`.
    pub fn search_profiled(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        profile: &mut BeamProfile,
    ) -> Vec<Vec<Generated<C::State>>> {
        tch::no_grad(|| self.search_inner(input_ids, attention_mask, profile))
    }

    fn search_inner(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prof: &mut BeamProfile,
    ) -> Vec<Vec<Generated<C::State>>> {
        let mut clock = Instant::now();
        let w = self.beam;
        let b = input_ids.size()[0] as usize;
        let dev = input_ids.device();
        let cfg = &self.model.config;
        let enc = self.model.encode(input_ids, attention_mask, false); // (B, L, D)
        let mut cache = self.model.new_cache(&enc, attention_mask);
        prof.encode += lap(&mut clock);
        let con = self.constraint;
        let mut beams: Vec<Beam<C::State>> =
            (0..b).map(|q| Beam { query: q, state: con.root(), score: 0.0, tokens: Vec::new() }).collect();
        let mut next_input: Vec<i64> = vec![cfg.decoder_start_token_id; b];
        let mut finished: Vec<Vec<Generated<C::State>>> = vec![Vec::new(); b];
        let mut scratch = Scratch { limit: 2 * w, big: HashMap::new(), logp: None };
        let eos = con.eos();
        let extend = |parent: &Beam<C::State>, token: u32, score: f32| Generated {
            tokens: parent.tokens.iter().copied().chain([token]).collect(),
            state: con.child(&parent.state, token).expect("allowed by the constraint"),
            score,
        };

        for _step in 0..con.max_len() {
            if beams.is_empty() {
                break;
            }
            prof.steps += 1;
            prof.rows += beams.len();
            let ids = Tensor::from_slice(&next_input).view([-1, 1]).to_device(dev);
            let hidden = self.model.step_state(&ids, &mut cache); // (R, S): decoder state (PAWA: + prefix latent)
            prof.decoder += lap(&mut clock);
            let cands = self.continuations(&beams, &hidden, &mut scratch, prof, &mut clock);

            // HF's rule per query: of the best 2W, an eos ranked < W finishes; the best W
            // others run on.
            let mut by_query: Vec<Vec<Cand>> = vec![Vec::new(); b];
            for c in cands {
                by_query[beams[c.row].query].push(c);
            }
            let mut parents: Vec<i64> = Vec::new();
            let mut new_beams: Vec<Beam<C::State>> = Vec::new();
            next_input.clear();
            for (q, mut cs) in by_query.into_iter().enumerate() {
                cs.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)).then(a.token.cmp(&b.token)));
                cs.truncate(2 * w);
                let mut running = Vec::new();
                for (rank, c) in cs.iter().enumerate() {
                    let is_eos = Some(c.token) == eos;
                    let runs = !is_eos && running.len() < w;
                    // History keeps every candidate; otherwise an eos ranked < W finishes.
                    if self.history || (is_eos && rank < w) {
                        let g = extend(&beams[c.row], c.token, c.score);
                        if runs {
                            running.push((*c, Some(g.clone())));
                        }
                        finished[q].push(g);
                    } else if runs {
                        running.push((*c, None));
                    }
                }
                if !self.history {
                    keep_best(&mut finished[q], w);
                }
                // Stop a query once no running prefix can beat its worst kept sequence
                // (scores only fall as tokens are added).
                let full = !self.history && finished[q].len() == w;
                if running.is_empty() || (full && running[0].0.score <= finished[q][w - 1].score) {
                    continue;
                }
                // A continuation already extended for the history is not extended again.
                for (c, done) in running {
                    let next = done.unwrap_or_else(|| extend(&beams[c.row], c.token, c.score));
                    new_beams.push(Beam { query: q, state: next.state, score: c.score, tokens: next.tokens });
                    parents.push(c.row as i64);
                    next_input.push(c.token as i64);
                }
            }
            beams = new_beams;
            prof.select += lap(&mut clock);
            if !beams.is_empty() {
                cache = cache.reorder(&parents);
            }
            prof.reorder += lap(&mut clock);
        }
        // HF's `finalize`: beams still running at the longest length finish as they are.
        if !self.history && !beams.is_empty() {
            for beam in beams {
                let q = beam.query;
                finished[q].push(Generated { tokens: beam.tokens, state: beam.state, score: beam.score });
            }
            for f in &mut finished {
                keep_best(f, w);
            }
        }
        finished
    }

    /// Every running beam's allowed continuations that can matter to HF's rule (see
    /// `search_inner`), scored `beam score + log p(token)` in f32 as HF accumulates, where
    /// log p is the log-softmax over the whole vocabulary of the beam's decoder state
    /// `hidden` (R, D).
    ///
    /// Pruning, exact: log p ≤ 0, so no continuation of a beam scores above the beam itself.
    /// The rule reads a query's candidates best first only down to its W-th non-eos one (the
    /// last that runs on; an eos after it ranks ≥ W) or its 2W-th overall. The beams of each
    /// query are therefore taken best first, a few per round, and a beam scoring below that
    /// floor (as far as the candidates so far set it) can add nothing: its vocabulary row,
    /// most of a step's work, is never made.
    fn continuations(
        &self,
        beams: &[Beam<C::State>],
        hidden: &Tensor,
        scratch: &mut Scratch<C::State>,
        prof: &mut BeamProfile,
        clock: &mut Instant,
    ) -> Vec<Cand> {
        if !self.prune {
            let all: Vec<usize> = (0..beams.len()).collect();
            return self.score_rows(beams, hidden, &all, scratch, prof, clock);
        }
        // With history every one of the best 2W is output, so only the 2W-th sets the floor.
        let (w, limit, eos) =
            (if self.history { scratch.limit } else { self.beam }, scratch.limit, self.constraint.eos());
        let queries = beams.iter().map(|b| b.query + 1).max().unwrap_or(0);
        // Each query's rows, best beam last (popped first).
        let mut pending: Vec<Vec<usize>> = vec![Vec::new(); queries];
        for (row, beam) in beams.iter().enumerate() {
            pending[beam.query].push(row);
        }
        for rows in &mut pending {
            rows.sort_by(|&a, &b| beams[a].score.total_cmp(&beams[b].score).then(b.cmp(&a)));
        }
        // A quarter of the beams per query and round, but rounds of at least MIN_ROUND_ROWS
        // rows: a smaller vocabulary product costs more per row than pruning saves.
        let per_round = w.div_ceil(4).max(MIN_ROUND_ROWS.div_ceil(queries));
        // Per query, the best 2W candidate scores so far and the best W of non-eos ones.
        let mut best: Vec<(Vec<f32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); queries];
        let mut out = Vec::new();
        loop {
            let mut rows = Vec::new();
            for (q, pend) in pending.iter_mut().enumerate() {
                let (all, running) = &best[q];
                let floor = f32::max(
                    if all.len() == limit { all[limit - 1] } else { f32::NEG_INFINITY },
                    if running.len() == w { running[w - 1] } else { f32::NEG_INFINITY },
                );
                for _ in 0..per_round {
                    match pend.last() {
                        Some(&r) if beams[r].score >= floor => {
                            rows.push(r);
                            pend.pop();
                        }
                        Some(_) => {
                            pend.clear(); // this beam and every worse one are pruned
                            break;
                        }
                        None => break,
                    }
                }
            }
            if rows.is_empty() {
                return out;
            }
            rows.sort_unstable();
            let cands = self.score_rows(beams, hidden, &rows, scratch, prof, clock);
            for c in &cands {
                let (all, running) = &mut best[beams[c.row].query];
                all.push(c.score);
                if Some(c.token) != eos {
                    running.push(c.score);
                }
            }
            let keep = |v: &mut Vec<f32>, n: usize| {
                v.sort_unstable_by(|a, b| b.total_cmp(a));
                v.truncate(n);
            };
            for (all, running) in &mut best {
                keep(all, limit);
                keep(running, w);
            }
            out.extend(cands);
        }
    }

    /// For the beams at `rows` (indices into `beams` and `hidden`), their best `limit`
    /// allowed continuations (all of them when the node allows fewer). The vocabulary logits
    /// are made and normalised a chunk of rows at a time ([`CHUNK_ELEMS`]), each gathered
    /// while it is in cache, its log-softmax written to `scratch.logp`, one buffer for the
    /// whole search, rather than to (R × V) of fresh memory whose pages the kernel faults in
    /// and zeroes every step.
    fn score_rows(
        &self,
        beams: &[Beam<C::State>],
        hidden: &Tensor,
        rows: &[usize],
        scratch: &mut Scratch<C::State>,
        prof: &mut BeamProfile,
        clock: &mut Instant,
    ) -> Vec<Cand> {
        let limit = scratch.limit;
        let dev = hidden.device();
        let v = self.model.lm_head_rows();
        let max_chunk = (CHUNK_ELEMS / v).max(MIN_CHUNK_ROWS) as usize;
        // Equal chunks of at most `max_chunk` rows (no small remainder product).
        let chunk = rows.len().div_ceil(rows.len().div_ceil(max_chunk).max(1)).max(1);
        let everything = rows.len() == beams.len();
        prof.vocab_rows += rows.len();
        let mut out = Vec::new();
        for part in rows.chunks(chunk) {
            let states = if everything {
                hidden.narrow(0, part[0] as i64, part.len() as i64) // rows 0..R in order
            } else {
                let idx: Vec<i64> = part.iter().map(|&r| r as i64).collect();
                hidden.index_select(0, &Tensor::from_slice(&idx).to_device(dev))
            };
            let logits = self.model.state_logits(&states); // (c, V)
            prof.lm_head += lap(clock);
            let logp = if logits.kind() == Kind::Float {
                // Into one buffer reused by every chunk and step of the search.
                let n = part.len() as i64;
                let buf = match scratch.logp.take() {
                    Some(t) if t.size() == [max_chunk as i64, v] => t,
                    _ => Tensor::empty([max_chunk as i64, v], (Kind::Float, dev)),
                };
                let out = logits.internal_log_softmax_out(&buf.narrow(0, 0, n), -1, false);
                scratch.logp = Some(buf);
                out
            } else {
                logits.log_softmax(-1, Kind::Float)
            };
            let mut flat_idx: Vec<i64> = Vec::new();
            let mut owners: Vec<(usize, u32)> = Vec::new();
            for (i, &row) in part.iter().enumerate() {
                let beam = &beams[row];
                let allowed = self.constraint.allowed(&beam.state);
                if allowed.len() > DEVICE_FANOUT && allowed.len() > limit {
                    // Device path: gather this row's allowed log-probs, keep the best `limit`.
                    let toks = scratch.big.entry(beam.state.clone()).or_insert_with(|| {
                        Tensor::from_slice(&allowed.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(dev)
                    });
                    let vals = logp.get(i as i64).index_select(0, toks); // (F,)
                    let (top, pos) = vals.topk(limit as i64, 0, true, true);
                    let top: Vec<f32> = Vec::try_from(top.to_device(Device::Cpu)).expect("f32");
                    let pos: Vec<i64> = Vec::try_from(pos.to_device(Device::Cpu)).expect("i64");
                    for (s, p) in top.into_iter().zip(pos) {
                        out.push(Cand { score: beam.score + s, row, token: allowed[p as usize] });
                    }
                } else {
                    for &t in allowed.iter() {
                        flat_idx.push(i as i64 * v + t as i64);
                        owners.push((row, t));
                    }
                }
            }
            if !flat_idx.is_empty() {
                let idx = Tensor::from_slice(&flat_idx).to_device(dev);
                let vals: Vec<f32> =
                    Vec::try_from(logp.view([-1]).index_select(0, &idx).to_device(Device::Cpu)).expect("f32");
                for ((row, token), s) in owners.into_iter().zip(vals) {
                    out.push(Cand { score: beams[row].score + s, row, token });
                }
            }
            prof.log_probs += lap(clock);
        }
        out
    }
}

/// The ranking of documents from finished docids (best first): every document of a docid
/// gets its score — a document reached by several docids (n-gram ids) its best one; grdr's
/// order (score desc, doc index asc) breaks ties; the best `k`.
pub fn to_hits(trie: &DocidTrie, generated: &[Generated<NodeId>], k: usize) -> Vec<Hit> {
    let mut best: HashMap<i64, f32> = HashMap::new();
    for g in generated {
        for &d in trie.docs(g.state) {
            let s = best.entry(d).or_insert(g.score);
            *s = s.max(g.score);
        }
    }
    let mut top = TopK::new(k);
    top.merge(best.into_iter().map(|(doc_idx, score)| Hit { score, doc_idx }));
    top.into_sorted_vec()
}

/// Keeps the `w` best sequences, best first (stable: earlier finds win ties).
fn keep_best<S>(v: &mut Vec<Generated<S>>, w: usize) {
    v.sort_by(|a, b| b.score.total_cmp(&a.score));
    v.truncate(w);
}

/// Σ log p of each docid in `docids` given each query, by teacher forcing: the brute-force
/// ranking beam search must reproduce (tests), and the rerank setting's GR score.
pub fn score_all(model: &GrModel, input_ids: &Tensor, attention_mask: &Tensor, docids: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let b = input_ids.size()[0] as usize;
    let rows: Vec<Vec<i64>> = docids.iter().map(|d| d.iter().map(|&t| t as i64).collect()).collect();
    let cands: Vec<Vec<Vec<i64>>> = (0..b).map(|_| rows.clone()).collect();
    crate::model::generative::score_docids(model, input_ids, attention_mask, &cands)
}
