//! The sweep file (`configs/sweeps/*.toml`): a base run config, fixed overrides and axes.
//!
//! ```toml
//! name = "negatives-dr-scifact"        # default: the file name
//! base = "../runs/dr-minilm-scifact.toml"   # relative to this file
//! ranks = 2                            # world size of every point (or an axis `ranks`)
//! corpus_seed = 42                     # the permutation behind `data.corpus_docs`
//!
//! [set]                                # every point, as `grdr train --set`
//! train.max_steps = 200
//!
//! [[axis]]                             # one dimension of the grid: one key, its values
//! key = "train.num_negatives"
//! values = [1, 3, 7, 15]
//!
//! [[axis]]                             # several keys moving together (zipped): one row each
//! name = "size"                        # label in point names (default: last part of the first key)
//! keys = ["model.d_model", "model.num_layers"]
//! values = [[128, 2], [256, 4]]
//!
//! [slurm]                              # overrides of the cluster profile for this sweep
//! time = "04:00:00"
//! ```
//!
//! Points are the product of the axes (the first axis varies slowest). Besides run-config
//! keys, three keys are the sweep's own: `base` (a base config per value, e.g. DR vs GR),
//! `ranks` (world size) and `data.corpus_docs` (a nested corpus subsample of that many
//! documents; see `subsample.rs`). They may also appear in `[set]` (except `base`/`ranks`,
//! which are top-level keys).
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::sweep::profile::SlurmOptions;

/// The key of a base-config axis: each value is a run config file (relative to the sweep file).
pub const KEY_BASE: &str = "base";
/// The key of a world-size axis.
pub const KEY_RANKS: &str = "ranks";
/// The key of a corpus-size axis: documents kept in a nested subsample.
pub const KEY_CORPUS_DOCS: &str = "data.corpus_docs";

/// The file as written (serde); [`SweepSpec::load`] checks it and normalises the axes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: Option<String>,
    base: Option<String>,
    ranks: Option<usize>,
    #[serde(default = "default_corpus_seed")]
    corpus_seed: u64,
    #[serde(default)]
    set: toml::Table,
    #[serde(default, rename = "axis")]
    axes: Vec<AxisFile>,
    #[serde(default)]
    slurm: SlurmOptions,
}

fn default_corpus_seed() -> u64 {
    42
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisFile {
    name: Option<String>,
    key: Option<String>,
    keys: Option<Vec<String>>,
    values: Vec<toml::Value>,
}

/// One grid dimension: `keys` move together; `rows[i][k]` is the value of `keys[k]` at step i.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Label in point names.
    pub label: String,
    pub keys: Vec<String>,
    pub rows: Vec<Vec<toml::Value>>,
}

/// A checked sweep file.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// The file it came from (as given) and its text (copied to SWEEPDIR/sweep.toml).
    pub path: PathBuf,
    pub text: String,
    pub name: String,
    /// Base config, already joined to the sweep file's directory; None when an axis sets `base`.
    pub base: Option<PathBuf>,
    pub ranks: Option<usize>,
    pub corpus_seed: u64,
    /// `[set]` flattened to (`section.key`, value), in key order.
    pub set: Vec<(String, toml::Value)>,
    pub axes: Vec<Axis>,
    pub slurm: SlurmOptions,
}

impl SweepSpec {
    pub fn load(path: &Path) -> Result<SweepSpec> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::read_text(path, "cannot read the sweep file", e))?;
        Self::parse(&text, path)
    }

    /// Parses sweep-file text; `path` names it in errors and anchors relative base paths.
    pub fn parse(text: &str, path: &Path) -> Result<SweepSpec> {
        let origin = path.display().to_string();
        let bad = |m: String| Error::usage(origin.clone(), m);
        let file: SpecFile = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let name = match file.name {
            Some(n) => n,
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into()),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(bad(format!("name `{name}`: use letters, digits, `.`, `_` and `-` (it names jobs and files)")));
        }
        if file.ranks == Some(0) {
            return Err(bad("ranks: must be at least 1".into()));
        }

        let mut set = Vec::new();
        flatten("", &file.set, &mut set);
        for (key, _) in &set {
            if key == KEY_BASE || key == KEY_RANKS {
                return Err(bad(format!("[set] {key}: `{key}` is a top-level key of the sweep file, not a --set")));
            }
            if !key.contains('.') {
                return Err(bad(format!("[set] {key}: expected section.key (e.g. train.max_steps = 100)")));
            }
        }

        let mut axes = Vec::new();
        for (i, a) in file.axes.into_iter().enumerate() {
            axes.push(check_axis(a, i).map_err(&bad)?);
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for a in &axes {
            for k in &a.keys {
                if let Some((_, other)) = seen.iter().find(|(key, _)| *key == k.as_str()) {
                    return Err(bad(format!("axis `{}` and axis `{other}` both set `{k}`", a.label)));
                }
                if set.iter().any(|(s, _)| s == k) {
                    return Err(bad(format!("`{k}` is both in [set] and an axis")));
                }
                seen.push((k.as_str(), a.label.as_str()));
            }
        }
        for (i, a) in axes.iter().enumerate() {
            if let Some(b) = axes[..i].iter().find(|b| b.label == a.label) {
                return Err(bad(format!(
                    "axes `{}` and `{}` share the label `{}` in point names: give one a `name`",
                    b.keys[0], a.keys[0], a.label
                )));
            }
        }
        let base_axis = axes.iter().any(|a| a.keys.iter().any(|k| k == KEY_BASE));
        let base = match (&file.base, base_axis) {
            (Some(_), true) => return Err(bad("`base` is set both at the top and as an axis".into())),
            (None, false) => return Err(bad("`base` missing: the run config every point starts from".into())),
            (Some(b), false) => Some(dir.join(b)),
            (None, true) => None,
        };
        if file.ranks.is_some() && seen.iter().any(|(k, _)| *k == KEY_RANKS) {
            return Err(bad("`ranks` is set both at the top and as an axis".into()));
        }
        Ok(SweepSpec {
            path: path.to_path_buf(),
            text: text.to_string(),
            name,
            base,
            ranks: file.ranks,
            corpus_seed: file.corpus_seed,
            set,
            axes,
            slurm: file.slurm,
        })
    }

    /// The directory base paths are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    /// Every axis key in axis order (zipped keys in their order): `sweep.json`'s `axes`.
    pub fn axis_keys(&self) -> Vec<String> {
        self.axes.iter().flat_map(|a| a.keys.iter().cloned()).collect()
    }
}

/// `[set]` as TOML nests dotted keys (`train.max_steps = 1` is `{train: {max_steps: 1}}`);
/// back to `section.key` paths, the form `--set` takes.
pub(crate) fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

fn check_axis(a: AxisFile, i: usize) -> std::result::Result<Axis, String> {
    let at = |key: &str| format!("axis {} (`{key}`)", i + 1);
    let (keys, rows) = match (a.key, a.keys) {
        (Some(_), Some(_)) => return Err(format!("axis {}: give `key` or `keys`, not both", i + 1)),
        (None, None) => return Err(format!("axis {}: `key` (or `keys` for zipped keys) missing", i + 1)),
        (Some(k), None) => {
            let rows = a.values.into_iter().map(|v| vec![v]).collect::<Vec<_>>();
            (vec![k], rows)
        }
        (None, Some(keys)) => {
            if keys.is_empty() {
                return Err(format!("axis {}: `keys` is empty", i + 1));
            }
            let mut rows = Vec::new();
            for (j, v) in a.values.into_iter().enumerate() {
                match v {
                    toml::Value::Array(row) if row.len() == keys.len() => rows.push(row),
                    other => {
                        return Err(format!(
                            "{}: value {} is {other}, expected a list of {} values (one per key: {})",
                            at(&keys[0]),
                            j + 1,
                            keys.len(),
                            keys.join(", ")
                        ))
                    }
                }
            }
            (keys, rows)
        }
    };
    for k in &keys {
        if k != KEY_BASE && k != KEY_RANKS && (k.split('.').count() != 2 || k.split('.').any(str::is_empty)) {
            return Err(format!("{}: expected section.key (e.g. train.num_negatives), `base` or `ranks`", at(k)));
        }
    }
    if rows.is_empty() {
        return Err(format!("{}: `values` is empty", at(&keys[0])));
    }
    for (j, row) in rows.iter().enumerate() {
        for (k, v) in keys.iter().zip(row) {
            let ok = match k.as_str() {
                KEY_BASE => v.is_str(),
                KEY_RANKS | KEY_CORPUS_DOCS => v.as_integer().is_some_and(|n| n >= 1),
                _ => true,
            };
            if !ok {
                let want = if k == KEY_BASE { "a run config path" } else { "a positive integer" };
                return Err(format!("{}: value {} is {v}, expected {want}", at(k), j + 1));
            }
        }
        if rows[..j].contains(row) {
            return Err(format!("{}: value {} repeats an earlier one", at(&keys[0]), j + 1));
        }
    }
    let label = a.name.unwrap_or_else(|| keys[0].rsplit('.').next().expect("non-empty").to_string());
    if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(format!("{}: name `{label}`: use letters, digits, `.`, `_`, `-`", at(&keys[0])));
    }
    Ok(Axis { label, keys, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SweepSpec> {
        SweepSpec::parse(text, Path::new("configs/sweeps/t.toml"))
    }

    #[test]
    fn axes_sets_and_zips_are_normalised() {
        let s = parse(
            "base = \"../runs/a.toml\"\nranks = 2\n[set]\ntrain.max_steps = 5\ndata.corpus_docs = 100\n\
             [[axis]]\nkey = \"train.num_negatives\"\nvalues = [1, 3]\n\
             [[axis]]\nname = \"size\"\nkeys = [\"model.d_model\", \"model.num_layers\"]\nvalues = [[64, 1], [128, 2]]\n",
        )
        .unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.base.as_deref(), Some(Path::new("configs/sweeps/../runs/a.toml")));
        assert_eq!(s.set.len(), 2);
        assert_eq!(s.set[1].0, "train.max_steps");
        assert_eq!(s.axes[0].label, "num_negatives");
        assert_eq!(s.axes[1].label, "size");
        assert_eq!(s.axes[1].rows[1], vec![toml::Value::Integer(128), toml::Value::Integer(2)]);
        assert_eq!(s.axis_keys(), vec!["train.num_negatives", "model.d_model", "model.num_layers"]);
    }

    #[test]
    fn bad_specs_name_the_file_and_the_key() {
        let cases = [
            ("base = \"a.toml\"\nbogus = 1\n", "bogus"),
            ("base = \"a.toml\"\n[[axis]]\nkey = \"train.lr\"\nvalues = []\n", "train.lr"),
            ("base = \"a.toml\"\n[[axis]]\nkey = \"lr\"\nvalues = [1]\n", "lr"),
            ("base = \"a.toml\"\n[[axis]]\nkey = \"train.lr\"\nvalue = [1]\n", "value"),
            ("base = \"a.toml\"\n[[axis]]\nkeys = [\"train.lr\", \"train.seed\"]\nvalues = [[1]]\n", "train.lr"),
            ("base = \"a.toml\"\n[[axis]]\nkey = \"data.corpus_docs\"\nvalues = [0]\n", "data.corpus_docs"),
            ("base = \"a.toml\"\n[[axis]]\nkey = \"train.lr\"\nvalues = [1, 1]\n", "repeats"),
            ("[[axis]]\nkey = \"train.lr\"\nvalues = [1]\n", "base"),
            ("base = \"a.toml\"\n[set]\ntrain.lr = 1\n[[axis]]\nkey = \"train.lr\"\nvalues = [2]\n", "train.lr"),
            (
                "base = \"a.toml\"\n[[axis]]\nkey = \"a.dim\"\nvalues = [2]\n[[axis]]\nkey = \"b.dim\"\nvalues = [2]\n",
                "label",
            ),
            ("base = \"a.toml\"\n[slurm]\npartitoin = \"x\"\n", "partitoin"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("configs/sweeps/t.toml") && msg.contains(needle), "{text:?}: {msg}");
            assert_eq!(err.exit_code(), crate::error::exit_code::USAGE);
        }
    }
}
