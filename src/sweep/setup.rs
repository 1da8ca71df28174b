//! Writing SWEEPDIR (layout in `layout.rs`) for resolved points, idempotently: a second
//! `grdr sweep` over the same directory keeps every unchanged point (its run, checkpoints
//! and state) and refuses a point whose resolved config changed — the results of two
//! different configs must never mix under one name — unless `--overwrite` resets it.
use std::collections::BTreeSet;

use crate::config::RunConfig;
use crate::data::docid::DocidTable;
use crate::error::{Error, Result};
use crate::sweep::layout::{AxisGroup, PointState, State, SweepDir, SweepManifest, SWEEP_TOML};
use crate::sweep::resolve::{CorpusSample, ResolvedPoint};
use crate::sweep::spec::{flatten, SweepSpec};
use crate::sweep::subsample::{self, SubsampleInfo, SUBSAMPLE_JSON};

/// What `write` did, for the log.
#[derive(Debug, Default)]
pub struct SetupReport {
    pub new_points: usize,
    pub reset_points: Vec<String>,
    pub samples_written: Vec<String>,
    /// Points of an earlier sweep.json missing from this spec (left on disk, not run).
    pub dropped: Vec<String>,
}

/// Keys whose values differ between two resolved configs: `train.lr: 0.001 → 0.002`.
pub fn config_diff(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    let flat = |c: &RunConfig| {
        let table: toml::Table = toml::from_str(&c.to_toml()).expect("the resolved config is TOML");
        let mut v = Vec::new();
        flatten("", &table, &mut v);
        v.into_iter().map(|(k, v)| (k, v.to_string())).collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (flat(old), flat(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

/// The points of SWEEPDIR whose resolved config or world size differs from this sweep's:
/// refused (all named at once) unless `overwrite`, which restarts them. `grdr sweep` and its
/// `--dry-run` both ask here, so a dry run refuses what the real run refuses.
pub fn changed_points(
    dir: &SweepDir,
    points: &[ResolvedPoint],
    ranks: &[usize],
    overwrite: bool,
) -> Result<Vec<String>> {
    let old = if dir.manifest().exists() { Some(dir.read_manifest()?) } else { None };
    let mut changed = Vec::new();
    for (p, &r) in points.iter().zip(ranks) {
        let path = dir.config(p.name());
        if !path.exists() {
            continue;
        }
        let mut why = match RunConfig::load(&path, &[]) {
            Ok(prev) => config_diff(&prev, &p.config),
            Err(e) => vec![format!("the old config does not load ({e})")],
        };
        let old_ranks = old.as_ref().and_then(|m| m.points.iter().find(|e| e.name == p.name())).map(|e| e.ranks);
        if let Some(o) = old_ranks.filter(|&o| o != r) {
            why.push(format!("ranks: {o} → {r}"));
        }
        if !why.is_empty() {
            changed.push((p.name().to_string(), why));
        }
    }
    if !changed.is_empty() && !overwrite {
        let lines: Vec<String> = changed.iter().map(|(n, why)| format!("point {n}: {}", why.join(", "))).collect();
        return Err(Error::usage(
            "--output",
            format!(
                "{} holds points whose resolved config differs from this sweep's (pass --overwrite to restart them; \
                 cancel their jobs first):\n  {}",
                dir.root.display(),
                lines.join("\n  ")
            ),
        ));
    }
    Ok(changed.into_iter().map(|(name, _)| name).collect())
}

/// Writes (or updates) SWEEPDIR: samples, point configs and states, sweep.toml, sweep.json.
/// `ranks[i]` is point i's world size as the backend settled it.
pub fn write(
    dir: &SweepDir,
    spec: &SweepSpec,
    points: &[ResolvedPoint],
    ranks: &[usize],
    backend: &str,
    overwrite: bool,
) -> Result<SetupReport> {
    let mut report = SetupReport::default();
    let old = if dir.manifest().exists() { Some(dir.read_manifest()?) } else { None };

    // 1. Changed points: refused (all named at once), or reset with --overwrite.
    let changed = changed_points(dir, points, ranks, overwrite)?;
    for name in &changed {
        let point = dir.point(name);
        std::fs::remove_dir_all(&point).map_err(|e| Error::io(&point, "cannot reset the point", e))?;
        report.reset_points.push(name.clone());
    }
    if let Some(m) = &old {
        report.dropped =
            m.points.iter().filter(|e| !points.iter().any(|p| p.name() == e.name)).map(|e| e.name.clone()).collect();
    }

    // 2. Corpus samples (shared by every point of that size), then their GR docids.
    let mut seen: Vec<&std::path::Path> = Vec::new();
    for c in points.iter().filter_map(|p| p.corpus.as_ref()) {
        if !seen.contains(&c.dir.as_path()) {
            seen.push(&c.dir);
            if write_sample(c, spec.corpus_seed, overwrite)? {
                report.samples_written.push(c.dir.display().to_string());
            }
        }
    }
    for c in points.iter().filter_map(|p| p.corpus.as_ref()) {
        if let Some((full, dest)) = &c.docids {
            // A rebuilt sample replaced its whole directory, docid files included.
            if !dest.exists() {
                let table = DocidTable::read(full)?;
                let ids = subsample::sample_doc_ids(&c.dir)?;
                subsample::restrict_docids(&table, &ids, full)?.write(dest)?;
            }
        }
    }

    // 3. Points: config.toml (new or reset ones) and a pending state.
    for p in points {
        let config = dir.config(p.name());
        if !config.exists() {
            p.config.write(&config)?;
            report.new_points += 1;
        }
        let state = dir.state(p.name());
        if !state.exists() {
            PointState::new(State::Pending).write(&state)?;
        }
    }

    // 4. The spec's copy and the manifest, last: a sweep.json always describes written points.
    let copy = dir.root.join(SWEEP_TOML);
    crate::atomic::write_file(&copy, |w| std::io::Write::write_all(w, spec.text.as_bytes()))?;
    let spec_path = std::fs::canonicalize(&spec.path).unwrap_or_else(|_| spec.path.clone());
    let manifest = SweepManifest {
        name: spec.name.clone(),
        spec: spec_path.display().to_string(),
        backend: backend.to_string(),
        axes: spec.axis_keys(),
        axis_groups: spec.axes.iter().map(|a| AxisGroup { label: a.label.clone(), keys: a.keys.clone() }).collect(),
        points: points.iter().zip(ranks).map(|(p, &r)| p.entry(r)).collect(),
    };
    crate::atomic::write_json(&dir.manifest(), &manifest)?;
    Ok(report)
}

/// Builds one sample unless an identical one exists; returns whether it wrote one.
fn write_sample(c: &CorpusSample, seed: u64, overwrite: bool) -> Result<bool> {
    let existing: Option<SubsampleInfo> =
        std::fs::read_to_string(c.dir.join(SUBSAMPLE_JSON)).ok().and_then(|t| serde_json::from_str(&t).ok());
    let same = existing.as_ref().is_some_and(|i| {
        i.docs == c.docs && i.seed == seed && i.source == c.source.display().to_string() && i.rule == subsample::RULE
    });
    if same {
        return Ok(false);
    }
    if existing.is_some() && !overwrite {
        return Err(Error::usage(
            "--output",
            format!(
                "{} is a sample of another corpus, seed or sampling rule (pass --overwrite to rebuild it)",
                c.dir.display()
            ),
        ));
    }
    tracing::info!("sampling {} documents of {} → {}", c.docs, c.source.display(), c.dir.display());
    subsample::write_subsample(&c.source, c.docs, seed, &c.dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_the_changed_keys() {
        let a = RunConfig::from_toml("[data]\npath = \"d\"\n", "a", &[]).unwrap();
        let b = RunConfig::from_toml("[data]\npath = \"d\"\n", "b", &["train.lr=0.002".into(), "model.dim=64".into()])
            .unwrap();
        let d = config_diff(&a, &b);
        assert_eq!(d, vec!["model.dim: (unset) → 64", "train.lr: 0.00002 → 0.002"]);
        assert!(config_diff(&a, &a).is_empty());
    }
}
