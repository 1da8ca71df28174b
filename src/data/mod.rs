//! Datasets: import from BEIR/TSV files, Parquet storage, manifest, the TREC run/qrels
//! hand-off format, and text → token id tensors. See docs/ARCHITECTURE.md.
pub mod batch;
pub mod corpus;
pub mod docid;
pub mod embeddings;
pub mod examples;
pub mod import;
pub mod lines;
pub mod manifest;
pub mod shard;
pub mod synth;
pub mod text;
pub mod tokenize;
pub mod trec;

pub use corpus::{Dataset, Doc, Qrel, Query};
