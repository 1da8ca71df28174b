//! The results table as files (`results.parquet`, `results.csv`) and as markdown.
//!
//! Parquet keeps the inferred column types and real nulls, for pandas/polars/pyarrow; the
//! CSV is for spreadsheets and quick `column -t` looks (a null is an empty field there).
//! Both are written under a temporary name and renamed into place.
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::collect::Results;
use super::columns::{find, short_axis_names, Column, ColumnData};
use crate::atomic::write_file;
use crate::error::Result;

pub const PARQUET_FILE: &str = "results.parquet";
pub const CSV_FILE: &str = "results.csv";

fn arrow_column(data: &ColumnData) -> (DataType, ArrayRef) {
    match data {
        ColumnData::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
        ColumnData::Float(v) => (DataType::Float64, Arc::new(Float64Array::from(v.clone()))),
        ColumnData::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v.clone()))),
        ColumnData::Str(v) => (DataType::Utf8, Arc::new(StringArray::from(v.clone()))),
    }
}

/// Writes the table as one Parquet row group (a sweep has tens to hundreds of points).
pub fn write_parquet(path: &Path, columns: &[Column]) -> Result<()> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns
        .iter()
        .map(|c| {
            let (ty, array) = arrow_column(&c.data);
            (Field::new(&c.name, ty, true), array)
        })
        .unzip();
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("grdr {}", crate::VERSION))
        .build();
    write_file(path, |w| {
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(io::Error::other)?;
        let mut writer = ArrowWriter::try_new(&mut *w, schema.clone(), Some(props)).map_err(io::Error::other)?;
        writer.write(&batch).map_err(io::Error::other)?;
        writer.close().map_err(io::Error::other)?;
        Ok(())
    })
}

/// One CSV field, quoted as RFC 4180 says: when it holds a comma, a quote or a line break,
/// with quotes doubled.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The CSV text: a header of column names, then one line per point; floats in shortest
/// round-trip form so re-reading gives the Parquet values exactly.
pub fn csv_text(columns: &[Column]) -> String {
    let rows = columns.first().map_or(0, |c| c.data.len());
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|c| csv_field(&c.name)).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for i in 0..rows {
        let cells: Vec<String> =
            columns.iter().map(|c| c.data.text(i).map(|t| csv_field(&t)).unwrap_or_default()).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

pub fn write_csv(path: &Path, columns: &[Column]) -> Result<()> {
    let text = csv_text(columns);
    write_file(path, |w| w.write_all(text.as_bytes()))
}

/// A markdown cell: `|` escaped so it cannot split the row.
fn md(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The table people read: axes (short names), family, state, the given metrics (those
/// some point has) and training seconds. All columns are in the files.
pub fn markdown(results: &Results, columns: &[Column], metrics: &[String]) -> String {
    let metrics: Vec<&String> = metrics.iter().filter(|m| results.metric_names.contains(m)).collect();
    let mut header: Vec<String> = short_axis_names(&results.axes);
    header.extend(["family", "state"].map(String::from));
    header.extend(metrics.iter().map(|m| m.to_string()));
    header.push("train s".into());

    let axis_cols: Vec<Option<&Column>> = results.axes.iter().map(|a| find(columns, a)).collect();
    let train_secs = find(columns, "train_seconds");
    let mut out = format!(
        "| {} |\n|{}\n",
        header.iter().map(|h| md(h)).collect::<Vec<_>>().join(" | "),
        " --- |".repeat(header.len())
    );
    for (i, row) in results.rows.iter().enumerate() {
        let mut cells: Vec<String> =
            axis_cols.iter().map(|c| c.and_then(|c| c.data.text(i)).unwrap_or_else(|| "-".into())).collect();
        cells.push(row.family.clone());
        cells.push(row.state.clone());
        for m in &metrics {
            cells.push(match row.metrics.get(*m) {
                Some(v) if v.is_i64() => v.to_string(),
                Some(v) if v.is_number() => format!("{:.4}", v.as_f64().unwrap_or(f64::NAN)),
                Some(serde_json::Value::Null) | None => "-".into(),
                Some(v) => v.to_string(),
            });
        }
        cells.push(train_secs.and_then(|c| c.data.number(i)).map_or_else(|| "-".into(), |s| format!("{s:.1}")));
        out.push_str(&format!("| {} |\n", cells.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let cols = vec![
            Column { name: "x".into(), data: ColumnData::Float(vec![Some(0.1), None]) },
            Column { name: "s,t".into(), data: ColumnData::Str(vec![Some("a".into()), Some("b\"".into())]) },
        ];
        assert_eq!(csv_text(&cols), "x,\"s,t\"\n0.1,a\n,\"b\"\"\"\n");
    }
}
