//! DR's rank bottleneck (Zhang et al. Corollary 3.3): the query × document score matrix of a
//! dual encoder has rank at most its embedding dimension, whatever the corpus needs. We
//! compute S = Q Dᵀ over the split's judged queries and a document sample (evenly spaced
//! doc_idx, `--docs`), its singular values, and three ranks: the numerical rank (σ_k >
//! σ₁·1e-6), the entropy-based effective rank exp(H(σ/Σσ)) (Roy & Vetterli 2007) and the
//! stable rank Σσ²/σ₁². A sweep over `model.dim` then plots effective rank against dimension.
use serde_json::json;
use tch::Tensor;

use super::table::{write_table, Col, Table};
use super::{for_each_batch, AnalyzeOptions, Outcome, Plot};
use crate::data::batch::DocStore;
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::model::task::Net;

/// Singular values (descending) of `s` and its (numerical, effective, stable) ranks.
pub fn spectrum(s: &Tensor) -> (Vec<f64>, usize, f64, f64) {
    let sv = super::singular_values(s);
    let top = sv.first().copied().unwrap_or(0.0);
    let numerical = sv.iter().filter(|&&x| x > top * 1e-6).count();
    let total: f64 = sv.iter().sum();
    let entropy: f64 = sv.iter().map(|&x| x / total.max(1e-300)).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    let stable = sv.iter().map(|x| x * x).sum::<f64>() / (top * top).max(1e-300);
    (sv, numerical, entropy.exp(), stable)
}

/// Embeds `ids` in fixed batches dealt to the ranks; rank 0 gets every row, in order.
fn embed_all(ctx: &Context, ids: &[Vec<i64>], label: &str) -> Result<Option<Tensor>> {
    let Net::Dual(dual) = &ctx.task.net else { unreachable!("DR only") };
    let bs = ctx.opts.batch_size.max(1);
    let mut rows: Vec<f32> = Vec::new();
    let mut dim = 0;
    for_each_batch(
        ctx.comm,
        ids.len().div_ceil(bs),
        label,
        |b| {
            let chunk = &ids[b * bs..((b + 1) * bs).min(ids.len())];
            let (t, m) = ctx.query_tok.batch(chunk, ctx.opts.device);
            let e = super::cpu(&dual.embed(&t, &m, false)); // (B, dim)
            Ok(vec![Table::new(vec![
                ("dim", Col::I32(vec![e.size()[1] as i32])),
                ("values", Col::F32(Vec::<f32>::try_from(e.flatten(0, -1)).unwrap_or_default())),
            ])])
        },
        |_, tables| {
            if let (Some(Col::I32(d)), Some(Col::F32(v))) = (tables[0].col("dim"), tables[0].col("values")) {
                dim = d[0] as i64;
                rows.extend(v);
            }
            Ok(())
        },
    )?;
    if !ctx.comm.world().is_coordinator() {
        return Ok(None);
    }
    Ok(Some(Tensor::from_slice(&rows).view([-1, dim.max(1)])))
}

pub fn run(ctx: &Context, opts: &AnalyzeOptions, out: Option<&std::path::Path>) -> Result<Option<Outcome>> {
    if !matches!(ctx.task.net, Net::Dual(_)) {
        return Err(super::needs(super::What::Spectrum, "DR (dual-encoder)"));
    }
    if opts.docs == 0 {
        return Err(Error::usage("--docs", "must be at least 1"));
    }
    let n_q = opts.limit.unwrap_or(usize::MAX).min(ctx.queries.len());
    let query_ids: Vec<Vec<i64>> = ctx.query_ids()?.into_iter().take(n_q).collect();
    let n_docs = ctx.n_docs();
    let k = opts.docs.min(n_docs);
    let sample: Vec<usize> = (0..k).map(|i| i * n_docs / k).collect();
    let mut store = DocStore::new(&ctx.ds.docs_path(), ctx.groups.clone(), 2);
    let texts: Vec<String> = sample.iter().map(|&d| store.text(d as u32)).collect::<Result<_>>()?;
    let doc_ids = ctx.doc_tok.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>())?;
    let q = embed_all(ctx, &query_ids, "embed queries")?;
    let d = embed_all(ctx, &doc_ids, "embed docs")?;
    let (Some(q), Some(d), Some(out)) = (q, d, out) else { return Ok(None) };
    let s = q.matmul(&d.tr()); // (queries, docs)
    let (sv, numerical, effective, stable) = spectrum(&s);
    let total: f64 = sv.iter().sum();
    let table = Table::new(vec![
        ("index", Col::I32((1..=sv.len() as i32).collect())),
        ("singular_value", Col::F64(sv.clone())),
        ("normalized", Col::F64(sv.iter().map(|x| x / sv[0].max(1e-300)).collect())),
        ("share", Col::F64(sv.iter().map(|x| x / total.max(1e-300)).collect())),
    ]);
    write_table(&out.join("spectrum.parquet"), &table)?;
    let dim = q.size()[1];
    let summary = json!({
        "model": "dr", "queries": q.size()[0], "docs": d.size()[0], "dim": dim,
        "numerical_rank": numerical, "effective_rank": effective, "stable_rank": stable,
        "max_possible_rank": dim.min(q.size()[0]).min(d.size()[0]),
        "doc_sample": "evenly spaced doc_idx: i·N/k",
    });
    let plots = vec![Plot::Lines {
        stem: "spectrum".into(),
        title: format!("Singular values of the query × document score matrix (dim {dim})"),
        x_label: "index".into(),
        y_label: "σ_k / σ_1".into(),
        series: vec![(
            "σ_k / σ_1".into(),
            sv.iter().enumerate().map(|(i, x)| ((i + 1) as f64, x / sv[0].max(1e-300))).collect(),
        )],
    }];
    Ok(Some(Outcome { summary, plots }))
}

/// One row per sweep point: its name, swept `model.dim` and the ranks of its spectrum.
pub fn sweep_table(points: &[(String, Option<f64>, serde_json::Value)]) -> Table {
    let f = |key: &str| Col::F64(points.iter().map(|(_, _, s)| s[key].as_f64().unwrap_or(f64::NAN)).collect());
    Table::new(vec![
        ("point", Col::Str(points.iter().map(|p| p.0.clone()).collect())),
        ("model_dim", Col::F64(points.iter().map(|p| p.1.unwrap_or(f64::NAN)).collect())),
        ("dim", f("dim")),
        ("effective_rank", f("effective_rank")),
        ("stable_rank", f("stable_rank")),
        ("numerical_rank", f("numerical_rank")),
        ("max_possible_rank", f("max_possible_rank")),
    ])
}

/// Effective (and numerical) rank against the embedding dimension, with the dimension
/// itself as the bound the corollary states.
pub fn sweep_plots(points: &[(String, Option<f64>, serde_json::Value)]) -> Vec<Plot> {
    let mut pts: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|(_, _, s)| {
            Some((s["dim"].as_f64()?, s["effective_rank"].as_f64()?, s["numerical_rank"].as_f64()?))
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    vec![Plot::Lines {
        stem: "effective-rank-vs-dim".into(),
        title: "Rank of the query × document score matrix against the embedding dimension".into(),
        x_label: "embedding dimension".into(),
        y_label: "rank".into(),
        series: vec![
            ("numerical rank (σ > σ₁·1e-6)".into(), pts.iter().map(|p| (p.0, p.2)).collect()),
            ("effective rank exp H(σ/Σσ)".into(), pts.iter().map(|p| (p.0, p.1)).collect()),
            ("dimension (the bound)".into(), pts.iter().map(|p| (p.0, p.0)).collect()),
        ],
    }]
}
