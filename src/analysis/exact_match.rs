//! Exact term matching in the alignment (Wu et al. §7.2, Figs. 2–3), per IDF bucket.
//!
//! For a pair's alignment matrix A (document tokens × query tokens):
//! - q→d (one value per query term j, ColBERT): *hard* = 1 when the document token MaxSim
//!   picks for j is j's own token id; *soft* = the column-wise softmax mass on the document
//!   tokens with j's id.
//! - d→q (one value per document term i): *soft* = the row's alignment mass on the query
//!   tokens with i's id (GR: the cross-attention, heads averaged, per layer and over all
//!   layers as layer −1; ColBERT: the row-wise softmax of S); *hard* = 1 when the row's
//!   argmax is such a token.
//!
//! Values are averaged over the tokens of every (query, relevant document) pair — the
//! paper averages over candidate documents; we use the relevant ones, so the rate reads
//! "when the right document is aligned" — and bucketed by the token's corpus IDF into
//! equal-count buckets, each beside its *chance* rate: the value a uniform alignment would
//! give (the share of same-id tokens on the other side). Terms are tokens that are not
//! special; for GR the document tokens are the docid's tokens, so this is for text docids
//! (title, n-gram).
use std::collections::BTreeMap;

use serde_json::json;
use tch::{Kind, Tensor};

use super::alignment::{colbert_alignments, colbert_pairs, gr_pairs};
use super::idf::Idf;
use super::pairs::{self, Pair};
use super::table::{write_table, Col, Table};
use super::{for_each_batch, AnalyzeOptions, Outcome, Plot, Sinks};
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::model::task::Net;

/// One token's value: (model, direction, mode, layer) group, pair, position, token, value.
#[derive(Default)]
struct TokenRows {
    query_id: Vec<String>,
    doc_id: Vec<String>,
    model: Vec<String>,
    direction: Vec<String>,
    mode: Vec<String>,
    layer: Vec<i32>,
    position: Vec<i32>,
    token: Vec<i32>,
    value: Vec<f32>,
    /// The value of a uniform alignment: the share of same-id tokens on the other side.
    chance: Vec<f32>,
}

impl TokenRows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        p: &Pair,
        model: &str,
        direction: &str,
        mode: &str,
        layer: i32,
        position: usize,
        token: i64,
        v: f32,
    ) {
        let (same, len) = match direction {
            "d2q" => (p.input_ids.iter().filter(|&&q| q == token).count(), p.input_ids.len()),
            _ => (p.doc_tokens.iter().filter(|&&d| d == token).count(), p.doc_tokens.len()),
        };
        self.chance.push(same as f32 / len.max(1) as f32);
        self.query_id.push(p.query_id.clone());
        self.doc_id.push(p.doc_id.clone());
        self.model.push(model.into());
        self.direction.push(direction.into());
        self.mode.push(mode.into());
        self.layer.push(layer);
        self.position.push(position as i32);
        self.token.push(token as i32);
        self.value.push(v);
    }

    fn table(self) -> Table {
        Table::new(vec![
            ("query_id", Col::Str(self.query_id)),
            ("doc_id", Col::Str(self.doc_id)),
            ("model", Col::Str(self.model)),
            ("direction", Col::Str(self.direction)),
            ("mode", Col::Str(self.mode)),
            ("layer", Col::I32(self.layer)),
            ("position", Col::I32(self.position)),
            ("token", Col::I32(self.token)),
            ("value", Col::F32(self.value)),
            ("chance", Col::F32(self.chance)),
        ])
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().flatten(0, -1)).unwrap_or_default()
}

/// d→q values of A (M, N): per document term i, soft = Σ_j A_ij [q_j = d_i], hard = [q_argmax = d_i].
fn doc_to_query(rows: &mut TokenRows, p: &Pair, model: &str, layer: i32, a: &Tensor, is_term: &dyn Fn(i64) -> bool) {
    let n = a.size()[1] as usize;
    let w = f32s(a);
    for (i, &d) in p.doc_tokens.iter().enumerate() {
        if !is_term(d) {
            continue;
        }
        let row = &w[i * n..(i + 1) * n];
        // `+ 0.0`: an empty f32 sum is −0.0.
        let soft: f32 = (0..n).filter(|&j| p.input_ids[j] == d).map(|j| row[j]).sum::<f32>() + 0.0;
        let arg = (0..n).fold(0, |best, j| if row[j] > row[best] { j } else { best });
        rows.push(p, model, "d2q", "soft", layer, i, d, soft);
        rows.push(p, model, "d2q", "hard", layer, i, d, (p.input_ids[arg] == d) as u8 as f32);
    }
}

/// q→d values: per query term j, hard from MaxSim's pick, soft = Σ_i softmax_col(S)_ij [d_i = q_j].
fn query_to_doc(rows: &mut TokenRows, p: &Pair, hard: &Tensor, soft: &Tensor, is_term: &dyn Fn(i64) -> bool) {
    let n = soft.size()[1] as usize;
    let (h, s) = (f32s(hard), f32s(soft));
    for (j, &q) in p.input_ids.iter().enumerate() {
        if !is_term(q) {
            continue;
        }
        let matching = p.doc_tokens.iter().enumerate().filter(|(_, &d)| d == q);
        let (mut soft_v, mut hard_v) = (0.0f32, 0.0f32);
        for (i, _) in matching {
            soft_v += s[i * n + j];
            hard_v += h[i * n + j];
        }
        rows.push(p, "colbert", "q2d", "soft", 0, j, q, soft_v);
        rows.push(p, "colbert", "q2d", "hard", 0, j, q, hard_v);
    }
}

/// (model, direction, mode, layer): the token values of one group are bucketed together.
type Group<'a> = (&'a str, &'a str, &'a str, i32);

/// Rows of `exact_match.parquet`.
#[derive(Default)]
struct BucketRows {
    model: Vec<String>,
    direction: Vec<String>,
    mode: Vec<String>,
    layer: Vec<i32>,
    bucket: Vec<i32>,
    idf_lo: Vec<f64>,
    idf_hi: Vec<f64>,
    rate: Vec<f64>,
    chance: Vec<f64>,
    tokens: Vec<i32>,
}

impl BucketRows {
    /// One bucket: `chunk` holds its (idf, value, chance) triples, sorted by idf.
    fn push(&mut self, (model, direction, mode, layer): Group, bucket: usize, chunk: &[(f64, f64, f64)]) {
        self.model.push(model.into());
        self.direction.push(direction.into());
        self.mode.push(mode.into());
        self.layer.push(layer);
        self.bucket.push(bucket as i32);
        self.idf_lo.push(chunk[0].0);
        self.idf_hi.push(chunk[chunk.len() - 1].0);
        self.rate.push(chunk.iter().map(|x| x.1).sum::<f64>() / chunk.len() as f64);
        self.chance.push(chunk.iter().map(|x| x.2).sum::<f64>() / chunk.len() as f64);
        self.tokens.push(chunk.len() as i32);
    }

    fn table(self) -> Table {
        Table::new(vec![
            ("model", Col::Str(self.model)),
            ("direction", Col::Str(self.direction)),
            ("mode", Col::Str(self.mode)),
            ("layer", Col::I32(self.layer)),
            ("bucket", Col::I32(self.bucket)),
            ("idf_lo", Col::F64(self.idf_lo)),
            ("idf_hi", Col::F64(self.idf_hi)),
            ("rate", Col::F64(self.rate)),
            ("chance", Col::F64(self.chance)),
            ("tokens", Col::I32(self.tokens)),
        ])
    }
}

/// Equal-count IDF buckets of each (model, direction, mode, layer) group's token values.
fn bucketize(tokens: &Table, idf: &Idf, buckets: usize) -> (Table, serde_json::Value) {
    let (Some(Col::Str(model)), Some(Col::Str(dir)), Some(Col::Str(mode)), Some(Col::I32(layer))) =
        (tokens.col("model"), tokens.col("direction"), tokens.col("mode"), tokens.col("layer"))
    else {
        unreachable!("token rows have these columns")
    };
    let (Some(Col::I32(tok)), Some(Col::F32(val)), Some(Col::F32(chance))) =
        (tokens.col("token"), tokens.col("value"), tokens.col("chance"))
    else {
        unreachable!("token rows have these columns")
    };
    let mut groups: BTreeMap<Group, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for i in 0..tok.len() {
        groups.entry((&model[i], &dir[i], &mode[i], layer[i])).or_default().push((
            idf.idf(tok[i] as i64),
            val[i] as f64,
            chance[i] as f64,
        ));
    }
    let mut rows = BucketRows::default();
    let mut overall = vec![];
    for ((m, d, md, l), mut v) in groups {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = v.len();
        let k = buckets.min(n).max(1);
        for b in 0..k {
            let chunk = &v[b * n / k..(b + 1) * n / k];
            if !chunk.is_empty() {
                rows.push((m, d, md, l), b, chunk);
            }
        }
        overall.push(json!({"model": m, "direction": d, "mode": md, "layer": l, "tokens": n,
            "rate": v.iter().map(|x| x.1).sum::<f64>() / n.max(1) as f64,
            "chance": v.iter().map(|x| x.2).sum::<f64>() / n.max(1) as f64}));
    }
    let table = rows.table();
    (table, json!(overall))
}

/// Lines of rate against IDF bucket (equal-count buckets, rarest last) per group worth
/// drawing: ColBERT's four, and GR's over all layers. The bucket index is the x axis (the
/// buckets' IDF edges are in the table): IDF edges crowd at the common end.
fn plots(buckets: &Table) -> Vec<Plot> {
    let (Some(Col::Str(model)), Some(Col::Str(dir)), Some(Col::Str(mode)), Some(Col::I32(layer))) =
        (buckets.col("model"), buckets.col("direction"), buckets.col("mode"), buckets.col("layer"))
    else {
        return vec![];
    };
    let (Some(Col::I32(bucket)), Some(Col::F64(rate))) = (buckets.col("bucket"), buckets.col("rate")) else {
        return vec![];
    };
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for i in 0..rate.len() {
        if layer[i] >= 0 && model[i] == "gr" {
            continue;
        }
        let name = format!("{} {} {}", model[i], dir[i].replace('2', "→"), mode[i]);
        series.entry(name).or_default().push((bucket[i] as f64, rate[i]));
    }
    vec![Plot::Lines {
        stem: "exact-match-vs-idf".into(),
        title: "Exact-match rate of the alignment by token IDF".into(),
        x_label: "IDF bucket (equal token counts, common → rare)".into(),
        y_label: "exact-match rate".into(),
        series: series.into_iter().collect(),
    }]
}

pub fn run(ctx: &Context, opts: &AnalyzeOptions, out: Option<&std::path::Path>) -> Result<Option<Outcome>> {
    let gr = match &ctx.task.net {
        Net::Generative { model, .. } => {
            let table = ctx.docids()?;
            if !table.meta.scheme.is_text() {
                return Err(Error::usage(
                    "--run",
                    format!(
                        "exact match needs text docids (title, ngram): this model's are {:?}, whose tokens are not document tokens",
                        table.meta.scheme
                    ),
                ));
            }
            Some(model)
        }
        Net::Colbert(_) => None,
        Net::Dual(_) => return Err(super::needs(super::What::ExactMatch, "ColBERT and text-docid GR")),
    };
    if opts.buckets == 0 {
        return Err(Error::usage("--buckets", "must be at least 1"));
    }
    // Every rank needs the special tokens; the IDF itself is counted on rank 0 only.
    let idf = Idf::load(ctx, out.is_some())?;
    let is_term = |t: i64| idf.is_term(t);
    let pairs = pairs::select(ctx, opts)?;
    let side = pairs::side_column(ctx);
    let batch_size = ctx.opts.batch_size.max(1);
    let n_batches = pairs.len().div_ceil(batch_size);
    let mut sinks = Sinks::new(out, vec![("pairs.parquet", pairs::table(&[], side))]);
    let mut tokens = TokenRows::default().table();
    for_each_batch(
        ctx.comm,
        n_batches,
        "exact match",
        |b| {
            let batch: Vec<&Pair> = pairs[b * batch_size..((b + 1) * batch_size).min(pairs.len())].iter().collect();
            let mut rows = TokenRows::default();
            match gr {
                Some(model) => {
                    for (p, g) in batch.iter().zip(gr_pairs(model, &batch, ctx.opts.device)) {
                        let means: Vec<Tensor> = g.a.iter().map(|a| a.mean_dim(0, false, Kind::Float)).collect();
                        for (l, a) in means.iter().enumerate() {
                            doc_to_query(&mut rows, p, "gr", l as i32, a, &is_term);
                        }
                        let all = Tensor::stack(&means, 0).mean_dim(0, false, Kind::Float);
                        doc_to_query(&mut rows, p, "gr", -1, &all, &is_term);
                    }
                }
                None => {
                    for (p, c) in batch.iter().zip(colbert_pairs(ctx, &batch)) {
                        let a: BTreeMap<&str, Tensor> = colbert_alignments(&c.s).into_iter().collect();
                        query_to_doc(&mut rows, p, &a["q2d-max"], &a["q2d-soft"], &is_term);
                        doc_to_query(&mut rows, p, "colbert", 0, &a["d2q-soft"], &is_term);
                    }
                }
            }
            let owned: Vec<Pair> = batch.into_iter().cloned().collect();
            Ok(vec![pairs::table(&owned, side), rows.table()])
        },
        |_, mut tables| {
            let t = tables.pop().expect("two tables");
            tokens.append(t);
            if let Some((sink, _)) = &mut sinks.sinks[0] {
                sink.write(&tables[0])?;
            }
            Ok(())
        },
    )?;
    sinks.finish()?;
    let Some(out) = out else { return Ok(None) };
    // (ColBERT's d→q hard values come from the soft matrix's row argmax: the same as `d2q-max`.)
    let (buckets, overall) = bucketize(&tokens, &idf, opts.buckets);
    write_table(&out.join("exact_match.parquet"), &buckets)?;
    write_table(&out.join("exact_match_tokens.parquet"), &tokens)?;
    write_table(&out.join("idf.parquet"), &idf.table())?;
    let summary = json!({
        "model": if gr.is_some() { "gr" } else { "colbert" },
        "pairs": pairs.len(),
        "buckets": opts.buckets,
        "idf": {"n_docs": idf.n_docs, "formula": "ln(N / max(df, 1))", "special_tokens_excluded": idf.special.len()},
        "rates": overall,
    });
    Ok(Some(Outcome { summary, plots: plots(&buckets) }))
}
