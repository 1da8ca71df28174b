//! What is trained, built from `[model]` alone: a dual encoder (DR), a ColBERT encoder
//! (MVDR) or a T5 generating docids (GR), its variables in one `VarStore` (backbone under
//! the HF keys, heads under `grdr_head.`), and the step's loss for a micro-batch. Model code
//! never calls collectives; the gathers that make a rank's loss the global loss are here,
//! outside the model.
use std::path::{Path, PathBuf};

use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use crate::config::{Arch, ModelConfig, ModelKind};
use crate::data::batch::{GenBatch, PairBatch};
use crate::data::docid::{DocidTable, Scheme};
use crate::data::shard::{tag, SplitMix64};
use crate::dist::gather::{all_gather_padded_with_grad, all_gather_with_grad, global_mean_share};
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::model::colbert::{ColbertConfig, ColbertEncoder, ColbertHead};
use crate::model::dual::{DualConfig, DualEncoder, DualHead};
use crate::model::generative::{resize_token_embeddings, DocidVocab};
use crate::model::hf::{self, LoadOptions};
use crate::model::{
    BertConfig, BertModel, Pooling, T5Config, T5EncoderModel, T5ForConditionalGeneration, TextEncoderModel,
};
use crate::train::loss;

/// Variables of the heads live under this prefix (left out of an HF export).
pub const HEAD_PREFIX: &str = "grdr_head";

pub enum Net {
    Dual(DualEncoder<TextEncoderModel>),
    Colbert(ColbertEncoder<TextEncoderModel>),
    Generative { model: T5ForConditionalGeneration, vocab: DocidVocab },
}

pub struct Task {
    pub vs: nn::VarStore,
    pub net: Net,
    /// The tokenizer.json the model reads (copied into exports).
    pub tokenizer_json: PathBuf,
    /// Forward passes run with dropout (false: `model.no_dropout`).
    pub dropout: bool,
}

/// Loss settings from `[train]` the task needs.
#[derive(Debug, Clone, Copy)]
pub struct LossSettings {
    pub temperature: f64,
    pub num_negatives: Option<usize>,
    pub seed: u64,
}

fn tokenizer_json(cfg: &ModelConfig, init_dir: Option<&Path>) -> Result<PathBuf> {
    let p = match (&cfg.tokenizer, init_dir) {
        (Some(t), _) => crate::assets::resolve(t)?,
        (None, Some(d)) => d.to_path_buf(),
        (None, None) => return Err(Error::usage("model.tokenizer", "required with model.init = \"scratch\"")),
    };
    let file = if p.is_dir() { p.join("tokenizer.json") } else { p };
    if !file.exists() {
        return Err(Error::usage("model.tokenizer", format!("{} does not exist", file.display())));
    }
    Ok(file)
}

fn vocab_size(tokenizer: &Path) -> Result<i64> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer)
        .map_err(|e| Error::Tokenizer { name: tokenizer.display().to_string(), message: e.to_string() })?;
    Ok(tok.get_vocab_size(true) as i64)
}

fn scratch_t5_config(cfg: &ModelConfig, vocab: i64) -> Result<T5Config> {
    if cfg.d_model % cfg.num_heads != 0 {
        return Err(Error::usage("model.d_model", "must be a multiple of model.num_heads"));
    }
    // T5 v1.0 layout (ReLU FFN, lm_head tied to the embeddings), ids as the T5 tokenizer's.
    T5Config::from_json(&json!({
        "vocab_size": vocab, "d_model": cfg.d_model, "d_kv": cfg.d_model / cfg.num_heads, "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers, "num_heads": cfg.num_heads, "dropout_rate": cfg.dropout,
        "feed_forward_proj": "relu", "tie_word_embeddings": true, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "model_type": "t5",
    }))
}

fn scratch_encoder(p: &nn::Path, cfg: &ModelConfig, vocab: i64) -> Result<TextEncoderModel> {
    Ok(match cfg.arch {
        Arch::Bert => {
            if cfg.d_model % cfg.num_heads != 0 {
                return Err(Error::usage("model.d_model", "must be a multiple of model.num_heads"));
            }
            let c = BertConfig::from_json(&json!({
                "vocab_size": vocab, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
                "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff,
                "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
                "max_position_embeddings": 512, "model_type": "bert",
            }))?;
            TextEncoderModel::Bert(BertModel::new(p, c)?)
        }
        Arch::T5 => TextEncoderModel::T5(T5EncoderModel::new(p, scratch_t5_config(cfg, vocab)?)?),
    })
}

impl Task {
    /// Builds the model on `device` (initialisation drawn from the current torch seed).
    pub fn build(cfg: &ModelConfig, device: Device, docids: Option<&DocidTable>) -> Result<Task> {
        let scratch = cfg.init == "scratch";
        let init_dir = if scratch { None } else { Some(crate::assets::resolve(&cfg.init)?) };
        let tokenizer_json = tokenizer_json(cfg, init_dir.as_deref())?;
        let opts = LoadOptions { device, ..Default::default() };
        let pooling: Pooling = cfg.pooling.parse()?;
        let (vs, net) = match cfg.kind {
            ModelKind::Dual | ModelKind::Colbert => {
                let (vs, encoder) = match &init_dir {
                    Some(dir) => {
                        let (vs, m, _) = TextEncoderModel::load(dir, opts)?;
                        (vs, m)
                    }
                    None => {
                        let vs = nn::VarStore::new(device);
                        let m = scratch_encoder(&vs.root(), cfg, vocab_size(&tokenizer_json)?)?;
                        (vs, m)
                    }
                };
                let hidden = crate::model::Encoder::hidden_size(&encoder);
                let p = vs.root() / HEAD_PREFIX;
                let net = if cfg.kind == ModelKind::Dual {
                    let head = DualHead::new(
                        &p,
                        hidden,
                        DualConfig { pooling, dim: cfg.dim, normalize: cfg.normalize, temperature: 1.0 },
                    );
                    Net::Dual(DualEncoder { encoder, head })
                } else {
                    let c = ColbertConfig {
                        dim: cfg.colbert_dim,
                        normalize: cfg.normalize,
                        query_len: cfg.colbert_query_len,
                        query_augment_token: cfg.query_augment_token,
                    };
                    Net::Colbert(ColbertEncoder { encoder, head: ColbertHead::new(&p, hidden, c) })
                };
                (vs, net)
            }
            ModelKind::Generative => {
                let table = docids.ok_or_else(|| Error::usage("docids.path", "a generative model needs docids"))?;
                let (vs, mut model) = match &init_dir {
                    Some(dir) => {
                        let l = hf::load::<T5ForConditionalGeneration>(dir, opts)?;
                        (l.vs, l.model)
                    }
                    None => {
                        let vs = nn::VarStore::new(device);
                        let m = T5ForConditionalGeneration::new(
                            &vs.root(),
                            scratch_t5_config(cfg, vocab_size(&tokenizer_json)?)?,
                        )?;
                        (vs, m)
                    }
                };
                let base = model.config.vocab_size;
                let vocab = match table.meta.scheme {
                    Scheme::Atomic => DocidVocab::Atomic { base, n_docs: table.meta.n_docs as i64 },
                    Scheme::Semantic => DocidVocab::Semantic { base, sizes: table.meta.level_sizes.clone() },
                    Scheme::Title | Scheme::Ngram => DocidVocab::Text,
                };
                if vocab.n_new_tokens() > 0 {
                    resize_token_embeddings(&mut model, &vs, base + vocab.n_new_tokens(), base)?;
                }
                (vs, Net::Generative { model, vocab })
            }
        };
        Ok(Task { vs, net, tokenizer_json, dropout: !cfg.no_dropout })
    }

    /// Trainable variables by name, sorted (the order DDP and the optimizer share).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// GR: the target sequence (docid tokens + eos, in model vocabulary) of every docid row.
    pub fn targets(&self, table: &DocidTable) -> Result<Vec<Vec<i64>>> {
        let Net::Generative { model, vocab } = &self.net else { return Ok(vec![]) };
        let eos = model.config.eos_token_id;
        table
            .rows
            .iter()
            .map(|r| match vocab {
                DocidVocab::Atomic { .. } => vocab.atomic_tokens(r.doc_idx, eos),
                DocidVocab::Semantic { .. } => vocab.semantic_tokens(&r.tokens, eos),
                DocidVocab::Text => Ok(r.tokens.iter().copied().chain([eos]).collect()),
            })
            .collect()
    }

    /// DR/ColBERT micro-batch loss over the global batch (every rank's queries and
    /// documents gathered): the same value on every rank; the trainer scales it by
    /// `backward_scale / grad_accum` before `backward`.
    pub fn pair_loss(&self, comm: &dyn Comm, b: &PairBatch, s: LossSettings, step: u64, micro: u64) -> Result<Tensor> {
        let train = self.dropout;
        let scores = match &self.net {
            Net::Dual(m) => {
                let q = m.embed(&b.q_ids, &b.q_mask, train); // (B, d)
                let d = m.embed(&b.d_ids, &b.d_mask, train); // (B·group, d)
                let q = all_gather_with_grad(comm, &q)?; // (Q, d), Q = ΣB
                let d = all_gather_with_grad(comm, &d)?; // (Q·group, d)
                q.matmul(&d.tr()) // (Q, Q·group)
            }
            Net::Colbert(m) => {
                let (q, qm) = m.embed_queries(&b.q_ids, &b.q_mask, train); // (B, Lq, dim)
                let (d, dm) = m.embed_docs(&b.d_ids, &b.d_mask, train); // (B·group, Ld, dim)
                let (q, qm) = all_gather_padded_with_grad(comm, &q, &qm)?;
                let (d, dm) = all_gather_padded_with_grad(comm, &d, &dm)?;
                loss::maxsim(&q, &qm.to_kind(Kind::Bool), &d, &dm.to_kind(Kind::Bool))
            }
            Net::Generative { .. } => return Err(Error::usage("model.kind", "generative models take GR batches")),
        };
        let (nq, nd) = scores.size2().expect("(Q, N) scores");
        let labels = loss::positive_rows(nq, b.group, scores.device());
        let scores = match s.num_negatives {
            Some(k) if (k as i64) < nd - 1 => scores.masked_fill(
                &negative_subsample(nq, nd, b.group, k, s.seed, step, micro, scores.device()),
                f64::NEG_INFINITY,
            ),
            _ => scores,
        };
        Ok(loss::info_nce_from_scores(&scores, &labels, s.temperature))
    }

    /// GR micro-batch: (this rank's share to back-propagate, NLL sum / global tokens).
    pub fn generative_loss(&self, comm: &dyn Comm, b: &GenBatch, global_tokens: i64) -> Result<(Tensor, Tensor)> {
        let Net::Generative { model, .. } = &self.net else {
            return Err(Error::usage("model.kind", "DR models take pair batches"));
        };
        let decoder_input = model.shift_right(&b.labels);
        let out = model.forward(&b.input_ids, &b.attention_mask, &decoder_input, self.dropout, false);
        let sum = loss::token_nll_sum(&out.logits, &b.labels, &b.labels.ne(-100)); // scalar
        let share = global_mean_share(comm.world(), &sum, global_tokens);
        Ok((share, sum.detach() / global_tokens.max(1) as f64))
    }
}

/// The mask (true = dropped) keeping, per query, its positive and `k` other documents drawn
/// per (seed, step, micro-batch, query) — the same on every rank and for any rank count.
#[allow(clippy::too_many_arguments)]
fn negative_subsample(
    nq: i64,
    nd: i64,
    group: i64,
    k: usize,
    seed: u64,
    step: u64,
    micro: u64,
    device: Device,
) -> Tensor {
    let mut drop = vec![true; (nq * nd) as usize];
    for i in 0..nq {
        let pos = i * group;
        let mut others: Vec<i64> = (0..nd).filter(|&j| j != pos).collect();
        SplitMix64::keyed(&[seed, tag::SUBSAMPLE, step, micro, i as u64]).shuffle(&mut others);
        drop[(i * nd + pos) as usize] = false;
        for &j in others.iter().take(k) {
            drop[(i * nd + j) as usize] = false;
        }
    }
    Tensor::from_slice(&drop).view([nq, nd]).to_device(device)
}
