//! Generative retrieval over T5: docid vocabularies, teacher-forced token NLL, and sequence
//! log-likelihood scoring of given docids (the rerank setting).
//!
//! Title and n-gram docids are ordinary text and reuse the text tokens. Atomic docids (one
//! token per document) and semantic docids (one token per (level, cluster)) get new tokens
//! appended after the tokenizer's vocabulary; the embedding and a separate lm_head grow to
//! hold them (a tied v1.0 lm_head grows with `shared`).
use tch::{nn, Kind, Tensor};

use super::t5_model::T5ForConditionalGeneration;
use crate::error::{Error, Result};

/// Where a GR model's docid tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocidVocab {
    /// Docids are text (title, n-grams) tokenized with the text tokenizer.
    Text,
    /// Document `i` is the single token `base + i`.
    Atomic { base: i64, n_docs: i64 },
    /// Level `l` cluster `c` is token `base + offsets[l] + c`; `sizes[l]` clusters at level l.
    Semantic { base: i64, sizes: Vec<i64> },
}

impl DocidVocab {
    /// Number of tokens this vocabulary adds.
    pub fn n_new_tokens(&self) -> i64 {
        match self {
            DocidVocab::Text => 0,
            DocidVocab::Atomic { n_docs, .. } => *n_docs,
            DocidVocab::Semantic { sizes, .. } => sizes.iter().sum(),
        }
    }

    /// First token id of the docid tokens.
    pub fn base(&self) -> Option<i64> {
        match self {
            DocidVocab::Text => None,
            DocidVocab::Atomic { base, .. } | DocidVocab::Semantic { base, .. } => Some(*base),
        }
    }

    /// Names of the new tokens in id order (`<d12>`, `<s0_3>`), for an exported tokenizer.
    pub fn token_names(&self) -> Vec<String> {
        match self {
            DocidVocab::Text => vec![],
            DocidVocab::Atomic { n_docs, .. } => (0..*n_docs).map(|i| format!("<d{i}>")).collect(),
            DocidVocab::Semantic { sizes, .. } => {
                sizes.iter().enumerate().flat_map(|(l, &n)| (0..n).map(move |c| format!("<s{l}_{c}>"))).collect()
            }
        }
    }

    /// Target tokens of an atomic docid: `[base + doc_idx, eos]`.
    pub fn atomic_tokens(&self, doc_idx: i64, eos: i64) -> Result<Vec<i64>> {
        match self {
            DocidVocab::Atomic { base, n_docs } if (0..*n_docs).contains(&doc_idx) => Ok(vec![base + doc_idx, eos]),
            DocidVocab::Atomic { n_docs, .. } => {
                Err(Error::usage("docid", format!("doc index {doc_idx} ∉ [0, {n_docs})")))
            }
            _ => Err(Error::usage("docid", "not an atomic docid vocabulary")),
        }
    }

    /// Target tokens of a semantic docid (one cluster per level): `[tok(l, c_l)…, eos]`.
    pub fn semantic_tokens(&self, code: &[i64], eos: i64) -> Result<Vec<i64>> {
        let DocidVocab::Semantic { base, sizes } = self else {
            return Err(Error::usage("docid", "not a semantic docid vocabulary"));
        };
        if code.len() > sizes.len() {
            return Err(Error::usage("docid", format!("code {code:?} deeper than {} levels", sizes.len())));
        }
        let mut out = Vec::with_capacity(code.len() + 1);
        let mut offset = 0;
        for (l, (&c, &n)) in code.iter().zip(sizes).enumerate() {
            if !(0..n).contains(&c) {
                return Err(Error::usage("docid", format!("level {l} cluster {c} ∉ [0, {n})")));
            }
            out.push(base + offset + c);
            offset += n;
        }
        out.push(eos);
        Ok(out)
    }
}

/// Gives the new tokens of `vocab` rows in `model` and, when given, names in `tokenizer` (so
/// an exported tokenizer encodes and decodes them). The tokens take the ids right after the
/// tokenizer's vocabulary: `vocab.base()` must equal the tokenizer's size (added tokens
/// included). The model's vocabulary becomes max(its size, base + new tokens); rows from
/// `base` on are initialised afresh (T5's padding rows past the tokenizer included).
pub fn install_docid_tokens(
    model: &mut T5ForConditionalGeneration,
    vs: &nn::VarStore,
    vocab: &DocidVocab,
    tokenizer: Option<&mut tokenizers::Tokenizer>,
) -> Result<()> {
    let Some(base) = vocab.base() else { return Ok(()) };
    if let Some(tok) = tokenizer {
        let size = tok.get_vocab_size(true) as i64;
        if size != base {
            return Err(Error::usage(
                "docid",
                format!("docid tokens start at {base} but the tokenizer has {size} tokens"),
            ));
        }
        let names = vocab.token_names();
        let added: Vec<tokenizers::AddedToken> =
            names.iter().map(|n| tokenizers::AddedToken::from(n.clone(), true)).collect();
        tok.add_special_tokens(&added);
        if tok.token_to_id(&names[0]).map(|i| i as i64) != Some(base) {
            return Err(Error::usage("docid", "the tokenizer already had some docid tokens"));
        }
    }
    let new_vocab = (base + vocab.n_new_tokens()).max(model.config.vocab_size);
    resize_token_embeddings(model, vs, new_vocab, base)
}

/// Grows (or shrinks) the vocabulary of `model` to `new_vocab` rows, replacing `shared.weight`
/// (and `lm_head.weight` when untied) in `vs`. Rows below `keep` are copied; rows from `keep`
/// on are new docid tokens, drawn around the old rows' mean with their per-dimension spread
/// (as HF's mean-resizing does, diagonal), so new tokens start as plausible, distinct vectors.
pub fn resize_token_embeddings(
    model: &mut T5ForConditionalGeneration,
    vs: &nn::VarStore,
    new_vocab: i64,
    keep: i64,
) -> Result<()> {
    let old_vocab = model.config.vocab_size;
    let keep = keep.min(old_vocab).min(new_vocab);
    let grow = |old: &Tensor| -> Tensor {
        tch::no_grad(|| {
            let d = old.size()[1];
            let kept = old.narrow(0, 0, keep);
            let mean = kept.mean_dim(0, true, old.kind());
            let std = kept.std_dim(0, true, true);
            let fresh = Tensor::randn([new_vocab - keep, d], (old.kind(), old.device())) * std + mean;
            Tensor::cat(&[kept, fresh], 0)
        })
    };
    // The model must hold the very tensors the VarStore trains (not the pre-detach copies),
    // or the resized embeddings would never receive gradients.
    let new_shared = replace_variable(vs, "shared.weight", &model.shared, &grow(&model.shared))?;
    model.shared = new_shared.shallow_clone();
    model.encoder.embed_tokens = new_shared.shallow_clone();
    model.decoder.embed_tokens = new_shared.shallow_clone();
    if let Some(head) = model.lm_head.take() {
        model.lm_head = Some(replace_variable(vs, "lm_head.weight", &head, &grow(&head))?);
    }
    model.config.vocab_size = new_vocab;
    Ok(())
}

/// Swaps the tensor stored under `name` (and its trainable entry) for `new`, trainable, and
/// returns the stored tensor for the model to hold.
fn replace_variable(vs: &nn::VarStore, name: &str, old: &Tensor, new: &Tensor) -> Result<Tensor> {
    let mut vars = vs.variables_.lock().unwrap();
    let Some(slot) = vars.named_variables.get_mut(name) else {
        return Err(Error::usage(name, "no such variable in the model"));
    };
    let new = new.detach().set_requires_grad(true);
    *slot = new.shallow_clone();
    let old_ptr = old.data_ptr();
    for v in vars.trainable_variables.iter_mut().filter(|v| v.tensor.data_ptr() == old_ptr) {
        v.tensor = new.shallow_clone();
    }
    Ok(new)
}

/// Teacher-forced token NLL: logits (B, T, V), labels (B, T) with -100 at ignored positions.
/// Returns (Σ NLL over real tokens (scalar), number of real tokens): the trainer divides by
/// the global token count across ranks.
pub fn token_nll(logits: &Tensor, labels: &Tensor) -> (Tensor, i64) {
    let v = logits.size()[2];
    let sum = logits.view([-1, v]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        &labels.view([-1]),
        None,
        tch::Reduction::Sum,
        -100,
        0.0,
    );
    let n = i64::try_from(labels.ne(-100).sum(Kind::Int64)).unwrap_or(0);
    (sum, n)
}

/// Sequence log-likelihoods log p(docid | query) of candidate docids. `input_ids`/`mask`
/// (B, L) are the queries; `candidates[b]` the token sequences (each ending in eos) scored
/// for query b. Returns, per query, one score per candidate (Σ token log-probs).
pub fn score_docids(
    model: &T5ForConditionalGeneration,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    candidates: &[Vec<Vec<i64>>],
) -> Vec<Vec<f32>> {
    tch::no_grad(|| {
        let dev = input_ids.device();
        let enc = model.encode(input_ids, attention_mask, false); // (B, L, D)
                                                                  // One row per (query, candidate), encoder states shared by index.
        let owner: Vec<i64> =
            candidates.iter().enumerate().flat_map(|(b, c)| std::iter::repeat_n(b as i64, c.len())).collect();
        if owner.is_empty() {
            return candidates.iter().map(|_| vec![]).collect();
        }
        let idx = Tensor::from_slice(&owner).to_device(dev);
        let rows: Vec<Vec<i64>> = candidates.iter().flatten().cloned().collect();
        let (labels, mask) = super::text::pad_batch(&rows, -100, dev);
        let dec_in = model.shift_right(&labels);
        let enc_mask = attention_mask.index_select(0, &idx);
        let out = model.decoder.decode(&dec_in, &enc.index_select(0, &idx), &enc_mask, false, false);
        let logp = model.lm_logits(&out.hidden).log_softmax(-1, Kind::Float); // (N, T, V)
        let tok = logp.gather(-1, &labels.clamp_min(0).unsqueeze(-1), false).squeeze_dim(-1); // (N, T)
        let scores = (tok * mask.to_kind(Kind::Float)).sum_dim_intlist(-1, false, Kind::Float);
        let flat = Vec::<f32>::try_from(scores.to_device(tch::Device::Cpu)).unwrap_or_default();
        let mut it = flat.into_iter();
        candidates.iter().map(|c| it.by_ref().take(c.len()).collect()).collect()
    })
}
