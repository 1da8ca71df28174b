//! Rows of an analysis output: typed columns that travel between ranks as bytes and are
//! streamed into a Parquet file a batch at a time (the alignment of a whole split is never
//! held in memory).
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Col {
    I32(Vec<i32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Str(Vec<String>),
    ListI32(Vec<Vec<i32>>),
}

impl Col {
    fn len(&self) -> usize {
        match self {
            Col::I32(v) => v.len(),
            Col::F32(v) => v.len(),
            Col::F64(v) => v.len(),
            Col::Str(v) => v.len(),
            Col::ListI32(v) => v.len(),
        }
    }

    fn empty_like(&self) -> Col {
        match self {
            Col::I32(_) => Col::I32(vec![]),
            Col::F32(_) => Col::F32(vec![]),
            Col::F64(_) => Col::F64(vec![]),
            Col::Str(_) => Col::Str(vec![]),
            Col::ListI32(_) => Col::ListI32(vec![]),
        }
    }

    fn append(&mut self, other: Col) {
        match (self, other) {
            (Col::I32(a), Col::I32(b)) => a.extend(b),
            (Col::F32(a), Col::F32(b)) => a.extend(b),
            (Col::F64(a), Col::F64(b)) => a.extend(b),
            (Col::Str(a), Col::Str(b)) => a.extend(b),
            (Col::ListI32(a), Col::ListI32(b)) => a.extend(b),
            _ => unreachable!("tables of one analysis share their column types"),
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Col::I32(_) => DataType::Int32,
            Col::F32(_) => DataType::Float32,
            Col::F64(_) => DataType::Float64,
            Col::Str(_) => DataType::Utf8,
            Col::ListI32(_) => DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
        }
    }

    fn array(&self) -> ArrayRef {
        match self {
            Col::I32(v) => Arc::new(Int32Array::from(v.clone())),
            Col::F32(v) => Arc::new(Float32Array::from(v.clone())),
            Col::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Col::Str(v) => Arc::new(StringArray::from(v.clone())),
            Col::ListI32(v) => {
                let mut b = ListBuilder::new(Int32Builder::new());
                for row in v {
                    b.values().append_slice(row);
                    b.append(true);
                }
                Arc::new(b.finish())
            }
        }
    }
}

/// Named columns of equal length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub columns: Vec<(String, Col)>,
}

impl Table {
    pub fn new(columns: Vec<(&str, Col)>) -> Table {
        Table { columns: columns.into_iter().map(|(n, c)| (n.to_string(), c)).collect() }
    }

    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    /// A table with these columns and no rows.
    pub fn empty_like(&self) -> Table {
        Table { columns: self.columns.iter().map(|(n, c)| (n.clone(), c.empty_like())).collect() }
    }

    /// Appends `other`'s rows (same columns; an empty table with no columns is a no-op).
    pub fn append(&mut self, other: Table) {
        if other.columns.is_empty() {
            return;
        }
        if self.columns.is_empty() {
            *self = other;
            return;
        }
        for ((_, a), (_, b)) in self.columns.iter_mut().zip(other.columns) {
            a.append(b);
        }
    }

    pub fn col(&self, name: &str) -> Option<&Col> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// A compact byte form for the gathers between ranks (a column-major dump).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.columns.len() as u64);
        for (name, col) in &self.columns {
            put_str(&mut out, name);
            match col {
                Col::I32(v) => {
                    out.push(0);
                    put_u64(&mut out, v.len() as u64);
                    v.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                Col::F32(v) => {
                    out.push(1);
                    put_u64(&mut out, v.len() as u64);
                    v.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                Col::F64(v) => {
                    out.push(2);
                    put_u64(&mut out, v.len() as u64);
                    v.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                Col::Str(v) => {
                    out.push(3);
                    put_u64(&mut out, v.len() as u64);
                    v.iter().for_each(|s| put_str(&mut out, s));
                }
                Col::ListI32(v) => {
                    out.push(4);
                    put_u64(&mut out, v.len() as u64);
                    for row in v {
                        put_u64(&mut out, row.len() as u64);
                        row.iter().for_each(|x| out.extend(x.to_le_bytes()));
                    }
                }
            }
        }
        out
    }

    /// The inverse of [`Table::to_bytes`] (bytes another rank of this binary produced).
    pub fn from_bytes(bytes: &[u8]) -> Table {
        let mut r = Reader { bytes, at: 0 };
        let n = r.u64() as usize;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.string();
            let tag = r.take(1)[0];
            let len = r.u64() as usize;
            let col = match tag {
                0 => Col::I32((0..len).map(|_| i32::from_le_bytes(r.take(4).try_into().unwrap())).collect()),
                1 => Col::F32((0..len).map(|_| f32::from_le_bytes(r.take(4).try_into().unwrap())).collect()),
                2 => Col::F64((0..len).map(|_| f64::from_le_bytes(r.take(8).try_into().unwrap())).collect()),
                3 => Col::Str((0..len).map(|_| r.string()).collect()),
                _ => Col::ListI32(
                    (0..len)
                        .map(|_| {
                            let m = r.u64() as usize;
                            (0..m).map(|_| i32::from_le_bytes(r.take(4).try_into().unwrap())).collect()
                        })
                        .collect(),
                ),
            };
            columns.push((name, col));
        }
        Table { columns }
    }

    fn record_batch(&self, schema: &Arc<Schema>) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        RecordBatch::try_new(schema.clone(), self.columns.iter().map(|(_, c)| c.array()).collect())
    }

    fn schema(&self) -> Arc<Schema> {
        Arc::new(Schema::new(self.columns.iter().map(|(n, c)| Field::new(n, c.data_type(), false)).collect::<Vec<_>>()))
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend(v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        s
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }

    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}

/// A Parquet file written one table at a time (rank 0, inside the output's temp dir, which
/// is committed whole at the end — so a failed analysis leaves no half-written file).
pub struct ParquetSink {
    path: PathBuf,
    writer: Option<(ArrowWriter<BufWriter<File>>, Arc<Schema>)>,
    rows: usize,
}

impl ParquetSink {
    pub fn new(path: &Path) -> ParquetSink {
        ParquetSink { path: path.to_path_buf(), writer: None, rows: 0 }
    }

    pub fn write(&mut self, table: &Table) -> Result<()> {
        if table.columns.is_empty() {
            return Ok(());
        }
        let err = |e: parquet::errors::ParquetError| Error::parquet(&self.path, "cannot write", e);
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(|e| Error::io(&self.path, "cannot create", e))?;
            let schema = table.schema();
            let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let w = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props)).map_err(err)?;
            self.writer = Some((w, schema));
        }
        let (w, schema) = self.writer.as_mut().expect("opened above");
        let batch =
            table.record_batch(schema).map_err(|e| Error::parquet(&self.path, "cannot build a record batch", e))?;
        w.write(&batch).map_err(|e| Error::parquet(&self.path, "cannot write", e))?;
        self.rows += table.rows();
        Ok(())
    }

    /// Closes the file (an empty table's schema when nothing was written) and returns its rows.
    pub fn finish(mut self, empty: &Table) -> Result<usize> {
        if self.writer.is_none() {
            self.write(empty)?;
        }
        if let Some((w, _)) = self.writer.take() {
            w.close().map_err(|e| Error::parquet(&self.path, "cannot close", e))?;
        }
        Ok(self.rows)
    }
}

/// Writes one whole table.
pub fn write_table(path: &Path, table: &Table) -> Result<usize> {
    let mut sink = ParquetSink::new(path);
    sink.write(table)?;
    sink.finish(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let t = Table::new(vec![
            ("a", Col::I32(vec![1, -2])),
            ("b", Col::F32(vec![0.5, f32::NAN])),
            ("c", Col::Str(vec!["x".into(), "é".into()])),
            ("d", Col::ListI32(vec![vec![], vec![3, 4]])),
            ("e", Col::F64(vec![1e-300, 2.0])),
        ]);
        let back = Table::from_bytes(&t.to_bytes());
        assert_eq!(back.rows(), 2);
        assert_eq!(format!("{back:?}"), format!("{t:?}"));
    }
}
