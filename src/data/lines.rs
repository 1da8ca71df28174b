//! Line-oriented input (JSONL, TSV, TREC): yields 1-based line numbers with the text
//! validated as UTF-8 and CRLF endings stripped, so every error can name its line.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{Error, Location, Result};

pub struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line_no: usize,
    bytes_read: u64,
    len: u64,
}

impl Lines {
    /// Opens `path`, refusing a missing file, a directory and an empty file.
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, format!("cannot open the {what}"), e))?;
        if meta.is_dir() {
            return Err(Error::input(path, Location::File, what, "is a directory, expected a file"));
        }
        if meta.len() == 0 {
            return Err(Error::input(path, Location::File, what, "file is empty"));
        }
        let file = File::open(path).map_err(|e| Error::io(path, format!("cannot open the {what}"), e))?;
        Ok(Lines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            buf: Vec::new(),
            line_no: 0,
            bytes_read: 0,
            len: meta.len(),
        })
    }

    /// Bytes consumed so far and the file size, for progress bars.
    pub fn progress(&self) -> (u64, u64) {
        (self.bytes_read, self.len)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line as (line number, text without the line ending), or None at the end.
    pub fn next_line(&mut self) -> Result<Option<(usize, &str)>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(|e| Error::io(&self.path, "cannot read", e))?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        self.line_no += 1;
        while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
            self.buf.pop();
        }
        match std::str::from_utf8(&self.buf) {
            Ok(s) => Ok(Some((self.line_no, s))),
            Err(e) => Err(Error::input(
                &self.path,
                Location::Line(self.line_no),
                "(line)",
                format!("not valid UTF-8 (invalid byte at column {})", e.valid_up_to() + 1),
            )),
        }
    }
}
