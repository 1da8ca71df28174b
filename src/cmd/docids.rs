//! `grdr docids`: build and validate a docid file for generative retrieval (schemes in
//! `data/docid.rs`).
use std::path::{Path, PathBuf};

use clap::Args;
use tch::Tensor;

use crate::data::docid::{self, DocidTable, Scheme};
use crate::data::Dataset;
use crate::error::{Error, Location, Result};

#[derive(Debug, Args)]
pub struct DocidsArgs {
    /// A dataset directory made by `grdr prepare`.
    #[arg(long)]
    pub data: PathBuf,
    /// atomic, semantic, title or ngram.
    #[arg(long)]
    pub scheme: Scheme,
    /// The docid file to write (Parquet).
    #[arg(long)]
    pub output: PathBuf,
    /// title/ngram: the tokenizer of the GR model (artefact name, directory or file).
    #[arg(long, default_value = "t5-tokenizer")]
    pub tokenizer: String,
    /// semantic: document embeddings from `grdr encode --what docs` (Parquet).
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// semantic: clusters per level (DSI: 10).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// semantic: clusters of at most this many documents are leaves (DSI: 100).
    #[arg(long, default_value_t = 100)]
    pub leaf_size: usize,
    /// title: at most this many tokens per title.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// ngram: spans per document and tokens per span (SEAL, Wu et al.: 10).
    #[arg(long, default_value_t = 10)]
    pub ngrams_per_doc: usize,
    #[arg(long, default_value_t = 10)]
    pub ngram_len: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
}

impl DocidsArgs {
    pub fn run(&self) -> Result<()> {
        // A GR run names its docid file: replacing one silently would invalidate that run.
        if self.output.exists() && !self.overwrite {
            return Err(Error::usage(
                "--output",
                format!("{} exists (pass --overwrite to replace it)", self.output.display()),
            ));
        }
        let ds = Dataset::open(&self.data)?;
        let docs = ds.docs()?;
        let ids: Vec<String> = docs.iter().map(|d| d.doc_id.clone()).collect();
        let t0 = std::time::Instant::now();
        let table = match self.scheme {
            Scheme::Atomic => docid::atomic(&ids),
            Scheme::Semantic => {
                let path = self.embeddings.as_ref().ok_or_else(|| {
                    Error::usage("--embeddings", "required for semantic ids (make them with `grdr encode --what docs`)")
                })?;
                let emb = read_embeddings(path, docs.len())?;
                docid::semantic(&ids, &emb, self.k, self.leaf_size, self.seed, &path.display().to_string())
            }
            Scheme::Title | Scheme::Ngram => {
                let (tok, file) = crate::data::tokenize::load(&self.tokenizer)?;
                let encode = |s: &str| -> Result<Vec<i64>> {
                    let e = tok
                        .encode(s, false)
                        .map_err(|e| Error::Tokenizer { name: file.display().to_string(), message: e.to_string() })?;
                    Ok(e.get_ids().iter().map(|&i| i as i64).collect())
                };
                if self.scheme == Scheme::Title {
                    let titles: Vec<String> = docs.iter().map(|d| d.title.clone()).collect();
                    docid::title(&ids, &titles, &encode, self.max_tokens, &self.tokenizer)?
                } else {
                    let toks: Vec<Vec<i64>> = docs.iter().map(|d| encode(&d.full_text())).collect::<Result<_>>()?;
                    docid::ngram(&ids, &toks, self.ngrams_per_doc, self.ngram_len, self.seed, &self.tokenizer)
                }
            }
        };
        table.validate(&self.output)?;
        table.write(&self.output)?;
        let depth = table.rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        tracing::info!(
            "{:?} docids: {} rows for {} docs (longest {depth} tokens{}) in {:.1}s → {}",
            self.scheme,
            table.rows.len(),
            table.meta.n_docs,
            if table.meta.level_sizes.is_empty() {
                String::new()
            } else {
                format!(", level sizes {:?}", table.meta.level_sizes)
            },
            t0.elapsed().as_secs_f64(),
            self.output.display()
        );
        Ok(())
    }
}

/// `grdr encode` output (`data::embeddings`) → (N, D) f32 in doc_idx order, every document
/// exactly once.
pub fn read_embeddings(path: &Path, n_docs: usize) -> Result<Tensor> {
    let e = crate::data::embeddings::read_embeddings(path)?;
    let mut row_of: Vec<Option<i64>> = vec![None; n_docs];
    for (row, &d) in e.idx.iter().enumerate() {
        if d < 0 || d as usize >= n_docs {
            return Err(Error::input(
                path,
                Location::Row(row),
                "idx",
                format!("{d} is not a doc index of the dataset"),
            ));
        }
        row_of[d as usize] = Some(row as i64);
    }
    let rows = row_of
        .into_iter()
        .enumerate()
        .map(|(d, r)| {
            r.ok_or_else(|| {
                Error::input(path, Location::File, "idx", format!("document {d} has no embedding (encode --what docs)"))
            })
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok(e.embeddings.index_select(0, &Tensor::from_slice(&rows)))
}

/// Reads a docid file (validated), for other commands.
pub fn read(path: &Path) -> Result<DocidTable> {
    DocidTable::read(path)
}
