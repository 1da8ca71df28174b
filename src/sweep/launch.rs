//! How a point is started: `launcher/grdr-launch -n RANKS -- grdr train --config … --output
//! … --resume` — mpirun on a workstation, `srun --mpi=pmix` inside a Slurm allocation (the
//! launcher decides), `--resume` always, so a requeued or re-run point continues from its
//! last checkpoint (and starts fresh when there is none).
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sweep::layout::SweepDir;

/// The two programs every point runs.
#[derive(Debug, Clone)]
pub struct Programs {
    pub grdr: PathBuf,
    pub launcher: PathBuf,
}

impl Programs {
    /// This grdr binary and the launcher of its checkout: `$GRDR_ROOT/launcher/grdr-launch`,
    /// else next to an ancestor of the binary, else in the checkout it was built from (the
    /// cargo target dir may live outside the checkout, see launcher/env.sh).
    pub fn find(binary: Option<&str>) -> Result<Programs> {
        let exe = std::env::current_exe().map_err(|e| Error::io("grdr", "cannot find this executable", e))?;
        let grdr = binary.map(PathBuf::from).unwrap_or(exe.clone());
        let rel = Path::new("launcher").join("grdr-launch");
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(root) = std::env::var_os("GRDR_ROOT") {
            candidates.push(PathBuf::from(root).join(&rel));
        }
        candidates.extend(exe.ancestors().skip(1).map(|a| a.join(&rel)));
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel));
        let launcher = candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
            Error::usage("GRDR_ROOT", "cannot find launcher/grdr-launch: set GRDR_ROOT to the grdr checkout")
        })?;
        Ok(Programs { grdr, launcher })
    }

    /// The argument vector of one training attempt of `point`.
    pub fn train_argv(&self, dir: &SweepDir, point: &str, ranks: usize) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        vec![
            s(&self.launcher),
            "-n".into(),
            ranks.to_string(),
            "--".into(),
            s(&self.grdr),
            "train".into(),
            "--config".into(),
            s(&dir.config(point)),
            "--output".into(),
            s(&dir.run(point)),
            "--resume".into(),
        ]
    }
}

/// A word for a POSIX shell: bare when safe, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c_1.toml"), "/a/b-c_1.toml");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
