//! T5 encoder-decoder equal to HF `T5ForConditionalGeneration` / `T5EncoderModel`:
//! v1.0 (ReLU FFN, lm_head tied to `shared` and fed d_model^-0.5-scaled states) and
//! v1.1/flan (gated-GELU FFN, untied `lm_head`). One struct per HF module; fields are named
//! like the weight keys (`encoder.block.{i}.layer.{j}.…`).
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::gemm::Gemm;
use super::nn_util::{additive_causal_mask, linear, padding_bias, Activation};
use super::t5_attention::{CrossRows, KeyValue, LayerCache, T5Attention, T5Cache};
use crate::error::{Error, Result};

/// HF `T5Config`; unknown keys are kept in `extra` so an export writes them back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "d::vocab")]
    pub vocab_size: i64,
    #[serde(default = "d::d_model")]
    pub d_model: i64,
    #[serde(default = "d::d_kv")]
    pub d_kv: i64,
    #[serde(default = "d::d_ff")]
    pub d_ff: i64,
    #[serde(default = "d::layers")]
    pub num_layers: i64,
    #[serde(default)]
    pub num_decoder_layers: Option<i64>,
    #[serde(default = "d::heads")]
    pub num_heads: i64,
    #[serde(default = "d::buckets")]
    pub relative_attention_num_buckets: i64,
    #[serde(default = "d::max_distance")]
    pub relative_attention_max_distance: i64,
    #[serde(default = "d::dropout")]
    pub dropout_rate: f64,
    #[serde(default = "d::eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d::one")]
    pub initializer_factor: f64,
    #[serde(default = "d::ffp")]
    pub feed_forward_proj: String,
    /// Before transformers 5: v1.0 true (tied, scaled), v1.1 false. Transformers 5 always
    /// writes true and says what it means in `scale_decoder_outputs`.
    #[serde(default = "d::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "d::eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub decoder_start_token_id: i64,
    #[serde(default = "d::model_type")]
    pub model_type: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod d {
    pub fn vocab() -> i64 {
        32128
    }
    pub fn d_model() -> i64 {
        512
    }
    pub fn d_kv() -> i64 {
        64
    }
    pub fn d_ff() -> i64 {
        2048
    }
    pub fn layers() -> i64 {
        6
    }
    pub fn heads() -> i64 {
        8
    }
    pub fn buckets() -> i64 {
        32
    }
    pub fn max_distance() -> i64 {
        128
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn ffp() -> String {
        "relu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn eos() -> i64 {
        1
    }
    pub fn model_type() -> String {
        "t5".into()
    }
}

impl T5Config {
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(v.clone()).map_err(|e| Error::usage("config.json", format!("not a T5 config: {e}")))
    }

    /// `feed_forward_proj` as HF parses it: `[gated-]ACT`, where `gated-gelu` means gelu_new.
    pub fn ffn_kind(&self) -> Result<(bool, Activation)> {
        let (gated, act) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(a) => (true, a),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = if self.feed_forward_proj == "gated-gelu" { "gelu_new" } else { act };
        Ok((gated, Activation::from_hf(act)?))
    }

    /// Whether decoder states are scaled by d_model^-0.5 before the lm_head (v1.0).
    pub fn scales_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs.unwrap_or(self.tie_word_embeddings)
    }

    /// Whether the lm_head is `shared` (v1.0) rather than its own `lm_head.weight` (v1.1).
    pub fn ties_lm_head(&self) -> bool {
        self.tie_word_embeddings && self.scales_decoder_outputs()
    }

    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }
}

/// HF `T5LayerNorm`: RMS norm without mean subtraction or bias, statistics in f32.
#[derive(Debug)]
pub struct T5LayerNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl T5LayerNorm {
    pub fn new(p: nn::Path, d: i64, eps: f64) -> Self {
        T5LayerNorm { weight: p.var("weight", &[d], nn::Init::Const(1.0)), eps }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let var = xs.to_kind(Kind::Float).square().mean_dim(-1, true, Kind::Float);
        let normed = (xs.to_kind(Kind::Float) * (var + self.eps).rsqrt()).to_kind(self.weight.kind());
        &self.weight * normed
    }
}

/// HF `T5DenseActDense` (`wi`, `wo`) or `T5DenseGatedActDense` (`wi_0`, `wi_1`, `wo`).
#[derive(Debug)]
pub struct T5DenseActDense {
    pub wi: Option<nn::Linear>,
    pub wi_0: Option<nn::Linear>,
    pub wi_1: Option<nn::Linear>,
    pub wo: nn::Linear,
    pub act: Activation,
    pub dropout: f64,
}

impl T5DenseActDense {
    pub fn new(p: nn::Path, cfg: &T5Config) -> Result<Self> {
        let (gated, act) = cfg.ffn_kind()?;
        let f = cfg.initializer_factor;
        let wi_std = f * (cfg.d_model as f64).powf(-0.5);
        let mk = |name: &str| linear(&(&p / name), cfg.d_model, cfg.d_ff, false, wi_std);
        let (wi, wi_0, wi_1) =
            if gated { (None, Some(mk("wi_0")), Some(mk("wi_1"))) } else { (Some(mk("wi")), None, None) };
        let wo = linear(&(&p / "wo"), cfg.d_ff, cfg.d_model, false, f * (cfg.d_ff as f64).powf(-0.5));
        Ok(T5DenseActDense { wi, wi_0, wi_1, wo, act, dropout: cfg.dropout_rate })
    }

    pub fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_with(xs, train, Gemm::fastest_for(xs))
    }

    /// [`Self::forward`] with the products computed by `gemm`.
    pub fn forward_with(&self, xs: &Tensor, train: bool, gemm: Gemm) -> Tensor {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.act.apply(&gemm.apply(xs, wi)),
            (None, Some(w0), Some(w1)) => self.act.apply(&gemm.apply(xs, w0)) * gemm.apply(xs, w1),
            _ => unreachable!("T5DenseActDense has either wi or wi_0 and wi_1"),
        };
        gemm.apply(&h.dropout(self.dropout, train), &self.wo)
    }
}

/// One T5 block: `layer.0` self-attention, `layer.1` cross-attention (decoder only), then the
/// feed-forward layer (`layer.1` in the encoder, `layer.2` in the decoder). Each sub-layer is
/// pre-norm with a residual: x + dropout(f(layer_norm(x))).
#[derive(Debug)]
pub struct T5Block {
    /// `layer.0.SelfAttention`, `layer.0.layer_norm`
    pub self_attention: T5Attention,
    pub self_attention_norm: T5LayerNorm,
    /// `layer.1.EncDecAttention`, `layer.1.layer_norm`
    pub cross_attention: Option<(T5Attention, T5LayerNorm)>,
    /// `layer.{1|2}.DenseReluDense`, `layer.{1|2}.layer_norm`
    pub ff: T5DenseActDense,
    pub ff_norm: T5LayerNorm,
    pub dropout: f64,
}

impl T5Block {
    pub fn new(p: nn::Path, cfg: &T5Config, is_decoder: bool, has_relative_bias: bool) -> Result<Self> {
        let (d, eps) = (cfg.d_model, cfg.layer_norm_epsilon);
        let l = &p / "layer";
        let l0 = &l / 0;
        let self_attention = T5Attention::new(&l0 / "SelfAttention", cfg, has_relative_bias, !is_decoder);
        let self_attention_norm = T5LayerNorm::new(&l0 / "layer_norm", d, eps);
        let cross_attention = is_decoder.then(|| {
            let l1 = &l / 1;
            (T5Attention::new(&l1 / "EncDecAttention", cfg, false, true), T5LayerNorm::new(&l1 / "layer_norm", d, eps))
        });
        let lf = &l / if is_decoder { 2 } else { 1 };
        let ff = T5DenseActDense::new(&lf / "DenseReluDense", cfg)?;
        let ff_norm = T5LayerNorm::new(&lf / "layer_norm", d, eps);
        Ok(T5Block { self_attention, self_attention_norm, cross_attention, ff, ff_norm, dropout: cfg.dropout_rate })
    }
}

/// Where a decoder block's keys/values come from for one forward.
pub(crate) enum BlockKv<'a> {
    /// Full sequence (encoder, or teacher-forced decoder over `enc` states).
    Full { enc: Option<&'a Tensor>, cross_mask: Option<&'a Tensor>, gemm: Gemm },
    /// Incremental decoding against the cache; `rows` maps decoder rows to the cache's
    /// per-source cross-attention keys/values (`None`: row i is source i).
    Cached { layer: &'a mut LayerCache, cross_mask: Option<&'a Tensor>, rows: Option<&'a CrossRows>, gemm: Gemm },
}

impl T5Block {
    /// `xs` (B, T, D); `self_bias` (B|1, H, T, T'): position bias plus masks. Returns the new
    /// states and, when asked, the cross-attention weights (B, H, T, L) with the normed states
    /// (B, T, D) the cross-attention read (its queries are their projection).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        self_bias: &Tensor,
        kv: BlockKv,
        train: bool,
        need_cross_weights: bool,
    ) -> (Tensor, Option<(Tensor, Tensor)>) {
        let normed = self.self_attention_norm.forward(xs);
        let gemm = match &kv {
            BlockKv::Full { gemm, .. } | BlockKv::Cached { gemm, .. } => *gemm,
        };
        let (cross_kv, cross_mask, self_kv) = match kv {
            BlockKv::Full { enc, cross_mask, .. } => (enc.map(KvSrc::Enc), cross_mask, KeyValue::SelfOnly),
            BlockKv::Cached { layer, cross_mask, rows, .. } => (
                Some(match rows {
                    Some(rows) => KvSrc::Grouped(layer.cross_k.shallow_clone(), layer.cross_v.shallow_clone(), rows),
                    None => KvSrc::Proj(layer.cross_k.shallow_clone(), layer.cross_v.shallow_clone()),
                }),
                cross_mask,
                KeyValue::SelfCached(&mut layer.self_kv),
            ),
        };
        let (h, _) = self.self_attention.forward_with(&normed, self_kv, Some(self_bias), train, false, gemm);
        let mut xs = xs + h.dropout(self.dropout, train);
        let mut weights = None;
        if let (Some((attn, norm)), Some(src)) = (&self.cross_attention, cross_kv) {
            let normed = norm.forward(&xs);
            let (h, w) = match &src {
                KvSrc::Enc(enc) => {
                    attn.forward_with(&normed, KeyValue::Cross(enc), cross_mask, train, need_cross_weights, gemm)
                }
                KvSrc::Proj(k, v) => {
                    attn.forward_with(&normed, KeyValue::CrossCached(k, v), cross_mask, train, need_cross_weights, gemm)
                }
                KvSrc::Grouped(k, v, rows) => {
                    attn.forward_grouped(&normed, (k, v), rows, cross_mask, need_cross_weights, gemm)
                }
            };
            // Not `+=`: that adds in place, and backward still needs this layer's input.
            #[allow(clippy::assign_op_pattern)]
            {
                xs = xs + h.dropout(self.dropout, train);
            }
            weights = w.map(|w| (w, normed));
        }
        let h = self.ff.forward_with(&self.ff_norm.forward(&xs), train, gemm);
        (xs + h.dropout(self.dropout, train), weights)
    }
}

enum KvSrc<'a> {
    Enc(&'a Tensor),
    Proj(Tensor, Tensor),
    Grouped(Tensor, Tensor, &'a CrossRows),
}

/// The cross-attention weights and inputs of every block, when asked for.
struct CrossRecord(Option<(Vec<Tensor>, Vec<Tensor>)>);

impl CrossRecord {
    fn new(wanted: bool) -> Self {
        CrossRecord(wanted.then(|| (Vec::new(), Vec::new())))
    }

    fn push(&mut self, block: Option<(Tensor, Tensor)>) {
        if let (Some((weights, inputs)), Some((w, x))) = (self.0.as_mut(), block) {
            weights.push(w);
            inputs.push(x);
        }
    }

    fn output(self, hidden: Tensor, pre_norm: Tensor) -> DecoderOutput {
        let (cross_attentions, cross_inputs) = self.0.map(|(w, x)| (Some(w), Some(x))).unwrap_or((None, None));
        DecoderOutput { hidden, cross_attentions, cross_inputs, pre_norm }
    }
}

/// HF `T5Stack`: `embed_tokens` (tied to `shared`), `block.{i}`, `final_layer_norm`.
#[derive(Debug)]
pub struct T5Stack {
    /// (V, D), the same tensor as the model's `shared.weight`.
    pub embed_tokens: Tensor,
    pub block: Vec<T5Block>,
    pub final_layer_norm: T5LayerNorm,
    pub is_decoder: bool,
    pub dropout: f64,
}

/// Decoder output of one forward.
#[derive(Debug)]
pub struct DecoderOutput {
    /// Last hidden states after the final layer norm (B, T, D).
    pub hidden: Tensor,
    /// Per block, the cross-attention weights (B, H, T, L): the alignment matrix A of
    /// Wu et al. (document tokens × query tokens), when asked for.
    pub cross_attentions: Option<Vec<Tensor>>,
    /// Per block, the normed states (B, T, D) its cross-attention projected to queries, when
    /// the weights are asked for (`grdr analyze low-rank` rebuilds the scores from them).
    pub cross_inputs: Option<Vec<Tensor>>,
    /// The residual stream before the final layer norm (B, T, D): with it, a component's
    /// direct contribution to the logits is linear (`grdr analyze alignment`).
    pub pre_norm: Tensor,
}

impl T5Stack {
    pub fn new(p: nn::Path, cfg: &T5Config, shared: &Tensor, is_decoder: bool) -> Result<Self> {
        let n = if is_decoder { cfg.decoder_layers() } else { cfg.num_layers };
        let b = &p / "block";
        let block = (0..n).map(|i| T5Block::new(&b / i, cfg, is_decoder, i == 0)).collect::<Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(&p / "final_layer_norm", cfg.d_model, cfg.layer_norm_epsilon);
        Ok(T5Stack {
            embed_tokens: shared.shallow_clone(),
            block,
            final_layer_norm,
            is_decoder,
            dropout: cfg.dropout_rate,
        })
    }

    fn embed(&self, ids: &Tensor, train: bool) -> Tensor {
        Tensor::embedding(&self.embed_tokens, ids, -1, false, false).dropout(self.dropout, train)
    }

    fn position_bias(&self, tq: i64, tk: i64, offset: i64, device: tch::Device) -> Tensor {
        self.block[0].self_attention.compute_bias(tq, tk, offset, device)
    }

    /// Encoder forward: `ids` (B, L), `mask` (B, L) → (B, L, D).
    pub fn encode(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let mut xs = self.embed(ids, train);
        let gemm = Gemm::fastest_for(&xs);
        let l = ids.size()[1];
        let position = self.position_bias(l, l, 0, ids.device()); // (1, H, L, L)
        let bias = match padding_bias(mask, xs.kind()) {
            Some(pad) => position + pad, // (B, H, L, L)
            None => position,
        };
        for block in &self.block {
            xs = block.forward(&xs, &bias, BlockKv::Full { enc: None, cross_mask: None, gemm }, train, false).0;
        }
        self.final_layer_norm.forward(&xs).dropout(self.dropout, train)
    }

    /// Teacher-forced decoder forward over the full target prefix `ids` (B, T) with causal
    /// self-attention and cross-attention to `enc` (B, L, D) under `enc_mask` (B, L).
    pub fn decode(
        &self,
        ids: &Tensor,
        enc: &Tensor,
        enc_mask: &Tensor,
        train: bool,
        need_cross: bool,
    ) -> DecoderOutput {
        let mut xs = self.embed(ids, train);
        let t = ids.size()[1];
        let bias = self.position_bias(t, t, 0, ids.device()) + additive_causal_mask(t, 0, xs.kind(), ids.device());
        let cross_mask = padding_bias(enc_mask, xs.kind());
        let mut cross = CrossRecord::new(need_cross);
        for block in &self.block {
            let kv = BlockKv::Full { enc: Some(enc), cross_mask: cross_mask.as_ref(), gemm: Gemm::fastest_for(enc) };
            let (h, w) = block.forward(&xs, &bias, kv, train, need_cross);
            xs = h;
            cross.push(w);
        }
        cross.output(self.final_layer_norm.forward(&xs).dropout(self.dropout, train), xs)
    }

    /// A cache for decoding against `enc` (B, L, D): projects every block's cross-attention
    /// keys/values once.
    pub fn new_cache(&self, enc: &Tensor, enc_mask: &Tensor) -> T5Cache {
        let gemm = Gemm::fastest_for(enc);
        let layers = self
            .block
            .iter()
            .map(|b| {
                let (attn, _) = b.cross_attention.as_ref().expect("decoder block");
                let (cross_k, cross_v) = attn.project_kv(enc, gemm);
                LayerCache { self_kv: None, cross_k, cross_v }
            })
            .collect();
        T5Cache { layers, cross_mask: padding_bias(enc_mask, enc.kind()), len: 0, rows: None, gemm }
    }

    /// Incremental decoder forward of the next `ids` (B, t) (usually t = 1) after the
    /// `cache.len` positions already cached; appends to the cache. Returns (B, t, D).
    pub fn decode_step(&self, ids: &Tensor, cache: &mut T5Cache, need_cross: bool) -> DecoderOutput {
        let mut xs = self.embed(ids, false);
        let (t, off) = (ids.size()[1], cache.len);
        let bias =
            self.position_bias(t, off + t, off, ids.device()) + additive_causal_mask(t, off, xs.kind(), ids.device());
        let mut cross = CrossRecord::new(need_cross);
        let T5Cache { layers, cross_mask, rows, gemm, .. } = cache;
        for (block, layer) in self.block.iter().zip(layers.iter_mut()) {
            let kv = BlockKv::Cached { layer, cross_mask: cross_mask.as_ref(), rows: rows.as_ref(), gemm: *gemm };
            let (h, w) = block.forward(&xs, &bias, kv, false, need_cross);
            xs = h;
            cross.push(w);
        }
        cache.len += t;
        cross.output(self.final_layer_norm.forward(&xs), xs)
    }
}
