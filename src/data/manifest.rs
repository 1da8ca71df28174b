//! `manifest.json`: what a dataset directory holds and how it was made, with checksums so
//! a later stage can tell that its inputs are the ones a run was trained on.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Location, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "grdr-dataset/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitCounts {
    /// Queries with at least one judgement in this split.
    pub queries: usize,
    /// Judgements (query, doc, relevance) in this split.
    pub qrels: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
    pub rows: usize,
    pub row_groups: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// The name or path given on the command line (`minilm`, `t5-tokenizer`, a file).
    pub name: String,
    pub sha256: String,
    pub vocab_size: usize,
    /// Stored ids carry no special tokens; model batchers add their own ([CLS]/[SEP], </s>).
    pub add_special_tokens: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub grdr_version: String,
    /// `beir` or `tsv`, and the input path as given.
    pub source_kind: String,
    pub source_path: String,
    pub docs: usize,
    pub queries: usize,
    pub splits: BTreeMap<String, SplitCounts>,
    pub row_group_rows: usize,
    pub tokenizer: Option<TokenizerInfo>,
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::read_text(path, "cannot read the dataset manifest", e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, Location::Line(e.line()), "manifest", e.to_string()))?;
        if m.format != FORMAT {
            return Err(Error::input(
                path,
                Location::File,
                "format",
                format!("is `{}`, this grdr reads `{FORMAT}`", m.format),
            ));
        }
        Ok(m)
    }

    /// Compares every file's size with the manifest (a stat each: done on every open, so a
    /// truncated or replaced file is refused before it is read).
    pub fn check_sizes(&self, dir: &Path) -> Result<()> {
        for (name, entry) in &self.files {
            let path = dir.join(name);
            let bytes = std::fs::metadata(&path)
                .map_err(|e| {
                    Error::input(&path, Location::File, "file", format!("listed in manifest.json, cannot stat: {e}"))
                })?
                .len();
            if bytes != entry.bytes {
                return Err(Error::input(
                    &path,
                    Location::File,
                    "bytes",
                    format!("{bytes} bytes, the manifest says {}: the file changed after `grdr prepare`", entry.bytes),
                ));
            }
        }
        Ok(())
    }

    /// Recomputes every file's checksum and compares it with the manifest.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for (name, entry) in &self.files {
            let path = dir.join(name);
            let sha = sha256_file(&path)?;
            if sha != entry.sha256 {
                return Err(Error::input(
                    &path,
                    Location::File,
                    "sha256",
                    format!("is {sha}, the manifest says {}: the file changed after `grdr prepare`", entry.sha256),
                ));
            }
        }
        Ok(())
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checksum, size and row-group layout of a Parquet file just written.
pub fn describe_parquet(path: &Path) -> Result<FileEntry> {
    crate::panic_guard::catch(|| describe_parquet_unguarded(path), |m| Error::bad_parquet(path, "damaged", m))
}

fn describe_parquet_unguarded(path: &Path) -> Result<FileEntry> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
        .map_err(|e| Error::bad_parquet(path, "cannot read metadata", e))?;
    use parquet::file::reader::FileReader;
    let meta = reader.metadata();
    Ok(FileEntry {
        sha256: sha256_file(path)?,
        bytes: std::fs::metadata(path).map_err(|e| Error::io(path, "stat", e))?.len(),
        rows: meta.file_metadata().num_rows() as usize,
        row_groups: meta.num_row_groups(),
    })
}
