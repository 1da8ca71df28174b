//! No half-written output: every file and directory grdr produces is written under a
//! temporary name next to its destination and renamed into place only when complete.
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `dir/.name.tmp-<pid>`: same filesystem as the destination, so the rename is atomic.
fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
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

    /// Moves the finished directory into place (replacing an old one when allowed).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.dest.exists() {
            fs::remove_dir_all(&self.dest).map_err(|e| Error::io(&self.dest, "cannot replace", e))?;
        }
        fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, "cannot rename into place", e))?;
        self.committed = true;
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
