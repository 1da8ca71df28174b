//! Which library multiplies an f32 product on the CPU: MKL (libtorch's `linear`) or oneDNN
//! (`mkldnn_linear`), chosen per product by measurement, because the faster one depends on
//! the CPU family: on AMD EPYC (Zen 5) MKL takes an AVX2 path and oneDNN is 1.5–2× faster;
//! on Intel Xeon with AVX-512 MKL has its own AVX-512 kernels (docs/BENCHMARKS.md).
//!
//! ```text
//! GRDR_GEMM=mkl | onednn   every product on that library
//! GRDR_GEMM=auto (default) the table `grdr tune` measured on this CPU, from
//!                          $GRDR_CACHE/gemm/<cpu key>.json, else the built-in rule
//! ```
//! A product is looked up by (pass, row class, in, out): `forward` (no gradient: evaluation,
//! decoding) or `training` (forward + both backward products), rows `few` (< 64: decoding
//! steps), `some` (< 1024) or `many`; a shape the table lacks takes the backend that won
//! most of the table's products of its pass and row class. The choice is read once per
//! process, so every product of a run (and of its resume, unless re-tuned in between) goes
//! the same way.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuInfo;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// libtorch's `linear`: MKL's sgemm on x86 CPUs.
    Mkl,
    /// oneDNN's inner product (`mkldnn_linear`, differentiable).
    Onednn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    Forward,
    Training,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rows {
    Few,
    Some,
    Many,
}

impl Rows {
    pub fn of(rows: i64) -> Rows {
        match rows {
            r if r < 64 => Rows::Few,
            r if r < 1024 => Rows::Some,
            _ => Rows::Many,
        }
    }

    /// The row count `grdr tune` measures a class at.
    pub fn representative(self) -> i64 {
        match self {
            Rows::Few => 16,
            Rows::Some => 256,
            Rows::Many => 2048,
        }
    }
}

/// One measured product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub pass: Pass,
    pub rows: Rows,
    pub d_in: i64,
    pub d_out: i64,
    /// Median milliseconds per call (training: forward + backward).
    pub mkl_ms: f64,
    pub onednn_ms: f64,
}

impl Measured {
    pub fn winner(&self) -> Backend {
        if self.onednn_ms < self.mkl_ms {
            Backend::Onednn
        } else {
            Backend::Mkl
        }
    }
}

/// What `grdr tune` writes: the CPU it ran on, its threads, and the products it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub cpu: String,
    pub threads: i32,
    pub products: Vec<Measured>,
}

/// The process's choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// `GRDR_GEMM=mkl|onednn`.
    Forced(Backend),
    /// A `grdr tune` table for this CPU, resolved once into lookups.
    Tuned(PathBuf, Resolved),
    /// Neither: the built-in rule for this CPU family.
    Rule,
}

/// A table as products look it up: the winner of each measured shape, and of each
/// (pass, row class) by majority for the shapes not measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    table: Table,
    shapes: HashMap<(Pass, Rows, i64, i64), Backend>,
    majority: HashMap<(Pass, Rows), Backend>,
}

impl Resolved {
    pub fn new(table: Table) -> Resolved {
        let mut shapes = HashMap::new();
        let mut votes: HashMap<(Pass, Rows), (usize, usize)> = HashMap::new(); // (oneDNN, all)
        for m in &table.products {
            // The first measurement of a shape decides it, as a scan would.
            shapes.entry((m.pass, m.rows, m.d_in, m.d_out)).or_insert(m.winner());
            let v = votes.entry((m.pass, m.rows)).or_insert((0, 0));
            *v = (v.0 + usize::from(m.winner() == Backend::Onednn), v.1 + 1);
        }
        let majority =
            votes.into_iter().map(|(k, (o, a))| (k, if 2 * o > a { Backend::Onednn } else { Backend::Mkl })).collect();
        Resolved { table, shapes, majority }
    }
}

/// Where `grdr tune` keeps the table of `cpu`: one file per CPU model and flags.
pub fn table_path(cpu: &CpuInfo) -> PathBuf {
    let key: String = format!("{}-{}", cpu.model, cpu.flag_list())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    crate::assets::cache_dir().join("gemm").join(format!("{key}.json"))
}

/// Reads `GRDR_GEMM`; a value other than mkl, onednn or auto is a usage error.
pub fn forced_by_env() -> Result<Option<Backend>> {
    match std::env::var("GRDR_GEMM").ok().as_deref().map(str::trim) {
        None | Some("") | Some("auto") => Ok(None),
        Some("mkl") => Ok(Some(Backend::Mkl)),
        Some("onednn") => Ok(Some(Backend::Onednn)),
        Some(other) => Err(Error::usage("GRDR_GEMM", format!("`{other}`: expected mkl, onednn or auto"))),
    }
}

impl Choice {
    /// The choice for this process: `GRDR_GEMM`, else this CPU's tuned table, else the rule.
    /// A damaged table is ignored with a warning (it only ever changes speed).
    pub fn load() -> Result<Choice> {
        if let Some(b) = forced_by_env()? {
            return Ok(Choice::Forced(b));
        }
        let path = table_path(crate::cpu::this());
        match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<Table>(&text) {
                Ok(t) => Ok(Choice::Tuned(path, Resolved::new(t))),
                Err(e) => {
                    tracing::warn!(
                        "{}: not a gemm table ({e}); using the built-in rule (re-run `grdr tune`)",
                        path.display()
                    );
                    Ok(Choice::Rule)
                }
            },
            Err(_) => Ok(Choice::Rule),
        }
    }

    /// The backend of one product.
    pub fn pick(&self, pass: Pass, rows: i64, d_in: i64, d_out: i64) -> Backend {
        match self {
            Choice::Forced(b) => *b,
            Choice::Rule => rule(crate::cpu::this(), rows, d_out),
            Choice::Tuned(_, r) => {
                let class = Rows::of(rows);
                r.shapes
                    .get(&(pass, class, d_in, d_out))
                    .or_else(|| r.majority.get(&(pass, class)))
                    .copied()
                    .unwrap_or_else(|| rule(crate::cpu::this(), rows, d_out))
            }
        }
    }

    /// For `grdr info` and logs.
    pub fn describe(&self) -> String {
        match self {
            Choice::Forced(b) => format!("{b:?} for every product (GRDR_GEMM)").to_lowercase(),
            Choice::Tuned(path, Resolved { table: t, .. }) => {
                let onednn = t.products.iter().filter(|m| m.winner() == Backend::Onednn).count();
                format!(
                    "measured by `grdr tune` ({}): oneDNN for {onednn} of {} products, MKL for the rest",
                    path.display(),
                    t.products.len()
                )
            }
            Choice::Rule => format!(
                "built-in rule for {} ({}; `grdr tune` measures this CPU)",
                crate::cpu::this().vendor,
                rule_text(crate::cpu::this())
            ),
        }
    }
}

/// Products below this many rows go to MKL under the AMD rule: oneDNN spends ~50 µs a call
/// before it multiplies (1 thread, AMD EPYC Zen 5)…
const ONEDNN_MIN_ROWS: i64 = 64;
/// …unless the output is vocabulary-wide, where oneDNN won at any row count there
/// (24 × 256 · 256 × 32,261: 3.8 ms against 7.3; `scripts/bench-eval`'s beam search).
const ONEDNN_MIN_OUT: i64 = 4096;

/// Without a table: oneDNN where it was measured faster (AMD, whose MKL path is AVX2, or
/// any CPU without AVX-512), MKL on Intel with AVX-512.
fn rule(cpu: &CpuInfo, rows: i64, d_out: i64) -> Backend {
    if mkl_is_native(cpu) || (rows < ONEDNN_MIN_ROWS && d_out < ONEDNN_MIN_OUT) {
        Backend::Mkl
    } else {
        Backend::Onednn
    }
}

/// Intel's MKL has AVX-512 kernels of its own; elsewhere it takes an AVX2 path.
fn mkl_is_native(cpu: &CpuInfo) -> bool {
    cpu.vendor == "GenuineIntel" && cpu.avx512f
}

fn rule_text(cpu: &CpuInfo) -> &'static str {
    if mkl_is_native(cpu) {
        "MKL for every product"
    } else {
        "oneDNN from 64 rows or 4,096 outputs, MKL below"
    }
}

thread_local! {
    static FORCED_HERE: std::cell::Cell<Option<Backend>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every measured-choice product on this thread going to `backend` (tests run
/// the models' parity checks under both libraries this way).
pub fn with_backend<T>(backend: Backend, f: impl FnOnce() -> T) -> T {
    let prev = FORCED_HERE.with(|c| c.replace(Some(backend)));
    let out = f();
    FORCED_HERE.with(|c| c.set(prev));
    out
}

/// The backend of one product: this thread's [`with_backend`], else the process's choice.
pub fn pick(pass: Pass, rows: i64, d_in: i64, d_out: i64) -> Backend {
    FORCED_HERE.with(|c| c.get()).unwrap_or_else(|| choice().pick(pass, rows, d_in, d_out))
}

/// The process's choice, loaded on first use (`GRDR_GEMM` was checked at start-up by
/// [`forced_by_env`], so a bad value never reaches here; should it, the rule applies).
pub fn choice() -> &'static Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    CHOICE.get_or_init(|| Choice::load().unwrap_or(Choice::Rule))
}

/// Times one product under both libraries: the median of `reps` calls after one warm-up
/// (training: the forward and both backward products, as a layer's step does).
pub fn measure(pass: Pass, rows: Rows, d_in: i64, d_out: i64, reps: usize) -> Measured {
    use tch::{Device, Kind, Tensor};
    let n = rows.representative();
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([n, d_in], opts);
    let w = Tensor::randn([d_out, d_in], opts) * (1.0 / (d_in as f64).sqrt());
    let b = Tensor::zeros([d_out], opts);
    let time = |gemm: super::gemm::Gemm| -> f64 {
        let mut ms: Vec<f64> = (0..=reps)
            .map(|_| {
                let start = std::time::Instant::now();
                match pass {
                    Pass::Forward => {
                        let _y = tch::no_grad(|| gemm.matmul_t(&x, &w, Some(&b)));
                    }
                    Pass::Training => {
                        let (x, w, b) = (
                            x.detach().requires_grad_(true),
                            w.detach().requires_grad_(true),
                            b.detach().requires_grad_(true),
                        );
                        gemm.matmul_t(&x, &w, Some(&b)).sum(Kind::Float).backward();
                    }
                }
                start.elapsed().as_secs_f64() * 1e3
            })
            .skip(1)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms[ms.len() / 2]
    };
    let mkl_ms = time(super::gemm::Gemm::Linear);
    let onednn_ms = time(super::gemm::Gemm::OneDnn);
    Measured { pass, rows, d_in, d_out, mkl_ms, onednn_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pass: Pass, rows: Rows, d_in: i64, d_out: i64, mkl: f64, onednn: f64) -> Measured {
        Measured { pass, rows, d_in, d_out, mkl_ms: mkl, onednn_ms: onednn }
    }

    #[test]
    fn a_table_decides_its_shapes_and_its_majority_the_rest() {
        let table = Table {
            cpu: "test".into(),
            threads: 2,
            products: vec![
                m(Pass::Training, Rows::Many, 384, 384, 2.0, 1.0),
                m(Pass::Training, Rows::Many, 384, 1536, 2.0, 1.0),
                m(Pass::Training, Rows::Many, 1536, 384, 1.0, 2.0),
                m(Pass::Forward, Rows::Few, 384, 384, 1.0, 2.0),
            ],
        };
        let c = Choice::Tuned(PathBuf::from("t.json"), Resolved::new(table));
        assert_eq!(c.pick(Pass::Training, 4096, 1536, 384), Backend::Mkl);
        assert_eq!(c.pick(Pass::Training, 4096, 384, 384), Backend::Onednn);
        // Not measured: two of three `training, many` products went to oneDNN.
        assert_eq!(c.pick(Pass::Training, 2000, 768, 768), Backend::Onednn);
        assert_eq!(c.pick(Pass::Forward, 8, 768, 768), Backend::Mkl);
        assert_eq!(Choice::Forced(Backend::Onednn).pick(Pass::Forward, 1, 1, 1), Backend::Onednn);
    }

    #[test]
    fn the_rule_follows_the_cpu_family() {
        let intel = CpuInfo::parse("vendor_id : GenuineIntel\nflags : avx2 avx512f amx_bf16\n");
        let amd = CpuInfo::parse("vendor_id : AuthenticAMD\nflags : avx2 avx512f\n");
        assert_eq!(rule(&intel, 4096, 384), Backend::Mkl);
        assert_eq!(rule(&amd, 4096, 384), Backend::Onednn);
        assert_eq!(rule(&amd, 16, 384), Backend::Mkl);
        assert_eq!(rule(&amd, 16, 32128), Backend::Onednn);
        assert_eq!(Rows::of(63), Rows::Few);
        assert_eq!(Rows::of(1024), Rows::Many);
    }
}
