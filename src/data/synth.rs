//! Synthetic corpora for throughput and memory tests — never for accuracy: documents and
//! queries are random word sequences drawn from a tokenizer's vocabulary (Zipf-distributed,
//! so a few words are frequent as in text), and qrels pair each query with random documents.
//! Deterministic for a seed; written as an ordinary dataset directory.
use std::collections::BTreeSet;

use crate::data::corpus::{Doc, Qrel, Query};
use crate::data::import::Collection;
use crate::error::{Error, Result};

/// The synthetic data's generator (seeded directly: `Rng::new(seed)`).
pub use crate::rng::SplitMix64 as Rng;

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub docs: usize,
    pub queries: usize,
    /// Words per document, inclusive range.
    pub doc_words: (usize, usize),
    pub query_words: (usize, usize),
    /// Relevant documents per query, inclusive range.
    pub relevant: (usize, usize),
    /// Zipf exponent of the word distribution (0: uniform).
    pub zipf: f64,
    pub seed: u64,
    /// The split the qrels are written under.
    pub split: String,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            docs: 1000,
            queries: 100,
            doc_words: (16, 64),
            query_words: (4, 12),
            relevant: (1, 3),
            zipf: 1.0,
            seed: 0,
            split: "test".into(),
        }
    }
}

/// Words a tokenizer vocabulary offers as whole words: alphabetic, 2+ characters, no
/// sub-word markers (`##`, `▁` prefixes are stripped), no special tokens. Sorted, unique.
pub fn vocabulary_words(vocab: impl IntoIterator<Item = String>) -> Vec<String> {
    let words: BTreeSet<String> = vocab
        .into_iter()
        .filter(|w| !w.starts_with("##") && !w.starts_with('[') && !w.starts_with('<'))
        .map(|w| w.trim_start_matches('▁').to_string())
        .filter(|w| w.chars().count() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(|w| w.to_lowercase())
        .collect();
    words.into_iter().collect()
}

/// Samples word indices from a Zipf law over `n` words via the inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|r| {
                acc += 1.0 / (r as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

fn sentence(words: &[String], zipf: &Zipf, order: &[usize], rng: &mut Rng, (lo, hi): (usize, usize)) -> String {
    let n = rng.range(lo, hi);
    let mut s = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&words[order[zipf.sample(rng)]]);
    }
    s
}

/// A random collection: docs `s0..`, queries `q0..`, qrels in `opts.split`.
pub fn generate(words: &[String], opts: &SynthOptions) -> Result<Collection> {
    if words.is_empty() {
        return Err(Error::usage("--tokenizer", "the vocabulary has no whole alphabetic words"));
    }
    if opts.docs == 0 || opts.queries == 0 {
        return Err(Error::usage("--docs/--queries", "must be at least 1"));
    }
    let check = |name: &str, (lo, hi): (usize, usize)| {
        if lo == 0 || lo > hi {
            Err(Error::usage(name, format!("range {lo}..{hi} must be non-empty and start at 1 or more")))
        } else {
            Ok(())
        }
    };
    check("--doc-words", opts.doc_words)?;
    check("--query-words", opts.query_words)?;
    check("--relevant", opts.relevant)?;
    let mut rng = Rng::new(opts.seed);
    // Which words are frequent is random too (vocabulary order says little about frequency).
    let mut order: Vec<usize> = (0..words.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i));
    }
    let zipf = Zipf::new(words.len(), opts.zipf);
    let docs: Vec<Doc> = (0..opts.docs)
        .map(|i| Doc {
            doc_idx: i as i64,
            doc_id: format!("s{i}"),
            title: sentence(words, &zipf, &order, &mut rng, (2, 6)),
            text: sentence(words, &zipf, &order, &mut rng, opts.doc_words),
        })
        .collect();
    let queries: Vec<Query> = (0..opts.queries)
        .map(|i| Query {
            query_idx: i as i64,
            query_id: format!("q{i}"),
            text: sentence(words, &zipf, &order, &mut rng, opts.query_words),
        })
        .collect();
    let mut qrels = Vec::new();
    for q in &queries {
        let n = rng.range(opts.relevant.0, opts.relevant.1.min(opts.docs));
        let mut chosen = BTreeSet::new();
        while chosen.len() < n {
            chosen.insert(rng.range(0, opts.docs - 1));
        }
        for d in chosen {
            qrels.push(Qrel {
                query_id: q.query_id.clone(),
                doc_id: docs[d].doc_id.clone(),
                relevance: 1,
                split: opts.split.clone(),
            });
        }
    }
    Ok(Collection { docs, queries, qrels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> Vec<String> {
        vocabulary_words(["the", "##ing", "[CLS]", "▁cat", "dog", "a", "x1", "Run"].map(String::from))
    }

    #[test]
    fn keeps_whole_alphabetic_words() {
        assert_eq!(words(), vec!["cat", "dog", "run", "the"]);
    }

    #[test]
    fn deterministic_and_well_formed() {
        let opts = SynthOptions { docs: 50, queries: 7, ..Default::default() };
        let a = generate(&words(), &opts).unwrap();
        let b = generate(&words(), &opts).unwrap();
        assert_eq!(a.docs, b.docs);
        assert_eq!(a.qrels, b.qrels);
        assert_eq!(a.docs.len(), 50);
        for d in &a.docs {
            let n = d.text.split(' ').count();
            assert!((16..=64).contains(&n));
        }
        let judged: BTreeSet<&str> = a.qrels.iter().map(|q| q.query_id.as_str()).collect();
        assert_eq!(judged.len(), 7, "every query is judged");
        let c = generate(&words(), &SynthOptions { seed: 1, ..opts }).unwrap();
        assert_ne!(a.docs, c.docs);
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(100, 1.0);
        let mut rng = Rng::new(3);
        let first = (0..10_000).filter(|_| z.sample(&mut rng) == 0).count();
        // P(rank 1) = 1 / H_100 ≈ 0.19.
        assert!((1500..2400).contains(&first), "{first}");
    }
}
