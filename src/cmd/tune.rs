//! `grdr tune`: measures, on this CPU, which library multiplies each product of the models
//! faster — MKL (libtorch's `linear`) or oneDNN — forward and for training, and keeps the
//! table where every later run on this CPU model reads it (`model/gemm_choice.rs`).
use clap::Args;

use crate::error::{Error, Result};
use crate::model::gemm_choice::{self, Measured, Pass, Rows, Table};

#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Model widths to measure, as d_model:d_ff (the linear layers d→d, d→d_ff, d_ff→d).
    /// Default: the shipped configs' T5 from scratch (256:1024), MiniLM (384:1536) and
    /// T5-base (768:3072).
    #[arg(long, value_delimiter = ',', default_value = "256:1024,384:1536,768:3072")]
    pub dims: Vec<String>,
    /// Vocabulary size of the GR output layer (d→vocab, measured for decoding and
    /// training row counts); 0 skips it.
    #[arg(long, default_value_t = 32128)]
    pub vocab: i64,
    /// Timed calls per product and library (the median counts).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Intra-op threads (default: what a run uses, libtorch's default or OMP_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Print the table without saving it.
    #[arg(long)]
    pub dry_run: bool,
}

impl TuneArgs {
    pub fn run(&self) -> Result<()> {
        if !tch::utils::has_mkldnn() {
            return Err(Error::usage("grdr tune", "this libtorch has no oneDNN: every product uses MKL"));
        }
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        let shapes = self.shapes()?;
        let cpu = crate::cpu::this();
        println!("CPU: {}, {} threads", cpu.describe(), tch::get_num_threads());
        println!("\n| pass | rows | in → out | MKL ms | oneDNN ms | oneDNN / MKL speed | faster |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        let bar = crate::progress::bar(shapes.len() as u64, "tune");
        let mut products = Vec::with_capacity(shapes.len());
        for (pass, rows, d_in, d_out) in shapes {
            let m = gemm_choice::measure(pass, rows, d_in, d_out, self.reps);
            bar.suspend(|| println!("{}", row(&m)));
            bar.inc(1);
            products.push(m);
        }
        bar.finish_and_clear();
        let table = Table { cpu: cpu.describe(), threads: tch::get_num_threads(), products };
        if self.dry_run {
            return Ok(());
        }
        let path = gemm_choice::table_path(cpu);
        crate::atomic::write_json(&path, &table)?;
        println!("\nsaved {}: runs on this CPU model now use it (GRDR_GEMM=mkl|onednn overrides)", path.display());
        Ok(())
    }

    /// (pass, rows, in, out) of every product to measure.
    fn shapes(&self) -> Result<Vec<(Pass, Rows, i64, i64)>> {
        let mut layers: Vec<(i64, i64)> = Vec::new();
        for spec in &self.dims {
            let bad = || Error::usage("--dims", format!("`{spec}`: expected d_model:d_ff, e.g. 384:1536"));
            let (d, f) = spec.split_once(':').ok_or_else(bad)?;
            let (d, f): (i64, i64) = (d.trim().parse().map_err(|_| bad())?, f.trim().parse().map_err(|_| bad())?);
            if d <= 0 || f <= 0 {
                return Err(bad());
            }
            for layer in [(d, d), (d, f), (f, d)] {
                if !layers.contains(&layer) {
                    layers.push(layer);
                }
            }
        }
        let mut shapes = Vec::new();
        for pass in [Pass::Forward, Pass::Training] {
            for rows in [Rows::Few, Rows::Some, Rows::Many] {
                shapes.extend(layers.iter().map(|&(i, o)| (pass, rows, i, o)));
            }
            if self.vocab > 0 {
                // The output layer: every width, at decoding and GR-batch row counts.
                let widths: Vec<i64> = layers.iter().filter(|l| l.0 == l.1).map(|l| l.0).collect();
                for rows in [Rows::Few, Rows::Some] {
                    shapes.extend(widths.iter().map(|&d| (pass, rows, d, self.vocab)));
                }
            }
        }
        Ok(shapes)
    }
}

fn row(m: &Measured) -> String {
    format!(
        "| {:?} | {:?} ({}) | {} → {} | {:.3} | {:.3} | {:.2}× | {:?} |",
        m.pass,
        m.rows,
        m.rows.representative(),
        m.d_in,
        m.d_out,
        m.mkl_ms,
        m.onednn_ms,
        m.mkl_ms / m.onednn_ms,
        m.winner()
    )
    .to_lowercase()
}
