//! T5 attention (`T5Attention`), its relative position buckets, and the incremental
//! decoding cache. T5 does not scale scores by 1/sqrt(K): the scale is folded into the
//! initialisation of `q`, so every path below uses scale 1.
use tch::{nn, Device, Kind, Tensor};

use super::gemm::Gemm;
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
        self.forward_with(xs, kv, bias, train, need_weights, Gemm::fastest_for(xs))
    }

    /// [`Self::forward`] with the projections multiplied by `gemm`.
    pub fn forward_with(
        &self,
        xs: &Tensor,
        kv: KeyValue,
        bias: Option<&Tensor>,
        train: bool,
        need_weights: bool,
        gemm: Gemm,
    ) -> (Tensor, Option<Tensor>) {
        let q = self.heads(&gemm.apply(xs, &self.q)); // (B, H, Tq, K)
        let (k, v) = match kv {
            KeyValue::SelfOnly => (self.heads(&gemm.apply(xs, &self.k)), self.heads(&gemm.apply(xs, &self.v))),
            KeyValue::SelfCached(entry) => {
                let (k, v) = (self.heads(&gemm.apply(xs, &self.k)), self.heads(&gemm.apply(xs, &self.v)));
                let (k, v) = match entry.take() {
                    Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
                    None => (k, v),
                };
                *entry = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v)
            }
            KeyValue::Cross(enc) => (self.heads(&gemm.apply(enc, &self.k)), self.heads(&gemm.apply(enc, &self.v))),
            KeyValue::CrossCached(k, v) => (k.shallow_clone(), v.shallow_clone()),
        };
        let p = if train { self.dropout } else { 0.0 };
        let (ctx, weights) = attend(&q, &k, &v, bias, p, train, need_weights);
        let (b, _, t, _) = ctx.size4().unwrap();
        let out = ctx.transpose(1, 2).contiguous().view([b, t, self.n_heads * self.d_kv]);
        (gemm.apply(&out, &self.o), weights)
    }

    /// Projects encoder states to this (cross-attention) layer's keys and values, once per
    /// query batch, for the decoding cache. (B, L, D) → 2 × (B, H, L, K).
    pub fn project_kv(&self, enc: &Tensor, gemm: Gemm) -> (Tensor, Tensor) {
        (self.heads(&gemm.apply(enc, &self.k)), self.heads(&gemm.apply(enc, &self.v)))
    }

    /// Cross-attention of decoder rows that share encoder sources (the beams of a query):
    /// `xs` (R, t, D); row i attends to source `rows.source[i]` of the cached keys and values
    /// `(k, v)` (S, H, L, K) under `mask` (S, 1, 1, L), never copied per row. The rows are
    /// laid out per source — (S, H, width·t, K), zeros in unused slots — for one attention
    /// call, and put back in row order. Returns (R, t, D) and the weights (R, H, t, L) when
    /// asked for.
    pub fn forward_grouped(
        &self,
        xs: &Tensor,
        (k, v): (&Tensor, &Tensor),
        rows: &CrossRows,
        mask: Option<&Tensor>,
        need_weights: bool,
        gemm: Gemm,
    ) -> (Tensor, Option<Tensor>) {
        let (_, t, _) = xs.size3().unwrap();
        let (s, h, w) = (k.size()[0], self.n_heads, rows.width);
        let inner = h * self.d_kv;
        let q = gemm.apply(xs, &self.q); // (R, t, H·K)
        let grouped = Tensor::zeros([s * w, t, inner], (q.kind(), q.device())).index_copy(0, &rows.slot, &q);
        let q = grouped.view([s, w * t, h, self.d_kv]).transpose(1, 2); // (S, H, W·t, K)
        let (ctx, weights) = attend(&q, k, v, mask, 0.0, false, need_weights);
        let out = ctx.transpose(1, 2).reshape([s * w, t, inner]).index_select(0, &rows.slot); // (R, t, H·K)
        let weights = weights.map(|a| {
            let l = a.size()[3];
            a.view([s, h, w, t, l]).transpose(1, 2).reshape([s * w, h, t, l]).index_select(0, &rows.slot)
        });
        (gemm.apply(&out, &self.o), weights)
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
        // Not `+=`: an in-place add on a tensor autograd may still need.
        #[allow(clippy::assign_op_pattern)]
        {
            scores = scores + b;
        }
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
    /// Self-attention keys/values of all tokens decoded so far, per decoder row:
    /// 2 × (R, H, T, K).
    pub self_kv: Option<(Tensor, Tensor)>,
    /// Cross-attention keys/values of the encoder states, per source (encoder row):
    /// 2 × (S, H, L, K). Computed once; reordering rows never copies them.
    pub cross_k: Tensor,
    pub cross_v: Tensor,
}

/// Which source (encoder row) each decoder row reads, once rows were reordered: the beams of
/// one query all read that query's encoder states.
#[derive(Debug)]
pub struct CrossRows {
    /// Per decoder row, its source.
    pub source: Vec<i64>,
    /// Per decoder row, its place `source · width + j` in the per-source layout, where j
    /// counts the earlier rows of the same source (R,) int64.
    pub slot: Tensor,
    /// The most rows any source has.
    pub width: i64,
}

impl CrossRows {
    fn new(source: Vec<i64>, n_sources: i64, device: Device) -> Self {
        let mut count = vec![0i64; n_sources as usize];
        let within: Vec<i64> = source
            .iter()
            .map(|&s| {
                let c = count[s as usize];
                count[s as usize] += 1;
                c
            })
            .collect();
        let width = count.iter().copied().max().unwrap_or(0).max(1);
        let slot: Vec<i64> = source.iter().zip(&within).map(|(&s, &j)| s * width + j).collect();
        CrossRows { source, slot: Tensor::from_slice(&slot).to_device(device), width }
    }
}

/// The incremental decoding state of a batch of sequences (beams of queries). It lives
/// outside the model so that one model serves any number of concurrent searches.
#[derive(Debug)]
pub struct T5Cache {
    pub layers: Vec<LayerCache>,
    /// Additive encoder padding mask per source (S, 1, 1, L); `None` when nothing is padded.
    pub cross_mask: Option<Tensor>,
    /// Number of decoder positions already in the cache.
    pub len: i64,
    /// The source of each decoder row; `None` while row i is source i (a new cache).
    pub rows: Option<CrossRows>,
    /// How decoding steps multiply by the decoder's weights (`Linear` in a new cache).
    pub gemm: Gemm,
}

impl T5Cache {
    /// Keeps rows `index` (R') of the cache, in that order: beam reordering, expanding each
    /// query to its beams, or dropping finished sequences. See [`Self::reorder`].
    pub fn index_select(&self, index: &Tensor) -> T5Cache {
        let host = Vec::<i64>::try_from(index.to_device(Device::Cpu).to_kind(Kind::Int64).view([-1]))
            .expect("an index tensor");
        self.reorder(&host)
    }

    /// Keeps decoder rows `index` (R'), in that order. Only the self-attention keys/values
    /// are gathered; the cross-attention keys/values stay one per source, and the rows just
    /// remember which source each reads.
    pub fn reorder(&self, index: &[i64]) -> T5Cache {
        let n_rows = self.batch_size();
        let n_sources = self.layers.first().map(|l| l.cross_k.size()[0]).unwrap_or(0);
        let source: Vec<i64> = index
            .iter()
            .map(|&i| {
                assert!((0..n_rows).contains(&i), "cache row {i} out of 0..{n_rows}");
                self.rows.as_ref().map_or(i, |r| r.source[i as usize])
            })
            .collect();
        let device = self.layers.first().map(|l| l.cross_k.device()).unwrap_or(Device::Cpu);
        let identity = source.len() as i64 == n_sources && source.iter().enumerate().all(|(i, &s)| s == i as i64);
        let idx = Tensor::from_slice(index).to_device(device);
        T5Cache {
            layers: self
                .layers
                .iter()
                .map(|l| LayerCache {
                    self_kv: l.self_kv.as_ref().map(|(k, v)| (k.index_select(0, &idx), v.index_select(0, &idx))),
                    cross_k: l.cross_k.shallow_clone(),
                    cross_v: l.cross_v.shallow_clone(),
                })
                .collect(),
            cross_mask: self.cross_mask.as_ref().map(Tensor::shallow_clone),
            len: self.len,
            rows: (!identity).then(|| CrossRows::new(source, n_sources, device)),
            gemm: self.gemm,
        }
    }

    /// Number of decoder rows.
    pub fn batch_size(&self) -> i64 {
        match &self.rows {
            Some(r) => r.source.len() as i64,
            None => self.layers.first().map(|l| l.cross_k.size()[0]).unwrap_or(0),
        }
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

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    #[test]
    fn rows_are_laid_out_per_source() {
        let rows = CrossRows::new(vec![2, 0, 0, 2, 1], 3, Device::Cpu);
        assert_eq!(rows.width, 2);
        assert_eq!(Vec::<i64>::try_from(&rows.slot).unwrap(), [4, 0, 1, 5, 2]);
    }

    /// Rows reading their source's keys/values in place equal rows given gathered copies,
    /// with and without a padding mask, through either product.
    #[test]
    fn grouped_cross_attention_equals_gathered_keys_and_values() {
        tch::manual_seed(3);
        let cfg = T5Config::from_json(&serde_json::json!({"d_model": 16, "d_kv": 4, "num_heads": 2})).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let attn = T5Attention::new(vs.root() / "a", &cfg, false, true);
        let (s, l) = (3, 5);
        let enc = Tensor::randn([s, l, 16], (Kind::Float, Device::Cpu));
        let (k, v) = attn.project_kv(&enc, Gemm::Linear);
        let source = vec![1i64, 0, 1, 1, 2, 1];
        let rows = CrossRows::new(source.clone(), s, Device::Cpu);
        let idx = Tensor::from_slice(&source);
        let xs = Tensor::randn([source.len() as i64, 1, 16], (Kind::Float, Device::Cpu));
        let keep = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]).view([s, l]);
        let mask = crate::model::nn_util::additive_padding_mask(&keep, Kind::Float);
        tch::no_grad(|| {
            for m in [None, Some(&mask)] {
                let want = attn.forward(
                    &xs,
                    KeyValue::CrossCached(&k.index_select(0, &idx), &v.index_select(0, &idx)),
                    m.map(|m| m.index_select(0, &idx)).as_ref(),
                    false,
                    true,
                );
                for gemm in [Gemm::Linear, Gemm::OneDnn] {
                    let got = attn.forward_grouped(&xs, (&k, &v), &rows, m, true, gemm);
                    assert!(max_abs_diff(&got.0, &want.0) < 1e-5, "{gemm:?}");
                    assert!(max_abs_diff(got.1.as_ref().unwrap(), want.1.as_ref().unwrap()) < 1e-5);
                }
            }
        });
    }

    /// Reordering keeps the per-source keys/values and composes the row → source maps.
    #[test]
    fn reorder_composes_sources_and_drops_the_map_at_identity() {
        let kv = Tensor::zeros([2, 1, 3, 4], (Kind::Float, Device::Cpu));
        let own = Tensor::arange(3, (Kind::Float, Device::Cpu)).view([3, 1, 1, 1]).expand([3, 1, 2, 4], false);
        let cache = T5Cache {
            layers: vec![LayerCache {
                self_kv: Some((own.contiguous(), own.contiguous())),
                cross_k: kv.shallow_clone(),
                cross_v: kv.shallow_clone(),
            }],
            cross_mask: None,
            len: 2,
            rows: Some(CrossRows::new(vec![1, 0, 1], 2, Device::Cpu)),
            gemm: Gemm::Linear,
        };
        let re = cache.reorder(&[2, 2, 1, 0]);
        assert_eq!(re.rows.as_ref().unwrap().source, [1, 1, 0, 1]);
        assert_eq!(re.batch_size(), 4);
        let firsts = re.layers[0].self_kv.as_ref().unwrap().0.select(2, 0).select(2, 0).view([-1]);
        assert_eq!(Vec::<f32>::try_from(firsts).unwrap(), [2.0, 2.0, 1.0, 0.0]);
        assert_eq!(re.layers[0].cross_k.size(), [2, 1, 3, 4]);
        // Rows back in source order: no map.
        assert!(re.reorder(&[2, 0]).rows.is_none());
    }
}
