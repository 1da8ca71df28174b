//! `grdr index fm`: the FM-index of a dataset's documents for SEAL decoding and scoring
//! (`src/search/fm_index.rs`). Documents are read in row-group order and cut into shards of
//! whole row groups (at most `--shard-tokens` tokens each, at least one group); each shard is
//! one file, `shard-NNNNN.fm`, beside `index.json`. The directory appears whole or not at all.
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::atomic::{write_json, TempDir};
use crate::data::shard::read_row_groups;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::search::fm_index::{shard_path, FmIndex};

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// An FM-index over the documents' token ids (title + text, as `grdr docids --scheme ngram`
    /// tokenizes them): SEAL's corpus constraint and n-gram counts.
    Fm(FmArgs),
}

impl IndexCommand {
    pub fn run(&self) -> Result<()> {
        match self {
            IndexCommand::Fm(a) => a.run(),
        }
    }
}

#[derive(Debug, Args)]
pub struct FmArgs {
    /// A dataset directory made by `grdr prepare` (or `grdr synth`).
    #[arg(long)]
    pub data: PathBuf,
    /// The GR model's tokenizer (artefact name, directory or file).
    #[arg(long, default_value = "t5-tokenizer")]
    pub tokenizer: String,
    /// The index directory to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Tokens per shard at most (a shard holds at least one row group).
    #[arg(long, default_value_t = 1 << 28)]
    pub shard_tokens: u64,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
}

/// `index.json`: what the shards hold and what building them cost.
pub const INDEX_FORMAT: &str = "grdr-fm-index-dir/1";

impl FmArgs {
    pub fn run(&self) -> Result<()> {
        if self.shard_tokens == 0 {
            return Err(Error::usage("--shard-tokens", "must be at least 1"));
        }
        let ds = Dataset::open(&self.data)?;
        let out = TempDir::new(&self.output, self.overwrite)?;
        let t0 = Instant::now();
        let (tok, tok_file) = crate::data::tokenize::load(&self.tokenizer)?;
        let eos = tok.token_to_id("</s>").ok_or_else(|| {
            Error::usage(
                "--tokenizer",
                format!("{} has no `</s>` (the T5 eos the index ends documents with)", tok_file.display()),
            )
        })?;
        let docs = ds.docs()?;
        let texts: Vec<String> = docs.iter().map(|d| d.full_text()).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = crate::data::tokenize::encode_all(&tok, &tok_file, &refs, "tokenize")?;
        drop(texts);
        let tokenize_secs = t0.elapsed().as_secs_f64();

        // Shards: consecutive row groups up to the token budget.
        let groups = read_row_groups(&ds.docs_path())?;
        let mut shards: Vec<(u64, u64)> = Vec::new(); // (first doc, docs)
        let mut in_shard = 0u64;
        for g in &groups {
            let toks: u64 = (g.first_row..g.first_row + g.rows).map(|d| tokens[d as usize].len() as u64 + 1).sum();
            match shards.last_mut() {
                Some((_, n)) if in_shard + toks <= self.shard_tokens => {
                    *n += g.rows;
                    in_shard += toks;
                }
                _ => {
                    shards.push((g.first_row, g.rows));
                    in_shard = toks;
                }
            }
        }
        let mut entries = Vec::new();
        let (mut total_tokens, mut total_bytes) = (0u64, 0usize);
        for (s, &(first, n)) in shards.iter().enumerate() {
            let t = Instant::now();
            let docs = &tokens[first as usize..(first + n) as usize];
            let index = FmIndex::build(docs, eos, &self.tokenizer, s, first)?;
            index.write(&shard_path(out.path(), s))?;
            let secs = t.elapsed().as_secs_f64();
            tracing::info!(
                "shard {s}: {n} docs, {} tokens, {:.1} MiB in {secs:.1}s",
                index.meta.n_tokens,
                index.bytes() as f64 / (1 << 20) as f64
            );
            total_tokens += index.meta.n_tokens;
            total_bytes += index.bytes();
            entries.push(json!({"shard": s, "first_doc": first, "n_docs": n, "n_tokens": index.meta.n_tokens, "bytes": index.bytes(), "build_seconds": secs}));
        }
        let secs = t0.elapsed().as_secs_f64();
        let peak = crate::eval::run_eval::peak_rss_mib();
        write_json(
            &out.path().join("index.json"),
            &json!({
                "format": INDEX_FORMAT,
                "data": self.data,
                "tokenizer": self.tokenizer,
                "eos": eos,
                "n_docs": docs.len(),
                "n_tokens": total_tokens,
                "bytes": total_bytes,
                "bytes_per_token": total_bytes as f64 / total_tokens.max(1) as f64,
                "tokenize_seconds": tokenize_secs,
                "seconds": secs,
                "peak_rss_mib": peak,
                "shards": entries,
            }),
        )?;
        out.commit()?;
        tracing::info!(
            "FM-index of {} docs ({total_tokens} tokens, {} shards, {:.2} bytes/token) in {secs:.1}s, peak RSS {peak:.0} MiB → {}",
            docs.len(),
            shards.len(),
            total_bytes as f64 / total_tokens.max(1) as f64,
            self.output.display()
        );
        Ok(())
    }
}
