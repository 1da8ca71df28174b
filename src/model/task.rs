//! What is trained or evaluated, built from `[model]` alone: a dual encoder (DR), a ColBERT
//! encoder (MVDR) or a T5 generating docids (GR), its variables in one `VarStore` (backbone
//! under the HF keys, heads under `grdr_head.`). The losses that train it live in
//! `train::objective` (they gather across ranks; model code never calls collectives).
use std::path::{Path, PathBuf};

use serde_json::json;
use tch::{nn, Device, Tensor};

use crate::config::{Arch, DecoderKind, ModelConfig, ModelKind};
use crate::data::docid::{DocidTable, Scheme};
use crate::error::{Error, Result};
use crate::model::colbert::{ColbertConfig, ColbertEncoder, ColbertHead, LateInteraction};
use crate::model::dual::{DualConfig, DualEncoder, DualHead};
use crate::model::generative::{resize_token_embeddings, DocidVocab};
use crate::model::hf::{self, LoadOptions};
use crate::model::np::Np;
use crate::model::pawa::Pawa;
use crate::model::{
    BertConfig, BertModel, GrModel, Pooling, T5Config, T5EncoderModel, T5ForConditionalGeneration, TextEncoderModel,
};

/// Variables of the heads live under this prefix (left out of an HF export).
pub const HEAD_PREFIX: &str = "grdr_head";

pub enum Net {
    Dual(DualEncoder<TextEncoderModel>),
    Colbert(ColbertEncoder<TextEncoderModel>),
    Generative { model: GrModel, vocab: DocidVocab },
}

// SAFETY (ForwardOnly): rerank workers only score candidates with no-grad forward passes;
// the task is not trained while they share it.
unsafe impl crate::parallel::ForwardOnly for Task {}

pub struct Task {
    pub vs: nn::VarStore,
    pub net: Net,
    /// The tokenizer.json the model reads (copied into exports).
    pub tokenizer_json: PathBuf,
    /// Forward passes run with dropout (false: `model.no_dropout`).
    pub dropout: bool,
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

fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| Error::Tokenizer { name: path.display().to_string(), message: e.to_string() })
}

/// The id of token `name` in the tokenizer, if it has it.
fn token_id(tokenizer: &Path, name: &str) -> Result<Option<i64>> {
    Ok(load_tokenizer(tokenizer)?.token_to_id(name).map(i64::from))
}

fn vocab_size(tokenizer: &Path) -> Result<i64> {
    Ok(load_tokenizer(tokenizer)?.get_vocab_size(true) as i64)
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
                    let vocab = match &encoder {
                        TextEncoderModel::Bert(b) => b.config.vocab_size,
                        TextEncoderModel::T5(t) => t.config.vocab_size,
                    };
                    if !(0..vocab).contains(&cfg.query_augment_token) {
                        return Err(Error::usage(
                            "model.query_augment_token",
                            format!(
                                "{} is not a token of the model's vocabulary (0..{vocab})",
                                cfg.query_augment_token
                            ),
                        ));
                    }
                    let c = ColbertConfig {
                        dim: cfg.colbert_dim,
                        normalize: cfg.normalize,
                        query_len: cfg.colbert_query_len,
                        query_augment_token: cfg.query_augment_token,
                        interaction: LateInteraction { alignment: cfg.alignment, normalized: cfg.alignment_normalize },
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
                // A grdr export's tokenizer already holds the docid tokens (and its model their
                // rows): they start where its first docid token is, not after the vocabulary.
                let vocab_at = |base| match table.meta.scheme {
                    Scheme::Atomic => DocidVocab::Atomic { base, n_docs: table.meta.n_docs as i64 },
                    Scheme::Semantic => DocidVocab::Semantic { base, sizes: table.meta.level_sizes.clone() },
                    Scheme::Title | Scheme::Ngram => DocidVocab::Text,
                };
                let rows = model.config.vocab_size;
                let base = match vocab_at(rows).token_names().first() {
                    Some(first) => token_id(&tokenizer_json, first)?.unwrap_or(rows),
                    None => rows,
                };
                let vocab = vocab_at(base);
                if base + vocab.n_new_tokens() > rows {
                    resize_token_embeddings(&mut model, base + vocab.n_new_tokens(), base)?;
                }
                let pawa = match (cfg.decoder, vocab.base()) {
                    (DecoderKind::Standard | DecoderKind::Np, _) => None,
                    (DecoderKind::Pawa, Some(first)) => Some(Pawa::new(
                        &(vs.root() / HEAD_PREFIX / "pawa"),
                        &model.config,
                        &model.shared,
                        first,
                        vocab.n_new_tokens(),
                        cfg.pawa_rank,
                        cfg.pawa_layers,
                    )?),
                    (DecoderKind::Pawa, None) => return Err(Error::usage(
                        "model.decoder",
                        "PAWA adapts the docid tokens of atomic or semantic docids; title and n-gram docids are text",
                    )),
                };
                if let Some(p) = &pawa {
                    tracing::info!(
                        "PAWA decoder: {} docid tokens × D {} × rank {} (+ W {}×{}) = {} projection parameters, prefix decoder of {} block(s)",
                        p.n_tokens(),
                        model.config.d_model,
                        cfg.pawa_rank,
                        cfg.pawa_rank,
                        model.config.d_model,
                        p.projection_parameters(),
                        cfg.pawa_layers
                    );
                }
                let np = match (cfg.decoder, vocab.base()) {
                    (DecoderKind::Np, None) => {
                        let rows: Vec<Vec<i64>> = table.rows.iter().map(|r| r.tokens.clone()).collect();
                        let np = Np::new(
                            &(vs.root() / HEAD_PREFIX / "np"),
                            &rows,
                            model.config.d_model,
                            model.config.eos_token_id,
                            cfg.np_clusters,
                        )?;
                        tracing::info!(
                            "NP decoder: {} entries (≤ {} per token type) × D {}, {}",
                            np.n_entries(),
                            cfg.np_clusters,
                            model.config.d_model,
                            if cfg.np_refresh_epochs > 0.0 {
                                format!("re-encoded every {} epochs (ASYNC)", cfg.np_refresh_epochs)
                            } else {
                                "from the initial encoder, frozen (BASE)".into()
                            }
                        );
                        Some(np)
                    }
                    (DecoderKind::Np, Some(_)) => return Err(Error::usage(
                        "model.decoder",
                        "NP decoding replaces text tokens' output embeddings by their contextual ones: it takes title or n-gram docids, not atomic or semantic",
                    )),
                    _ => None,
                };
                (vs, Net::Generative { model: GrModel { t5: model, pawa, np }, vocab })
            }
        };
        Ok(Task { vs, net, tokenizer_json, dropout: !cfg.no_dropout })
    }

    /// The longest input the encoder takes: BERT's learned positions; none for T5, whose
    /// relative positions have no limit.
    pub fn max_positions(&self) -> Option<usize> {
        match &self.net {
            Net::Dual(m) => m.encoder.max_positions(),
            Net::Colbert(m) => m.encoder.max_positions(),
            Net::Generative { .. } => None,
        }
    }

    /// Refuses truncation lengths the encoder cannot take (named by `key`), before any
    /// forward pass would fail midway through a corpus.
    pub fn check_lengths(&self, lengths: &[(&str, usize)]) -> Result<()> {
        let Some(max) = self.max_positions() else { return Ok(()) };
        for (key, len) in lengths {
            if *len > max {
                return Err(Error::usage(*key, format!("{len} tokens, but the model has {max} positions")));
            }
        }
        Ok(())
    }

    /// Trainable variables by name, sorted (the order DDP and the optimizer share).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// NP decoding: recomputes D from the model's current encoder (BASE at the start of a
    /// run, ASYNC every `model.np_refresh_epochs`); nothing for other models.
    pub fn refresh_np(&self, table: &DocidTable) {
        if let Net::Generative { model: GrModel { t5, np: Some(np), .. }, .. } = &self.net {
            let rows: Vec<Vec<i64>> = table.rows.iter().map(|r| r.tokens.clone()).collect();
            np.refresh(t5, &rows);
        }
    }

    /// GR: the target sequence (docid tokens + eos, in model vocabulary; NP: its entries) of
    /// every docid row.
    pub fn targets(&self, table: &DocidTable) -> Result<Vec<Vec<i64>>> {
        let Net::Generative { model, vocab } = &self.net else { return Ok(vec![]) };
        if let Some(np) = &model.np {
            return Ok(np.row_targets());
        }
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
}
