//! `grdr encode`: embeds a dataset's documents or queries with a single-vector encoder into
//! an embeddings file (`data::embeddings`), in dataset order.
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::data::embeddings::write_embeddings;
use crate::data::text::TextTokenizer;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::encode::{encode_texts, EncodeSpec};
use crate::model::{LoadOptions, Pooling, TextEncoderModel};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    Docs,
    Queries,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// A named model artefact (e.g. `minilm`) or an HF directory (bert or t5 encoder).
    #[arg(long)]
    pub model: String,
    /// A dataset directory made by `grdr prepare`.
    #[arg(long)]
    pub data: PathBuf,
    /// Embed the documents or the queries.
    #[arg(long, value_enum)]
    pub what: What,
    /// Only the queries judged in this split (queries only).
    #[arg(long)]
    pub split: Option<String>,
    /// The Parquet file to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Truncation length in tokens, special tokens included (default: the model's
    /// sentence-transformers `max_seq_length`, else 512).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// mean or first (default: the model's sentence-transformers pooling, else mean).
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// Do not L2-normalise the embeddings.
    #[arg(long)]
    pub no_normalize: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
}

impl EncodeArgs {
    pub fn run(&self) -> Result<()> {
        if self.threads.is_some_and(|t| t < 1) {
            return Err(Error::usage("--threads", "must be at least 1"));
        }
        if self.batch_size < 1 {
            return Err(Error::usage("--batch-size", "must be at least 1"));
        }
        let _threads = self.threads.map(crate::parallel::IntraOpThreads::set);
        if self.output.exists() && !self.overwrite {
            return Err(Error::usage(
                "--output",
                format!("{} exists (pass --overwrite to replace it)", self.output.display()),
            ));
        }
        if self.split.is_some() && self.what == What::Docs {
            return Err(Error::usage("--split", "only queries belong to a split"));
        }
        let device = crate::device::parse_device(&self.device, 0, "--device")?;
        let ds = Dataset::open(&self.data)?;
        let dir = crate::assets::resolve(&self.model)?;
        let mut spec = EncodeSpec::from_model_dir(&dir)?;
        spec.batch_size = self.batch_size;
        if let Some(n) = self.max_len {
            spec.max_len = n;
        }
        if let Some(p) = self.pooling {
            spec.pooling = p;
        }
        spec.normalize &= !self.no_normalize;
        let (_vs, model, _report) = TextEncoderModel::load(&dir, LoadOptions { device, ..Default::default() })?;
        if let Some(max) = model.max_positions().filter(|&m| spec.max_len > m) {
            return Err(Error::usage(
                "--max-len",
                format!("{} tokens, but the model has {max} positions", spec.max_len),
            ));
        }
        let tok = TextTokenizer::from_path(&dir, spec.max_len)?;

        let rows: Vec<(i64, String, String)> = match self.what {
            What::Docs => ds.docs()?.into_iter().map(|d| (d.doc_idx, d.doc_id.clone(), d.full_text())).collect(),
            What::Queries => {
                let qs = match &self.split {
                    Some(s) => ds.split_queries(s)?,
                    None => ds.queries()?,
                };
                qs.into_iter().map(|q| (q.query_idx, q.query_id, q.text)).collect()
            }
        };
        let idx: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        let texts: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        let what = format!("{:?}", self.what).to_lowercase();
        tracing::info!(
            "encoding {} {what} with {} (max_len {}, {:?})",
            texts.len(),
            dir.display(),
            spec.max_len,
            spec.pooling
        );
        let t0 = Instant::now();
        let bar = crate::progress::bar(texts.len() as u64, &what);
        let emb = encode_texts(&model, &tok, &texts, &spec, device, &bar)?;
        bar.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        tracing::info!("{} {what} in {secs:.1}s ({:.1}/s)", texts.len(), texts.len() as f64 / secs.max(1e-9));
        let meta = serde_json::json!({
            "model": self.model, "what": what, "split": self.split, "pooling": spec.pooling,
            "normalize": spec.normalize, "max_len": spec.max_len, "dim": emb.size()[1],
            "count": texts.len(), "grdr_version": crate::VERSION,
        });
        write_embeddings(&self.output, &idx, &ids, &emb, &meta)
    }
}
