//! The model zoo on libtorch: T5 (v1.0 and v1.1/flan) and BERT with numerics equal to HF
//! transformers, HF checkpoint loading/export, and the retrieval heads over any encoder:
//! single-vector DR ([`dual`]), multi-vector MVDR ([`colbert`]) and generative retrieval
//! ([`generative`]).
//!
//! Every struct mirrors one HF module and its fields are named like the HF weight keys, and
//! the `tch::nn::VarStore` paths equal those keys, so a checkpoint loads by name.
//! Model code never calls collectives: `dist/` wraps a model from outside.
//!
//! Conventions: `B` batch, `L` encoder (query/document) length, `T` decoder length, `D`
//! model width, `H` heads, `K` per-head width, `V` vocabulary.
use tch::Tensor;

pub mod bert;
pub mod colbert;
pub mod dual;
pub mod encode;
pub mod encoder;
pub mod gemm;
pub mod gemm_choice;
pub mod generative;
pub mod gr;
pub mod hf;
pub mod kmeans;
pub mod nn_util;
pub mod np;
pub mod pawa;
pub mod precision;
pub mod safetensors;
pub mod t5;
pub mod t5_attention;
pub mod t5_model;
pub mod task;

pub use bert::{BertConfig, BertModel};
pub use encoder::{Pooling, TextEncoderModel};
pub use gemm::Gemm;
pub use gr::GrModel;
pub use hf::{LoadOptions, LoadReport};
pub use t5::T5Config;
pub use t5_attention::T5Cache;
pub use t5_model::{T5EncoderModel, T5ForConditionalGeneration};

/// Anything that maps token ids to contextual token vectors: BERT, a T5 encoder, the encoder
/// half of a T5 seq2seq model. The retrieval heads are written against this trait only.
pub trait Encoder: Send {
    /// `input_ids` (B, L) int64, `attention_mask` (B, L) 1 = token, 0 = padding.
    /// Returns the last hidden states (B, L, D). `train` turns dropout on.
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor;
    /// D, the width of the returned token vectors.
    fn hidden_size(&self) -> i64;
}
