//! SEAL's intersective scoring (Bevilacqua et al. 2022, §3.3; `seal/keys.py:aggregate_evidence`
//! of facebookresearch/SEAL, whose defaults these are): documents ranked by the n-grams the
//! model generated for a query that they contain.
//!
//! An n-gram n with Σ log p(n | q) = s and corpus count F(n) scores
//!
//! ```text
//! w(n, q) = max(0, log [P(n|q) (1 − P(n))] / [P(n) (1 − P(n|q))])^α,
//! P(n|q) = e^s,  P(n) = (F(n) + σ) / (N + σ)        (N = tokens indexed, σ = 5 smoothing)
//! ```
//!
//! — the model's probability corrected by the n-gram's unconditional frequency — and a
//! document the sum over its n-grams, each counted once, at non-overlapping occurrences taken
//! best first, each damped by how much of it earlier n-grams already covered:
//!
//! ```text
//! W(d, q) = Σ_{n ∈ K(d)} w(n, q) · (1 − β + β |set(n) \ ∪_{n' before n} set(n')| / |set(n)|)
//! ```
//!
//! with α = 2, β = 0.8. As SEAL's code (on by default there): the first decoding step's
//! log-probabilities give unigram scores w₁(t) (the same correction, not raised to α), the
//! best of them join the n-grams, and tokens left uncovered in a document add their w₁ once
//! per token type. Candidates: the documents holding a *rare* n-gram (≤ `max_hits`
//! occurrences, located in the FM-index), ranked by a first-stage sum; the best
//! `fully_score` of them are scored in full by reading their tokens.
use std::collections::BTreeSet;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::search::fm_index::{FmIndex, Rows};
use crate::search::topk::{Hit, TopK};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SealOptions {
    /// α (SEAL's `score_exponent`).
    pub alpha: f64,
    /// β (SEAL's `repetition_penalty`).
    pub beta: f64,
    /// σ added to n-gram counts and the corpus length.
    pub smoothing: f64,
    /// N-grams occurring at most this often are located (first stage).
    pub max_hits: usize,
    /// Documents scored in full.
    pub fully_score: usize,
    /// N-grams occurring more often than this are ignored.
    pub skip_frequent: u64,
    /// Unigram scores from the first decoding step.
    pub unigrams: bool,
    /// Unigrams with a score at all: the most likely this many first tokens.
    pub top_unigrams: usize,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            alpha: 2.0,
            beta: 0.8,
            smoothing: 5.0,
            max_hits: 1500,
            fully_score: 1500,
            skip_frequent: 10_000_000,
            unigrams: true,
            top_unigrams: 5000,
        }
    }
}

/// One generated n-gram: its tokens and Σ log p given the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Ngram {
    pub tokens: Vec<u32>,
    pub log_prob: f32,
}

/// The corpus behind the FM-index shards, as scoring reads it.
pub struct Corpus<'a> {
    pub shards: &'a [FmIndex],
}

/// A document of the corpus: shard and index within it.
type DocKey = (usize, u32);

impl Corpus<'_> {
    /// Tokens indexed (documents plus their eos), SEAL's N.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.meta.n_tokens).sum()
    }

    pub fn count(&self, seq: &[u32]) -> u64 {
        self.shards.iter().map(|s| s.count(seq)).sum()
    }

    fn rows(&self, seq: &[u32]) -> Vec<Rows> {
        self.shards.iter().map(|s| s.rows(seq)).collect()
    }

    fn doc_idx(&self, (shard, doc): DocKey) -> i64 {
        (self.shards[shard].meta.first_doc + doc as u64) as i64
    }
}

/// The correction of a log-probability `s` by corpus count `count` (before the exponent).
fn corrected(s: f64, count: u64, n_tokens: f64, smoothing: f64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let s = s - 1e-10; // keeps log(1 − e^s) finite at s = 0
    let snr = ((count as f64 + smoothing) / (n_tokens + smoothing)).ln();
    let sco = (s + (1.0 - snr.exp()).ln()) - (snr + (1.0 - s.exp()).ln());
    if sco.is_nan() {
        0.0
    } else {
        sco.max(0.0)
    }
}

/// 1 − β + β · (share of `set` not in `covered`); 1 while nothing is covered.
fn repetition(set: &HashSet<u32>, covered: &HashSet<u32>, beta: f64) -> f64 {
    if covered.is_empty() || set.is_empty() {
        return 1.0;
    }
    let new = set.iter().filter(|t| !covered.contains(t)).count();
    1.0 - beta + beta * new as f64 / set.len() as f64
}

/// The scored keys of a query: n-gram → weight, in SEAL's order (weight descending, ties in
/// the order found), and the unigram weights of token types.
struct Keys {
    /// (tokens, weight, count), weight > 0, best first.
    all: Vec<(Vec<u32>, f64, u64)>,
    unigram: HashMap<u32, f64>,
}

fn keys(corpus: &Corpus, ngrams: &[Ngram], first_step: Option<&[f32]>, o: &SealOptions) -> Keys {
    let n_tokens = corpus.tokens() as f64;
    // N-gram weights (first occurrence of a repeated n-gram wins).
    let mut seen: HashSet<&[u32]> = HashSet::default();
    // (tokens, weight, corpus count): each count looked up once.
    let mut scored: Vec<(Vec<u32>, f64, u64)> = Vec::new();
    let mut unigram_set: HashSet<u32> = HashSet::from_iter([0, 1, 2]); // pad, eos, unk: never unigram keys
    for n in ngrams.iter().filter(|n| !n.tokens.is_empty()) {
        if !seen.insert(&n.tokens) {
            continue;
        }
        if n.tokens.len() == 1 {
            unigram_set.insert(n.tokens[0]);
        }
        let count = corpus.count(&n.tokens);
        let w = corrected(n.log_prob as f64, count, n_tokens, o.smoothing).powf(o.alpha);
        scored.push((n.tokens.clone(), w, count));
    }
    // Unigram weights of the most likely first tokens.
    let mut unigram: HashMap<u32, f64> = HashMap::default();
    let mut unigram_count: HashMap<u32, u64> = HashMap::default();
    if let (true, Some(logp)) = (o.unigrams, first_step) {
        let mut order: Vec<u32> = (0..logp.len() as u32).collect();
        order.sort_by(|&a, &b| logp[b as usize].total_cmp(&logp[a as usize]).then(a.cmp(&b)));
        for &t in order.iter().take(o.top_unigrams) {
            if unigram_set.contains(&t) {
                continue;
            }
            let count = corpus.count(&[t]);
            let w = corrected(logp[t as usize] as f64, count, n_tokens, o.smoothing);
            if w > 0.0 {
                unigram.insert(t, w);
                unigram_count.insert(t, count);
            }
        }
        // The best unigrams join the n-grams (as many as there are n-grams).
        let mut best: Vec<(u32, f64)> = unigram.iter().map(|(&t, &w)| (t, w)).collect();
        best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let k = scored.len();
        scored.extend(best.into_iter().take(k).map(|(t, w)| (vec![t], w, unigram_count[&t])));
    }
    let mut all: Vec<(Vec<u32>, f64, u64)> = Vec::new();
    let mut at: HashMap<Vec<u32>, usize> = HashMap::default();
    for (tokens, w, count) in scored {
        if count > o.skip_frequent || w <= 0.0 {
            continue;
        }
        match at.get(&tokens) {
            Some(&i) => all[i].1 = w,
            None => {
                at.insert(tokens.clone(), all.len());
                all.push((tokens, w, count));
            }
        }
    }
    all.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: ties keep the order found
    Keys { all, unigram }
}

/// The first stage: documents holding a rare key, each with the sum of its keys' weights
/// (occurrences overlapping a better key's are not counted; repetition-damped), in the order
/// found. Best `fully_score` returned.
fn first_stage(corpus: &Corpus, keys: &Keys, o: &SealOptions) -> Vec<DocKey> {
    // Text positions (over the shards' texts end to end) already counted, one bit each.
    let mut covered = vec![0u64; (corpus.tokens() as usize).div_ceil(64)];
    let shard_base: Vec<u64> = corpus
        .shards
        .iter()
        .scan(0u64, |acc, s| {
            let base = *acc;
            *acc += s.meta.n_tokens;
            Some(base)
        })
        .collect();
    let mut found: Vec<DocKey> = Vec::new();
    let mut per_doc: HashMap<DocKey, Vec<(usize, f64)>> = HashMap::default();
    for (k, (tokens, w, count)) in keys.all.iter().enumerate() {
        if *count as usize > o.max_hits {
            continue;
        }
        let mut done: HashSet<DocKey> = HashSet::default();
        let mut budget = o.max_hits;
        for (shard, rows) in corpus.rows(tokens).into_iter().enumerate() {
            for occ in corpus.shards[shard].locate_all(rows, tokens.len(), budget) {
                budget -= 1;
                let at = shard_base[shard] + corpus.shards[shard].doc_start(occ.doc) + occ.pos as u64;
                let span = at..at + tokens.len() as u64;
                let bit = |p: u64| (covered[(p / 64) as usize] >> (p % 64)) & 1 == 1;
                if span.clone().any(bit) {
                    continue;
                }
                span.for_each(|p| covered[(p / 64) as usize] |= 1 << (p % 64));
                let doc = (shard, occ.doc);
                if done.insert(doc) {
                    per_doc.entry(doc).or_insert_with(|| {
                        found.push(doc);
                        Vec::new()
                    });
                    per_doc.get_mut(&doc).expect("inserted").push((k, *w));
                }
            }
        }
    }
    let mut ranked: Vec<(DocKey, f64)> = found
        .into_iter()
        .map(|doc| {
            let mut covered_types: HashSet<u32> = HashSet::default();
            let mut score = 0.0;
            for &(k, w) in &per_doc[&doc] {
                let set: HashSet<u32> = keys.all[k].0.iter().copied().collect();
                score += w * repetition(&set, &covered_types, o.beta);
                covered_types.extend(set);
            }
            (doc, score)
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: ties in the order found
    ranked.into_iter().take(o.fully_score).map(|(d, _)| d).collect()
}

/// The keys a document is matched against: weight by token sequence, and every proper
/// prefix of a key (a scan stops extending a match at the first non-prefix).
pub struct KeyIndex<'k> {
    weight: HashMap<&'k [u32], f64>,
    prefixes: HashSet<&'k [u32]>,
    max_len: usize,
}

impl<'k> KeyIndex<'k> {
    pub fn new(keys: impl IntoIterator<Item = (&'k [u32], f64)>) -> Self {
        let weight: HashMap<&[u32], f64> = keys.into_iter().collect();
        let prefixes = weight.keys().flat_map(|k| (1..k.len()).map(move |l| &k[..l])).collect();
        let max_len = weight.keys().map(|k| k.len()).max().unwrap_or(0);
        KeyIndex { weight, prefixes, max_len }
    }

    /// Every occurrence of every key in `doc`: (weight, key, start).
    fn matches<'d>(&self, doc: &'d [u32]) -> Vec<(f64, &'d [u32], usize)> {
        let mut out = Vec::new();
        for i in 0..doc.len() {
            for l in 1..=self.max_len.min(doc.len() - i) {
                let part = &doc[i..i + l];
                if let Some(&w) = self.weight.get(part) {
                    out.push((w, part, i));
                }
                if !self.prefixes.contains(part) {
                    break;
                }
            }
        }
        out
    }
}

/// W(d, q) of one document's tokens.
pub fn full_score(doc: &[u32], keys: &KeyIndex, unigram: &HashMap<u32, f64>, beta: f64) -> f64 {
    let mut matches = keys.matches(doc);
    // Best first; ties by key, then position (SEAL's heap order).
    matches.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    let mut free = vec![true; doc.len()];
    let mut covered: HashSet<u32> = HashSet::default();
    let mut taken: Vec<(&[u32], f64)> = Vec::new();
    for (w, key, i) in matches {
        if !free[i..i + key.len()].iter().all(|&f| f) {
            continue;
        }
        match taken.last() {
            // Another occurrence of the key just taken: it counts once.
            Some((k, _)) if *k == key => {}
            _ => {
                let set: HashSet<u32> = key.iter().copied().collect();
                let s = w * repetition(&set, &covered, beta);
                if s <= 0.0 {
                    continue;
                }
                covered.extend(set);
                taken.push((key, s));
            }
        }
        free[i..i + key.len()].iter_mut().for_each(|f| *f = false);
    }
    let mut score: f64 = taken.iter().map(|(_, s)| s).sum();
    // Uncovered token types add their unigram weight once.
    let types: BTreeSet<u32> = doc.iter().zip(&free).filter(|(_, &f)| f).map(|(&t, _)| t).collect();
    for t in types {
        if let Some(&w) = unigram.get(&t) {
            score += w * repetition(&HashSet::from_iter([t]), &covered, beta);
        }
    }
    score
}

/// Ranks the corpus's documents for one query from its generated n-grams (and, with
/// unigrams on, the log-probabilities of its first decoding step over the vocabulary): the
/// best `k` by W(d, q), grdr's order breaking ties.
pub fn rank(corpus: &Corpus, ngrams: &[Ngram], first_step: Option<&[f32]>, o: &SealOptions, k: usize) -> Vec<Hit> {
    let keys = keys(corpus, ngrams, first_step, o);
    let candidates = first_stage(corpus, &keys, o);
    let by_tokens = KeyIndex::new(keys.all.iter().map(|(t, w, _)| (t.as_slice(), *w)));
    let mut top = TopK::new(k);
    top.merge(candidates.into_iter().map(|doc| {
        let tokens = corpus.shards[doc.0].doc_tokens(doc.1);
        Hit { score: full_score(&tokens, &by_tokens, &keys.unigram, o.beta) as f32, doc_idx: corpus.doc_idx(doc) }
    }));
    top.into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's definitions worked by hand on a three-document corpus.
    #[test]
    fn scores_a_hand_computed_example() {
        // Tokens: 5 "protein", 6 "binds", 7 "dna", 8 "cell", 9 "membrane".
        let docs = vec![vec![5, 6, 7, 8], vec![8, 9, 8, 9], vec![5, 6, 9]];
        let shards = vec![FmIndex::build(&docs, 1, "test", 0, 0).unwrap()];
        let corpus = Corpus { shards: &shards };
        assert_eq!(corpus.tokens(), 14); // 4+1 + 4+1 + 3+1
        let o = SealOptions { unigrams: false, ..Default::default() };
        let ln = |x: f64| x.ln();
        // w(n) = max(0, (s + ln(1 − P(n))) − (ln P(n) + ln(1 − e^s)))^2 with P(n) = (F + 5)/(N + 5).
        let w = |s: f64, f: f64| {
            let pn = (f + 5.0) / 19.0;
            ((s + ln(1.0 - pn)) - (ln(pn) + ln(1.0 - s.exp()))).max(0.0).powi(2)
        };
        let ngrams = vec![
            Ngram { tokens: vec![5, 6], log_prob: -0.5 }, // F = 2 (docs 0, 2)
            Ngram { tokens: vec![6, 7], log_prob: -1.0 }, // F = 1 (doc 0)
            Ngram { tokens: vec![8, 9], log_prob: -0.7 }, // F = 2 (doc 1, twice)
        ];
        let (w56, w67, w89) = (w(-0.5, 2.0), w(-1.0, 1.0), w(-0.7, 2.0));
        assert!(w56 > w89 && w89 > w67 && w67 > 0.0, "{w56} {w89} {w67}");
        let hits = rank(&corpus, &ngrams, None, &o, 10);
        let score = |d: i64| hits.iter().find(|h| h.doc_idx == d).map(|h| h.score as f64);
        // doc 0: [5 6] at 0..2 (w56); [6 7] overlaps it: not counted; nothing else.
        assert!((score(0).unwrap() - w56).abs() < 1e-4, "{:?} vs {w56}", score(0));
        // doc 1: [8 9] at 0..2 and 2..4 — the same key counts once.
        assert!((score(1).unwrap() - w89).abs() < 1e-4, "{:?} vs {w89}", score(1));
        // doc 2: [5 6] only.
        assert!((score(2).unwrap() - w56).abs() < 1e-4);
        // Coverage: a document where [6 7] follows [5 6] non-overlapping … [5 6 x 6 7]:
        // the second key shares token 6 with the first: damped by 1 − β + β·(1/2) = 0.6.
        let doc = vec![5, 6, 3, 6, 7];
        let keys = KeyIndex::new([(&[5u32, 6][..], w56), (&[6u32, 7][..], w67)]);
        let got = full_score(&doc, &keys, &HashMap::default(), 0.8);
        assert!((got - (w56 + 0.6 * w67)).abs() < 1e-9, "{got}");
        // Unigrams on uncovered tokens: token 3 uncovered, weight 0.25, not in the covered set.
        let uni = HashMap::from_iter([(3u32, 0.25), (5u32, 9.0)]);
        let got = full_score(&doc, &keys, &uni, 0.8);
        assert!((got - (w56 + 0.6 * w67 + 0.25)).abs() < 1e-9, "{got}");
    }
}
