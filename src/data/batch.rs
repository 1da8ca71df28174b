//! From examples to tensors. Documents are read from docs.parquet by row group through a
//! small LRU cache (`DocStore`), so a rank holds at most `capacity` row groups of text at
//! a time whatever the corpus size; queries (small) are held whole. Tokenization happens
//! here, per micro-batch, with the model's tokenizer (special tokens added, truncated).
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use tch::{Device, Tensor};

use super::examples::Example;
use super::shard::{tag, RowGroup, SplitMix64};
use crate::data::text::{pad_batch, TextTokenizer};
use crate::error::{Error, Result};

/// Title + text of documents by doc_idx, read a row group at a time (LRU of `capacity`).
pub struct DocStore {
    path: PathBuf,
    groups: Vec<RowGroup>,
    capacity: usize,
    cache: VecDeque<(usize, Arc<Vec<String>>)>,
}

impl DocStore {
    pub fn new(path: &Path, groups: Vec<RowGroup>, capacity: usize) -> Self {
        DocStore { path: path.to_path_buf(), groups, capacity: capacity.max(1), cache: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.rows as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// "title text" (as `Doc::full_text`) of document `doc_idx`.
    pub fn text(&mut self, doc_idx: u32) -> Result<String> {
        let d = doc_idx as u64;
        let g = self.groups.partition_point(|g| g.first_row + g.rows <= d);
        let group =
            *self.groups.get(g).ok_or_else(|| Error::usage("doc_idx", format!("{doc_idx} beyond the corpus")))?;
        if let Some(pos) = self.cache.iter().position(|(i, _)| *i == group.index) {
            let entry = self.cache.remove(pos).expect("present");
            let text = entry.1[(d - group.first_row) as usize].clone();
            self.cache.push_front(entry);
            return Ok(text);
        }
        let texts = Arc::new(self.read_group(group.index)?);
        let text = texts[(d - group.first_row) as usize].clone();
        self.cache.push_front((group.index, texts));
        self.cache.truncate(self.capacity);
        Ok(text)
    }

    fn read_group(&self, index: usize) -> Result<Vec<String>> {
        let path = &self.path;
        crate::panic_guard::catch(|| self.read_group_unguarded(index), |m| Error::bad_parquet(path, "damaged", m))
    }

    fn read_group_unguarded(&self, index: usize) -> Result<Vec<String>> {
        let path = &self.path;
        let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
        let leaves: Vec<usize> = builder
            .parquet_schema()
            .columns()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name() == "title" || c.name() == "text")
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::leaves(builder.parquet_schema(), leaves);
        let reader = builder
            .with_row_groups(vec![index])
            .with_projection(mask)
            .build()
            .map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| Error::bad_parquet(path, "cannot read", e))?;
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                    .ok_or_else(|| Error::input(path, crate::error::Location::File, n, "missing or not a string"))
            };
            let (title, text) = (col("title")?, col("text")?);
            for i in 0..batch.num_rows() {
                let (t, x) = (title.value(i), text.value(i));
                out.push(if t.is_empty() { x.to_string() } else { format!("{t} {x}") });
            }
        }
        Ok(out)
    }
}

/// Query and document tensors of a DR/ColBERT micro-batch. Documents come in groups of
/// `group` rows per query: the positive, then its hard negatives (loss.rs's layout).
#[derive(Debug)]
pub struct PairBatch {
    pub q_ids: Tensor,
    pub q_mask: Tensor,
    pub d_ids: Tensor,
    pub d_mask: Tensor,
    pub group: i64,
    /// The doc_idx of each query's positive, in batch order (a negative bank needs it).
    pub positives: Vec<i64>,
    /// The query_idx of each row, in batch order (a hard bank leaves out its relevant documents).
    pub queries: Vec<i64>,
    /// Real (unpadded) input tokens, counted on the host.
    pub tokens: i64,
}

/// Inputs and teacher-forcing labels of a GR micro-batch.
#[derive(Debug)]
pub struct GenBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    /// (B, T) docid tokens + eos, -100 at padding.
    pub labels: Tensor,
    pub tokens: i64,
    /// Real target tokens (the GR loss's normaliser).
    pub target_tokens: i64,
}

/// Turns examples into tensors on `device`.
pub struct Batcher {
    pub docs: DocStore,
    pub queries: Vec<String>,
    pub query_tok: TextTokenizer,
    pub doc_tok: TextTokenizer,
    /// GR `index_view = span`: an untruncated tokenizer to cut random spans from.
    pub span_tok: Option<TextTokenizer>,
    /// GR: the full target token sequence (docid tokens + eos) of each docid row.
    pub targets: Vec<Vec<i64>>,
    pub device: Device,
    pub seed: u64,
}

impl Batcher {
    pub fn pairs(&mut self, examples: &[Example]) -> Result<PairBatch> {
        let mut qs = Vec::with_capacity(examples.len());
        let mut ds = Vec::new();
        let mut positives = Vec::with_capacity(examples.len());
        let mut queries = Vec::with_capacity(examples.len());
        let mut group = 0;
        for e in examples {
            let Example::Pair { query_idx, doc_idx, negatives } = e else {
                return Err(Error::usage("model.kind", "a DR/ColBERT model got a GR example"));
            };
            qs.push(self.queries[*query_idx as usize].clone());
            ds.push(self.docs.text(*doc_idx)?);
            positives.push(i64::from(*doc_idx));
            queries.push(i64::from(*query_idx));
            for &n in negatives {
                ds.push(self.docs.text(n)?);
            }
            group = 1 + negatives.len() as i64;
        }
        let q = self.query_tok.encode(&qs.iter().map(String::as_str).collect::<Vec<_>>())?;
        let d = self.doc_tok.encode(&ds.iter().map(String::as_str).collect::<Vec<_>>())?;
        let tokens = (q.iter().chain(&d).map(Vec::len).sum::<usize>()) as i64;
        let (q_ids, q_mask) = self.query_tok.batch(&q, self.device);
        let (d_ids, d_mask) = self.doc_tok.batch(&d, self.device);
        Ok(PairBatch { q_ids, q_mask, d_ids, d_mask, group, positives, queries, tokens })
    }

    /// `step`/`slot0` key the random span of `index_view = span` (slot = position in batch).
    pub fn generative(&mut self, examples: &[Example], step: u64, slot0: u64) -> Result<GenBatch> {
        let mut inputs = Vec::with_capacity(examples.len());
        let mut labels = Vec::with_capacity(examples.len());
        for (j, e) in examples.iter().enumerate() {
            match e {
                Example::Index { doc_idx, target } => {
                    let text = self.docs.text(*doc_idx)?;
                    inputs.push(self.index_input(&text, step, slot0 + j as u64)?);
                    labels.push(self.targets[*target as usize].clone());
                }
                Example::Retrieve { query_idx, target, .. } => {
                    inputs.push(self.query_tok.encode(&[self.queries[*query_idx as usize].as_str()])?.remove(0));
                    labels.push(self.targets[*target as usize].clone());
                }
                Example::Pair { .. } => return Err(Error::usage("model.kind", "a GR model got a DR example")),
            }
        }
        let tokens = inputs.iter().map(Vec::len).sum::<usize>() as i64;
        let target_tokens = labels.iter().map(Vec::len).sum::<usize>() as i64;
        let (input_ids, attention_mask) = self.doc_tok.batch(&inputs, self.device);
        let (labels, _) = pad_batch(&labels, -100, self.device);
        Ok(GenBatch { input_ids, attention_mask, labels, tokens, target_tokens })
    }

    fn index_input(&self, text: &str, step: u64, slot: u64) -> Result<Vec<i64>> {
        let Some(span) = &self.span_tok else {
            return Ok(self.doc_tok.encode(&[text])?.remove(0));
        };
        let mut ids = span.encode(&[text])?.remove(0);
        let max = self.doc_tok.max_len;
        if ids.len() <= max {
            return Ok(ids);
        }
        // Keep the last special token (T5's </s>) and cut a random window of the rest.
        let last = ids.pop().expect("non-empty");
        let starts = ids.len() - (max - 1) + 1;
        let s = SplitMix64::keyed(&[self.seed, tag::SPAN, step, slot]).below(starts as u64) as usize;
        let mut out = ids[s..s + max - 1].to_vec();
        out.push(last);
        Ok(out)
    }
}
