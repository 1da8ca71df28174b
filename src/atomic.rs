//! No half-written output: every file and directory grdr produces is written under a
//! temporary name next to its destination and renamed into place only when complete.
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `dir/.name.<kind>-<pid>`: same filesystem as the destination, so renames are atomic.
fn sibling(dest: &Path, kind: &str, pid: u32) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.{kind}-{pid}"))
}

/// `dir/.name.tmp-<pid>`: where this process builds `dest`.
fn temp_sibling(dest: &Path) -> PathBuf {
    sibling(dest, "tmp", std::process::id())
}

/// Siblings `.name.<kind>-<pid>` of `dest` left by processes that are gone (killed mid-write).
fn stale_siblings(dest: &Path, kind: &str) -> Vec<PathBuf> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else { return vec![] };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = format!(".{}.{kind}-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else { return vec![] };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = file.strip_prefix(&prefix)?.parse().ok()?;
            let alive = Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id();
            (!alive).then(|| e.path())
        })
        .collect();
    out.sort();
    out
}

/// Cleans what a killed process left beside `dest`: half-built `.tmp-PID` directories are
/// removed; an `.old-PID` (a replaced version whose replacement never arrived) is moved
/// back when `dest` is missing, so one complete version always remains.
fn recover(dest: &Path) {
    for old in stale_siblings(dest, "old") {
        if !dest.exists() && fs::rename(&old, dest).is_ok() {
            tracing::warn!("{}: restored from {} (a replacement was interrupted)", dest.display(), old.display());
        } else {
            tracing::warn!("removing {} (left by an interrupted replacement)", old.display());
            let _ = fs::remove_dir_all(&old);
        }
    }
    for tmp in stale_siblings(dest, "tmp") {
        tracing::warn!("removing {} (left by an interrupted write)", tmp.display());
        let _ = if tmp.is_dir() { fs::remove_dir_all(&tmp) } else { fs::remove_file(&tmp) };
    }
}

/// Writes `dest` through `fill`; on any error the temp file is removed and `dest` untouched.
pub fn write_file<F>(dest: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
{
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create directory", e))?;
    }
    let tmp = temp_sibling(dest);
    let result = (|| {
        let file = fs::File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(dest, "cannot write", e));
    }
    Ok(())
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(dest: &Path, value: &T) -> Result<()> {
    write_file(dest, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

/// A directory being built under a temporary name; [`TempDir::commit`] renames it to its
/// destination. Dropped without commit (an error, a panic), it is removed.
pub struct TempDir {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl TempDir {
    /// Starts building `dest`. Refuses an existing `dest` unless `overwrite`.
    pub fn new(dest: &Path, overwrite: bool) -> Result<Self> {
        recover(dest);
        if dest.exists() && !overwrite {
            return Err(Error::usage(
                "--output",
                format!("{} already exists (pass --overwrite to replace it)", dest.display()),
            ));
        }
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create directory", e))?;
        }
        let tmp = temp_sibling(dest);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, "cannot remove stale temp dir", e))?;
        }
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, "cannot create directory", e))?;
        Ok(TempDir { tmp, dest: dest.to_path_buf(), committed: false })
    }

    /// Where to write the contents while building.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished directory into place. An old version is renamed aside first and
    /// deleted only once the new one is in place: a crash at any point leaves one complete
    /// version (the next `TempDir::new` on the same destination recovers it).
    pub fn commit(mut self) -> Result<PathBuf> {
        let old = sibling(&self.dest, "old", std::process::id());
        let replacing = self.dest.exists();
        if replacing {
            fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, "cannot move the old version aside", e))?;
        }
        if let Err(e) = fs::rename(&self.tmp, &self.dest) {
            if replacing {
                let _ = fs::rename(&old, &self.dest);
            }
            return Err(Error::io(&self.dest, "cannot rename into place", e));
        }
        self.committed = true;
        if replacing {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, "cannot remove the replaced version", e))?;
        }
        Ok(self.dest.clone())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.txt");
        let err = write_file(&dest, |_| Err(std::io::Error::other("boom")));
        assert!(err.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_interrupted_replacement_keeps_one_complete_version() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("run");
        // A process (pid 999999999: not alive) moved the old version aside and died before
        // its new version arrived; another left a half-built temp dir.
        let old = sibling(&dest, "old", 999_999_999);
        fs::create_dir(&old).unwrap();
        fs::write(old.join("a"), "old").unwrap();
        fs::create_dir(sibling(&dest, "tmp", 999_999_998)).unwrap();
        let t = TempDir::new(&dest, true).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "old", "the old version is back");
        fs::write(t.path().join("a"), "new").unwrap();
        t.commit().unwrap();
        assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "new");
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["run"], "no temp or old siblings left");
    }

    #[test]
    fn temp_dir_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("ds");
        {
            let t = TempDir::new(&dest, false).unwrap();
            fs::write(t.path().join("a"), "x").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let t = TempDir::new(&dest, false).unwrap();
        fs::write(t.path().join("a"), "x").unwrap();
        t.commit().unwrap();
        assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "x");
        assert!(TempDir::new(&dest, false).is_err());
    }
}
