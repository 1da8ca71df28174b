//! The (query, document) pairs an analysis reads and the exact token ids the model gets for
//! them: every relevant document of every judged query of the split (query order, then doc
//! order), or the one pair `--query-id/--doc-id` names. Written to `pairs.parquet` so anyone
//! can feed the same ids to another implementation (HF transformers in `tests/analyze.rs`).
use std::collections::HashMap;

use tch::Tensor;

use super::table::{Col, Table};
use super::AnalyzeOptions;
use crate::data::batch::DocStore;
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::model::task::Net;

#[derive(Debug, Clone)]
pub struct Pair {
    pub query_id: String,
    pub doc_id: String,
    pub doc_idx: i64,
    /// What the encoder reads: the query (ColBERT: augmented to its query length).
    pub input_ids: Vec<i64>,
    /// GR: the decoder's input (the docid's tokens shifted right); ColBERT: the document's ids.
    pub doc_side_ids: Vec<i64>,
    /// GR: the docid tokens the decoder predicts (the rows of A); ColBERT: the document's ids.
    pub doc_tokens: Vec<i64>,
    /// GR: what the decoder predicts, in its output vocabulary: `doc_tokens`, or with NP
    /// decoding their entries. ColBERT: the document's ids.
    pub doc_labels: Vec<i64>,
}

/// Whether the doc side is a decoder (GR) or an encoder (ColBERT) input.
pub fn side_column(ctx: &Context) -> &'static str {
    match ctx.task.net {
        Net::Generative { .. } => "decoder_input_ids",
        _ => "doc_input_ids",
    }
}

/// The pairs of the analysis, the same on every rank.
pub fn select(ctx: &Context, opts: &AnalyzeOptions) -> Result<Vec<Pair>> {
    let doc_ids = ctx.doc_ids()?;
    let chosen: Vec<(usize, i64)> = match (&opts.query_id, &opts.doc_id) {
        (Some(q), Some(d)) => {
            let qi = ctx.queries.iter().position(|x| &x.query_id == q).ok_or_else(|| {
                Error::usage("--query-id", format!("`{q}` is not a judged query of split `{}`", ctx.opts.split))
            })?;
            let di = doc_ids
                .iter()
                .position(|x| x == d)
                .ok_or_else(|| Error::usage("--doc-id", format!("`{d}` is not a document of the dataset")))?;
            vec![(qi, di as i64)]
        }
        (None, None) => {
            let relevant = ctx.relevant()?;
            let n = opts.limit.unwrap_or(usize::MAX).min(ctx.queries.len());
            (0..n).flat_map(|q| relevant[q].iter().map(move |&d| (q, d))).collect()
        }
        (Some(_), None) => return Err(Error::usage("--doc-id", "needed with --query-id")),
        (None, Some(_)) => return Err(Error::usage("--query-id", "needed with --doc-id")),
    };
    let texts: Vec<&str> = chosen.iter().map(|&(q, _)| ctx.queries[q].text.as_str()).collect();
    let query_ids = ctx.query_tok.encode(&texts)?;
    let (side, labels, tokens) = doc_side(ctx, &chosen)?;
    Ok(chosen
        .iter()
        .zip(query_ids)
        .zip(side.into_iter().zip(labels).zip(tokens))
        .map(|((&(q, d), ids), ((side, labels), tokens))| Pair {
            query_id: ctx.queries[q].query_id.clone(),
            doc_id: doc_ids[d as usize].clone(),
            doc_idx: d,
            input_ids: match &ctx.task.net {
                Net::Colbert(c) => augment(&ids, c.head.config.query_len, c.head.config.query_augment_token),
                _ => ids,
            },
            doc_side_ids: side,
            doc_tokens: tokens,
            doc_labels: labels,
        })
        .collect())
}

/// ColBERT's query augmentation of one query (as `ColbertHead::augment_query` does a batch).
fn augment(ids: &[i64], len: i64, token: i64) -> Vec<i64> {
    let mut v: Vec<i64> = ids.iter().copied().take(len as usize).collect();
    v.resize(len as usize, token);
    v
}

/// Token id rows, one per pair.
type Rows = Vec<Vec<i64>>;

/// Per pair: (the doc side's model input, what the decoder predicts (GR), the doc tokens the
/// alignment's rows stand for).
fn doc_side(ctx: &Context, chosen: &[(usize, i64)]) -> Result<(Rows, Rows, Rows)> {
    match &ctx.task.net {
        Net::Generative { model, .. } => {
            let table = ctx.docids()?;
            let targets = ctx.task.targets(table)?;
            // A document's first docid row (n-gram docids have several; titles one).
            let mut first: HashMap<i64, usize> = HashMap::new();
            for (i, r) in table.rows.iter().enumerate() {
                first.entry(r.doc_idx).or_insert(i);
            }
            let start = model.config.decoder_start_token_id;
            let (mut side, mut labels, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
            for &(_, d) in chosen {
                let row = *first
                    .get(&d)
                    .ok_or_else(|| Error::usage("--docids", format!("document {d} has no docid in the docid file")))?;
                let target = &targets[row];
                side.push(std::iter::once(start).chain(target[..target.len() - 1].iter().copied()).collect());
                tokens.push(model.tokens_of(target)); // NP: entries → their tokens
                labels.push(target.clone());
            }
            Ok((side, labels, tokens))
        }
        Net::Colbert(_) => {
            let mut store = DocStore::new(&ctx.ds.docs_path(), ctx.groups.clone(), 4);
            let texts: Vec<String> = chosen.iter().map(|&(_, d)| store.text(d as u32)).collect::<Result<_>>()?;
            let ids = ctx.doc_tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
            Ok((ids.clone(), ids.clone(), ids))
        }
        Net::Dual(_) => Err(Error::usage("--run/--model", "pair analyses read GR or ColBERT models")),
    }
}

/// The rows of `pairs.parquet` for `pairs`.
pub fn table(pairs: &[Pair], side_column: &str) -> Table {
    let ids = |f: &dyn Fn(&Pair) -> &Vec<i64>| {
        Col::ListI32(pairs.iter().map(|p| f(p).iter().map(|&x| x as i32).collect()).collect())
    };
    Table::new(vec![
        ("query_id", Col::Str(pairs.iter().map(|p| p.query_id.clone()).collect())),
        ("doc_id", Col::Str(pairs.iter().map(|p| p.doc_id.clone()).collect())),
        ("input_ids", ids(&|p| &p.input_ids)),
        (side_column, ids(&|p| &p.doc_side_ids)),
    ])
}

/// Padded (ids, mask) of rows on `device`.
pub fn padded(rows: &[&Vec<i64>], pad: i64, device: tch::Device) -> (Tensor, Tensor) {
    let owned: Vec<Vec<i64>> = rows.iter().map(|r| (*r).clone()).collect();
    crate::data::text::pad_batch(&owned, pad, device)
}
