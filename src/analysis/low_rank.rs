//! The low-rank nature of GR's alignment (Wu et al. Lemma 5.1, Appendix B, Fig. 4).
//!
//! For decoder layer l, head h, a pair's A = softmax_row(D̂ W Qᵀ) with D̂ the normed decoder
//! states the cross-attention reads (M, D), Q the encoder output (N, D) and W = W_Qᵀ W_K
//! (D × D, rank d_kv). Appendix B writes D̂ = 1 d̄ᵀ + R_d with d̄ the row mean (the minimiser
//! of ‖D̂ − 1dᵀ‖_F); the row-constant part of the scores cancels in the row softmax, leaving
//! A = softmax_row(1 d̄ᵀ W Qᵀ + R_d W Qᵀ). The rank-one R keeps the first term: every row is
//! r = softmax(d̄ᵀ W Qᵀ), R = 1 rᵀ. We report ‖A − R‖_F against ‖W‖_F (and ‖W‖₂), the
//! relative error ‖A − R‖_F / ‖A‖_F, and for comparison the best rank-one approximation's
//! error (SVD: √(Σ_{k≥2} σ_k²)). The scores are rebuilt from the model's own projections and
//! checked against the attention it returned (`max_rebuild_error` in the summary).
use std::collections::BTreeMap;

use serde_json::json;
use tch::{Kind, Tensor};

use super::alignment::gr_pairs;
use super::pairs::{self, Pair};
use super::table::{Col, Table};
use super::{for_each_batch, AnalyzeOptions, Outcome, Plot, Sinks};
use crate::error::Result;
use crate::eval::run_eval::Context;
use crate::model::task::Net;

#[derive(Default)]
struct Rows {
    query_id: Vec<String>,
    doc_id: Vec<String>,
    layer: Vec<i32>,
    head: Vec<i32>,
    rows: Vec<i32>,
    cols: Vec<i32>,
    norm_w: Vec<f64>,
    norm_w_spectral: Vec<f64>,
    norm_a: Vec<f64>,
    err_r: Vec<f64>,
    err_svd1: Vec<f64>,
    rebuild: Vec<f64>,
}

impl Rows {
    fn table(self) -> Table {
        let rel = |e: &[f64]| Col::F64(e.iter().zip(&self.norm_a).map(|(e, a)| e / a.max(1e-300)).collect());
        let (rel_r, rel_svd) = (rel(&self.err_r), rel(&self.err_svd1));
        Table::new(vec![
            ("query_id", Col::Str(self.query_id)),
            ("doc_id", Col::Str(self.doc_id)),
            ("layer", Col::I32(self.layer)),
            ("head", Col::I32(self.head)),
            ("rows", Col::I32(self.rows)),
            ("cols", Col::I32(self.cols)),
            ("norm_w", Col::F64(self.norm_w)),
            ("norm_w_spectral", Col::F64(self.norm_w_spectral)),
            ("norm_a", Col::F64(self.norm_a)),
            ("err_r", Col::F64(self.err_r)),
            ("err_svd1", Col::F64(self.err_svd1)),
            ("rel_err_r", rel_r),
            ("rel_err_svd1", rel_svd),
            ("max_rebuild_error", Col::F64(self.rebuild)),
        ])
    }
}

/// R = 1 rᵀ with r = softmax(d̄ᵀ W Qᵀ), from a head's projected queries q (M, K) and keys k (N, K).
pub fn rank_one(q: &Tensor, k: &Tensor) -> Tensor {
    let m = q.size()[0];
    let r = q.mean_dim(0, true, Kind::Double).matmul(&k.to_kind(Kind::Double).tr()).softmax(-1, Kind::Double); // (1, N)
    r.expand([m, -1], false)
}

/// ‖A − A₁‖_F of the best rank-one A₁: √(Σ_{k≥2} σ_k²).
pub fn svd_rank_one_error(a: &Tensor) -> f64 {
    let s = super::singular_values(a);
    s.iter().skip(1).map(|x| x * x).sum::<f64>().sqrt()
}

fn fro(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).square().sum(Kind::Double).sqrt().double_value(&[])
}

pub fn run(ctx: &Context, opts: &AnalyzeOptions, out: Option<&std::path::Path>) -> Result<Option<Outcome>> {
    let Net::Generative { model, .. } = &ctx.task.net else {
        return Err(super::needs(super::What::LowRank, "GR"));
    };
    // Per layer and head: W_Q^h (K, D), W_K^h (K, D), and ‖W_Q^hᵀ W_K^h‖ (Frobenius, spectral).
    let heads: Vec<Vec<(Tensor, Tensor, f64, f64)>> = model
        .decoder
        .block
        .iter()
        .map(|block| {
            let (attn, _) = block.cross_attention.as_ref().expect("decoder block");
            let (h, k) = (attn.n_heads, attn.d_kv);
            let wq = super::cpu(&attn.q.ws).view([h, k, -1]);
            let wk = super::cpu(&attn.k.ws).view([h, k, -1]);
            (0..h)
                .map(|i| {
                    let w = wq.get(i).tr().to_kind(Kind::Double).matmul(&wk.get(i).to_kind(Kind::Double)); // (D, D)
                    let spectral = super::singular_values(&w);
                    (wq.get(i), wk.get(i), fro(&w), spectral.first().copied().unwrap_or(0.0))
                })
                .collect()
        })
        .collect();
    let pairs = pairs::select(ctx, opts)?;
    let side = pairs::side_column(ctx);
    let batch_size = ctx.opts.batch_size.max(1);
    let n_batches = pairs.len().div_ceil(batch_size);
    let mut sinks = Sinks::new(
        out,
        vec![("pairs.parquet", pairs::table(&[], side)), ("low_rank.parquet", Rows::default().table())],
    );
    // layer → (Σ ‖W‖, Σ ‖A−R‖, Σ ‖A−A₁‖, Σ rel R, Σ rel SVD, count); worst rebuild error
    let mut per_layer: BTreeMap<i32, [f64; 6]> = BTreeMap::new();
    let mut worst_rebuild = 0.0f64;
    for_each_batch(
        ctx.comm,
        n_batches,
        "low rank",
        |b| {
            let batch: Vec<&Pair> = pairs[b * batch_size..((b + 1) * batch_size).min(pairs.len())].iter().collect();
            let mut rows = Rows::default();
            for (p, g) in batch.iter().zip(gr_pairs(model, &batch, ctx.opts.device)) {
                for (l, a_layer) in g.a.iter().enumerate() {
                    for (h, (wq, wk, norm_w, spectral)) in heads[l].iter().enumerate() {
                        let a = a_layer.get(h as i64).to_kind(Kind::Double);
                        let q = g.cross_input[l].matmul(&wq.tr()); // (M, K)
                        let k = g.enc.matmul(&wk.tr()); // (N, K)
                        let rebuilt =
                            q.to_kind(Kind::Double).matmul(&k.to_kind(Kind::Double).tr()).softmax(-1, Kind::Double);
                        let r = rank_one(&q, &k);
                        rows.query_id.push(p.query_id.clone());
                        rows.doc_id.push(p.doc_id.clone());
                        rows.layer.push(l as i32);
                        rows.head.push(h as i32);
                        rows.rows.push(a.size()[0] as i32);
                        rows.cols.push(a.size()[1] as i32);
                        rows.norm_w.push(*norm_w);
                        rows.norm_w_spectral.push(*spectral);
                        rows.norm_a.push(fro(&a));
                        rows.err_r.push(fro(&(&a - r)));
                        rows.err_svd1.push(svd_rank_one_error(&a));
                        rows.rebuild.push((rebuilt - &a).abs().max().double_value(&[]));
                    }
                }
            }
            let owned: Vec<Pair> = batch.into_iter().cloned().collect();
            Ok(vec![pairs::table(&owned, side), rows.table()])
        },
        |_, tables| {
            if let (
                Some(Col::I32(layer)),
                Some(Col::F64(w)),
                Some(Col::F64(er)),
                Some(Col::F64(es)),
                Some(Col::F64(rr)),
                Some(Col::F64(rs)),
                Some(Col::F64(rb)),
            ) = (
                tables[1].col("layer"),
                tables[1].col("norm_w"),
                tables[1].col("err_r"),
                tables[1].col("err_svd1"),
                tables[1].col("rel_err_r"),
                tables[1].col("rel_err_svd1"),
                tables[1].col("max_rebuild_error"),
            ) {
                for i in 0..layer.len() {
                    let e = per_layer.entry(layer[i]).or_default();
                    for (slot, v) in e.iter_mut().zip([w[i], er[i], es[i], rr[i], rs[i], 1.0]) {
                        *slot += v;
                    }
                    worst_rebuild = worst_rebuild.max(rb[i]);
                }
            }
            for (slot, t) in sinks.sinks.iter_mut().zip(&tables) {
                if let Some((sink, _)) = slot {
                    sink.write(t)?;
                }
            }
            Ok(())
        },
    )?;
    sinks.finish()?;
    if out.is_none() {
        return Ok(None);
    }
    let mean = |l: &[f64; 6], i: usize| l[i] / l[5].max(1.0);
    let layers: Vec<serde_json::Value> = per_layer
        .iter()
        .map(|(l, v)| {
            json!({"layer": l, "matrices": v[5], "mean_norm_w": mean(v, 0), "mean_err_r": mean(v, 1),
                "mean_err_svd1": mean(v, 2), "mean_rel_err_r": mean(v, 3), "mean_rel_err_svd1": mean(v, 4)})
        })
        .collect();
    let line = |i: usize| per_layer.iter().map(|(l, v)| (*l as f64, mean(v, i))).collect::<Vec<_>>();
    let plots = vec![
        Plot::Lines {
            stem: "low-rank-norms-vs-layer".into(),
            title: "Lemma 5.1: ‖A − R‖ against ‖W‖ (means over pairs and heads)".into(),
            x_label: "decoder layer".into(),
            y_label: "Frobenius norm".into(),
            series: vec![
                ("‖W‖ = ‖W_Qᵀ W_K‖".into(), line(0)),
                ("‖A − R‖ (Appendix B's R)".into(), line(1)),
                ("‖A − A₁‖ (best rank one)".into(), line(2)),
            ],
        },
        Plot::Lines {
            stem: "low-rank-relative-error-vs-layer".into(),
            title: "Relative error of rank-one approximations of GR's A".into(),
            x_label: "decoder layer".into(),
            y_label: "‖A − R‖ / ‖A‖".into(),
            series: vec![("Appendix B's R".into(), line(3)), ("best rank one (SVD)".into(), line(4))],
        },
    ];
    let summary = json!({"model": "gr", "pairs": pairs.len(), "layers": layers, "max_rebuild_error": worst_rebuild});
    Ok(Some(Outcome { summary, plots }))
}
