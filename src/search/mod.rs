//! Retrieval: the one ranking order (`topk`), BM25 over tantivy (`bm25`).
pub mod beam;
pub mod bm25;
pub mod flat;
pub mod maxsim;
pub mod topk;
pub mod trie;

pub use topk::{Hit, TopK};
