//! Datasets: import from BEIR/TSV files, Parquet storage, manifest. See docs/ARCHITECTURE.md.
pub mod corpus;
pub mod import;
pub mod lines;
pub mod manifest;
pub mod tokenize;

pub use corpus::{Dataset, Doc, Qrel, Query};
