//! `grdr synth`: a synthetic dataset for throughput and memory tests (never for accuracy).
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::data::import::{write_dataset, PrepareOptions};
use crate::data::synth::{generate, vocabulary_words, SynthOptions};
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of documents.
    #[arg(long, default_value_t = 1_000_000)]
    pub docs: usize,
    /// Number of judged queries (each with 1–3 random relevant documents).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// The dataset directory to create.
    #[arg(long)]
    pub output: PathBuf,
    /// The vocabulary words are drawn from (artefact name, tokenizer.json or directory).
    #[arg(long, default_value = "minilm")]
    pub vocabulary: String,
    /// Also store token ids with this tokenizer (as `grdr prepare --tokenizer`).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Words per document, MIN-MAX.
    #[arg(long, default_value = "16-64")]
    pub doc_words: String,
    /// Words per query, MIN-MAX.
    #[arg(long, default_value = "4-12")]
    pub query_words: String,
    /// The split the qrels belong to.
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows per Parquet row group (the unit of sharding across ranks).
    #[arg(long, default_value_t = 1024)]
    pub row_group_rows: usize,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
}

fn parse_range(option: &str, spec: &str) -> Result<(usize, usize)> {
    let bad = || Error::usage(option, format!("`{spec}` is not MIN-MAX (e.g. 16-64)"));
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

impl SynthArgs {
    pub fn run(&self) -> Result<()> {
        let t0 = Instant::now();
        let (tok, _) = crate::data::tokenize::load(&self.vocabulary)?;
        let words = vocabulary_words(tok.get_vocab(true).into_keys());
        let opts = SynthOptions {
            docs: self.docs,
            queries: self.queries,
            doc_words: parse_range("--doc-words", &self.doc_words)?,
            query_words: parse_range("--query-words", &self.query_words)?,
            split: self.split.clone(),
            seed: self.seed,
            ..Default::default()
        };
        let collection = generate(&words, &opts)?;
        tracing::info!(
            "generated {} docs, {} queries from {} words in {:.1}s",
            self.docs,
            self.queries,
            words.len(),
            t0.elapsed().as_secs_f64()
        );
        let prepare = PrepareOptions {
            tokenizer: self.tokenizer.clone(),
            row_group_rows: self.row_group_rows,
            overwrite: self.overwrite,
        };
        let source = PathBuf::from(format!("synth:seed={},vocabulary={}", self.seed, self.vocabulary));
        write_dataset(&collection, &self.output, &prepare, "synth", &source)?;
        tracing::info!(
            "wrote {} in {:.1}s (synthetic: for throughput and memory tests only)",
            self.output.display(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
