//! Embedding files (`grdr encode`): a dataset's documents or queries as vectors in a Parquet
//! file the eval stage reads (and pyarrow/polars can):
//!
//! ```text
//! FILE.parquet  idx int64 (doc_idx / query_idx), id utf8, embedding fixed_size_list<float32>[d]
//!               key-value metadata `grdr.encode`: JSON {model, what, split, pooling, normalize,
//!               max_len, dim, count, grdr_version}
//! ```
//! Rows are in dataset order.
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The metadata key holding the JSON that describes an embeddings file.
pub const META_KEY: &str = "grdr.encode";

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
    crate::panic_guard::catch(|| read_unguarded(path), |m| Error::bad_parquet(path, "damaged", m))
}

fn read_unguarded(path: &Path) -> Result<Embeddings> {
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open embeddings", e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::bad_parquet(path, "not Parquet", e))?;
    let meta = builder
        .schema()
        .metadata()
        .get(META_KEY)
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(serde_json::Value::Null);
    let reader = builder.build().map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
    let bad = |field: &str, msg: &str| Error::input(path, crate::error::Location::File, field, msg);
    let (mut idx, mut ids, mut values, mut dim) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
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
