//! Document identifiers for generative retrieval, built by `grdr docids` and read by GR
//! training and evaluation. Schemes (as the GR literature builds them):
//! - `atomic` (DSI): one new token per document; `tokens = [doc_idx]`;
//! - `semantic` (DSI/NCI): hierarchical k-means over dense document embeddings — cluster
//!   into `k`, recurse into clusters larger than `leaf_size`, and number the documents of a
//!   leaf; `tokens = [c_0, c_1, …, position]`, one new token per (level, value);
//! - `title` (GENRE): the title's text tokens, made unique (duplicates get ` (2)`, ` (3)`…;
//!   an empty title becomes the doc id);
//! - `ngram` (SEAL-style training targets): spans of `ngram_len` text tokens sampled from
//!   each document, several rows per document, not unique.
//!
//! File (`docids.parquet`): `doc_idx` int64, `doc_id` utf8, `docid` utf8 (readable form),
//! `tokens` list<int32>; the scheme and its parameters are JSON in the key-value metadata
//! `grdr.docids`. Rows are sorted by doc_idx.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::shard::SplitMix64;
use crate::error::{Error, Location, Result};

pub const META_KEY: &str = "grdr.docids";
pub const FORMAT: &str = "grdr-docids/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Atomic,
    Semantic,
    Title,
    Ngram,
}

impl std::str::FromStr for Scheme {
    type Err = Error;
    fn from_str(s: &str) -> Result<Scheme> {
        match s {
            "atomic" => Ok(Scheme::Atomic),
            "semantic" => Ok(Scheme::Semantic),
            "title" => Ok(Scheme::Title),
            "ngram" => Ok(Scheme::Ngram),
            other => Err(Error::usage("--scheme", format!("`{other}`: expected atomic, semantic, title or ngram"))),
        }
    }
}

impl Scheme {
    /// Whether every document has exactly one id and ids are unique.
    pub fn is_unique(self) -> bool {
        self != Scheme::Ngram
    }
    /// Whether the tokens are text-tokenizer ids (else new docid tokens).
    pub fn is_text(self) -> bool {
        matches!(self, Scheme::Title | Scheme::Ngram)
    }
}

/// The `grdr.docids` metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocidMeta {
    pub format: String,
    pub scheme: Scheme,
    pub n_docs: usize,
    /// Text schemes: the tokenizer the tokens come from.
    pub tokenizer: Option<String>,
    /// Semantic: number of values each position takes (the new tokens per level).
    pub level_sizes: Vec<i64>,
    /// Scheme parameters as given (k, leaf_size, ngram_len, …) and the embedding source.
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocidRow {
    pub doc_idx: i64,
    pub doc_id: String,
    pub docid: String,
    pub tokens: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct DocidTable {
    pub meta: DocidMeta,
    pub rows: Vec<DocidRow>,
}

impl DocidTable {
    /// Row indices of each document (one for unique schemes), by doc_idx.
    pub fn rows_by_doc(&self) -> Vec<Vec<usize>> {
        let mut by = vec![Vec::new(); self.meta.n_docs];
        for (i, r) in self.rows.iter().enumerate() {
            by[r.doc_idx as usize].push(i);
        }
        by
    }

    /// The checks every reader relies on: doc_idx in range, every doc present, exactly one
    /// row and unique token sequences for atomic/semantic/title.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |row: usize, field: &str, m: String| Error::input(path, Location::Row(row), field, m);
        let mut seen: HashMap<&[i64], usize> = HashMap::new();
        let mut per_doc = vec![0usize; self.meta.n_docs];
        for (i, r) in self.rows.iter().enumerate() {
            if r.doc_idx < 0 || r.doc_idx as usize >= self.meta.n_docs {
                return Err(bad(i, "doc_idx", format!("{} outside 0..{}", r.doc_idx, self.meta.n_docs)));
            }
            if r.tokens.is_empty() {
                return Err(bad(i, "tokens", "empty docid".into()));
            }
            per_doc[r.doc_idx as usize] += 1;
            if self.meta.scheme.is_unique() {
                if let Some(j) = seen.insert(&r.tokens, i) {
                    return Err(bad(i, "tokens", format!("same docid as row {j}: ids must be unique")));
                }
            }
            if self.meta.scheme == Scheme::Semantic {
                for (l, &c) in r.tokens.iter().enumerate() {
                    if l >= self.meta.level_sizes.len() || c < 0 || c >= self.meta.level_sizes[l] {
                        return Err(bad(i, "tokens", format!("position {l} value {c} outside level_sizes")));
                    }
                }
            }
        }
        for (d, &n) in per_doc.iter().enumerate() {
            let ok = if self.meta.scheme.is_unique() { n == 1 } else { n >= 1 };
            if !ok {
                return Err(Error::input(path, Location::File, "doc_idx", format!("document {d} has {n} docids")));
            }
        }
        Ok(())
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let schema = Arc::new(schema());
        let mut list =
            ListBuilder::new(Int32Builder::new()).with_field(Arc::new(Field::new("item", DataType::Int32, true)));
        for r in &self.rows {
            for &t in &r.tokens {
                list.values().append_value(t as i32);
            }
            list.append(true);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(self.rows.iter().map(|r| r.doc_idx))),
            Arc::new(StringArray::from_iter_values(self.rows.iter().map(|r| r.doc_id.as_str()))),
            Arc::new(StringArray::from_iter_values(self.rows.iter().map(|r| r.docid.as_str()))),
            Arc::new(list.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::parquet(path, "batch", e))?;
        let meta = serde_json::to_string(&self.meta).expect("meta serialises");
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(META_KEY.to_string(), meta)]))
            .set_created_by(format!("grdr {}", crate::VERSION))
            .build();
        crate::atomic::write_file(path, |w| {
            let mut writer = ArrowWriter::try_new(w, schema, Some(props)).map_err(std::io::Error::other)?;
            writer.write(&batch).map_err(std::io::Error::other)?;
            writer.close().map_err(std::io::Error::other)?;
            Ok(())
        })
    }

    /// Reads and validates a docid file.
    pub fn read(path: &Path) -> Result<DocidTable> {
        crate::panic_guard::catch(|| Self::read_unguarded(path), |m| Error::bad_parquet(path, "damaged", m))
    }

    fn read_unguarded(path: &Path) -> Result<DocidTable> {
        let file = File::open(path).map_err(|e| Error::io(path, "cannot open the docid file", e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::bad_parquet(path, "not a Parquet file", e))?;
        let meta_json = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == META_KEY).and_then(|k| k.value.clone()))
            .ok_or_else(|| Error::input(path, Location::File, META_KEY, "missing: not written by `grdr docids`"))?;
        let meta: DocidMeta = serde_json::from_str(&meta_json)
            .map_err(|e| Error::input(path, Location::File, META_KEY, e.to_string()))?;
        if meta.format != FORMAT {
            return Err(Error::input(
                path,
                Location::File,
                "format",
                format!("is `{}`, expected `{FORMAT}`", meta.format),
            ));
        }
        let reader = builder.build().map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
            let col = |name: &str| {
                batch.column_by_name(name).ok_or_else(|| Error::input(path, Location::File, name, "column missing"))
            };
            let wrong = |name: &str| Error::input(path, Location::File, name, "wrong type");
            let idx = col("doc_idx")?.as_any().downcast_ref::<Int64Array>().ok_or_else(|| wrong("doc_idx"))?;
            let id = col("doc_id")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| wrong("doc_id"))?;
            let docid = col("docid")?.as_any().downcast_ref::<StringArray>().ok_or_else(|| wrong("docid"))?;
            let toks = col("tokens")?.as_any().downcast_ref::<ListArray>().ok_or_else(|| wrong("tokens"))?;
            for i in 0..batch.num_rows() {
                let v = toks.value(i);
                let v = v.as_any().downcast_ref::<Int32Array>().ok_or_else(|| wrong("tokens"))?;
                rows.push(DocidRow {
                    doc_idx: idx.value(i),
                    doc_id: id.value(i).to_string(),
                    docid: docid.value(i).to_string(),
                    tokens: v.values().iter().map(|&t| t as i64).collect(),
                });
            }
        }
        let table = DocidTable { meta, rows };
        table.validate(path)?;
        Ok(table)
    }
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("doc_idx", DataType::Int64, false),
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("docid", DataType::Utf8, false),
        Field::new("tokens", DataType::List(Arc::new(Field::new("item", DataType::Int32, true))), false),
    ])
}

fn meta(
    scheme: Scheme,
    n_docs: usize,
    tokenizer: Option<String>,
    params: BTreeMap<String, serde_json::Value>,
) -> DocidMeta {
    DocidMeta { format: FORMAT.into(), scheme, n_docs, tokenizer, level_sizes: vec![], params }
}

/// Atomic ids: document i is token i.
pub fn atomic(doc_ids: &[String]) -> DocidTable {
    let rows = doc_ids
        .iter()
        .enumerate()
        .map(|(i, id)| DocidRow { doc_idx: i as i64, doc_id: id.clone(), docid: i.to_string(), tokens: vec![i as i64] })
        .collect();
    DocidTable { meta: meta(Scheme::Atomic, doc_ids.len(), None, BTreeMap::new()), rows }
}

/// Title ids: `titles[i]` tokenized by `encode` (no special tokens), truncated to
/// `max_tokens`, suffixed until the token sequences are unique.
pub fn title(
    doc_ids: &[String],
    titles: &[String],
    encode: &dyn Fn(&str) -> Result<Vec<i64>>,
    max_tokens: usize,
    tokenizer: &str,
) -> Result<DocidTable> {
    let mut seen: HashSet<Vec<i64>> = HashSet::new();
    let mut rows = Vec::with_capacity(doc_ids.len());
    for (i, (id, t)) in doc_ids.iter().zip(titles).enumerate() {
        let base = if t.trim().is_empty() { id.clone() } else { t.trim().to_string() };
        let mut text = base.clone();
        let mut n = 1;
        loop {
            let mut toks = encode(&text)?;
            // Keep the suffix when truncating, so " (2)" still distinguishes.
            if toks.len() > max_tokens {
                let suffix = if n > 1 { encode(&format!(" ({n})"))? } else { vec![] };
                toks.truncate(max_tokens.saturating_sub(suffix.len()));
                toks.extend(suffix);
            }
            if !toks.is_empty() && seen.insert(toks.clone()) {
                rows.push(DocidRow { doc_idx: i as i64, doc_id: id.clone(), docid: text, tokens: toks });
                break;
            }
            n += 1;
            text = format!("{base} ({n})");
        }
    }
    let params = BTreeMap::from([("max_tokens".to_string(), serde_json::json!(max_tokens))]);
    Ok(DocidTable { meta: meta(Scheme::Title, doc_ids.len(), Some(tokenizer.into()), params), rows })
}

/// SEAL-style n-grams: up to `per_doc` distinct spans of `len` tokens from each document's
/// tokens (the whole document when shorter), positions drawn from `seed`.
pub fn ngram(
    doc_ids: &[String],
    doc_tokens: &[Vec<i64>],
    per_doc: usize,
    len: usize,
    seed: u64,
    tokenizer: &str,
) -> DocidTable {
    let mut rows = Vec::new();
    for (i, (id, toks)) in doc_ids.iter().zip(doc_tokens).enumerate() {
        let mut rng = SplitMix64::keyed(&[seed, i as u64]);
        let mut spans: Vec<usize> = Vec::new();
        let starts = toks.len().saturating_sub(len) + 1;
        for _ in 0..per_doc.max(1) * 4 {
            let s = rng.below(starts as u64) as usize;
            if !spans.contains(&s) {
                spans.push(s);
            }
            if spans.len() == per_doc.max(1).min(starts) {
                break;
            }
        }
        spans.sort_unstable();
        for s in spans {
            let span = toks[s..(s + len).min(toks.len())].to_vec();
            let docid = span.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ");
            rows.push(DocidRow { doc_idx: i as i64, doc_id: id.clone(), docid, tokens: span });
        }
    }
    let params = BTreeMap::from([
        ("per_doc".to_string(), serde_json::json!(per_doc)),
        ("ngram_len".to_string(), serde_json::json!(len)),
        ("seed".to_string(), serde_json::json!(seed)),
    ]);
    DocidTable { meta: meta(Scheme::Ngram, doc_ids.len(), Some(tokenizer.into()), params), rows }
}

/// Semantic ids by hierarchical k-means over `embeddings` (N, D), rows in doc_idx order.
pub fn semantic(
    doc_ids: &[String],
    embeddings: &Tensor,
    k: usize,
    leaf_size: usize,
    seed: u64,
    source: &str,
) -> DocidTable {
    let x = embeddings.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let n = x.size()[0] as usize;
    let mut codes = vec![Vec::new(); n];
    let mut rng = SplitMix64::keyed(&[seed, 0x5e]);
    split(&x, (0..n as i64).collect(), k.max(2), leaf_size.max(1), &mut rng, &mut vec![], &mut codes);
    let depth = codes.iter().map(|c| c.len()).max().unwrap_or(0);
    let level_sizes: Vec<i64> =
        (0..depth).map(|l| codes.iter().filter_map(|c| c.get(l)).max().map(|m| m + 1).unwrap_or(1)).collect();
    let rows = codes
        .into_iter()
        .enumerate()
        .map(|(i, c)| DocidRow {
            doc_idx: i as i64,
            doc_id: doc_ids[i].clone(),
            docid: c.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("-"),
            tokens: c,
        })
        .collect();
    let params = BTreeMap::from([
        ("k".to_string(), serde_json::json!(k)),
        ("leaf_size".to_string(), serde_json::json!(leaf_size)),
        ("seed".to_string(), serde_json::json!(seed)),
        ("embeddings".to_string(), serde_json::json!(source)),
    ]);
    let mut m = meta(Scheme::Semantic, n, None, params);
    m.level_sizes = level_sizes;
    DocidTable { meta: m, rows }
}

/// Recursive step of hierarchical k-means: `ids` are rows of `x` sharing `prefix`.
fn split(
    x: &Tensor,
    ids: Vec<i64>,
    k: usize,
    leaf: usize,
    rng: &mut SplitMix64,
    prefix: &mut Vec<i64>,
    out: &mut [Vec<i64>],
) {
    if ids.len() <= leaf {
        for (pos, &id) in ids.iter().enumerate() {
            let mut c = prefix.clone();
            c.push(pos as i64);
            out[id as usize] = c;
        }
        return;
    }
    let sub = x.index_select(0, &Tensor::from_slice(&ids));
    let labels = kmeans(&sub, k, 25, rng);
    let mut groups: Vec<Vec<i64>> = vec![Vec::new(); k];
    for (&id, &l) in ids.iter().zip(&labels) {
        groups[l].push(id);
    }
    if groups.iter().filter(|g| !g.is_empty()).count() < 2 {
        // Identical points cannot be separated by distance: split them evenly by index.
        let chunk = ids.len().div_ceil(k);
        groups = ids.chunks(chunk).map(|c| c.to_vec()).collect();
    }
    for (c, g) in groups.into_iter().enumerate().filter(|(_, g)| !g.is_empty()) {
        prefix.push(c as i64);
        split(x, g, k, leaf, rng, prefix, out);
        prefix.pop();
    }
}

/// Lloyd's k-means from k distinct random rows; an emptied cluster keeps its centre.
/// `x` (N, D) → cluster of each row.
pub fn kmeans(x: &Tensor, k: usize, iters: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let n = x.size()[0] as usize;
    let k = k.min(n);
    let mut pick: Vec<i64> = (0..n as i64).collect();
    rng.shuffle(&mut pick);
    let mut centres = x.index_select(0, &Tensor::from_slice(&pick[..k]));
    let x_sq = x.square().sum_dim_intlist(1, true, Kind::Float); // (N, 1)
    let mut labels = Tensor::zeros([n as i64], (Kind::Int64, tch::Device::Cpu));
    for _ in 0..iters {
        let c_sq = centres.square().sum_dim_intlist(1, false, Kind::Float).unsqueeze(0); // (1, k)
        let dist = &x_sq - x.matmul(&centres.tr()) * 2.0 + c_sq; // (N, k)
        let new = dist.argmin(1, false);
        let changed = !new.equal(&labels);
        labels = new;
        let onehot = labels.one_hot(k as i64).to_kind(Kind::Float); // (N, k)
        let counts = onehot.sum_dim_intlist(0, false, Kind::Float).unsqueeze(1); // (k, 1)
        let sums = onehot.tr().matmul(x); // (k, D)
        let keep = counts.eq(0.0);
        centres = centres.where_self(&keep, &(sums / counts.clamp_min(1.0)));
        if !changed {
            break;
        }
    }
    Vec::<i64>::try_from(&labels).expect("labels").into_iter().map(|l| l as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantic_ids_are_unique_and_bounded() {
        tch::manual_seed(0);
        let n = 300;
        let x = Tensor::randn([n, 8], (Kind::Float, tch::Device::Cpu));
        let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
        let t = semantic(&ids, &x, 4, 10, 1, "test");
        t.validate(Path::new("mem")).unwrap();
        assert!(t.meta.level_sizes.len() >= 3);
        assert!(t.rows.iter().all(|r| *r.tokens.last().unwrap() < 10));
        // Duplicated points still get unique ids.
        let same = Tensor::ones([50, 4], (Kind::Float, tch::Device::Cpu));
        let t = semantic(&ids[..50], &same, 3, 4, 1, "test");
        t.validate(Path::new("mem")).unwrap();
    }

    #[test]
    fn titles_are_made_unique_and_files_round_trip() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let titles: Vec<String> = ["Same", "Same", ""].iter().map(|s| s.to_string()).collect();
        let enc = |s: &str| -> Result<Vec<i64>> { Ok(s.bytes().map(|b| b as i64).collect()) };
        let t = title(&ids, &titles, &enc, 32, "bytes").unwrap();
        assert_eq!(t.rows[1].docid, "Same (2)");
        assert_eq!(t.rows[2].docid, "c");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.parquet");
        t.write(&p).unwrap();
        let back = DocidTable::read(&p).unwrap();
        assert_eq!(back.rows, t.rows);
        assert_eq!(back.meta, t.meta);
        let g = ngram(&ids, &[vec![1, 2, 3, 4, 5], vec![1], vec![7, 8]], 3, 2, 0, "x");
        g.validate(Path::new("mem")).unwrap();
        assert_eq!(g.rows_by_doc()[1].len(), 1);
    }
}
