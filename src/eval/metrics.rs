//! Ranking metrics computed exactly as trec_eval computes them (pytrec_eval wraps
//! trec_eval, and BEIR reports pytrec_eval), so grdr's numbers can be compared with
//! published ones and checked by `tests/metrics_parity.rs` to 1e-6.
//!
//! What "exactly" takes (trec_eval 9.x, `form_res_rels.c` and `m_*.c`):
//! - **Order**: the scores decide, not the input order or rank column. A query's documents
//!   are sorted by score descending, ties by doc id in *descending* byte order
//!   (`comp_sim_docno`: `strcmp(p2->docno, p1->docno)`). Scores are compared after
//!   rounding to f32, because the trec_eval inside pytrec_eval stores them in a C
//!   `float` (`TEXT_RESULTS.sim`; measured with pytrec-eval-terrier 0.5.11: 0.5 and
//!   0.5 + 1e-9 tie there). Only scores equal in f32 but not in f64 are affected; they
//!   tie and the doc id decides. `-0.0` equals `0.0`; a NaN (which the run reader
//!   refuses) ranks last.
//! - **Relevance**: relevant means judged `rel >= 1` (trec_eval's default
//!   `relevance_level` 1); unjudged documents are non-relevant. nDCG's gain is the judged
//!   value itself (0 and below gain nothing), discount `log2(rank + 1)`, and the ideal
//!   ranking is built from all judged values of the query, retrieved or not.
//! - **Measures** ([`MEASURES`]): `nDCG@10` = ndcg_cut_10; `R@k` = recall_k;
//!   `MRR@10` = recip_rank on the top 10 (0 when the first relevant document is below
//!   rank 10); `MAP` = map over the whole run; `success@k` = 1 if a relevant document
//!   is in the top k. Recall and MAP divide by the number of relevant judgements,
//!   retrieved or not; a query without any gets 0, as in trec_eval.
//!
//! **Query set** (trec_eval `-c`): every query in the qrels is scored, and a judged
//! query that the run lacks scores 0 on every measure; run queries without judgements
//! are ignored. pytrec_eval (and so BEIR) averages only over the queries the run has, so
//! the two agree whenever the run covers every judged query — and where it does not, ours
//! is the honest number: a retriever that crashes on half the queries does not get the
//! mean of the other half. [`Metrics::missing_from_run`] counts such queries.
use std::collections::{BTreeMap, HashMap};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::data::trec::{Qrels, Run};

/// The measures reported, in report order.
pub const MEASURES: [&str; 10] =
    ["nDCG@10", "R@1", "R@10", "R@100", "R@1000", "MRR@10", "MAP", "success@1", "success@5", "success@10"];

/// `R@k` cutoffs, in [`MEASURES`] order starting at index 1.
const RECALL_CUTOFFS: [usize; 4] = [1, 10, 100, 1000];
/// `success@k` cutoffs, in [`MEASURES`] order starting at index 7.
const SUCCESS_CUTOFFS: [usize; 3] = [1, 5, 10];
const NDCG_CUTOFF: usize = 10;
const MRR_CUTOFF: usize = 10;

/// Per-query values and their means over the query set (see the module docs).
///
/// Serializes (e.g. with `atomic::write_json`) as one flat object: the means in
/// [`MEASURES`] order, then `"queries"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// query id -> measure -> value, for every judged query.
    pub per_query: BTreeMap<String, BTreeMap<&'static str, f64>>,
    /// measure -> mean over [`Metrics::queries`] (0 when there are no queries).
    pub mean: BTreeMap<&'static str, f64>,
    /// Number of queries averaged over: every query in the qrels.
    pub queries: usize,
    /// Judged queries the run has no line for (each scored 0).
    pub missing_from_run: usize,
    /// Run queries without judgements (not scored).
    pub unjudged_in_run: usize,
    /// The depth the run was retrieved to (`k`), when known: measures whose cutoff lies
    /// past it (R@1000 of a top-100 run, which only repeats R@100) are not reported.
    pub depth: Option<usize>,
}

/// The cutoff of a measure named `<name>@<k>` (none for MAP).
fn cutoff(measure: &str) -> Option<usize> {
    measure.split_once('@').and_then(|(_, k)| k.parse().ok())
}

impl Metrics {
    /// Records the depth the run was retrieved to (see [`Metrics::depth`]).
    pub fn at_depth(mut self, k: usize) -> Metrics {
        self.depth = Some(k);
        self
    }

    /// The measures this evaluation reports, in [`MEASURES`] order: every one whose cutoff
    /// the run's depth reaches.
    pub fn reported(&self) -> impl Iterator<Item = &'static str> + '_ {
        MEASURES.into_iter().filter(|m| match (cutoff(m), self.depth) {
            (Some(c), Some(depth)) => c <= depth,
            _ => true,
        })
    }

    /// The means as one flat JSON object plus `"queries": N`. Key order follows
    /// [`MEASURES`] only if serde_json's `preserve_order` feature is on; serializing
    /// `self` directly keeps it either way.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for name in self.reported() {
            obj.insert(name.to_owned(), self.mean[name].into());
        }
        obj.insert("queries".to_owned(), self.queries.into());
        serde_json::Value::Object(obj)
    }
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for name in self.reported() {
            map.serialize_entry(name, &self.mean[name])?;
        }
        map.serialize_entry("queries", &self.queries)?;
        map.end()
    }
}

/// Scores `run` against `qrels` over every judged query (trec_eval `-c`).
pub fn evaluate(qrels: &Qrels, run: &Run) -> Metrics {
    let mut per_query = BTreeMap::new();
    let mut sums = [0.0f64; MEASURES.len()];
    let mut missing_from_run = 0;
    for (qid, judged) in qrels {
        let values = match run.get(qid) {
            Some(docs) => score_query(judged, docs),
            None => {
                missing_from_run += 1;
                [0.0; MEASURES.len()]
            }
        };
        for (sum, v) in sums.iter_mut().zip(values) {
            *sum += v;
        }
        per_query.insert(qid.clone(), MEASURES.into_iter().zip(values).collect());
    }
    let queries = qrels.len();
    let mean = MEASURES
        .into_iter()
        .zip(sums)
        .map(|(name, sum)| (name, if queries > 0 { sum / queries as f64 } else { 0.0 }))
        .collect();
    let unjudged_in_run = run.keys().filter(|q| !qrels.contains_key(*q)).count();
    Metrics { per_query, mean, queries, missing_from_run, unjudged_in_run, depth: None }
}

/// trec_eval's score order: score descending, then doc id descending. The key is the
/// score as the C `float` trec_eval keeps (round to nearest, overflow to infinity, as
/// C's conversion does), with `-0.0` mapped to `0.0` (C's `>` treats them as equal) and
/// NaN below everything, so `total_cmp` is a total order that agrees with trec_eval.
fn sort_key(score: f64) -> f32 {
    if score.is_nan() {
        f32::NEG_INFINITY
    } else {
        score as f32 + 0.0
    }
}

/// All measures for one query, in [`MEASURES`] order.
pub fn score_query(judged: &HashMap<String, i32>, docs: &[(String, f64)]) -> [f64; 10] {
    let num_rel = judged.values().filter(|&&r| r >= 1).count();

    // Ideal DCG@10 from the judged gains, best first.
    let mut gains: Vec<i32> = judged.values().copied().filter(|&r| r > 0).collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = gains.iter().take(NDCG_CUTOFF).enumerate().map(|(i, &g)| discounted(g, i)).sum();

    let mut order: Vec<(f32, &str)> = docs.iter().map(|(d, s)| (sort_key(*s), d.as_str())).collect();
    order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(a.1)));

    let mut dcg = 0.0;
    let mut rel_ret = 0usize;
    let mut ap_sum = 0.0;
    let mut first_rel: Option<usize> = None;
    let mut recall_hits = [0usize; RECALL_CUTOFFS.len()];
    for (i, (_, docno)) in order.iter().enumerate() {
        let rel = judged.get(*docno).copied().unwrap_or(0);
        if rel <= 0 {
            continue;
        }
        if i < NDCG_CUTOFF {
            dcg += discounted(rel, i);
        }
        rel_ret += 1;
        ap_sum += rel_ret as f64 / (i + 1) as f64;
        first_rel.get_or_insert(i);
        for (hits, &k) in recall_hits.iter_mut().zip(&RECALL_CUTOFFS) {
            *hits += usize::from(i < k);
        }
    }

    let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
    let within = |k: usize| f64::from(u8::from(first_rel.is_some_and(|i| i < k)));
    let mut out = [0.0; MEASURES.len()];
    out[0] = ratio(dcg, idcg);
    for (slot, hits) in out[1..5].iter_mut().zip(recall_hits) {
        *slot = ratio(hits as f64, num_rel as f64);
    }
    out[5] = first_rel.filter(|&i| i < MRR_CUTOFF).map_or(0.0, |i| 1.0 / (i + 1) as f64);
    out[6] = ratio(ap_sum, num_rel as f64);
    for (slot, k) in out[7..].iter_mut().zip(SUCCESS_CUTOFFS) {
        *slot = within(k);
    }
    out
}

/// Gain of a document with relevance `rel` at 0-based position `i`: `rel / log2(i + 2)`.
fn discounted(rel: i32, i: usize) -> f64 {
    f64::from(rel) / ((i + 2) as f64).log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qrels(rows: &[(&str, &str, i32)]) -> Qrels {
        let mut q = Qrels::new();
        for &(qid, d, r) in rows {
            q.entry(qid.into()).or_default().insert(d.into(), r);
        }
        q
    }

    fn run(rows: &[(&str, &str, f64)]) -> Run {
        let mut r = Run::new();
        for &(qid, d, s) in rows {
            r.entry(qid.into()).or_default().push((d.into(), s));
        }
        r
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn ties_break_by_descending_doc_id() {
        // All tied: order is d2, d1, d0, so the relevant d1 sits at rank 2.
        let m = evaluate(&qrels(&[("q", "d1", 1)]), &run(&[("q", "d0", 0.5), ("q", "d1", 0.5), ("q", "d2", 0.5)]));
        let q = &m.per_query["q"];
        assert!(close(q["MRR@10"], 0.5));
        assert!(close(q["nDCG@10"], 1.0 / 3f64.log2()));
        assert!(close(q["MAP"], 0.5));
        assert_eq!((q["R@1"], q["R@10"], q["success@1"], q["success@5"]), (0.0, 1.0, 0.0, 1.0));
        // -0.0 ties with 0.0, so the doc id decides again (b before a).
        let m = evaluate(&qrels(&[("q", "a", 1)]), &run(&[("q", "a", 0.0), ("q", "b", -0.0)]));
        assert!(close(m.per_query["q"]["MRR@10"], 0.5));
        // Scores equal in f32 tie as in pytrec_eval's trec_eval; a real f32 gap does not.
        let near = run(&[("q", "a", 0.5 + 1e-9), ("q", "b", 0.5)]);
        assert!(close(evaluate(&qrels(&[("q", "a", 1)]), &near).per_query["q"]["MRR@10"], 0.5));
        let apart = run(&[("q", "a", 0.5 + 1e-7), ("q", "b", 0.5)]);
        assert!(close(evaluate(&qrels(&[("q", "a", 1)]), &apart).per_query["q"]["MRR@10"], 1.0));
    }

    #[test]
    fn graded_relevance_and_input_order_ignored() {
        // Given worst-first; sorted: b(1) c(0) a(2). DCG = 1/1 + 2/log2(4) = 2.
        let m = evaluate(
            &qrels(&[("q", "a", 2), ("q", "b", 1), ("q", "c", 0)]),
            &run(&[("q", "a", 1.0), ("q", "c", 2.0), ("q", "b", 3.0)]),
        );
        let q = &m.per_query["q"];
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!(close(q["nDCG@10"], 2.0 / idcg));
        assert!(close(q["MAP"], (1.0 + 2.0 / 3.0) / 2.0));
        assert!(close(q["R@1"], 0.5));
        assert!(close(q["MRR@10"], 1.0));
    }

    #[test]
    fn missing_query_scores_zero_and_unjudged_run_query_is_ignored() {
        let m = evaluate(&qrels(&[("q1", "a", 1), ("q2", "b", 1)]), &run(&[("q1", "a", 1.0), ("q3", "b", 1.0)]));
        assert_eq!((m.queries, m.missing_from_run, m.unjudged_in_run), (2, 1, 1));
        assert!(m.per_query["q2"].values().all(|&v| v == 0.0));
        assert!(m.mean.values().all(|&v| close(v, 0.5)));
        let json = m.to_json();
        assert_eq!(json["queries"], 2);
        assert!(close(json["nDCG@10"].as_f64().unwrap(), 0.5));
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with("{\"nDCG@10\":0.5,\"R@1\":0.5,") && text.ends_with("\"queries\":2}"));
    }

    #[test]
    fn zero_relevant_retrieved_and_no_relevant_judged() {
        let m = evaluate(
            &qrels(&[("q", "a", 1), ("z", "a", 0)]),
            &run(&[("q", "x", 2.0), ("q", "y", 1.0), ("z", "a", 1.0)]),
        );
        for q in ["q", "z"] {
            assert!(m.per_query[q].values().all(|&v| v == 0.0), "{q}");
        }
    }

    #[test]
    fn cutoffs_at_rank_eleven() {
        // Relevant doc at rank 11: outside MRR@10/success@10/nDCG@10, inside R@100.
        let mut rows: Vec<(String, f64)> = (0..10).map(|i| (format!("n{i}"), 10.0 - i as f64)).collect();
        rows.push(("r".into(), 0.5));
        let mut r = Run::new();
        r.insert("q".into(), rows);
        let m = evaluate(&qrels(&[("q", "r", 1)]), &r);
        let q = &m.per_query["q"];
        assert_eq!((q["MRR@10"], q["success@10"], q["nDCG@10"], q["R@10"]), (0.0, 0.0, 0.0, 0.0));
        assert_eq!((q["R@100"], q["R@1000"]), (1.0, 1.0));
        assert!(close(q["MAP"], 1.0 / 11.0));
    }
}
