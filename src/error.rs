//! The crate's one error type. Every variant says what failed and where, so `main` can
//! print it once and exit with the documented code (see [`Error::exit_code`]).
use std::fmt;
use std::path::PathBuf;

/// Where in an input file a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole (empty file, wrong kind of path, missing file).
    File,
    /// 1-based line of a text file (JSONL, TSV, TREC).
    Line(usize),
    /// 0-based row of a Parquet file.
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File => Ok(()),
            Location::Line(n) => write!(f, ":line {n}"),
            Location::Row(n) => write!(f, ":row {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input data that grdr refuses: malformed records, missing or empty fields, duplicate
    /// or unknown ids, wrong headers. Names the file, the line or row, and the field.
    #[error("{}{location}: field `{field}`: {message}", path.display())]
    Input { path: PathBuf, location: Location, field: String, message: String },

    /// A file or directory could not be read or written.
    #[error("{}: {context}", path.display())]
    Io {
        path: PathBuf,
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing a Parquet/Arrow file failed below the level of our schema checks.
    #[error("{}: {context}", path.display())]
    Parquet {
        path: PathBuf,
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The BM25 index (tantivy) failed.
    #[error("BM25 index: {context}")]
    Index {
        context: String,
        #[source]
        source: tantivy::TantivyError,
    },

    /// A tokenizer could not be loaded or failed on a text.
    #[error("tokenizer {name}: {message}")]
    Tokenizer { name: String, message: String },

    /// A command line or configuration value that cannot work (names the option or key).
    #[error("{option}: {message}")]
    Usage { option: String, message: String },

    /// A distributed operation failed on this rank: a collective, the NCCL/MPI backend,
    /// a consistency check between ranks. Names the rank that saw it.
    #[error("rank {rank}: {message}")]
    Dist { rank: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes of the `grdr` binary, documented in README.md.
pub mod exit_code {
    /// Success.
    pub const OK: u8 = 0;
    /// Runtime failure: I/O, a library error, a failing rank.
    pub const FAILURE: u8 = 1;
    /// Bad command line or configuration (clap also uses 2 for its own usage errors).
    pub const USAGE: u8 = 2;
    /// Input data refused by validation (file, line/row and field are printed).
    pub const BAD_INPUT: u8 = 3;
    /// `grdr train` got SIGTERM/SIGUSR1, checkpointed and stopped: requeue and `--resume`
    /// (EX_TEMPFAIL; Slurm scripts requeue on it).
    pub const PREEMPTED: u8 = 75;
}

impl Error {
    pub fn input(
        path: impl Into<PathBuf>,
        location: Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input { path: path.into(), location, field: field.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), context: context.into(), source }
    }

    pub fn parquet(
        path: impl Into<PathBuf>,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Parquet { path: path.into(), context: context.into(), source: Box::new(source) }
    }

    /// A Parquet file a user handed us that does not decode (truncated, damaged, not
    /// Parquet): refused input (exit 3) naming the file, not a runtime failure.
    pub fn bad_parquet(path: impl Into<PathBuf>, context: &str, source: impl std::fmt::Display) -> Self {
        Error::input(path, Location::File, "parquet", format!("{context}: {source}"))
    }

    /// Reading a text file a user named failed: not UTF-8 is refused input (exit 3), a
    /// missing file a usage error (exit 2), anything else an I/O failure.
    pub fn read_text(path: impl Into<PathBuf>, context: impl Into<String>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::InvalidData => Error::input(path, Location::File, "text", "not UTF-8 text"),
            std::io::ErrorKind::NotFound => Error::usage(path.display().to_string(), "no such file"),
            _ => Error::io(path, context, source),
        }
    }

    pub fn usage(option: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Usage { option: option.into(), message: message.into() }
    }

    pub fn dist(rank: usize, message: impl Into<String>) -> Self {
        Error::Dist { rank, message: message.into() }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input { .. } => exit_code::BAD_INPUT,
            Error::Usage { .. } => exit_code::USAGE,
            _ => exit_code::FAILURE,
        }
    }
}
