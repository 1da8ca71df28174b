//! Corpus subsamples for corpus-size sweeps (Zhang et al. vary the corpus N) that change
//! nothing but the number of distractors.
//!
//! Every sample keeps **every judged document** (any split, any relevance) and **every
//! query with all its judgements**; only unjudged documents — distractors — are dropped.
//! The distractors of a sample of size N are the first N − J (J judged documents) of one
//! fixed permutation of the unjudged documents (keyed by the sweep's `corpus_seed`), so a
//! larger sample contains every smaller one. A curve over N then moves the corpus alone:
//! the training examples, the test queries and what is relevant are the same at every
//! point. (Sampling documents uniformly instead drops the queries whose relevant documents
//! left, so "worse with more documents" would also mean "more training queries" and
//! "other test queries".) N ranges from J (the judged documents alone) to the corpus.
//! Inside a sample, documents keep their corpus order and get dense `doc_idx` 0..N;
//! queries keep theirs.
//!
//! GR runs need docids of the sample: atomic ids are rebuilt (one token per document of
//! the sample); other schemes keep each document's id from the full corpus's file (ids stay
//! unique; semantic ids keep the full corpus's clustering).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::{write_json, TempDir};
use crate::data::corpus::{self, Doc, Qrel, Query};
use crate::data::docid::{self, DocidTable, Scheme};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Keeps the permutation's stream apart from every other use of the seed (see `shard::tag`).
const TAG_CORPUS_SUBSAMPLE: u64 = 0x636f_7270_7573; // "corpus"

/// Written beside the manifest: how the sample was drawn.
pub const SUBSAMPLE_JSON: &str = "subsample.json";

/// The rule of this module, recorded in `subsample.json` (a sample drawn by another rule
/// is rebuilt, never reused).
pub const RULE: &str = "every judged document and every query kept; the first N - judged of a seeded permutation of the unjudged documents";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsampleInfo {
    pub source: String,
    pub source_docs: usize,
    pub docs: usize,
    /// Documents judged by some query (all kept).
    #[serde(default)]
    pub judged_docs: usize,
    /// Unjudged documents kept: `docs - judged_docs`.
    #[serde(default)]
    pub distractors: usize,
    pub seed: u64,
    /// Queries per split (the source's, all kept).
    pub queries: BTreeMap<String, usize>,
    pub rule: String,
}

/// Corpus positions of the sample of `n` out of `total` documents, ascending: every position
/// in `judged`, then the first `n - judged.len()` of the seeded permutation of the others
/// (so the sample of n ⊂ the sample of m for n ≤ m).
pub fn sample_positions(total: usize, judged: &HashSet<usize>, n: usize, seed: u64) -> Result<Vec<usize>> {
    check_n(n, judged.len(), total, "the corpus")?;
    let mut distractors: Vec<u32> = (0..total as u32).filter(|p| !judged.contains(&(*p as usize))).collect();
    SplitMix64::keyed(&[seed, TAG_CORPUS_SUBSAMPLE]).shuffle(&mut distractors);
    let mut picked: Vec<usize> = judged.iter().copied().collect();
    picked.extend(distractors[..n - judged.len()].iter().map(|&p| p as usize));
    picked.sort_unstable();
    Ok(picked)
}

/// `n` must lie in judged..=total.
fn check_n(n: usize, judged: usize, total: usize, what: &str) -> Result<()> {
    if n < judged.max(1) || n > total {
        return Err(Error::usage(
            "data.corpus_docs",
            format!(
                "{n} documents asked for: {what} has {total}, {judged} of them judged, and every sample keeps \
                 the judged ones ({}..={total} possible)",
                judged.max(1)
            ),
        ));
    }
    Ok(())
}

/// The distinct documents the qrels of `ds` judge (any split, any relevance).
fn judged_doc_ids(ds: &Dataset) -> Result<HashSet<String>> {
    Ok(ds.qrels(None)?.into_iter().map(|q| q.doc_id).collect())
}

/// Checks that a sample of `n` documents of the dataset at `source` can be drawn (manifest
/// and qrels only: cheap).
pub fn check_size(source: &Path, n: usize) -> Result<()> {
    let ds = Dataset::open(source).map_err(|e| match e {
        Error::Usage { message, .. } => Error::usage("data.path", message),
        other => other,
    })?;
    check_n(n, judged_doc_ids(&ds)?.len(), ds.manifest.docs, &source.display().to_string())
}

/// Writes the sample of `n` documents of `source` to `dest` (temp dir + rename); returns the
/// sample's doc ids in its doc_idx order.
pub fn write_subsample(source: &Path, n: usize, seed: u64, dest: &Path) -> Result<Vec<String>> {
    let ds = Dataset::open(source)?;
    let docs = ds.docs()?;
    let judged_ids = judged_doc_ids(&ds)?;
    let judged: HashSet<usize> =
        docs.iter().enumerate().filter(|(_, d)| judged_ids.contains(&d.doc_id)).map(|(p, _)| p).collect();
    let keep = sample_positions(docs.len(), &judged, n, seed)?;
    let with_tokens = ds.manifest.tokenizer.is_some();

    // Documents: corpus order, dense doc_idx; stored token ids travel with their rows.
    let doc_tokens = if with_tokens { Some(corpus::read_input_ids(&ds.docs_path())?) } else { None };
    let new_docs: Vec<Doc> =
        keep.iter().enumerate().map(|(i, &p)| Doc { doc_idx: i as i64, ..docs[p].clone() }).collect();
    let new_doc_tokens: Option<Vec<Vec<u32>>> = doc_tokens.map(|t| keep.iter().map(|&p| t[p].clone()).collect());

    // Queries and judgements: all of them, as they are (every judged document is inside).
    let qrels: Vec<Qrel> = ds.qrels(None)?;
    let queries: Vec<Query> = ds.queries()?;
    let query_tokens = if with_tokens { Some(corpus::read_input_ids(&ds.queries_path())?) } else { None };

    // Enough row groups that a sample still shards over ranks (row groups are the unit).
    let row_group_rows = ds.manifest.row_group_rows.min(n.div_ceil(16)).max(1);
    let out = TempDir::new(dest, true)?;
    let dir = out.path();
    let source_info = crate::data::import::Source { kind: "subsample", path: source };
    let m = crate::data::import::write_files(
        dir,
        (&new_docs, &queries, &qrels),
        (new_doc_tokens.as_deref(), query_tokens.as_deref()),
        row_group_rows,
        ds.manifest.tokenizer.clone(),
        &source_info,
    )?;
    let info = SubsampleInfo {
        source: source.display().to_string(),
        source_docs: docs.len(),
        docs: n,
        judged_docs: judged.len(),
        distractors: n - judged.len(),
        seed,
        queries: m.splits.iter().map(|(k, c)| (k.clone(), c.queries)).collect(),
        rule: RULE.into(),
    };
    write_json(&dir.join(SUBSAMPLE_JSON), &info)?;
    out.commit()?;
    Ok(new_docs.into_iter().map(|d| d.doc_id).collect())
}

/// The doc ids of an existing sample, in its doc_idx order.
pub fn sample_doc_ids(dir: &Path) -> Result<Vec<String>> {
    Ok(Dataset::open(dir)?.docs()?.into_iter().map(|d| d.doc_id).collect())
}

/// The docids of the sample whose documents are `doc_ids` (in doc_idx order), from the full
/// corpus's table: atomic ids rebuilt, others kept per document.
pub fn restrict_docids(full: &DocidTable, doc_ids: &[String], origin: &Path) -> Result<DocidTable> {
    let mut table = if full.meta.scheme == Scheme::Atomic {
        docid::atomic(doc_ids)
    } else {
        let new_idx: HashMap<&str, i64> = doc_ids.iter().enumerate().map(|(i, d)| (d.as_str(), i as i64)).collect();
        let mut rows: Vec<_> = full
            .rows
            .iter()
            .filter_map(|r| new_idx.get(r.doc_id.as_str()).map(|&i| docid::DocidRow { doc_idx: i, ..r.clone() }))
            .collect();
        rows.sort_by_key(|r| r.doc_idx);
        let mut meta = full.meta.clone();
        meta.n_docs = doc_ids.len();
        DocidTable { meta, rows }
    };
    table.meta.params.insert("subsample_of".into(), serde_json::json!(origin.display().to_string()));
    // A document of the sample missing from the full file is caught here, by doc_idx.
    table.validate(origin)?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::import::{write_dataset, Collection, PrepareOptions};

    /// 60 docs; query q{i} (train for even i, test for odd) judges d{i} and d{i+20} relevant
    /// and d{i+1} not relevant: d0..d39 are judged, d40..d59 are distractors.
    fn toy(dir: &Path) -> std::path::PathBuf {
        let docs = (0..60)
            .map(|i| Doc { doc_idx: i, doc_id: format!("d{i}"), title: String::new(), text: format!("text {i}") })
            .collect();
        let queries =
            (0..20).map(|i| Query { query_idx: i, query_id: format!("q{i}"), text: format!("q {i}") }).collect();
        let mut qrels = Vec::new();
        for i in 0..20 {
            let split = if i % 2 == 0 { "train" } else { "test" };
            for (d, rel) in [(i, 1), (i + 20, 1), (i + 1, 0)] {
                qrels.push(Qrel {
                    query_id: format!("q{i}"),
                    doc_id: format!("d{d}"),
                    relevance: rel,
                    split: split.into(),
                });
            }
        }
        let out = dir.join("toy");
        let opts = PrepareOptions { row_group_rows: 8, ..Default::default() };
        write_dataset(&Collection { docs, queries, qrels }, &out, &opts, "test", Path::new("toy")).unwrap();
        out
    }

    #[test]
    fn samples_are_nested_and_keep_every_judged_document_and_query() {
        let dir = tempfile::tempdir().unwrap();
        let src = toy(dir.path());
        let small = write_subsample(&src, 45, 7, &dir.path().join("s45")).unwrap();
        let big = write_subsample(&src, 52, 7, &dir.path().join("s52")).unwrap();
        assert_eq!((small.len(), big.len()), (45, 52));
        assert!(small.iter().all(|d| big.contains(d)), "{small:?} ⊄ {big:?}");
        assert_ne!(write_subsample(&src, 45, 8, &dir.path().join("o")).unwrap(), small, "the seed matters");

        let source = Dataset::open(&src).unwrap();
        let ds = Dataset::open(&dir.path().join("s45")).unwrap();
        ds.manifest.verify(&ds.dir).unwrap();
        let docs = ds.docs().unwrap();
        assert!(docs.iter().enumerate().all(|(i, d)| d.doc_idx == i as i64), "dense doc_idx");
        let inside: HashSet<String> = docs.iter().map(|d| d.doc_id.clone()).collect();
        assert!((0..40).all(|i| inside.contains(&format!("d{i}"))), "every judged document is kept");
        assert_eq!((40..60).filter(|i| inside.contains(&format!("d{i}"))).count(), 5, "5 distractors");
        // Queries and judgements are the source's, unchanged.
        assert_eq!(ds.queries().unwrap(), source.queries().unwrap());
        assert_eq!(ds.qrels(None).unwrap(), source.qrels(None).unwrap());
        assert_eq!(ds.manifest.splits, source.manifest.splits);
        assert!(ds.manifest.row_group_rows <= 8);
        let info: SubsampleInfo =
            serde_json::from_str(&std::fs::read_to_string(ds.dir.join(SUBSAMPLE_JSON)).unwrap()).unwrap();
        assert_eq!((info.docs, info.judged_docs, info.distractors, info.rule.as_str()), (45, 40, 5, RULE));
    }

    #[test]
    fn sizes_outside_judged_to_corpus_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = toy(dir.path());
        for (n, named) in [(61, "61"), (39, "39")] {
            let err = check_size(&src, n).unwrap_err().to_string();
            assert!(err.contains("data.corpus_docs") && err.contains(named) && err.contains("40..=60"), "{err}");
            assert!(write_subsample(&src, n, 1, &dir.path().join("x")).is_err());
            assert!(!dir.path().join("x").exists());
        }
        assert_eq!(write_subsample(&src, 40, 1, &dir.path().join("judged")).unwrap().len(), 40);
        assert_eq!(write_subsample(&src, 60, 1, &dir.path().join("all")).unwrap().len(), 60);
    }

    #[test]
    fn docids_follow_the_sample() {
        let ids: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let sample = vec!["d2".to_string(), "d5".into(), "d9".into()];
        let atomic = restrict_docids(&docid::atomic(&ids), &sample, Path::new("a.parquet")).unwrap();
        assert_eq!(atomic.rows.iter().map(|r| r.tokens[0]).collect::<Vec<_>>(), vec![0, 1, 2]);
        let mut semantic = docid::atomic(&ids);
        semantic.meta.scheme = Scheme::Semantic;
        semantic.meta.level_sizes = vec![10];
        let s = restrict_docids(&semantic, &sample, Path::new("s.parquet")).unwrap();
        assert_eq!(s.rows.iter().map(|r| (r.doc_idx, r.tokens[0])).collect::<Vec<_>>(), vec![(0, 2), (1, 5), (2, 9)]);
        assert_eq!(s.meta.n_docs, 3);
        let err = restrict_docids(&semantic, &["zz".to_string()], Path::new("s.parquet")).unwrap_err();
        assert!(err.to_string().contains("doc_idx"), "{err}");
    }
}
