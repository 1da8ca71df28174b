//! T5 attention (`T5Attention`), its relative position buckets, and the incremental
//! decoding cache. T5 does not scale scores by 1/sqrt(K): the scale is folded into the
//! initialisation of `q`, so every path below uses scale 1.
use tch::{nn, Kind, Tensor};

use super::nn_util::linear;
use super::t5::T5Config;

/// HF `T5Attention`: `q`, `k`, `v`, `o` without bias; `relative_attention_bias` only in the
/// first block of each stack (the bias it computes is reused by every later block).
#[derive(Debug)]
pub struct T5Attention {
    pub q: nn::Linear,
    pub k: nn::Linear,
    pub v: nn::Linear,
    pub o: nn::Linear,
    /// (num_buckets, H)
    pub relative_attention_bias: Option<Tensor>,
    pub n_heads: i64,
    pub d_kv: i64,
    pub dropout: f64,
    pub num_buckets: i64,
    pub max_distance: i64,
    /// Encoder self-attention sees both directions; decoder self-attention only the past.
    pub bidirectional: bool,
}

/// What the attention sees on its key/value side.
pub enum KeyValue<'a> {
    /// Keys/values from `xs` itself (self-attention without a cache).
    SelfOnly,
    /// Self-attention appending this step's keys/values to a cache entry.
    SelfCached(&'a mut Option<(Tensor, Tensor)>),
    /// Cross-attention over encoder states projected by this layer's `k`/`v`.
    Cross(&'a Tensor),
    /// Cross-attention with keys/values already projected (from the cache).
    CrossCached(&'a Tensor, &'a Tensor),
}

impl T5Attention {
    pub fn new(p: nn::Path, cfg: &T5Config, has_relative_bias: bool, bidirectional: bool) -> Self {
        let (d, h, kd) = (cfg.d_model, cfg.num_heads, cfg.d_kv);
        let inner = h * kd;
        let f = cfg.initializer_factor;
        // HF `_init_weights` for T5Attention.
        let q = linear(&(&p / "q"), d, inner, false, f * ((d * kd) as f64).powf(-0.5));
        let k = linear(&(&p / "k"), d, inner, false, f * (d as f64).powf(-0.5));
        let v = linear(&(&p / "v"), d, inner, false, f * (d as f64).powf(-0.5));
        let o = linear(&(&p / "o"), inner, d, false, f * (inner as f64).powf(-0.5));
        let relative_attention_bias = has_relative_bias.then(|| {
            super::nn_util::weight(
                &(&p / "relative_attention_bias"),
                &[cfg.relative_attention_num_buckets, h],
                f * (d as f64).powf(-0.5),
            )
        });
        T5Attention {
            q,
            k,
            v,
            o,
            relative_attention_bias,
            n_heads: h,
            d_kv: kd,
            dropout: cfg.dropout_rate,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
            bidirectional,
        }
    }

    /// (B, T, H·K) → (B, H, T, K)
    fn heads(&self, xs: &Tensor) -> Tensor {
        let (b, t, _) = xs.size3().unwrap();
        xs.view([b, t, self.n_heads, self.d_kv]).transpose(1, 2)
    }

    /// The position bias (1, H, Tq, Tk) for queries at `q_offset..q_offset+tq` and keys
    /// `0..tk`, from this layer's bucket embedding.
    pub fn compute_bias(&self, tq: i64, tk: i64, q_offset: i64, device: tch::Device) -> Tensor {
        let table = self.relative_attention_bias.as_ref().expect("layer without position bias");
        let ctx = Tensor::arange_start(q_offset, q_offset + tq, (Kind::Int64, device)).unsqueeze(1);
        let mem = Tensor::arange(tk, (Kind::Int64, device)).unsqueeze(0);
        let buckets = relative_position_bucket(&(mem - ctx), self.bidirectional, self.num_buckets, self.max_distance);
        // (Tq, Tk, H) → (1, H, Tq, Tk)
        Tensor::embedding(table, &buckets, -1, false, false).permute([2, 0, 1]).unsqueeze(0)
    }

    /// `xs` (B, Tq, D); `bias` additive (B|1, H|1, Tq, Tk) holding position bias and masks
    /// (`None`: attend everywhere).
    /// Returns the output (B, Tq, D) and, when asked, the attention weights (B, H, Tq, Tk).
    pub fn forward(
        &self,
        xs: &Tensor,
        kv: KeyValue,
        bias: Option<&Tensor>,
        train: bool,
        need_weights: bool,
    ) -> (Tensor, Option<Tensor>) {
        let q = self.heads(&xs.apply(&self.q)); // (B, H, Tq, K)
        let (k, v) = match kv {
            KeyValue::SelfOnly => (self.heads(&xs.apply(&self.k)), self.heads(&xs.apply(&self.v))),
            KeyValue::SelfCached(entry) => {
                let (k, v) = (self.heads(&xs.apply(&self.k)), self.heads(&xs.apply(&self.v)));
                let (k, v) = match entry.take() {
                    Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
                    None => (k, v),
                };
                *entry = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v)
            }
            KeyValue::Cross(enc) => (self.heads(&enc.apply(&self.k)), self.heads(&enc.apply(&self.v))),
            KeyValue::CrossCached(k, v) => (k.shallow_clone(), v.shallow_clone()),
        };
        let p = if train { self.dropout } else { 0.0 };
        let (ctx, weights) = attend(&q, &k, &v, bias, p, train, need_weights);
        let (b, _, t, _) = ctx.size4().unwrap();
        let out = ctx.transpose(1, 2).contiguous().view([b, t, self.n_heads * self.d_kv]);
        (out.apply(&self.o), weights)
    }

    /// Projects encoder states to this (cross-attention) layer's keys and values, once per
    /// query batch, for the decoding cache. (B, L, D) → 2 × (B, H, L, K).
    pub fn project_kv(&self, enc: &Tensor) -> (Tensor, Tensor) {
        (self.heads(&enc.apply(&self.k)), self.heads(&enc.apply(&self.v)))
    }
}

/// softmax(q kᵀ + bias) v with scale 1. Uses the fused kernel unless the weights are wanted;
/// the explicit path computes the softmax in f32 as HF's eager attention does.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    dropout: f64,
    train: bool,
    need_weights: bool,
) -> (Tensor, Option<Tensor>) {
    if !need_weights {
        let bias = bias.map(|b| b.to_kind(q.kind()));
        let ctx = Tensor::scaled_dot_product_attention(q, k, v, bias.as_ref(), dropout, false, 1.0, false);
        return (ctx, None);
    }
    let mut scores = q.matmul(&k.transpose(-1, -2)); // (B, H, Tq, Tk)
    if let Some(b) = bias {
        scores = scores + b;
    }
    let weights = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    let dropped = weights.dropout(dropout, train);
    (dropped.matmul(v), Some(weights))
}

/// HF `T5Attention._relative_position_bucket`, op for op in the same dtypes so the bucket
/// boundaries (a float log) agree exactly. `rel` = key position − query position.
pub fn relative_position_bucket(rel: &Tensor, bidirectional: bool, num_buckets: i64, max_distance: i64) -> Tensor {
    let mut nb = num_buckets;
    let mut buckets = rel.zeros_like();
    let rel = if bidirectional {
        nb /= 2;
        buckets += rel.gt(0).to_kind(Kind::Int64) * nb;
        rel.abs()
    } else {
        -rel.clamp_max(0)
    };
    let max_exact = nb / 2;
    let is_small = rel.lt(max_exact);
    let large = (rel.to_kind(Kind::Float) / max_exact as f64).log() / (max_distance as f64 / max_exact as f64).ln()
        * (nb - max_exact) as f64;
    let large = (large.to_kind(Kind::Int64) + max_exact).clamp_max(nb - 1);
    buckets + rel.where_self(&is_small, &large)
}

/// Keys and values of one decoder block, kept between decoding steps.
#[derive(Debug)]
pub struct LayerCache {
    /// Self-attention keys/values of all tokens decoded so far: 2 × (B, H, T, K).
    pub self_kv: Option<(Tensor, Tensor)>,
    /// Cross-attention keys/values of the encoder states: 2 × (B, H, L, K).
    pub cross_k: Tensor,
    pub cross_v: Tensor,
}

/// The incremental decoding state of a batch of sequences (beams of queries). It lives
/// outside the model so that one model serves any number of concurrent searches.
#[derive(Debug)]
pub struct T5Cache {
    pub layers: Vec<LayerCache>,
    /// Additive encoder padding mask (B, 1, 1, L); `None` when nothing is padded.
    pub cross_mask: Option<Tensor>,
    /// Number of decoder positions already in the cache.
    pub len: i64,
}

impl T5Cache {
    /// Keeps rows `index` (B') of every cached tensor, in that order: beam reordering,
    /// expanding each query to its beams, or dropping finished sequences.
    pub fn index_select(&self, index: &Tensor) -> T5Cache {
        let sel = |t: &Tensor| t.index_select(0, index);
        T5Cache {
            layers: self
                .layers
                .iter()
                .map(|l| LayerCache {
                    self_kv: l.self_kv.as_ref().map(|(k, v)| (sel(k), sel(v))),
                    cross_k: sel(&l.cross_k),
                    cross_v: sel(&l.cross_v),
                })
                .collect(),
            cross_mask: self.cross_mask.as_ref().map(sel),
            len: self.len,
        }
    }

    pub fn batch_size(&self) -> i64 {
        self.layers.first().map(|l| l.cross_k.size()[0]).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets of T5's default 32 buckets / max distance 128, as transformers computes them.
    #[test]
    fn buckets_equal_transformers() {
        let rel = [-200i64, -128, -40, -17, -9, -8, -7, -1, 0, 1, 2, 7, 8, 9, 16, 17, 40, 127, 128, 500];
        let rel = Tensor::from_slice(&rel);
        let bi = Vec::<i64>::try_from(relative_position_bucket(&rel, true, 32, 128)).unwrap();
        assert_eq!(bi, [15, 15, 12, 10, 8, 8, 7, 1, 0, 17, 18, 23, 24, 24, 26, 26, 28, 31, 31, 31]);
        let causal = Vec::<i64>::try_from(relative_position_bucket(&rel, false, 32, 128)).unwrap();
        assert_eq!(causal, [31, 31, 23, 16, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
