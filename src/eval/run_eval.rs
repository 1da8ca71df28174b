//! The distributed evaluation driver behind `grdr eval`: N ranks, one model, one split.
//!
//! ```text
//! every rank: the same queries, the same model           (rank 0 alone writes files)
//!   DR       encode my row groups → EmbeddingStore → exact top-k (+ softmax normaliser)
//!   ColBERT  encode my row groups → TokenPool → per-token top-k ─all-gather→ candidates
//!            → exact late interaction of my candidates
//!   GR       my share of the queries → trie-constrained beam search
//!   SEAL     my share of the queries → FM-index-constrained n-grams → SEAL's scoring
//!   rerank   rank 0: BM25 top-depth (+ gold) ─broadcast→ my share of the queries scored
//! local TopK per query ─gather→ rank 0 merges with TopK (score desc, doc index asc)
//! ```
//! N ranks ≡ 1 rank (byte-identical run files, `tests/eval_dist.rs`) holds because a document's
//! score never depends on the shard layout: documents are encoded in batches formed inside
//! their own row group (length-sorted there), each row group is one search chunk, queries
//! are encoded identically on every rank, and the merge is `TopK`'s total order.
use std::collections::HashMap;

use serde_json::json;
use tch::{Kind, Tensor};

use crate::data::batch::DocStore;
use crate::data::docid::DocidTable;
use crate::data::shard::{self, RowGroup};
use crate::data::text::TextTokenizer;
use crate::data::trec::Run;
use crate::data::Dataset;
use crate::dist::{Comm, ReduceOp};
use crate::error::{Error, Result};
use crate::eval::options::EvalOptions;
use crate::model::colbert::LateInteraction;
use crate::model::task::{Net, Task};
use crate::search::topk::{Hit, TopK};

/// What rank 0 gets back: the run and everything worth recording beside the metrics.
pub struct EvalOutcome {
    pub run: Run,
    /// Extra metrics merged into metrics.json (e.g. `Brier`).
    pub metrics_extra: serde_json::Map<String, serde_json::Value>,
    /// Details for run.json (candidate recall, calibration, timings, memory).
    pub info: serde_json::Map<String, serde_json::Value>,
}

/// Evaluates `task` on `ds` across the ranks of `comm`; rank 0 gets the outcome.
/// `docids`: the docid table of a generative task (its trie is what beam search follows).
pub fn evaluate(
    comm: &dyn Comm,
    task: &Task,
    ds: &Dataset,
    docids: Option<&DocidTable>,
    opts: &EvalOptions,
) -> Result<Option<EvalOutcome>> {
    ds.check_split(&opts.split)?;
    let t0 = std::time::Instant::now();
    let ctx = Context::new(comm, task, ds, docids, opts)?;
    let mut info = serde_json::Map::new();
    let mut metrics_extra = serde_json::Map::new();
    let hits = tch::no_grad(|| -> Result<Vec<Vec<Hit>>> {
        match (&opts.rerank, &task.net) {
            (Some(r), _) => crate::eval::rerank::run(&ctx, r, &mut info),
            (None, Net::Dual(_)) => crate::eval::run_dense::dual(&ctx, &mut info, &mut metrics_extra),
            (None, Net::Colbert(_)) => crate::eval::run_dense::colbert(&ctx, &mut info),
            (None, Net::Generative { .. }) if opts.fm_index.is_some() => {
                crate::eval::run_seal::seal(&ctx, opts.fm_index.as_deref().expect("checked"), &mut info)
            }
            (None, Net::Generative { .. }) => crate::eval::run_gr::generative(&ctx, &mut info, &mut metrics_extra),
        }
    })?;
    let merged = gather_hits(comm, &hits, opts.k)?;
    let peak = gather_peak_rss(comm)?;
    let Some(merged) = merged else { return Ok(None) };
    let doc_ids = ctx.doc_ids()?;
    let run: Run = ctx
        .queries
        .iter()
        .zip(merged)
        .map(|(q, hits)| {
            (q.query_id.clone(), hits.iter().map(|h| (doc_ids[h.doc_idx as usize].clone(), h.score as f64)).collect())
        })
        .collect();
    info.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
    info.insert("ranks".into(), json!(comm.world().size));
    info.insert("peak_rss_mib_per_rank".into(), json!(peak));
    Ok(Some(EvalOutcome { run, metrics_extra, info }))
}

/// What a finished evaluation shows a person: a title, the metrics table and the figures
/// beside it (calibration, memorisation). `cmd` prints it; nothing below `cmd` does.
#[derive(Debug, Clone)]
pub struct EvalSummary {
    pub title: String,
    pub metrics: crate::eval::Metrics,
    /// Extras of metrics.json (`Brier`, `memorization_R@1`, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Rank 0's files of an evaluation, written into `dir` (a temp dir the caller commits):
/// `run.trec` (tagged `tag`), `metrics.json` (trec_eval-style metrics of the split, the
/// measures the run's depth `k` reaches, plus the outcome's extras) and `run.json` (`info`,
/// then the outcome's details). Returns the metrics.
pub fn write_outcome(
    dir: &std::path::Path,
    ds: &Dataset,
    opts: &EvalOptions,
    outcome: &EvalOutcome,
    mut info: serde_json::Map<String, serde_json::Value>,
    tag: &str,
) -> Result<crate::eval::Metrics> {
    let qrels = ds.split_qrels(&opts.split)?;
    let metrics = crate::eval::metrics::evaluate(&qrels, &outcome.run).at_depth(opts.k);
    crate::data::trec::write_run(&dir.join("run.trec"), &outcome.run, tag)?;
    let mut json = metrics.to_json();
    if let serde_json::Value::Object(m) = &mut json {
        m.extend(outcome.metrics_extra.clone());
    }
    crate::atomic::write_json(&dir.join("metrics.json"), &json)?;
    info.extend(outcome.info.clone());
    crate::atomic::write_json(&dir.join("run.json"), &serde_json::Value::Object(info))?;
    Ok(metrics)
}

/// What every evaluation mode shares: the world, the queries, tokenizers, this rank's shard.
pub struct Context<'a> {
    pub comm: &'a dyn Comm,
    pub task: &'a Task,
    pub ds: &'a Dataset,
    pub docids: Option<&'a DocidTable>,
    pub opts: &'a EvalOptions,
    /// The judged queries of the split, in query_idx order (the same on every rank).
    pub queries: Vec<crate::data::Query>,
    pub query_tok: TextTokenizer,
    pub doc_tok: TextTokenizer,
    /// Every row group of docs.parquet, and this rank's contiguous run of them.
    pub groups: Vec<RowGroup>,
    pub my_groups: Vec<RowGroup>,
}

impl<'a> Context<'a> {
    pub fn new(
        comm: &'a dyn Comm,
        task: &'a Task,
        ds: &'a Dataset,
        docids: Option<&'a DocidTable>,
        opts: &'a EvalOptions,
    ) -> Result<Self> {
        let groups = shard::plan_row_groups(comm, &ds.docs_path())?;
        let my_groups = shard::assign(&groups, comm.world());
        Ok(Context {
            comm,
            task,
            ds,
            docids,
            opts,
            queries: ds.split_queries(&opts.split)?,
            query_tok: TextTokenizer::from_path(&task.tokenizer_json, opts.query_max_len)?,
            doc_tok: TextTokenizer::from_path(&task.tokenizer_json, opts.doc_max_len)?,
            groups,
            my_groups,
        })
    }

    /// ColBERT: the late interaction of the final scores — the model's, in the direction
    /// `--alignment` asks for (none for other models).
    pub fn interaction(&self) -> Option<LateInteraction> {
        match &self.task.net {
            Net::Colbert(m) => Some(m.head.config.interaction.with_alignment(self.opts.alignment)),
            _ => None,
        }
    }

    /// The docid table (generative tasks).
    pub fn docids(&self) -> Result<&'a DocidTable> {
        self.docids.ok_or_else(|| Error::usage("--docids", "a generative model needs its docid file (grdr docids)"))
    }

    pub fn n_docs(&self) -> usize {
        self.groups.iter().map(|g| g.rows as usize).sum()
    }

    /// Doc ids by doc_idx (only the id column is read).
    pub fn doc_ids(&self) -> Result<Vec<String>> {
        read_doc_ids(self.ds)
    }

    /// Token ids of the queries, in order.
    pub fn query_ids(&self) -> Result<Vec<Vec<i64>>> {
        let texts: Vec<&str> = self.queries.iter().map(|q| q.text.as_str()).collect();
        self.query_tok.encode(&texts)
    }

    /// Relevant doc indices of each query (relevance > 0), in query order.
    pub fn relevant(&self) -> Result<Vec<Vec<i64>>> {
        let ids = self.doc_ids()?;
        let by_id: HashMap<&str, i64> = ids.iter().enumerate().map(|(i, d)| (d.as_str(), i as i64)).collect();
        let mut rel: HashMap<String, Vec<i64>> = HashMap::new();
        for q in self.ds.qrels(Some(&self.opts.split))? {
            if q.relevance > 0 {
                if let Some(&d) = by_id.get(q.doc_id.as_str()) {
                    rel.entry(q.query_id).or_default().push(d);
                }
            }
        }
        Ok(self
            .queries
            .iter()
            .map(|q| {
                let mut v = rel.remove(&q.query_id).unwrap_or_default();
                v.sort_unstable();
                v
            })
            .collect())
    }

    /// This rank's contiguous share `[lo, hi)` of the queries (GR, rerank).
    pub fn query_share(&self) -> (usize, usize) {
        let w = self.comm.world();
        let n = self.queries.len();
        (n * w.rank / w.size, n * (w.rank + 1) / w.size)
    }

    /// Calls `each(first_doc, doc_order, batches)` for every row group of this shard, where
    /// the documents of the group are tokenized, sorted by length (longest first) and cut
    /// into batches: `batches` yields (positions in the group, ids, mask). Formed inside the
    /// group only, so a document's batch — and its embedding — is the same on any rank count.
    pub fn for_each_group(
        &self,
        each: impl FnMut(&RowGroup, Vec<(Vec<usize>, Tensor, Tensor)>) -> Result<()>,
    ) -> Result<()> {
        self.for_each_group_of(&|_| true, each)
    }

    /// [`Context::for_each_group`] over the documents `keep` accepts only (rerank candidates);
    /// batches are still formed inside each group, so embeddings stay rank-count independent.
    /// A second thread reads, tokenizes and pads the next groups while `each` encodes this
    /// one (on a GPU the CPU-side preparation otherwise leaves the device idle).
    pub fn for_each_group_of(
        &self,
        keep: &(dyn Fn(i64) -> bool + Sync),
        mut each: impl FnMut(&RowGroup, Vec<(Vec<usize>, Tensor, Tensor)>) -> Result<()>,
    ) -> Result<()> {
        type Batches = Vec<(Vec<usize>, Tensor, Tensor)>;
        let (docs_path, groups, tok) = (self.ds.docs_path(), &self.my_groups, &self.doc_tok);
        let (batch_size, device) = (self.opts.batch_size.max(1), self.opts.device);
        let prepare = |store: &mut DocStore, g: &RowGroup| -> Result<Batches> {
            let kept: Vec<usize> = (0..g.rows as usize).filter(|&i| keep(g.first_row as i64 + i as i64)).collect();
            let texts: Vec<String> =
                kept.iter().map(|&i| store.text((g.first_row as usize + i) as u32)).collect::<Result<_>>()?;
            let ids = tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
            let mut order: Vec<usize> = (0..ids.len()).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(ids[i].len()), i));
            Ok(order
                .chunks(batch_size)
                .map(|c| {
                    let rows: Vec<Vec<i64>> = c.iter().map(|&i| ids[i].clone()).collect();
                    let (t, m) = tok.batch(&rows, device);
                    (c.iter().map(|&i| kept[i]).collect(), t, m)
                })
                .collect())
        };
        // Rank 0's share stands for all (every rank's is about as large).
        let rows = if self.comm.world().is_coordinator() { groups.iter().map(|g| g.rows).sum() } else { 0 };
        let bar = crate::progress::bar(rows, "encode docs");
        std::thread::scope(|s| {
            // Two groups ahead at most: bounded memory, and enough to hide the preparation.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batches>>(2);
            s.spawn(move || {
                let mut store = DocStore::new(&docs_path, groups.clone(), 1);
                for g in groups {
                    let prepared = prepare(&mut store, g);
                    let failed = prepared.is_err();
                    // A closed channel means the consumer stopped on an error: stop too.
                    if tx.send(prepared).is_err() || failed {
                        break;
                    }
                }
            });
            for (g, prepared) in groups.iter().zip(rx) {
                each(g, prepared?)?;
                bar.inc(g.rows);
            }
            Ok::<(), crate::error::Error>(())
        })?;
        bar.finish_and_clear();
        Ok(())
    }
}

/// The `doc_id` column of docs.parquet, by doc_idx.
pub fn read_doc_ids(ds: &Dataset) -> Result<Vec<String>> {
    let path = ds.docs_path();
    crate::panic_guard::catch(|| read_doc_ids_unguarded(ds), |m| Error::bad_parquet(&path, "damaged", m))
}

fn read_doc_ids_unguarded(ds: &Dataset) -> Result<Vec<String>> {
    use arrow_array::{Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let path = ds.docs_path();
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, "cannot open", e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::bad_parquet(&path, "cannot read", e))?;
    let leaves: Vec<usize> = builder
        .parquet_schema()
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name() == "doc_id")
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::leaves(builder.parquet_schema(), leaves);
    let reader = builder.with_projection(mask).build().map_err(|e| Error::bad_parquet(&path, "cannot read", e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_parquet(&path, "cannot read", e))?;
        let col = batch
            .column_by_name("doc_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .ok_or_else(|| Error::input(&path, crate::error::Location::File, "doc_id", "missing or not a string"))?;
        out.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    Ok(out)
}

/// Every rank's per-query hits to rank 0, merged there into the top `k` (grdr's order).
/// Ranks may hold hits for any subset of the queries (empty lists elsewhere).
pub fn gather_hits(comm: &dyn Comm, local: &[Vec<Hit>], k: usize) -> Result<Option<Vec<Vec<Hit>>>> {
    let counts: Vec<i64> = local.iter().map(|h| h.len() as i64).collect();
    let scores: Vec<f32> = local.iter().flatten().map(|h| h.score).collect();
    let docs: Vec<i64> = local.iter().flatten().map(|h| h.doc_idx).collect();
    let counts = comm.gather_to_root(&Tensor::from_slice(&counts), 0)?;
    let scores = comm.gather_to_root(&Tensor::from_slice(&scores), 0)?;
    let docs = comm.gather_to_root(&Tensor::from_slice(&docs), 0)?;
    let (Some(counts), Some(scores), Some(docs)) = (counts, scores, docs) else { return Ok(None) };
    let counts: Vec<i64> = Vec::try_from(counts).map_err(|e| Error::dist(0, format!("gathered counts: {e}")))?;
    let scores: Vec<f32> = Vec::try_from(scores).map_err(|e| Error::dist(0, format!("gathered scores: {e}")))?;
    let docs: Vec<i64> = Vec::try_from(docs).map_err(|e| Error::dist(0, format!("gathered docs: {e}")))?;
    let nq = local.len();
    let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
    let mut at = 0usize;
    for (i, &c) in counts.iter().enumerate() {
        let q = i % nq.max(1);
        for j in at..at + c as usize {
            tops[q].push(Hit { score: scores[j], doc_idx: docs[j] });
        }
        at += c as usize;
    }
    Ok(Some(tops.into_iter().map(TopK::into_sorted_vec).collect()))
}

/// Peak resident memory of this process in MiB (VmHWM), 0 where /proc is not there.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn gather_peak_rss(comm: &dyn Comm) -> Result<Vec<f64>> {
    let w = comm.world();
    let mut v = vec![0.0; w.size];
    v[w.rank] = peak_rss_mib();
    comm.all_reduce_f64(&mut v, ReduceOp::Sum)?;
    Ok(v)
}

/// Hits of every query as one byte string (f32 score, i64 doc per hit, u32 count per list).
pub fn encode_hit_lists(lists: &[Vec<Hit>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lists {
        out.extend((l.len() as u32).to_le_bytes());
        for h in l {
            out.extend(h.score.to_le_bytes());
            out.extend(h.doc_idx.to_le_bytes());
        }
    }
    out
}

pub fn decode_hit_lists(bytes: &[u8], n: usize) -> Vec<Vec<Hit>> {
    let mut at = 0usize;
    let mut take = |k: usize| {
        let s = &bytes[at..at + k];
        at += k;
        s
    };
    (0..n)
        .map(|_| {
            let c = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
            (0..c)
                .map(|_| Hit {
                    score: f32::from_le_bytes(take(4).try_into().unwrap()),
                    doc_idx: i64::from_le_bytes(take(8).try_into().unwrap()),
                })
                .collect()
        })
        .collect()
}

/// Converts to the store kind (bf16 when asked, else f32).
pub fn store_kind(opts: &EvalOptions, t: &Tensor) -> Tensor {
    t.to_kind(if opts.bf16_store { Kind::BFloat16 } else { Kind::Float })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_lists_round_trip() {
        let lists = vec![
            vec![Hit { score: 1.5, doc_idx: 3 }, Hit { score: -0.25, doc_idx: 1 << 40 }],
            vec![],
            vec![Hit { score: 0.0, doc_idx: 0 }],
        ];
        assert_eq!(decode_hit_lists(&encode_hit_lists(&lists), 3), lists);
    }

    #[test]
    fn gather_in_a_world_of_one_sorts_and_truncates() {
        let local =
            vec![vec![Hit { score: 1.0, doc_idx: 5 }, Hit { score: 2.0, doc_idx: 9 }, Hit { score: 1.0, doc_idx: 2 }]];
        let merged = gather_hits(&crate::dist::LocalComm, &local, 2).unwrap().unwrap();
        assert_eq!(merged[0], vec![Hit { score: 2.0, doc_idx: 9 }, Hit { score: 1.0, doc_idx: 2 }]);
    }

    #[test]
    fn peak_rss_is_known_on_linux() {
        assert!(peak_rss_mib() > 1.0);
    }
}
