//! Cluster profiles (`slurm/profiles/*.toml`): what a Slurm cluster needs in an sbatch
//! script — partition, account, time, GPUs and cores per node, how many ranks fit on a node,
//! the module loads — kept apart from the sweep so one sweep file runs on any cluster. A
//! sweep file's `[slurm]` table has the same keys and wins over the profile.
//!
//! ```toml
//! partition = "gpu"
//! account = "my-project"        # omitted from the script when unset
//! time = "12:00:00"
//! nodes = 2                     # per point, when the sweep sets no `ranks`
//! gpus_per_node = 4             # 0 (default): CPU ranks, no --gpus-per-node
//! ntasks_per_node = 4           # ranks per node; default: gpus_per_node, else 1
//! cpus_per_task = 8             # cores (and OMP threads) per rank
//! concurrency = 4               # array tasks running at once (%N); default: no limit
//! signal_secs = 300             # USR1 this long before the time limit: checkpoint and requeue
//! sbatch = ["--qos=normal"]     # extra #SBATCH lines
//! setup = ["module load openmpi/4.1"]   # shell lines run before training
//! ```
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every key optional: a profile, a sweep's `[slurm]`, and their merge share this shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Wall-clock limit of one training attempt (sbatch --time). Default 01:00:00.
    pub time: Option<String>,
    pub nodes: Option<usize>,
    pub ntasks_per_node: Option<usize>,
    pub gpus_per_node: Option<usize>,
    pub cpus_per_task: Option<usize>,
    pub concurrency: Option<usize>,
    /// Seconds before the time limit at which the batch shell gets USR1. Default 120.
    pub signal_secs: Option<u64>,
    /// Extra sbatch options, one per line (`--qos=…`, `--mem=…`, `--constraint=…`).
    pub sbatch: Option<Vec<String>>,
    /// Shell lines at the top of every job (`module load …`, `source venv/bin/activate`).
    pub setup: Option<Vec<String>>,
    /// Time limit of the report job that runs after the array. Default 00:30:00.
    pub report_time: Option<String>,
    /// The grdr binary on the compute nodes; default: the binary that runs `grdr sweep`.
    pub binary: Option<String>,
}

/// A profile merged with the sweep's `[slurm]`, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: String,
    pub nodes: usize,
    pub ntasks_per_node: usize,
    pub gpus_per_node: usize,
    pub cpus_per_task: usize,
    pub concurrency: Option<usize>,
    pub signal_secs: u64,
    pub sbatch: Vec<String>,
    pub setup: Vec<String>,
    pub report_time: String,
    pub binary: Option<String>,
}

impl SlurmOptions {
    pub fn load(path: &Path) -> Result<SlurmOptions> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::read_text(path, "cannot read the cluster profile", e))?;
        toml::from_str(&text)
            .map_err(|e| Error::usage(path.display().to_string(), e.to_string().trim_end().to_string()))
    }

    /// `self` (the sweep's `[slurm]`) over `profile`, then the defaults.
    pub fn over(&self, profile: &SlurmOptions) -> Result<SlurmSettings> {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        let gpus = pick(&self.gpus_per_node, &profile.gpus_per_node).unwrap_or(0);
        let s = SlurmSettings {
            partition: pick(&self.partition, &profile.partition),
            account: pick(&self.account, &profile.account),
            time: pick(&self.time, &profile.time).unwrap_or_else(|| "01:00:00".into()),
            nodes: pick(&self.nodes, &profile.nodes).unwrap_or(1),
            ntasks_per_node: pick(&self.ntasks_per_node, &profile.ntasks_per_node).unwrap_or(gpus.max(1)),
            gpus_per_node: gpus,
            cpus_per_task: pick(&self.cpus_per_task, &profile.cpus_per_task).unwrap_or(1),
            concurrency: pick(&self.concurrency, &profile.concurrency),
            signal_secs: pick(&self.signal_secs, &profile.signal_secs).unwrap_or(120),
            sbatch: [profile.sbatch.clone().unwrap_or_default(), self.sbatch.clone().unwrap_or_default()].concat(),
            setup: [profile.setup.clone().unwrap_or_default(), self.setup.clone().unwrap_or_default()].concat(),
            report_time: pick(&self.report_time, &profile.report_time).unwrap_or_else(|| "00:30:00".into()),
            binary: pick(&self.binary, &profile.binary),
        };
        for (key, v) in [
            ("slurm.nodes", s.nodes),
            ("slurm.ntasks_per_node", s.ntasks_per_node),
            ("slurm.cpus_per_task", s.cpus_per_task),
            ("slurm.concurrency", s.concurrency.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(Error::usage(key, "must be at least 1"));
            }
        }
        if s.gpus_per_node > 0 && s.ntasks_per_node > s.gpus_per_node {
            return Err(Error::usage(
                "slurm.ntasks_per_node",
                format!("{} ranks per node but {} GPUs: one rank per GPU", s.ntasks_per_node, s.gpus_per_node),
            ));
        }
        for line in s.sbatch.iter() {
            if !line.starts_with("--") || line.contains('\n') {
                return Err(Error::usage(
                    "slurm.sbatch",
                    format!("`{line}`: expected one sbatch option (--name=value)"),
                ));
            }
        }
        Ok(s)
    }
}

impl SlurmSettings {
    /// World size of a point that does not set `ranks`: a full allocation of `nodes`.
    pub fn default_ranks(&self) -> usize {
        self.nodes * self.ntasks_per_node
    }

    /// (nodes, ranks per node) for a world of `ranks`: one node when they fit on one, else
    /// full nodes of `ntasks_per_node` (one rank per GPU on GPU clusters).
    pub fn layout(&self, ranks: usize) -> Result<(usize, usize)> {
        if ranks <= self.ntasks_per_node {
            Ok((1, ranks))
        } else if ranks.is_multiple_of(self.ntasks_per_node) {
            Ok((ranks / self.ntasks_per_node, self.ntasks_per_node))
        } else {
            Err(Error::usage(
                "ranks",
                format!(
                    "{ranks} ranks do not fill whole nodes of {} ranks (slurm.ntasks_per_node)",
                    self.ntasks_per_node
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_wins_over_the_profile_and_defaults_fill_the_rest() {
        let profile = SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_node: Some(4),
            nodes: Some(2),
            sbatch: Some(vec!["--qos=a".into()]),
            ..Default::default()
        };
        let sweep =
            SlurmOptions { time: Some("02:00:00".into()), sbatch: Some(vec!["--mem=0".into()]), ..Default::default() };
        let s = sweep.over(&profile).unwrap();
        assert_eq!(s.partition.as_deref(), Some("gpu"));
        assert_eq!(s.time, "02:00:00");
        assert_eq!(s.ntasks_per_node, 4);
        assert_eq!(s.default_ranks(), 8);
        assert_eq!(s.sbatch, vec!["--qos=a", "--mem=0"]);
        assert_eq!(s.layout(2).unwrap(), (1, 2));
        assert_eq!(s.layout(8).unwrap(), (2, 4));
        assert_eq!(s.layout(16).unwrap(), (4, 4));
        assert!(s.layout(6).unwrap_err().to_string().contains("whole nodes"));
        let bad = SlurmOptions { ntasks_per_node: Some(8), ..Default::default() };
        assert!(bad.over(&profile).is_err());
    }

    #[test]
    fn shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm/profiles");
        for name in ["local-test.toml", "example-gpu-cluster.toml"] {
            let p = SlurmOptions::load(&dir.join(name)).unwrap();
            SlurmOptions::default().over(&p).unwrap();
        }
    }
}
