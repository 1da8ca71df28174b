//! `grdr prepare beir|tsv`: validate and import a collection (see `data::import`).
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::data::import::{self, PrepareOptions};
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The dataset directory to create.
    #[arg(long)]
    pub output: PathBuf,
    /// Also store token ids (no special tokens): an artefact name (`minilm`, `t5-tokenizer`),
    /// a tokenizer.json, or a directory holding one.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Rows per Parquet row group (the unit of sharding across ranks).
    #[arg(long, default_value_t = 1024)]
    pub row_group_rows: usize,
    /// Replace an existing output directory.
    #[arg(long)]
    pub overwrite: bool,
}

impl CommonArgs {
    fn options(&self) -> PrepareOptions {
        PrepareOptions {
            tokenizer: self.tokenizer.clone(),
            row_group_rows: self.row_group_rows,
            overwrite: self.overwrite,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PrepareCommand {
    /// A BEIR directory: corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
    /// qrels/<split>.tsv (header query-id, corpus-id, score). Query `metadata` is never read.
    Beir {
        /// The BEIR dataset directory (e.g. ../shared/datasets/scifact).
        #[arg(long, env = "GRDR_BEIR_INPUT")]
        input: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// MS MARCO / NQ320k style files: collection `id<TAB>text` or `id<TAB>title<TAB>text`,
    /// queries `id<TAB>text`, qrels in TREC (`qid 0 docid rel`) or BEIR TSV format.
    Tsv {
        #[arg(long)]
        collection: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        /// SPLIT=FILE, repeatable (e.g. --qrels train=qrels.train.tsv --qrels dev=qrels.dev.tsv).
        #[arg(long = "qrels", required = true)]
        qrels: Vec<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn parse_split(spec: &str) -> Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((split, file)) if !split.is_empty() && !file.is_empty() => Ok((split.to_string(), PathBuf::from(file))),
        _ => Err(Error::usage("--qrels", format!("`{spec}` is not SPLIT=FILE"))),
    }
}

impl PrepareCommand {
    pub fn run(&self) -> Result<()> {
        let (manifest, output) = match self {
            PrepareCommand::Beir { input, common } => {
                tracing::info!(input = %input.display(), "reading BEIR collection");
                let c = import::read_beir(input)?;
                (import::write_dataset(&c, &common.output, &common.options(), "beir", input)?, &common.output)
            }
            PrepareCommand::Tsv { collection, queries, qrels, common } => {
                let splits = qrels.iter().map(|s| parse_split(s)).collect::<Result<Vec<_>>>()?;
                let c = import::read_tsv(collection, queries, &splits)?;
                (import::write_dataset(&c, &common.output, &common.options(), "tsv", collection)?, &common.output)
            }
        };
        let splits: Vec<String> =
            manifest.splits.iter().map(|(s, c)| format!("{s}: {} queries / {} qrels", c.queries, c.qrels)).collect();
        tracing::info!(
            "wrote {}: {} docs, {} queries ({})",
            output.display(),
            manifest.docs,
            manifest.queries,
            splits.join(", ")
        );
        Ok(())
    }
}
