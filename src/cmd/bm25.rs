//! `grdr bm25`: the BM25 baseline on one split, written as a run directory.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::atomic::{write_json, TempDir};
use crate::data::trec::Run;
use crate::data::Dataset;
use crate::error::Result;
use crate::search::bm25::Bm25Index;

#[derive(Debug, Args)]
pub struct Bm25Args {
    /// A dataset directory made by `grdr prepare`.
    #[arg(long)]
    pub data: PathBuf,
    /// The split whose judged queries are searched and evaluated.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The run directory to write (run.trec, metrics.json, run.json).
    #[arg(long)]
    pub output: PathBuf,
    /// Documents retrieved per query.
    #[arg(long, default_value_t = 1000)]
    pub k: usize,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
}

impl Bm25Args {
    pub fn run(&self) -> Result<()> {
        let ds = Dataset::open(&self.data)?;
        ds.check_split(&self.split)?;
        let out = TempDir::new(&self.output, self.overwrite)?;
        let docs = ds.docs()?;
        let queries = ds.split_queries(&self.split)?;
        tracing::info!("BM25 over {} docs, {} `{}` queries", docs.len(), queries.len(), self.split);

        let t0 = Instant::now();
        let index = Bm25Index::build(&docs)?;
        let index_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
        let hits = index.search_all(&texts, self.k)?;
        let search_secs = t1.elapsed().as_secs_f64();
        tracing::info!("indexed in {index_secs:.2}s, searched in {search_secs:.2}s");

        let mut run = Run::new();
        for (q, hits) in queries.iter().zip(&hits) {
            if hits.is_empty() {
                tracing::warn!(query = %q.query_id, "no term of the query is in the index: no results");
            }
            run.insert(
                q.query_id.clone(),
                hits.iter().map(|h| (docs[h.doc_idx as usize].doc_id.clone(), h.score as f64)).collect(),
            );
        }
        let metrics = crate::eval::metrics::evaluate(&ds.split_qrels(&self.split)?, &run).at_depth(self.k);

        crate::data::trec::write_run(&out.path().join("run.trec"), &run, "grdr-bm25")?;
        write_json(&out.path().join("metrics.json"), &metrics.to_json())?;
        let info: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
            ("command", json!("bm25")),
            ("grdr_version", json!(crate::VERSION)),
            ("data", json!(self.data.display().to_string())),
            ("split", json!(self.split)),
            ("k", json!(self.k)),
            ("docs", json!(docs.len())),
            ("queries", json!(queries.len())),
            ("index_seconds", json!(index_secs)),
            ("search_seconds", json!(search_secs)),
            (
                "bm25",
                json!({"k1": 1.2, "b": 0.75, "analyzer": "lowercase + English stop words + Snowball English stemmer", "document": "title + text"}),
            ),
        ]);
        write_json(&out.path().join("run.json"), &info)?;
        let dest = out.commit()?;
        crate::cmd::print_metrics_table(&format!("BM25 {} ({} queries)", self.split, queries.len()), &metrics);
        tracing::info!("wrote {}", dest.display());
        Ok(())
    }
}
