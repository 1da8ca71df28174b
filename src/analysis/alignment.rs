//! Alignment matrices A of (query, relevant document) pairs, and for GR how much of the real
//! docid-token logits Wu et al.'s MVDR form explains.
//!
//! GR (Eq. 11–16): row i of A^{l,h} is decoder layer l, head h's cross-attention of docid
//! position i over the query tokens. The MVDR form of layer l is
//! `rel_l(d, q) = Σ_h sum(Ẽ_d^{h}ᵀ Q ⊙ A^{l,h})` with Q the encoder's output vectors and
//! `ẽ_i^{h} = W_V^{h}ᵀ W_O^{h}ᵀ u_i`, where `u_i = e_{d_i} ⊙ g / rms(x_i)` is docid token
//! d_i's output vector seen through the final RMS norm (gain g, this position's residual
//! stream x_i): exactly the *direct* contribution of layer l's cross-attention to the
//! logit of d_i, the term Eq. 12 keeps. The real logit also has every other path (the
//! embedding, self-attention, feed-forward, and layer l's output read by later layers —
//! §8's "multi-layer interactions"): `mvdr_form.parquet` puts each layer's form (and their
//! sum, layer −1) beside the real logit per position, and the summary says how much it
//! explains.
//!
//! ColBERT (§5.2.2, §7.2): S = D Qᵀ (document tokens × query tokens) of the trained token
//! vectors; q→d hard = ColBERT's MaxSim argmax per query token (column), q→d soft its
//! column-wise softmax, q←d soft/hard the row-wise softmax/argmax (GR's direction).
use serde_json::json;
use tch::{Kind, Tensor};

use super::pairs::{self, Pair};
use super::table::{Col, Table};
use super::{cpu, for_each_batch, median, pearson, AnalyzeOptions, Outcome, Plot, Sinks};
use crate::error::Result;
use crate::eval::run_eval::Context;
use crate::model::task::Net;
use crate::model::GrModel;

/// One GR pair's tensors, on the CPU, real positions only (M docid tokens, N query tokens).
pub struct GrPair {
    /// Per decoder layer: A (H, M, N).
    pub a: Vec<Tensor>,
    /// Per decoder layer: Ẽ_dᵀ Q per head (H, M, N).
    pub score: Vec<Tensor>,
    /// The real logits of the docid tokens (M).
    pub logit: Tensor,
    /// Per decoder layer: the normed states its cross-attention read (M, D).
    pub cross_input: Vec<Tensor>,
    /// The encoder's output vectors Q (N, D).
    pub enc: Tensor,
}

/// One ColBERT pair: S = D Qᵀ (M document tokens, N query tokens).
pub struct ColbertPair {
    pub s: Tensor,
}

/// Teacher-forced GR forward of `batch` with cross-attention weights, split per pair.
pub fn gr_pairs(model: &GrModel, batch: &[&Pair], device: tch::Device) -> Vec<GrPair> {
    let (q, q_mask) = pairs::padded(&batch.iter().map(|p| &p.input_ids).collect::<Vec<_>>(), 0, device);
    let (dec_in, _) = pairs::padded(&batch.iter().map(|p| &p.doc_side_ids).collect::<Vec<_>>(), 0, device);
    let (labels, _) = pairs::padded(&batch.iter().map(|p| &p.doc_labels).collect::<Vec<_>>(), 0, device);
    let enc = model.encode(&q, &q_mask, false); // (B, N, D)
    let out = model.decoder.decode(&dec_in, &enc, &q_mask, false, true);
    let e = model.output_rows_at(&labels, &dec_in); // (B, M, D): e_v (with PAWA e_v + E_v d'_i)
    let logit = (&out.hidden * &e).sum_dim_intlist(-1, false, Kind::Float); // (B, M)
    let norm = &model.decoder.final_layer_norm;
    let rms = (out.pre_norm.to_kind(Kind::Float).square().mean_dim(-1, true, Kind::Float) + norm.eps).sqrt();
    let u = &e * &norm.weight / rms; // (B, M, D)
    let weights = out.cross_attentions.expect("asked for");
    let inputs = out.cross_inputs.expect("asked for");
    let per_layer: Vec<(Tensor, Tensor)> = model
        .decoder
        .block
        .iter()
        .zip(&weights)
        .map(|(block, a)| {
            let (attn, _) = block.cross_attention.as_ref().expect("decoder block");
            let (h, k) = (attn.n_heads, attn.d_kv);
            let d = enc.size()[2];
            // ẽ_i^h = W_V^hᵀ W_O^hᵀ u_i: (B, M, D) → (B, H, M, K) → (B, H, M, D)
            let w_o = attn.o.ws.view([d, h, k]);
            let w_v = attn.v.ws.view([h, k, d]);
            let e_tilde = Tensor::einsum("bmd,dhk->bhmk", &[&u, &w_o], None::<i64>);
            let e_tilde = Tensor::einsum("bhmk,hkd->bhmd", &[&e_tilde, &w_v], None::<i64>);
            let score = e_tilde.matmul(&enc.unsqueeze(1).transpose(-1, -2)); // (B, H, M, N)
            (a.shallow_clone(), score)
        })
        .collect();
    batch
        .iter()
        .enumerate()
        .map(|(b, p)| {
            let (m, n) = (p.doc_tokens.len() as i64, p.input_ids.len() as i64);
            let b = b as i64;
            let cut = |t: &Tensor| cpu(&t.get(b).narrow(-2, 0, m).narrow(-1, 0, n));
            GrPair {
                a: per_layer.iter().map(|(a, _)| cut(a)).collect(),
                score: per_layer.iter().map(|(_, s)| cut(s)).collect(),
                logit: cpu(&logit.get(b).narrow(0, 0, m)),
                cross_input: inputs.iter().map(|x| cpu(&x.get(b).narrow(0, 0, m))).collect(),
                enc: cpu(&enc.get(b).narrow(0, 0, n)),
            }
        })
        .collect()
}

/// ColBERT token vectors of `batch` and their similarity matrices, per pair.
pub fn colbert_pairs(ctx: &Context, batch: &[&Pair]) -> Vec<ColbertPair> {
    let Net::Colbert(c) = &ctx.task.net else { unreachable!("ColBERT only") };
    let device = ctx.opts.device;
    let (q, q_mask) = pairs::padded(&batch.iter().map(|p| &p.input_ids).collect::<Vec<_>>(), 0, device);
    let (d, d_mask) = pairs::padded(&batch.iter().map(|p| &p.doc_side_ids).collect::<Vec<_>>(), 0, device);
    let (qv, _) = c.embed_queries(&q, &q_mask, false); // (B, Nq, dim)
    let (dv, _) = c.embed_docs(&d, &d_mask, false); // (B, Md, dim)
    let s = dv.matmul(&qv.transpose(1, 2)); // (B, M, N)
    batch
        .iter()
        .enumerate()
        .map(|(b, p)| ColbertPair {
            s: cpu(&s.get(b as i64).narrow(0, 0, p.doc_tokens.len() as i64).narrow(1, 0, p.input_ids.len() as i64)),
        })
        .collect()
}

/// ColBERT's four readings of S (M, N) as alignment matrices, in a fixed order.
pub fn colbert_alignments(s: &Tensor) -> Vec<(&'static str, Tensor)> {
    let m = s.size()[0];
    let n = s.size()[1];
    let col_max = s.argmax(0, false); // (N): the document token each query token picks
    let row_max = s.argmax(1, false); // (M)
    let onehot_cols = col_max.one_hot(m).transpose(0, 1).to_kind(Kind::Float); // (M, N)
    let onehot_rows = row_max.one_hot(n).to_kind(Kind::Float); // (M, N)
    vec![
        ("q2d-max", onehot_cols),
        ("q2d-soft", s.softmax(0, Kind::Float)),
        ("d2q-soft", s.softmax(1, Kind::Float)),
        ("d2q-max", onehot_rows),
    ]
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap_or_default()
}

/// Rows of `alignment.parquet` for one matrix (layer, head) of a pair.
#[allow(clippy::too_many_arguments)]
fn matrix_rows(rows: &mut AlignRows, p: &Pair, alignment: &str, layer: i32, head: i32, a: &Tensor, score: &Tensor) {
    let (m, n) = (a.size()[0] as usize, a.size()[1] as usize);
    let (w, s) = (f32s(a), f32s(score));
    for i in 0..m {
        for j in 0..n {
            rows.query_id.push(p.query_id.clone());
            rows.doc_id.push(p.doc_id.clone());
            rows.alignment.push(alignment.to_string());
            rows.layer.push(layer);
            rows.head.push(head);
            rows.row.push(i as i32);
            rows.col.push(j as i32);
            rows.weight.push(w[i * n + j]);
            rows.score.push(s[i * n + j]);
        }
    }
}

#[derive(Default)]
struct AlignRows {
    query_id: Vec<String>,
    doc_id: Vec<String>,
    alignment: Vec<String>,
    layer: Vec<i32>,
    head: Vec<i32>,
    row: Vec<i32>,
    col: Vec<i32>,
    weight: Vec<f32>,
    score: Vec<f32>,
}

impl AlignRows {
    fn table(self) -> Table {
        Table::new(vec![
            ("query_id", Col::Str(self.query_id)),
            ("doc_id", Col::Str(self.doc_id)),
            ("alignment", Col::Str(self.alignment)),
            ("layer", Col::I32(self.layer)),
            ("head", Col::I32(self.head)),
            ("row", Col::I32(self.row)),
            ("col", Col::I32(self.col)),
            ("weight", Col::F32(self.weight)),
            ("score", Col::F32(self.score)),
        ])
    }
}

/// Rows of `mvdr_form.parquet`: per pair, layer (−1: their sum) and docid position, the MVDR
/// form beside the real logit.
#[derive(Default)]
struct FormRows {
    query_id: Vec<String>,
    doc_id: Vec<String>,
    layer: Vec<i32>,
    position: Vec<i32>,
    mvdr: Vec<f32>,
    logit: Vec<f32>,
}

impl FormRows {
    fn add(&mut self, p: &Pair, g: &GrPair) {
        let logit = f32s(&g.logit);
        let per_layer: Vec<Vec<f32>> =
            g.a.iter()
                .zip(&g.score)
                .map(|(a, s)| f32s(&(a * s).sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float)))
                .collect();
        let m = logit.len();
        let total: Vec<f32> = (0..m).map(|i| per_layer.iter().map(|v| v[i]).sum()).collect();
        let layers = per_layer.iter().enumerate().map(|(l, v)| (l as i32, v)).chain(std::iter::once((-1, &total)));
        for (l, v) in layers {
            for i in 0..m {
                self.query_id.push(p.query_id.clone());
                self.doc_id.push(p.doc_id.clone());
                self.layer.push(l);
                self.position.push(i as i32);
                self.mvdr.push(v[i]);
                self.logit.push(logit[i]);
            }
        }
    }

    fn table(self) -> Table {
        Table::new(vec![
            ("query_id", Col::Str(self.query_id)),
            ("doc_id", Col::Str(self.doc_id)),
            ("layer", Col::I32(self.layer)),
            ("position", Col::I32(self.position)),
            ("mvdr", Col::F32(self.mvdr)),
            ("logit", Col::F32(self.logit)),
        ])
    }
}

/// Accumulates, per layer, the pair sums and the cells of the MVDR form and the real logit.
#[derive(Default)]
struct FormFit {
    /// layer → (pair Σ mvdr, pair Σ logit) per pair, and (cell mvdr, cell logit) per cell
    pairs: std::collections::BTreeMap<i32, (Vec<f64>, Vec<f64>)>,
    cells: std::collections::BTreeMap<i32, (Vec<f64>, Vec<f64>)>,
}

impl FormFit {
    fn add(&mut self, t: &Table) {
        let (Some(Col::Str(q)), Some(Col::Str(d)), Some(Col::I32(l)), Some(Col::F32(m)), Some(Col::F32(z))) =
            (t.col("query_id"), t.col("doc_id"), t.col("layer"), t.col("mvdr"), t.col("logit"))
        else {
            return;
        };
        let mut i = 0;
        while i < l.len() {
            let mut j = i;
            let (mut sm, mut sz) = (0.0, 0.0);
            while j < l.len() && l[j] == l[i] && q[j] == q[i] && d[j] == d[i] {
                sm += m[j] as f64;
                sz += z[j] as f64;
                let c = self.cells.entry(l[j]).or_default();
                c.0.push(m[j] as f64);
                c.1.push(z[j] as f64);
                j += 1;
            }
            let e = self.pairs.entry(l[i]).or_default();
            e.0.push(sm);
            e.1.push(sz);
            i = j;
        }
    }

    /// Per layer: correlations (pairs, cells), the median relative error of the pair sums, and
    /// R² of the identity fit over cells (the share of the logits' variance the form explains).
    fn summary(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .pairs
            .iter()
            .map(|(&l, (m, z))| {
                let (cm, cz) = &self.cells[&l];
                let rel: Vec<f64> = m.iter().zip(z).map(|(a, b)| (a - b).abs() / b.abs().max(1e-12)).collect();
                let mean = cz.iter().sum::<f64>() / cz.len().max(1) as f64;
                let ss_tot: f64 = cz.iter().map(|z| (z - mean).powi(2)).sum();
                let ss_res: f64 = cm.iter().zip(cz).map(|(a, b)| (b - a).powi(2)).sum();
                json!({
                    "layer": if l < 0 { json!("sum") } else { json!(l) },
                    "pairs": m.len(), "cells": cm.len(),
                    "corr_pairs": pearson(m, z), "corr_cells": pearson(cm, cz),
                    "median_relative_error": median(&rel),
                    "r2_identity": 1.0 - ss_res / ss_tot.max(1e-300),
                    "mean_mvdr": cm.iter().sum::<f64>() / cm.len().max(1) as f64,
                    "mean_logit": mean,
                })
            })
            .collect();
        json!(rows)
    }
}

pub fn run(ctx: &Context, opts: &AnalyzeOptions, out: Option<&std::path::Path>) -> Result<Option<Outcome>> {
    let gr = match &ctx.task.net {
        Net::Generative { model, .. } => Some(model),
        Net::Colbert(_) => None,
        Net::Dual(_) => return Err(super::needs(super::What::Alignment, "GR and ColBERT")),
    };
    let pairs = pairs::select(ctx, opts)?;
    let side = pairs::side_column(ctx);
    let batch_size = ctx.opts.batch_size.max(1);
    let n_batches = pairs.len().div_ceil(batch_size);
    let mut files =
        vec![("pairs.parquet", pairs::table(&[], side)), ("alignment.parquet", AlignRows::default().table())];
    if gr.is_some() {
        files.push(("mvdr_form.parquet", FormRows::default().table()));
    }
    let mut sinks = Sinks::new(out, files);
    let mut fit = FormFit::default();
    for_each_batch(
        ctx.comm,
        n_batches,
        "alignment",
        |b| {
            let batch: Vec<&Pair> = pairs[b * batch_size..((b + 1) * batch_size).min(pairs.len())].iter().collect();
            let mut rows = AlignRows::default();
            let mut form = FormRows::default();
            match gr {
                Some(model) => {
                    for (p, g) in batch.iter().zip(gr_pairs(model, &batch, ctx.opts.device)) {
                        for (l, (a, s)) in g.a.iter().zip(&g.score).enumerate() {
                            for h in 0..a.size()[0] {
                                matrix_rows(&mut rows, p, "cross-attention", l as i32, h as i32, &a.get(h), &s.get(h));
                            }
                        }
                        form.add(p, &g);
                    }
                }
                None => {
                    for (p, c) in batch.iter().zip(colbert_pairs(ctx, &batch)) {
                        for (name, a) in colbert_alignments(&c.s) {
                            matrix_rows(&mut rows, p, name, 0, 0, &a, &c.s);
                        }
                    }
                }
            }
            let owned: Vec<Pair> = batch.into_iter().cloned().collect();
            let mut tables = vec![pairs::table(&owned, side), rows.table()];
            if gr.is_some() {
                tables.push(form.table());
            }
            Ok(tables)
        },
        |_, tables| {
            if let Some(form) = tables.get(2) {
                fit.add(form);
            }
            for (slot, t) in sinks.sinks.iter_mut().zip(&tables) {
                if let Some((sink, _)) = slot {
                    sink.write(t)?;
                }
            }
            Ok(())
        },
    )?;
    let rows = sinks.finish()?;
    if out.is_none() {
        return Ok(None);
    }
    let mut summary = json!({
        "model": if gr.is_some() { "gr" } else { "colbert" },
        "pairs": pairs.len(),
        "rows": {"pairs": rows[0], "alignment": rows[1]},
    });
    let mut plots = vec![];
    if gr.is_some() {
        summary["rows"]["mvdr_form"] = json!(rows[2]);
        let fit_summary = fit.summary();
        let per_layer: Vec<(f64, f64, f64)> = fit_summary
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["layer"].as_f64()?, r["r2_identity"].as_f64()?, r["corr_pairs"].as_f64()?)))
            .collect();
        plots.push(Plot::Lines {
            stem: "mvdr-form-vs-layer".into(),
            title: "How much of GR's docid logits the single-layer MVDR form explains".into(),
            x_label: "decoder layer".into(),
            y_label: "agreement with the real logits".into(),
            series: vec![
                ("R² (cells, identity fit)".into(), per_layer.iter().map(|r| (r.0, r.1)).collect()),
                ("Pearson r (pair sums)".into(), per_layer.iter().map(|r| (r.0, r.2)).collect()),
            ],
        });
        summary["mvdr_form"] = fit_summary;
    }
    Ok(Some(Outcome { summary, plots }))
}
