//! Retrieval: the one ranking order (`topk`), BM25 over tantivy (`bm25`).
pub mod bm25;
pub mod topk;

pub use topk::{Hit, TopK};
