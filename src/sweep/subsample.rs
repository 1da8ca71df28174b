//! Nested corpus subsamples for corpus-size sweeps (Zhang et al. vary the corpus N).
//!
//! The documents of a subsample of size N are the first N of one fixed permutation of the
//! corpus (keyed by the sweep's `corpus_seed`), so a larger sample always contains every
//! smaller one: a curve over N changes only the corpus, never which documents are "in".
//! Inside a sample, documents keep their corpus order and get dense `doc_idx` 0..N.
//!
//! Queries: per split, a query is kept when at least one document it judges relevant
//! (relevance > 0) is in the sample, and its judgements of documents outside are dropped —
//! a query whose relevant documents all left the corpus cannot be answered, and recall is
//! counted over the documents that exist. (Keeping only queries whose relevant documents
//! are *all* inside would bias small samples towards single-answer queries.)
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsampleInfo {
    pub source: String,
    pub source_docs: usize,
    pub docs: usize,
    pub seed: u64,
    /// Queries kept per split.
    pub queries: BTreeMap<String, usize>,
    pub rule: String,
}

/// Corpus positions of the sample of `n` out of `total`, ascending: the first `n` of the
/// seeded permutation (so the sample of n ⊂ the sample of m for n ≤ m).
pub fn sample_positions(total: usize, n: usize, seed: u64) -> Result<Vec<usize>> {
    if n == 0 || n > total {
        return Err(Error::usage(
            "data.corpus_docs",
            format!("{n} documents asked for, the corpus has {total} (1..={total} possible)"),
        ));
    }
    let mut order: Vec<u32> = (0..total as u32).collect();
    SplitMix64::keyed(&[seed, TAG_CORPUS_SUBSAMPLE]).shuffle(&mut order);
    let mut picked: Vec<usize> = order[..n].iter().map(|&i| i as usize).collect();
    picked.sort_unstable();
    Ok(picked)
}

/// Checks that the dataset at `source` has at least `n` documents (manifest only: cheap).
pub fn check_size(source: &Path, n: usize) -> Result<()> {
    let ds = Dataset::open(source).map_err(|e| match e {
        Error::Usage { message, .. } => Error::usage("data.path", message),
        other => other,
    })?;
    if n > ds.manifest.docs {
        return Err(Error::usage(
            "data.corpus_docs",
            format!("{n} documents asked for, {} has {}", source.display(), ds.manifest.docs),
        ));
    }
    Ok(())
}

/// Writes the sample of `n` documents of `source` to `dest` (temp dir + rename); returns the
/// sample's doc ids in its doc_idx order.
pub fn write_subsample(source: &Path, n: usize, seed: u64, dest: &Path) -> Result<Vec<String>> {
    let ds = Dataset::open(source)?;
    let docs = ds.docs()?;
    let keep = sample_positions(docs.len(), n, seed)?;
    let with_tokens = ds.manifest.tokenizer.is_some();

    // Documents: corpus order, dense doc_idx; stored token ids travel with their rows.
    let doc_tokens = if with_tokens { Some(corpus::read_input_ids(&ds.docs_path())?) } else { None };
    let new_docs: Vec<Doc> =
        keep.iter().enumerate().map(|(i, &p)| Doc { doc_idx: i as i64, ..docs[p].clone() }).collect();
    let new_doc_tokens: Option<Vec<Vec<u32>>> = doc_tokens.map(|t| keep.iter().map(|&p| t[p].clone()).collect());
    let inside: HashSet<&str> = new_docs.iter().map(|d| d.doc_id.as_str()).collect();

    // Judgements: per (split, query), only when a relevant document is inside.
    let qrels = ds.qrels(None)?;
    let answerable: HashSet<(&str, &str)> = qrels
        .iter()
        .filter(|q| q.relevance > 0 && inside.contains(q.doc_id.as_str()))
        .map(|q| (q.split.as_str(), q.query_id.as_str()))
        .collect();
    let new_qrels: Vec<Qrel> = qrels
        .iter()
        .filter(|q| inside.contains(q.doc_id.as_str()) && answerable.contains(&(q.split.as_str(), q.query_id.as_str())))
        .cloned()
        .collect();

    // Queries: those still judged somewhere, in their order, dense query_idx.
    let judged: HashSet<&str> = new_qrels.iter().map(|q| q.query_id.as_str()).collect();
    let queries = ds.queries()?;
    let query_tokens = if with_tokens { Some(corpus::read_input_ids(&ds.queries_path())?) } else { None };
    let kept_q: Vec<usize> = (0..queries.len()).filter(|&i| judged.contains(queries[i].query_id.as_str())).collect();
    let new_queries: Vec<Query> =
        kept_q.iter().enumerate().map(|(i, &p)| Query { query_idx: i as i64, ..queries[p].clone() }).collect();
    let new_query_tokens: Option<Vec<Vec<u32>>> = query_tokens.map(|t| kept_q.iter().map(|&p| t[p].clone()).collect());

    // Enough row groups that a sample still shards over ranks (row groups are the unit).
    let row_group_rows = ds.manifest.row_group_rows.min(n.div_ceil(16)).max(1);
    let out = TempDir::new(dest, true)?;
    let dir = out.path();
    let source_info = crate::data::import::Source { kind: "subsample", path: source };
    let m = crate::data::import::write_files(
        dir,
        (&new_docs, &new_queries, &new_qrels),
        (new_doc_tokens.as_deref(), new_query_tokens.as_deref()),
        row_group_rows,
        ds.manifest.tokenizer.clone(),
        &source_info,
    )?;
    let info = SubsampleInfo {
        source: source.display().to_string(),
        source_docs: docs.len(),
        docs: n,
        seed,
        queries: m.splits.iter().map(|(k, c)| (k.clone(), c.queries)).collect(),
        rule: "first N of a seeded permutation; queries with >= 1 relevant document inside".into(),
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

    /// 40 docs; query q{i} (train for even i, test for odd) judges d{i} and d{i+20} relevant
    /// and d{i+1} not relevant.
    fn toy(dir: &Path) -> std::path::PathBuf {
        let docs = (0..40)
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
    fn samples_are_nested_and_judged_inside() {
        let dir = tempfile::tempdir().unwrap();
        let src = toy(dir.path());
        let small = write_subsample(&src, 10, 7, &dir.path().join("s10")).unwrap();
        let big = write_subsample(&src, 25, 7, &dir.path().join("s25")).unwrap();
        assert_eq!((small.len(), big.len()), (10, 25));
        assert!(small.iter().all(|d| big.contains(d)), "{small:?} ⊄ {big:?}");
        assert_ne!(write_subsample(&src, 10, 8, &dir.path().join("o")).unwrap(), small, "the seed matters");

        let ds = Dataset::open(&dir.path().join("s10")).unwrap();
        ds.manifest.verify(&ds.dir).unwrap();
        let docs = ds.docs().unwrap();
        assert!(docs.iter().enumerate().all(|(i, d)| d.doc_idx == i as i64), "dense doc_idx");
        let inside: HashSet<String> = docs.iter().map(|d| d.doc_id.clone()).collect();
        let qrels = ds.qrels(None).unwrap();
        assert!(qrels.iter().all(|q| inside.contains(&q.doc_id)));
        let queries = ds.queries().unwrap();
        for q in &queries {
            assert!(
                qrels.iter().any(|r| r.query_id == q.query_id && r.relevance > 0),
                "{} has no relevant doc",
                q.query_id
            );
        }
        // Every query with a relevant doc inside survived.
        let expect =
            (0..20).filter(|i| inside.contains(&format!("d{i}")) || inside.contains(&format!("d{}", i + 20))).count();
        assert_eq!(queries.len(), expect);
        assert_eq!(ds.manifest.splits.values().map(|s| s.queries).sum::<usize>(), expect);
        assert!(ds.manifest.row_group_rows <= 8);
    }

    #[test]
    fn sizes_beyond_the_corpus_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = toy(dir.path());
        let err = check_size(&src, 41).unwrap_err().to_string();
        assert!(err.contains("data.corpus_docs") && err.contains("41") && err.contains("40"), "{err}");
        assert!(write_subsample(&src, 41, 1, &dir.path().join("x")).is_err());
        assert!(!dir.path().join("x").exists());
        assert_eq!(write_subsample(&src, 40, 1, &dir.path().join("all")).unwrap().len(), 40);
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
