//! The alignment matrices of one chosen pair (Wu et al. Fig. 5), tokens as axis labels.
//! GR: every layer's and head's cross-attention (head −1: the heads' mean); the drawn panel
//! is the heads' mean of one layer (`--layer`, default the last). ColBERT: its four
//! alignments; the drawn panel is the column-wise softmax of S (q→d soft), the matrix
//! whose columns MaxSim reads. `--beside DIR` draws another `grdr analyze heatmap` output's
//! panel next to this one (MVDR and GR side by side, as the figure has them).
use std::path::Path;

use arrow_array::{Array, Float32Array, Int32Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
use tch::{Kind, Tensor};

use super::alignment::{colbert_alignments, colbert_pairs, gr_pairs};
use super::pairs::{self, Pair};
use super::table::{write_table, Col, Table};
use super::{AnalyzeOptions, HeatmapPanel, Outcome, Plot};
use crate::error::{Error, Result};
use crate::eval::run_eval::Context;
use crate::model::task::Net;

#[derive(Default)]
struct Rows {
    model: Vec<String>,
    alignment: Vec<String>,
    layer: Vec<i32>,
    head: Vec<i32>,
    row: Vec<i32>,
    col: Vec<i32>,
    weight: Vec<f32>,
    row_token: Vec<String>,
    col_token: Vec<String>,
    drawn: Vec<i32>,
}

impl Rows {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        model: &str,
        alignment: &str,
        layer: i32,
        head: i32,
        a: &Tensor,
        rows: &[String],
        cols: &[String],
        drawn: bool,
    ) {
        let n = a.size()[1] as usize;
        let w = Vec::<f32>::try_from(a.to_kind(Kind::Float).contiguous().flatten(0, -1)).unwrap_or_default();
        for (i, rt) in rows.iter().enumerate() {
            for (j, ct) in cols.iter().enumerate() {
                self.model.push(model.into());
                self.alignment.push(alignment.into());
                self.layer.push(layer);
                self.head.push(head);
                self.row.push(i as i32);
                self.col.push(j as i32);
                self.weight.push(w[i * n + j]);
                self.row_token.push(rt.clone());
                self.col_token.push(ct.clone());
                self.drawn.push(drawn as i32);
            }
        }
    }

    fn table(self) -> Table {
        Table::new(vec![
            ("model", Col::Str(self.model)),
            ("alignment", Col::Str(self.alignment)),
            ("layer", Col::I32(self.layer)),
            ("head", Col::I32(self.head)),
            ("row", Col::I32(self.row)),
            ("col", Col::I32(self.col)),
            ("weight", Col::F32(self.weight)),
            ("row_token", Col::Str(self.row_token)),
            ("col_token", Col::Str(self.col_token)),
            ("drawn", Col::I32(self.drawn)),
        ])
    }
}

fn token_names(tokenizer: &tokenizers::Tokenizer, ids: &[i64]) -> Vec<String> {
    ids.iter().map(|&i| tokenizer.id_to_token(i as u32).unwrap_or_else(|| format!("#{i}"))).collect()
}

pub fn run(ctx: &Context, opts: &AnalyzeOptions, out: Option<&Path>) -> Result<Option<Outcome>> {
    if opts.query_id.is_none() || opts.doc_id.is_none() {
        return Err(Error::usage("--query-id", "heatmap draws one pair: give --query-id and --doc-id"));
    }
    let pairs = pairs::select(ctx, opts)?;
    let Some(out) = out else { return Ok(None) };
    let p: &Pair = &pairs[0];
    let tok = tokenizers::Tokenizer::from_file(&ctx.task.tokenizer_json).map_err(|e| Error::Tokenizer {
        name: ctx.task.tokenizer_json.display().to_string(),
        message: e.to_string(),
    })?;
    let (rows_t, cols_t) = (token_names(&tok, &p.doc_tokens), token_names(&tok, &p.input_ids));
    let mut rows = Rows::default();
    let (model, title, row_label) = match &ctx.task.net {
        Net::Generative { model, .. } => {
            let g = gr_pairs(model, &[p], ctx.opts.device).remove(0);
            let n_layers = g.a.len();
            let drawn = opts.layer.unwrap_or(n_layers - 1);
            if drawn >= n_layers {
                return Err(Error::usage(
                    "--layer",
                    format!("the decoder has {n_layers} layers (0..{})", n_layers - 1),
                ));
            }
            for (l, a) in g.a.iter().enumerate() {
                for h in 0..a.size()[0] {
                    rows.add("gr", "cross-attention", l as i32, h as i32, &a.get(h), &rows_t, &cols_t, false);
                }
                let mean = a.mean_dim(0, false, Kind::Float);
                rows.add("gr", "cross-attention", l as i32, -1, &mean, &rows_t, &cols_t, l == drawn);
            }
            ("gr", format!("GR cross-attention, layer {drawn}, heads' mean"), "docid tokens")
        }
        Net::Colbert(_) => {
            let c = colbert_pairs(ctx, &[p]).remove(0);
            for (name, a) in colbert_alignments(&c.s) {
                rows.add("colbert", name, 0, 0, &a, &rows_t, &cols_t, name == "q2d-soft");
            }
            ("colbert", "MVDR (ColBERT) q→d, column-wise softmax of S".to_string(), "document tokens")
        }
        Net::Dual(_) => return Err(super::needs(super::What::Heatmap, "GR and ColBERT")),
    };
    let table = rows.table();
    write_table(&out.join("heatmap.parquet"), &table)?;
    write_table(&out.join("pairs.parquet"), &pairs::table(&pairs, pairs::side_column(ctx)))?;
    let mine = panel(&table, &title, row_label)?;
    let mut panels = vec![];
    if let Some(other) = &opts.beside {
        panels.push(read_panel(other)?);
    }
    panels.push(mine);
    let summary = json!({"model": model, "query_id": p.query_id, "doc_id": p.doc_id,
        "rows": rows_t.len(), "cols": cols_t.len(), "beside": opts.beside.as_ref().map(|b| b.display().to_string())});
    let plots = vec![Plot::Heatmaps {
        stem: "heatmap".into(),
        title: format!("Alignment of query {} and document {}", p.query_id, p.doc_id),
        panels,
    }];
    Ok(Some(Outcome { summary, plots }))
}

/// The drawn matrix of a heatmap table.
fn panel(t: &Table, title: &str, row_label: &str) -> Result<HeatmapPanel> {
    let (
        Some(Col::I32(row)),
        Some(Col::I32(col)),
        Some(Col::F32(w)),
        Some(Col::Str(rt)),
        Some(Col::Str(ct)),
        Some(Col::I32(drawn)),
    ) = (t.col("row"), t.col("col"), t.col("weight"), t.col("row_token"), t.col("col_token"), t.col("drawn"))
    else {
        unreachable!("heatmap tables have these columns")
    };
    let keep: Vec<usize> = (0..row.len()).filter(|&i| drawn[i] == 1).collect();
    let m = keep.iter().map(|&i| row[i] + 1).max().unwrap_or(0) as usize;
    let n = keep.iter().map(|&i| col[i] + 1).max().unwrap_or(0) as usize;
    let mut values = vec![vec![0.0; n]; m];
    let (mut rows, mut cols) = (vec![String::new(); m], vec![String::new(); n]);
    for &i in &keep {
        values[row[i] as usize][col[i] as usize] = w[i] as f64;
        rows[row[i] as usize] = rt[i].clone();
        cols[col[i] as usize] = ct[i].clone();
    }
    Ok(HeatmapPanel {
        title: title.into(),
        row_label: row_label.into(),
        col_label: "query tokens".into(),
        rows,
        cols,
        values,
    })
}

/// The drawn panel of another heatmap output directory.
fn read_panel(dir: &Path) -> Result<HeatmapPanel> {
    let path = dir.join("heatmap.parquet");
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, "cannot open (--beside)", e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::bad_parquet(&path, "not a heatmap file", e))?;
    let mut t = Table::default();
    let mut model = String::from("?");
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_parquet(&path, "cannot read", e))?;
        let col =
            |name: &str| batch.column_by_name(name).ok_or_else(|| Error::bad_parquet(&path, "missing column", name));
        let ints = |name: &str| -> Result<Vec<i32>> {
            Ok(col(name)?.as_any().downcast_ref::<Int32Array>().map(|a| a.values().to_vec()).unwrap_or_default())
        };
        let strs = |name: &str| -> Result<Vec<String>> {
            Ok(col(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| (0..a.len()).map(|i| a.value(i).to_string()).collect())
                .unwrap_or_default())
        };
        let w = col("weight")?.as_any().downcast_ref::<Float32Array>().map(|a| a.values().to_vec()).unwrap_or_default();
        if let Some(m) = strs("model")?.first() {
            model = m.clone();
        }
        t.append(Table::new(vec![
            ("row", Col::I32(ints("row")?)),
            ("col", Col::I32(ints("col")?)),
            ("weight", Col::F32(w)),
            ("row_token", Col::Str(strs("row_token")?)),
            ("col_token", Col::Str(strs("col_token")?)),
            ("drawn", Col::I32(ints("drawn")?)),
        ]));
    }
    let (title, rows) = if model == "gr" {
        ("GR cross-attention (heads' mean)", "docid tokens")
    } else {
        ("MVDR (ColBERT) q→d, column-wise softmax of S", "document tokens")
    };
    panel(&t, title, rows)
}
