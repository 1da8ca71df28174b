//! The dataset directory: Parquet files with fixed schemas, readable by pyarrow/polars.
//!
//! ```text
//! DATASET/
//!   docs.parquet     doc_idx int64 (dense 0..N), doc_id utf8, title utf8, text utf8
//!                    [, input_ids list<int32> when prepared with a tokenizer]
//!   queries.parquet  query_idx int64 (dense), query_id utf8, text utf8 [, input_ids]
//!   qrels.parquet    query_id utf8, doc_id utf8, relevance int32, split utf8
//!   manifest.json    counts, sha256 per file, tokenizer, grdr version
//! ```
//! Row groups are the unit of sharding across ranks, so they are kept small and equal.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::data::manifest::Manifest;
use crate::error::{Error, Location, Result};

pub const DOCS_FILE: &str = "docs.parquet";
pub const QUERIES_FILE: &str = "queries.parquet";
pub const QRELS_FILE: &str = "qrels.parquet";

#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub doc_idx: i64,
    pub doc_id: String,
    pub title: String,
    pub text: String,
}

impl Doc {
    /// The text a retriever sees: title and body, as BEIR and Anserini's "flat" index use.
    pub fn full_text(&self) -> String {
        if self.title.is_empty() {
            self.text.clone()
        } else {
            format!("{} {}", self.title, self.text)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub query_idx: i64,
    pub query_id: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qrel {
    pub query_id: String,
    pub doc_id: String,
    pub relevance: i32,
    pub split: String,
}

fn input_ids_field() -> Field {
    Field::new("input_ids", DataType::List(Arc::new(Field::new("item", DataType::Int32, true))), false)
}

pub fn docs_schema(with_tokens: bool) -> Schema {
    let mut fields = vec![
        Field::new("doc_idx", DataType::Int64, false),
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ];
    if with_tokens {
        fields.push(input_ids_field());
    }
    Schema::new(fields)
}

pub fn queries_schema(with_tokens: bool) -> Schema {
    let mut fields = vec![
        Field::new("query_idx", DataType::Int64, false),
        Field::new("query_id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ];
    if with_tokens {
        fields.push(input_ids_field());
    }
    Schema::new(fields)
}

pub fn qrels_schema() -> Schema {
    Schema::new(vec![
        Field::new("query_id", DataType::Utf8, false),
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("relevance", DataType::Int32, false),
        Field::new("split", DataType::Utf8, false),
    ])
}

fn list_of_ids(rows: &[Vec<u32>]) -> ArrayRef {
    let mut b = ListBuilder::new(Int32Builder::new()).with_field(Arc::new(Field::new("item", DataType::Int32, true)));
    for ids in rows {
        for &id in ids {
            b.values().append_value(id as i32);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn strings<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

/// Writes record batches of `rows_per_group` rows each, so each batch is one row group.
fn write_parquet(path: &Path, schema: Schema, rows_per_group: usize, batches: Vec<RecordBatch>) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(rows_per_group.max(1))
        .set_created_by(format!("grdr {}", crate::VERSION))
        .build();
    let file = File::create(path).map_err(|e| Error::io(path, "cannot create", e))?;
    let mut writer = ArrowWriter::try_new(file, Arc::new(schema), Some(props))
        .map_err(|e| Error::parquet(path, "cannot start writer", e))?;
    for batch in &batches {
        writer.write(batch).map_err(|e| Error::parquet(path, "cannot write", e))?;
        // Flushing after each chunk keeps row groups at exactly rows_per_group rows.
        writer.flush().map_err(|e| Error::parquet(path, "cannot write", e))?;
    }
    writer.close().map_err(|e| Error::parquet(path, "cannot finish", e))?;
    Ok(())
}

pub fn write_docs(path: &Path, docs: &[Doc], tokens: Option<&[Vec<u32>]>, rows_per_group: usize) -> Result<()> {
    let schema = docs_schema(tokens.is_some());
    let mut batches = Vec::new();
    for (start, chunk) in
        (0..docs.len()).step_by(rows_per_group.max(1)).map(|s| (s, &docs[s..(s + rows_per_group).min(docs.len())]))
    {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|d| d.doc_idx))),
            strings(chunk.iter().map(|d| d.doc_id.as_str())),
            strings(chunk.iter().map(|d| d.title.as_str())),
            strings(chunk.iter().map(|d| d.text.as_str())),
        ];
        if let Some(t) = tokens {
            cols.push(list_of_ids(&t[start..start + chunk.len()]));
        }
        batches
            .push(RecordBatch::try_new(Arc::new(schema.clone()), cols).map_err(|e| Error::parquet(path, "batch", e))?);
    }
    write_parquet(path, schema, rows_per_group, batches)
}

pub fn write_queries(path: &Path, queries: &[Query], tokens: Option<&[Vec<u32>]>, rows_per_group: usize) -> Result<()> {
    let schema = queries_schema(tokens.is_some());
    let mut batches = Vec::new();
    for start in (0..queries.len()).step_by(rows_per_group.max(1)) {
        let chunk = &queries[start..(start + rows_per_group).min(queries.len())];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|q| q.query_idx))),
            strings(chunk.iter().map(|q| q.query_id.as_str())),
            strings(chunk.iter().map(|q| q.text.as_str())),
        ];
        if let Some(t) = tokens {
            cols.push(list_of_ids(&t[start..start + chunk.len()]));
        }
        batches
            .push(RecordBatch::try_new(Arc::new(schema.clone()), cols).map_err(|e| Error::parquet(path, "batch", e))?);
    }
    write_parquet(path, schema, rows_per_group, batches)
}

pub fn write_qrels(path: &Path, qrels: &[Qrel]) -> Result<()> {
    let schema = qrels_schema();
    let cols: Vec<ArrayRef> = vec![
        strings(qrels.iter().map(|q| q.query_id.as_str())),
        strings(qrels.iter().map(|q| q.doc_id.as_str())),
        Arc::new(Int32Array::from_iter_values(qrels.iter().map(|q| q.relevance))),
        strings(qrels.iter().map(|q| q.split.as_str())),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema.clone()), cols).map_err(|e| Error::parquet(path, "batch", e))?;
    write_parquet(path, schema, qrels.len().max(1), vec![batch])
}

/// Reads every batch of a Parquet file, checking that it has the expected columns. A
/// damaged file is refused input, also where the parquet crate panics on it.
fn read_batches(path: &Path, expected: &Schema) -> Result<Vec<RecordBatch>> {
    crate::panic_guard::catch(|| read_batches_unguarded(path, expected), |m| Error::bad_parquet(path, "damaged", m))
}

fn read_batches_unguarded(path: &Path, expected: &Schema) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::bad_parquet(path, "not a readable Parquet file", e))?;
    let schema = builder.schema().clone();
    for field in expected.fields() {
        match schema.field_with_name(field.name()) {
            Ok(f) if f.data_type() == field.data_type() => {}
            Ok(f) => {
                return Err(Error::input(
                    path,
                    Location::File,
                    field.name(),
                    format!("has type {}, expected {}", f.data_type(), field.data_type()),
                ))
            }
            Err(_) => return Err(Error::input(path, Location::File, field.name(), "column missing")),
        }
    }
    let reader = builder.with_batch_size(8192).build().map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
    reader.map(|b| b.map_err(|e| Error::bad_parquet(path, "cannot read", e))).collect()
}

fn column<'a, T: 'static>(path: &Path, batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::input(path, Location::File, name, "column missing or of the wrong type"))
}

/// Rejects nulls so downstream code can index columns without checks.
fn no_nulls(path: &Path, array: &dyn Array, name: &str, row0: usize) -> Result<()> {
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
        return Err(Error::input(path, Location::Row(row0 + row), name, "null value"));
    }
    Ok(())
}

fn read_docs(path: &Path) -> Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for batch in read_batches(path, &docs_schema(false))? {
        let idx = column::<Int64Array>(path, &batch, "doc_idx")?;
        let id = column::<StringArray>(path, &batch, "doc_id")?;
        let title = column::<StringArray>(path, &batch, "title")?;
        let text = column::<StringArray>(path, &batch, "text")?;
        for (name, a) in [("doc_idx", idx as &dyn Array), ("doc_id", id), ("title", title), ("text", text)] {
            no_nulls(path, a, name, docs.len())?;
        }
        for i in 0..batch.num_rows() {
            let row = docs.len();
            if idx.value(i) != row as i64 {
                return Err(Error::input(
                    path,
                    Location::Row(row),
                    "doc_idx",
                    format!("is {}, expected the dense index {row}", idx.value(i)),
                ));
            }
            docs.push(Doc {
                doc_idx: idx.value(i),
                doc_id: id.value(i).to_string(),
                title: title.value(i).to_string(),
                text: text.value(i).to_string(),
            });
        }
    }
    Ok(docs)
}

fn read_queries(path: &Path) -> Result<Vec<Query>> {
    let mut queries = Vec::new();
    for batch in read_batches(path, &queries_schema(false))? {
        let idx = column::<Int64Array>(path, &batch, "query_idx")?;
        let id = column::<StringArray>(path, &batch, "query_id")?;
        let text = column::<StringArray>(path, &batch, "text")?;
        for (name, a) in [("query_idx", idx as &dyn Array), ("query_id", id), ("text", text)] {
            no_nulls(path, a, name, queries.len())?;
        }
        for i in 0..batch.num_rows() {
            let row = queries.len();
            if idx.value(i) != row as i64 {
                return Err(Error::input(
                    path,
                    Location::Row(row),
                    "query_idx",
                    format!("is {}, expected the dense index {row}", idx.value(i)),
                ));
            }
            queries.push(Query {
                query_idx: idx.value(i),
                query_id: id.value(i).to_string(),
                text: text.value(i).to_string(),
            });
        }
    }
    Ok(queries)
}

fn read_qrels(path: &Path) -> Result<Vec<Qrel>> {
    let mut qrels = Vec::new();
    for batch in read_batches(path, &qrels_schema())? {
        let q = column::<StringArray>(path, &batch, "query_id")?;
        let d = column::<StringArray>(path, &batch, "doc_id")?;
        let r = column::<Int32Array>(path, &batch, "relevance")?;
        let s = column::<StringArray>(path, &batch, "split")?;
        for (name, a) in [("query_id", q as &dyn Array), ("doc_id", d), ("relevance", r), ("split", s)] {
            no_nulls(path, a, name, qrels.len())?;
        }
        for i in 0..batch.num_rows() {
            qrels.push(Qrel {
                query_id: q.value(i).to_string(),
                doc_id: d.value(i).to_string(),
                relevance: r.value(i),
                split: s.value(i).to_string(),
            });
        }
    }
    Ok(qrels)
}

/// Token ids stored by `prepare --tokenizer`, one row per doc or query, in index order.
pub fn read_input_ids(path: &Path) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    let expected = Schema::new(vec![input_ids_field()]);
    for batch in read_batches(path, &expected)? {
        let list = column::<ListArray>(path, &batch, "input_ids")?;
        for i in 0..list.len() {
            let values = list.value(i);
            let ids = values
                .as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| Error::input(path, Location::Row(out.len()), "input_ids", "not int32"))?;
            out.push(ids.values().iter().map(|&v| v as u32).collect());
        }
    }
    Ok(out)
}

/// An imported dataset directory (see the module doc for its layout).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::usage(
                "--data",
                format!("{} is not a dataset directory (make one with `grdr prepare`)", dir.display()),
            ));
        }
        let manifest = Manifest::read(&dir.join(crate::data::manifest::MANIFEST_FILE))?;
        manifest.check_sizes(dir)?;
        Ok(Dataset { dir: dir.to_path_buf(), manifest })
    }

    /// Recomputes the sha256 of every file against the manifest (`--verify`): flipped bytes
    /// are refused (exit 3, the file named) instead of being read as data.
    pub fn verify(&self) -> Result<()> {
        self.manifest.verify(&self.dir)
    }

    pub fn docs_path(&self) -> PathBuf {
        self.dir.join(DOCS_FILE)
    }

    pub fn queries_path(&self) -> PathBuf {
        self.dir.join(QUERIES_FILE)
    }

    pub fn docs(&self) -> Result<Vec<Doc>> {
        read_docs(&self.docs_path())
    }

    pub fn queries(&self) -> Result<Vec<Query>> {
        read_queries(&self.queries_path())
    }

    /// Every judgement, or those of one split.
    pub fn qrels(&self, split: Option<&str>) -> Result<Vec<Qrel>> {
        let mut all = read_qrels(&self.dir.join(QRELS_FILE))?;
        if let Some(split) = split {
            self.check_split(split)?;
            all.retain(|q| q.split == split);
        }
        Ok(all)
    }

    /// The judgements of one split in the evaluator's shape (query id → doc id → relevance).
    pub fn split_qrels(&self, split: &str) -> Result<crate::data::trec::Qrels> {
        let mut qrels = crate::data::trec::Qrels::new();
        for q in self.qrels(Some(split))? {
            qrels.entry(q.query_id).or_default().insert(q.doc_id, q.relevance);
        }
        Ok(qrels)
    }

    pub fn check_split(&self, split: &str) -> Result<()> {
        if self.manifest.splits.contains_key(split) {
            Ok(())
        } else {
            let known: Vec<_> = self.manifest.splits.keys().cloned().collect();
            Err(Error::usage(
                "--split",
                format!("no split `{split}` in {} (has: {})", self.dir.display(), known.join(", ")),
            ))
        }
    }

    /// The queries judged in `split`, in query_idx order.
    pub fn split_queries(&self, split: &str) -> Result<Vec<Query>> {
        let judged: std::collections::HashSet<String> =
            self.qrels(Some(split))?.into_iter().map(|q| q.query_id).collect();
        Ok(self.queries()?.into_iter().filter(|q| judged.contains(&q.query_id)).collect())
    }
}
