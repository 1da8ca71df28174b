//! `grdr encode`: embeds a dataset's documents or queries with a single-vector encoder into
//! a Parquet file the eval stage reads (and pyarrow/polars can):
//!
//! ```text
//! FILE.parquet  idx int64 (doc_idx / query_idx), id utf8, embedding fixed_size_list<float32>[d]
//!               key-value metadata `grdr.encode`: JSON {model, what, split, pooling, normalize,
//!               max_len, dim, count, grdr_version}
//! ```
//! Rows are in dataset order; batches are formed over length-sorted texts so that padding,
//! not text, is what gets cut, and run without autograd.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use clap::{Args, ValueEnum};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tch::{Device, Kind, Tensor};

use super::encoder::{l2_normalize, pool, Pooling, TextEncoderModel};
use super::hf::LoadOptions;
use super::text::TextTokenizer;
use super::Encoder;
use crate::data::Dataset;
use crate::error::{Error, Result};

/// The metadata key holding the JSON that describes an embeddings file.
pub const META_KEY: &str = "grdr.encode";

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

/// How texts become vectors, with the defaults a sentence-transformers directory declares.
#[derive(Debug, Clone)]
pub struct EncodeSpec {
    pub max_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub batch_size: usize,
}

impl EncodeSpec {
    /// Reads `sentence_bert_config.json`, `1_Pooling/config.json` and `modules.json` if present.
    pub fn from_model_dir(dir: &Path) -> EncodeSpec {
        let json =
            |p: PathBuf| -> Option<serde_json::Value> { serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok() };
        let max_len = json(dir.join("sentence_bert_config.json"))
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|n| n as usize)
            .unwrap_or(512);
        let pooling = match json(dir.join("1_Pooling/config.json")) {
            Some(v) if v["pooling_mode_cls_token"].as_bool() == Some(true) => Pooling::First,
            _ => Pooling::Mean,
        };
        let normalize = json(dir.join("modules.json"))
            .map(|v| v.to_string().contains("sentence_transformers.models.Normalize"))
            .unwrap_or(true);
        EncodeSpec { max_len, pooling, normalize, batch_size: 64 }
    }
}

/// Embeds `texts` (N) → (N, D) f32 on the CPU, in input order: batches of length-sorted texts,
/// no autograd, `progress` ticked per text.
pub fn encode_texts(
    model: &dyn Encoder,
    tok: &TextTokenizer,
    texts: &[&str],
    spec: &EncodeSpec,
    device: Device,
    progress: &indicatif::ProgressBar,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let ids = tok.encode(texts)?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut out = Tensor::zeros([texts.len() as i64, model.hidden_size()], (Kind::Float, Device::Cpu));
    for chunk in order.chunks(spec.batch_size.max(1)) {
        let rows: Vec<Vec<i64>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let (input_ids, mask) = tok.batch(&rows, device);
        let hidden = model.encode(&input_ids, &mask, false); // (B, L, D)
        let pooled = pool(&hidden, &mask, spec.pooling);
        let emb = if spec.normalize { l2_normalize(&pooled) } else { pooled };
        let at = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
        out = out.index_copy(0, &at, &emb.to_kind(Kind::Float).to_device(Device::Cpu));
        progress.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::usage("--device", format!("`{s}`: expected cpu, cuda or cuda:N"))),
    }
}

/// Writes embeddings (N, D) with their dataset indices and ids, atomically.
pub fn write_embeddings(path: &Path, idx: &[i64], ids: &[&str], emb: &Tensor, meta: &serde_json::Value) -> Result<()> {
    let (n, d) = emb.size2().map_err(|e| Error::usage("embeddings", e.to_string()))?;
    let values = Vec::<f32>::try_from(emb.to_kind(Kind::Float).flatten(0, -1))
        .map_err(|e| Error::usage("embeddings", e.to_string()))?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    // In the Arrow schema (pyarrow: `table.schema.metadata`) and the Parquet footer.
    let schema = Arc::new(
        Schema::new(vec![
            Field::new("idx", DataType::Int64, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("embedding", DataType::FixedSizeList(item.clone(), d as i32), false),
        ])
        .with_metadata([(META_KEY.to_string(), meta.to_string())].into()),
    );
    let list = FixedSizeListArray::try_new(item, d as i32, Arc::new(Float32Array::from(values)), None)
        .map_err(|e| Error::parquet(path, "embedding column", e))?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(idx.to_vec())),
        Arc::new(StringArray::from_iter_values(ids.iter().copied())),
        Arc::new(list),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::parquet(path, "batch", e))?;
    debug_assert_eq!(batch.num_rows() as i64, n);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(16_384)
        .set_created_by(format!("grdr {}", crate::VERSION))
        .set_key_value_metadata(Some(vec![KeyValue::new(META_KEY.to_string(), meta.to_string())]))
        .build();
    let mut parquet_err = None;
    let res = crate::atomic::write_file(path, |w| {
        let mut run = || -> std::result::Result<(), parquet::errors::ParquetError> {
            let mut writer = ArrowWriter::try_new(&mut *w, schema.clone(), Some(props.clone()))?;
            writer.write(&batch)?;
            writer.close()?;
            Ok(())
        };
        run().map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            parquet_err = Some(e);
            io
        })
    });
    match (res, parquet_err) {
        (Err(_), Some(e)) => Err(Error::parquet(path, "cannot write embeddings", e)),
        (r, _) => r,
    }
}

/// An embeddings file read back: dataset indices, ids, (N, D) f32 and its metadata.
pub struct Embeddings {
    pub idx: Vec<i64>,
    pub ids: Vec<String>,
    pub embeddings: Tensor,
    pub meta: serde_json::Value,
}

/// Reads a file written by [`write_embeddings`] (`grdr encode`).
pub fn read_embeddings(path: &Path) -> Result<Embeddings> {
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open embeddings", e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, "not Parquet", e))?;
    let meta = builder
        .schema()
        .metadata()
        .get(META_KEY)
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(serde_json::Value::Null);
    let reader = builder.build().map_err(|e| Error::parquet(path, "cannot read", e))?;
    let bad = |field: &str, msg: &str| Error::input(path, crate::error::Location::File, field, msg);
    let (mut idx, mut ids, mut values, mut dim) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for batch in reader {
        let batch = batch.map_err(|e| Error::parquet(path, "cannot read", e))?;
        let col = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(name, "column missing"));
        let i = col("idx")?.as_any().downcast_ref::<Int64Array>().ok_or_else(|| bad("idx", "not int64"))?;
        let s = col("id")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| bad("id", "not utf8"))?;
        let e = col("embedding")?
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| bad("embedding", "not a fixed-size list"))?;
        let v = e.values().as_any().downcast_ref::<Float32Array>().ok_or_else(|| bad("embedding", "not float32"))?;
        dim = e.value_length() as i64;
        idx.extend(i.values().iter().copied());
        ids.extend(s.iter().map(|x| x.unwrap_or("").to_string()));
        values.extend_from_slice(&v.values()[e.offset() * dim as usize..(e.offset() + e.len()) * dim as usize]);
    }
    let embeddings = Tensor::from_slice(&values).view([idx.len() as i64, dim]);
    Ok(Embeddings { idx, ids, embeddings, meta })
}

impl EncodeArgs {
    pub fn run(&self) -> Result<()> {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        if self.output.exists() && !self.overwrite {
            return Err(Error::usage(
                "--output",
                format!("{} exists (pass --overwrite to replace it)", self.output.display()),
            ));
        }
        if self.split.is_some() && self.what == What::Docs {
            return Err(Error::usage("--split", "only queries belong to a split"));
        }
        let device = parse_device(&self.device)?;
        let ds = Dataset::open(&self.data)?;
        let dir = crate::assets::resolve(&self.model)?;
        let mut spec = EncodeSpec::from_model_dir(&dir);
        spec.batch_size = self.batch_size;
        if let Some(n) = self.max_len {
            spec.max_len = n;
        }
        if let Some(p) = self.pooling {
            spec.pooling = p;
        }
        spec.normalize &= !self.no_normalize;
        let (_vs, model, _report) = TextEncoderModel::load(&dir, LoadOptions { device, ..Default::default() })?;
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
