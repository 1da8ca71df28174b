//! Retrieval: the one ranking order (`topk`), BM25 over tantivy (`bm25`).
pub mod beam;
pub mod bm25;
pub mod codec;
pub mod compressed;
pub mod constraint;
pub mod flat;
pub mod fm_index;
pub mod maxsim;
pub mod seal;
pub mod topk;
pub mod trie;
pub mod wavelet;

pub use topk::{Hit, TopK};
