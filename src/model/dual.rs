//! Single-vector dense retrieval head: pooled token states, an optional linear projection to
//! dimension `d` (the embedding-dimension sweeps of Zhang et al.), optional L2 normalisation,
//! and a temperature on the dot-product scores.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::encoder::{l2_normalize, pool, Pooling};
use super::nn_util::linear;
use super::Encoder;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DualConfig {
    pub pooling: Pooling,
    /// Project pooled vectors to this dimension (`None`: keep the encoder width).
    #[serde(default)]
    pub dim: Option<i64>,
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Scores are divided by this (in-batch softmax temperature); 1 leaves them as is.
    #[serde(default = "one")]
    pub temperature: f64,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

impl Default for DualConfig {
    fn default() -> Self {
        DualConfig { pooling: Pooling::Mean, dim: None, normalize: true, temperature: 1.0 }
    }
}

/// The head's parameters live under `p` (by convention `grdr_head.`, so an HF export of the
/// backbone leaves them out): `projection.weight` (d, D), `projection.bias` (d).
#[derive(Debug)]
pub struct DualHead {
    pub config: DualConfig,
    pub projection: Option<nn::Linear>,
}

impl DualHead {
    pub fn new(p: &nn::Path, hidden: i64, config: DualConfig) -> Self {
        let projection = config.dim.map(|d| linear(&(p / "projection"), hidden, d, true, (hidden as f64).powf(-0.5)));
        DualHead { config, projection }
    }

    /// Token states (B, L, D) and mask (B, L) → embeddings (B, d).
    pub fn embed(&self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        let pooled = pool(hidden, mask, self.config.pooling);
        let projected = match &self.projection {
            Some(p) => pooled.apply(p),
            None => pooled,
        };
        if self.config.normalize {
            l2_normalize(&projected)
        } else {
            projected
        }
    }

    /// All-pairs scores q (B, d) × docs (N, d) → (B, N), divided by the temperature.
    pub fn scores(&self, q: &Tensor, d: &Tensor) -> Tensor {
        q.matmul(&d.transpose(0, 1)) / self.config.temperature
    }

    /// Aligned-pair scores q (B, d) · d (B, d) → (B,).
    pub fn pair_scores(&self, q: &Tensor, d: &Tensor) -> Tensor {
        (q * d).sum_dim_intlist(-1, false, q.kind()) / self.config.temperature
    }
}

// SAFETY (ForwardOnly): evaluation workers only run no-grad `embed` passes over the
// encoder's and head's parameters; nothing is trained or written while they share it.
unsafe impl<E: Encoder> crate::parallel::ForwardOnly for DualEncoder<E> {}

/// A dual encoder: one (shared, Siamese) encoder for queries and documents and a head.
pub struct DualEncoder<E: Encoder> {
    pub encoder: E,
    pub head: DualHead,
}

impl<E: Encoder> DualEncoder<E> {
    /// ids (B, L), mask (B, L) → (B, d).
    pub fn embed(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let hidden = self.encoder.encode(input_ids, attention_mask, train);
        self.head.embed(&hidden, attention_mask)
    }

    /// The width d of an embedding: the projection's, else the encoder's.
    pub fn output_dim(&self) -> i64 {
        self.head.projection.as_ref().map(|p| p.ws.size()[0]).unwrap_or_else(|| self.encoder.hidden_size())
    }
}
