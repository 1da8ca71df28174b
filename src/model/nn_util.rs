//! Small building blocks shared by T5 and BERT: activations by their HF names, additive
//! attention masks, weight creation with HF's initialisers.
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

/// The activation functions HF configs name (`hidden_act`, `dense_act_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU: HF `gelu` (BERT).
    Gelu,
    /// Tanh-approximated GELU: HF `gelu_new` / `gelu_pytorch_tanh` (T5 v1.1 gated-gelu).
    GeluTanh,
    /// HF `silu` / `swish`.
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::usage(
                    "config.json",
                    format!("activation `{other}` is not supported (relu, gelu, gelu_new, silu)"),
                ))
            }
        })
    }

    pub fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Relu => xs.relu(),
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluTanh => xs.gelu("tanh"),
            Activation::Silu => xs.silu(),
        }
    }
}

/// The additive form of a padding mask, as HF builds it: 0 where attended, the dtype's
/// minimum where masked, so softmax gives exactly 0 there. (B, L) → (B, 1, 1, L).
pub fn additive_padding_mask(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let min = finfo_min(kind);
    let keep = attention_mask.to_kind(kind).unsqueeze(1).unsqueeze(1);
    (keep.ones_like() - keep) * min
}

/// [`additive_padding_mask`], or `None` when no position is padded, so attention can take
/// the fused mask-free kernel and the batch-independent position bias stays (1, H, L, L)
/// (transformers drops an all-ones mask the same way). One host sync.
pub fn padding_bias(attention_mask: &Tensor, kind: Kind) -> Option<Tensor> {
    let padded = attention_mask.numel() > 0 && !bool::try_from(attention_mask.ne(0).all()).unwrap_or(false);
    padded.then(|| additive_padding_mask(attention_mask, kind))
}

/// Causal mask for queries at positions `offset..offset+t` over keys `0..offset+t`:
/// (t, offset+t), 0 where key ≤ query, min elsewhere.
pub fn additive_causal_mask(t: i64, offset: i64, kind: Kind, device: tch::Device) -> Tensor {
    let q = Tensor::arange_start(offset, offset + t, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(offset + t, (Kind::Int64, device)).unsqueeze(0);
    k.gt_tensor(&q).to_kind(kind) * finfo_min(kind)
}

pub fn finfo_min(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// A bias-free or biased linear layer whose weight is `p/weight` (HF `nn.Linear`).
pub fn linear(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, std: f64) -> nn::Linear {
    nn::linear(
        p,
        in_dim,
        out_dim,
        nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
            bs_init: Some(nn::Init::Const(0.0)),
            bias,
        },
    )
}

/// `p/weight` of shape `dims`, initialised N(0, std).
pub fn weight(p: &nn::Path, dims: &[i64], std: f64) -> Tensor {
    p.var("weight", dims, nn::Init::Randn { mean: 0.0, stdev: std })
}

/// HF LayerNorm (weight and bias) at `p`.
pub fn layer_norm(p: &nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], nn::LayerNormConfig { eps, ..Default::default() })
}
