//! Datasets: import from BEIR/TSV files, Parquet storage, manifest. See docs/ARCHITECTURE.md.
pub mod batch;
pub mod corpus;
pub mod docid;
pub mod examples;
pub mod import;
pub mod lines;
pub mod manifest;
pub mod shard;
pub mod synth;
pub mod tokenize;

pub use corpus::{Dataset, Doc, Qrel, Query};
