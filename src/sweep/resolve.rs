//! From a grid point to the run config `grdr train` will read: base config ← `[set]` ←
//! command-line `--set` ← the point's axis values, parsed and validated by
//! [`RunConfig::load`] exactly as `grdr train --set` would (no second override parser).
//! The sweep's own keys are taken out first: `base` picks the file, `ranks` the world size,
//! `data.corpus_docs` swaps `data.path` (and a GR run's `docids.path`) for the sample's.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::{ModelKind, RunConfig};
use crate::data::docid::DocidTable;
use crate::error::{Error, Result};
use crate::sweep::grid::{self, GridPoint};
use crate::sweep::layout::{PointEntry, SweepDir};
use crate::sweep::spec::{SweepSpec, KEY_BASE, KEY_CORPUS_DOCS, KEY_RANKS};
use crate::sweep::subsample;

/// A nested corpus sample a point trains on.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusSample {
    pub docs: usize,
    /// The full dataset (the base config's `data.path`, absolute).
    pub source: PathBuf,
    /// `SWEEPDIR/data/docs-<N>` (absolute).
    pub dir: PathBuf,
    /// GR: the full corpus's docid file and the sample's (inside `dir`).
    pub docids: Option<(PathBuf, PathBuf)>,
}

/// A point ready to be written: its config and what the backends need.
#[derive(Debug, Clone)]
pub struct ResolvedPoint {
    pub grid: GridPoint,
    pub base: PathBuf,
    pub config: RunConfig,
    /// From the sweep (top-level or axis); None = the backend's default.
    pub ranks: Option<usize>,
    pub corpus: Option<CorpusSample>,
    pub family: String,
}

impl ResolvedPoint {
    pub fn name(&self) -> &str {
        &self.grid.name
    }

    /// The point's `sweep.json` entry (`ranks` as the backend settled it).
    pub fn entry(&self, ranks: usize) -> PointEntry {
        let values = self
            .grid
            .values
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).expect("TOML values are JSON values")))
            .collect();
        PointEntry {
            name: self.grid.name.clone(),
            index: self.grid.index,
            values,
            family: self.family.clone(),
            ranks,
            dir: SweepDir::point_rel(&self.grid.name),
        }
    }
}

/// `section.key=value` in the form `--set` parses (the value written as TOML).
fn set_arg(key: &str, v: &toml::Value) -> String {
    format!("{key}={v}")
}

fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// Resolves every point of `spec`; `cli_sets` are `grdr sweep --set` overrides, `sweep_dir`
/// the absolute SWEEPDIR, `cwd` the directory relative data paths are taken from.
pub fn resolve_all(spec: &SweepSpec, cli_sets: &[String], sweep_dir: &Path, cwd: &Path) -> Result<Vec<ResolvedPoint>> {
    let origin = spec.path.display().to_string();
    let axis_keys = spec.axis_keys();
    let mut fixed_corpus = spec.set.iter().find(|(k, _)| k == KEY_CORPUS_DOCS).map(|(_, v)| v.clone());
    let mut fixed: Vec<String> =
        spec.set.iter().filter(|(k, _)| k != KEY_CORPUS_DOCS).map(|(k, v)| set_arg(k, v)).collect();
    for s in cli_sets {
        let (key, raw) = s.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((s.as_str(), ""));
        if axis_keys.iter().any(|k| k == key) {
            return Err(Error::usage("--set", format!("`{key}` is an axis of {origin}: it cannot also be fixed")));
        }
        if key == KEY_CORPUS_DOCS {
            let n = raw.parse::<i64>().map_err(|_| Error::usage("--set", format!("`{s}`: expected a number")))?;
            fixed_corpus = Some(toml::Value::Integer(n));
        } else {
            fixed.push(s.clone());
        }
    }

    // Each axis row on the base first (the other axes at their first row, since a value may
    // need another axis's to be valid), so a bad key or value is reported as the axis's, not
    // as some combination's. With a `base` axis, a row is bad when no base accepts it.
    let bases: Vec<PathBuf> = match &spec.base {
        Some(b) => vec![b.clone()],
        None => spec
            .axes
            .iter()
            .filter_map(|a| a.keys.iter().position(|k| k == KEY_BASE).map(|i| (a, i)))
            .flat_map(|(a, i)| a.rows.iter().map(move |r| spec.dir().join(r[i].as_str().unwrap_or_default())))
            .collect(),
    };
    let plain = |k: &str| ![KEY_BASE, KEY_RANKS, KEY_CORPUS_DOCS].contains(&k);
    for (ai, a) in spec.axes.iter().enumerate() {
        let others: Vec<String> = (spec.axes.iter().enumerate())
            .filter(|(j, _)| *j != ai)
            .flat_map(|(_, o)| o.keys.iter().zip(&o.rows[0]))
            .filter(|(k, _)| plain(k))
            .map(|(k, v)| set_arg(k, v))
            .collect();
        for row in &a.rows {
            let mut row_bases = bases.clone();
            let mut sets = fixed.clone();
            sets.extend(others.iter().cloned());
            for (k, v) in a.keys.iter().zip(row) {
                match k.as_str() {
                    KEY_BASE => row_bases = vec![spec.dir().join(v.as_str().unwrap_or_default())],
                    KEY_RANKS | KEY_CORPUS_DOCS => {}
                    _ => sets.push(set_arg(k, v)),
                }
            }
            let mut first_err = None;
            let accepted = row_bases.iter().any(|b| match RunConfig::load(b, &sets) {
                Ok(_) => true,
                Err(e) => {
                    first_err.get_or_insert(e);
                    false
                }
            });
            if let (false, Some(e)) = (accepted, first_err) {
                let shown: Vec<String> = a.keys.iter().zip(row).map(|(k, v)| format!("{k} = {v}")).collect();
                let option = format!("{origin}: axis `{}` ({})", a.keys.join("`, `"), shown.join(", "));
                return Err(Error::usage(option, e.to_string()));
            }
        }
    }

    let mut out = Vec::new();
    // Reading a GR docid file for its scheme once per file, not once per point.
    let mut families: HashMap<Option<PathBuf>, String> = Default::default();
    for g in grid::expand(&spec.axes) {
        let at = |e: Error| Error::usage(format!("{origin}: point {}", g.name), e.to_string());
        let mut base = spec.base.clone();
        let mut ranks = spec.ranks;
        let mut corpus_docs = fixed_corpus.clone();
        let mut sets = fixed.clone();
        for (k, v) in &g.values {
            match k.as_str() {
                KEY_BASE => base = Some(spec.dir().join(v.as_str().expect("checked: a string"))),
                KEY_RANKS => ranks = v.as_integer().map(|n| n as usize),
                KEY_CORPUS_DOCS => corpus_docs = Some(v.clone()),
                _ => sets.push(set_arg(k, v)),
            }
        }
        let base = base.expect("checked: a base at the top or on an axis");
        let mut config = RunConfig::load(&base, &sets).map_err(at)?;
        config.data.path = absolute(&config.data.path, cwd);
        config.docids.path = config.docids.path.as_deref().map(|p| absolute(p, cwd));
        let family = match config.model.kind {
            ModelKind::Generative => {
                families.entry(config.docids.path.clone()).or_insert_with(|| family(&config)).clone()
            }
            _ => family(&config),
        };
        let corpus = match corpus_docs {
            None => None,
            Some(v) => {
                let n = v.as_integer().filter(|&n| n >= 1).ok_or_else(|| {
                    at(Error::usage(KEY_CORPUS_DOCS, format!("{v} is not a positive number of documents")))
                })? as usize;
                let sample = corpus_sample(&config, n, sweep_dir).map_err(at)?;
                config.data.path = sample.dir.clone();
                config.docids.path = sample.docids.as_ref().map(|(_, p)| p.clone());
                config.validate().map_err(at)?;
                Some(sample)
            }
        };
        out.push(ResolvedPoint { grid: g, base, config, ranks, corpus, family });
    }
    name_sample_dirs(&mut out, sweep_dir);
    Ok(out)
}

/// `dr`, `colbert`, `gr-<scheme>`: from the model kind and, for GR, the docid file's scheme.
pub fn family(config: &RunConfig) -> String {
    match config.model.kind {
        ModelKind::Dual => "dr".into(),
        ModelKind::Colbert => "colbert".into(),
        ModelKind::Generative => match config.docids.path.as_deref().map(DocidTable::read) {
            Some(Ok(t)) => format!("gr-{}", format!("{:?}", t.meta.scheme).to_lowercase()),
            _ => "gr".into(),
        },
    }
}

fn corpus_sample(config: &RunConfig, n: usize, sweep_dir: &Path) -> Result<CorpusSample> {
    subsample::check_size(&config.data.path, n)?;
    let dir = sweep_dir.join(crate::sweep::layout::DATA_DIR).join(format!("docs-{n}"));
    let docids = config.docids.path.as_ref().map(|full| {
        let stem = full.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "docids".into());
        (full.clone(), dir.join(format!("{stem}.parquet")))
    });
    Ok(CorpusSample { docs: n, source: config.data.path.clone(), dir, docids })
}

/// Samples of the same size from different source datasets get different directories
/// (`docs-<N>` for the first source, `docs-<N>-<source dir name>` after).
fn name_sample_dirs(points: &mut [ResolvedPoint], sweep_dir: &Path) {
    let mut sources: Vec<PathBuf> = Vec::new();
    for p in points.iter() {
        if let Some(c) = &p.corpus {
            if !sources.contains(&c.source) {
                sources.push(c.source.clone());
            }
        }
    }
    if sources.len() <= 1 {
        return;
    }
    for p in points.iter_mut() {
        let Some(c) = p.corpus.as_mut() else { continue };
        let i = sources.iter().position(|s| *s == c.source).expect("collected");
        if i == 0 {
            continue;
        }
        let tag = grid::name_fragment(
            "",
            &toml::Value::String(c.source.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
        );
        let dir = sweep_dir.join(crate::sweep::layout::DATA_DIR).join(format!("docs-{}-{tag}{i}", c.docs));
        if let Some((_, d)) = c.docids.as_mut() {
            *d = dir.join(d.file_name().expect("a file"));
        }
        c.dir = dir;
        p.config.data.path = c.dir.clone();
        p.config.docids.path = c.docids.as_ref().map(|(_, d)| d.clone());
    }
}
