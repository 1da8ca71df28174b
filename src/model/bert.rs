//! BERT encoder equal to HF `BertModel` (all-MiniLM-L6-v2, DPR/Contriever-style towers).
//! Fields are named like the weight keys (`embeddings.word_embeddings.weight`,
//! `encoder.layer.{i}.attention.self.query.weight`, …).
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::gemm::Gemm;
use super::nn_util::{layer_norm, linear, padding_bias, weight, Activation};
use super::Encoder;
use crate::error::{Error, Result};

/// HF `BertConfig`; unknown keys are kept in `extra` so an export writes them back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d::vocab")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden")]
    pub hidden_size: i64,
    #[serde(default = "d::layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::inter")]
    pub intermediate_size: i64,
    #[serde(default = "d::act")]
    pub hidden_act: String,
    #[serde(default = "d::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d::positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::types")]
    pub type_vocab_size: i64,
    #[serde(default = "d::init")]
    pub initializer_range: f64,
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "d::model_type")]
    pub model_type: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod d {
    pub fn vocab() -> i64 {
        30522
    }
    pub fn hidden() -> i64 {
        768
    }
    pub fn layers() -> i64 {
        12
    }
    pub fn heads() -> i64 {
        12
    }
    pub fn inter() -> i64 {
        3072
    }
    pub fn act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn positions() -> i64 {
        512
    }
    pub fn types() -> i64 {
        2
    }
    pub fn init() -> f64 {
        0.02
    }
    pub fn eps() -> f64 {
        1e-12
    }
    pub fn model_type() -> String {
        "bert".into()
    }
}

impl BertConfig {
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let cfg: BertConfig = serde_json::from_value(v.clone())
            .map_err(|e| Error::usage("config.json", format!("not a BERT config: {e}")))?;
        let pe = cfg.extra.get("position_embedding_type").and_then(|x| x.as_str()).unwrap_or("absolute");
        if pe != "absolute" {
            return Err(Error::usage("config.json", format!("position_embedding_type `{pe}` is not supported")));
        }
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(Error::usage("config.json", "hidden_size is not a multiple of num_attention_heads"));
        }
        Ok(cfg)
    }
}

/// HF `BertEmbeddings`: word + absolute position + token type, then LayerNorm and dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    /// (V, D)
    pub word_embeddings: Tensor,
    /// (P, D)
    pub position_embeddings: Tensor,
    /// (types, D)
    pub token_type_embeddings: Tensor,
    /// `embeddings.LayerNorm`
    pub layer_norm: nn::LayerNorm,
    pub dropout: f64,
}

/// HF `BertSelfAttention` (`query`, `key`, `value`) and `BertSelfOutput` (`dense`, `LayerNorm`).
#[derive(Debug)]
pub struct BertAttention {
    pub query: nn::Linear,
    pub key: nn::Linear,
    pub value: nn::Linear,
    /// `attention.output.dense`
    pub output_dense: nn::Linear,
    /// `attention.output.LayerNorm`
    pub output_layer_norm: nn::LayerNorm,
    pub heads: i64,
    pub attention_dropout: f64,
}

/// HF `BertLayer`: attention, `intermediate.dense` + activation, `output.dense` + `LayerNorm`.
#[derive(Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate_dense: nn::Linear,
    pub output_dense: nn::Linear,
    pub output_layer_norm: nn::LayerNorm,
    pub act: Activation,
    pub dropout: f64,
}

/// HF `BertModel` (the pooler, `pooler.dense`, is kept so checkpoints round-trip; the
/// retrieval heads pool the token states themselves).
#[derive(Debug)]
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    /// `encoder.layer.{i}`
    pub layer: Vec<BertLayer>,
    /// `pooler.dense`
    pub pooler: nn::Linear,
}

impl BertModel {
    pub fn new(p: &nn::Path, config: BertConfig) -> Result<Self> {
        let (d, std, eps) = (config.hidden_size, config.initializer_range, config.layer_norm_eps);
        let act = Activation::from_hf(&config.hidden_act)?;
        let e = p / "embeddings";
        let embeddings = BertEmbeddings {
            word_embeddings: weight(&(&e / "word_embeddings"), &[config.vocab_size, d], std),
            position_embeddings: weight(&(&e / "position_embeddings"), &[config.max_position_embeddings, d], std),
            token_type_embeddings: weight(&(&e / "token_type_embeddings"), &[config.type_vocab_size, d], std),
            layer_norm: layer_norm(&(&e / "LayerNorm"), d, eps),
            dropout: config.hidden_dropout_prob,
        };
        let layers = p / "encoder" / "layer";
        let layer = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &layers / i;
                let (a, o) = (&l / "attention" / "self", &l / "attention" / "output");
                BertLayer {
                    attention: BertAttention {
                        query: linear(&(&a / "query"), d, d, true, std),
                        key: linear(&(&a / "key"), d, d, true, std),
                        value: linear(&(&a / "value"), d, d, true, std),
                        output_dense: linear(&(&o / "dense"), d, d, true, std),
                        output_layer_norm: layer_norm(&(&o / "LayerNorm"), d, eps),
                        heads: config.num_attention_heads,
                        attention_dropout: config.attention_probs_dropout_prob,
                    },
                    intermediate_dense: linear(
                        &(&l / "intermediate" / "dense"),
                        d,
                        config.intermediate_size,
                        true,
                        std,
                    ),
                    output_dense: linear(&(&l / "output" / "dense"), config.intermediate_size, d, true, std),
                    output_layer_norm: layer_norm(&(&l / "output" / "LayerNorm"), d, eps),
                    act,
                    dropout: config.hidden_dropout_prob,
                }
            })
            .collect();
        let pooler = linear(&(p / "pooler" / "dense"), d, d, true, std);
        Ok(BertModel { config, embeddings, layer, pooler })
    }

    /// Token states (B, L, D); token types are all 0 (single-segment retrieval inputs).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let e = &self.embeddings;
        let l = input_ids.size()[1];
        let positions = Tensor::arange(l, (Kind::Int64, input_ids.device()));
        let word = Tensor::embedding(&e.word_embeddings, input_ids, -1, false, false);
        let pos = Tensor::embedding(&e.position_embeddings, &positions, -1, false, false);
        let typ = e.token_type_embeddings.get(0);
        let mut xs = (word + pos + typ).apply(&e.layer_norm).dropout(e.dropout, train); // (B, L, D)
        let mask = padding_bias(attention_mask, xs.kind()); // (B, 1, 1, L) or none
        for layer in &self.layer {
            xs = layer.forward(&xs, mask.as_ref(), train);
        }
        xs
    }

    /// HF pooler output: tanh(dense(first token)) (B, D).
    pub fn pooled(&self, hidden: &Tensor) -> Tensor {
        hidden.select(1, 0).apply(&self.pooler).tanh()
    }
}

impl BertLayer {
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let a = &self.attention;
        let (b, l, d) = xs.size3().unwrap();
        let k = d / a.heads;
        let gemm = Gemm::fastest_for(xs);
        let dense = |xs: &Tensor, layer: &nn::Linear| gemm.apply(xs, layer);
        let heads = |t: Tensor| t.view([b, l, a.heads, k]).transpose(1, 2); // (B, H, L, K)
        let (q, kk, v) = (heads(dense(xs, &a.query)), heads(dense(xs, &a.key)), heads(dense(xs, &a.value)));
        let p = if train { a.attention_dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(&q, &kk, &v, mask, p, false, None, false);
        let ctx = ctx.transpose(1, 2).contiguous().view([b, l, d]);
        let attn = (dense(&ctx, &a.output_dense).dropout(self.dropout, train) + xs).apply(&a.output_layer_norm);
        let h = self.act.apply(&dense(&attn, &self.intermediate_dense));
        (dense(&h, &self.output_dense).dropout(self.dropout, train) + attn).apply(&self.output_layer_norm)
    }
}

impl Encoder for BertModel {
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        self.forward(input_ids, attention_mask, train)
    }
    fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }
}
