//! Generative retrieval over T5: docid vocabularies, teacher-forced token NLL, and sequence
//! log-likelihood scoring of given docids (the rerank setting).
//!
//! Title and n-gram docids are ordinary text and reuse the text tokens. Atomic docids (one
//! token per document) and semantic docids (one token per (level, cluster)) get new tokens
//! appended after the tokenizer's vocabulary; the embedding and a separate lm_head grow to
//! hold them (a tied v1.0 lm_head grows with `shared`).
use tch::{Kind, Tensor};

use super::gr::GrModel;
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

/// Names the new tokens of `vocab` in `tokenizer`, at the ids the model gives them, so an
/// exported tokenizer encodes `<d12>` to the docid's token and decodes it back. The model's
/// docid tokens start at `vocab.base()` (its vocabulary size before docids: a pretrained T5
/// has 32,128 rows for the tokenizer's 32,100 tokens); unused placeholder tokens
/// `<grdr_unused_N>` fill any gap so that every added name lands on its model id.
pub fn add_docid_tokens(tokenizer: &mut tokenizers::Tokenizer, vocab: &DocidVocab) -> Result<()> {
    let Some(base) = vocab.base() else { return Ok(()) };
    let size = tokenizer.get_vocab_size(true) as i64;
    if size > base {
        return Err(Error::usage(
            "docid",
            format!("docid tokens start at {base} but the tokenizer already has {size} tokens"),
        ));
    }
    let fillers = (size..base).map(|i| format!("<grdr_unused_{i}>"));
    let names: Vec<String> = fillers.chain(vocab.token_names()).collect();
    let added: Vec<tokenizers::AddedToken> =
        names.iter().map(|n| tokenizers::AddedToken::from(n.clone(), true)).collect();
    tokenizer.add_special_tokens(&added);
    let first = vocab.token_names().into_iter().next();
    if let Some(first) = first {
        if tokenizer.token_to_id(&first).map(|i| i as i64) != Some(base) {
            return Err(Error::usage("docid", "the tokenizer already had some docid tokens"));
        }
    }
    Ok(())
}

/// Grows (or shrinks) the vocabulary of `model` to `new_vocab` rows, resizing `shared.weight`
/// (and `lm_head.weight` when untied) in place. Rows below `keep` are copied; rows from `keep`
/// on are new docid tokens, drawn around the old rows' mean with their per-dimension spread
/// (as HF's mean-resizing does, diagonal), so new tokens start as plausible, distinct vectors.
pub fn resize_token_embeddings(model: &mut T5ForConditionalGeneration, new_vocab: i64, keep: i64) -> Result<()> {
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
    // `set_data` swaps the storage (and shape) of the variable itself: the VarStore's entry,
    // its trainable list and every `shallow_clone` the model holds share that one tensor, so
    // all of them see the resized embeddings and gradients flow to them.
    let mut shared = model.shared.shallow_clone();
    let grown = grow(&shared);
    tch::no_grad(|| shared.set_data(&grown));
    if let Some(head) = &model.lm_head {
        let mut head = head.shallow_clone();
        let grown = grow(&head);
        tch::no_grad(|| head.set_data(&grown));
    }
    model.config.vocab_size = new_vocab;
    Ok(())
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
    model: &GrModel,
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
        let (labels, mask) = crate::data::text::pad_batch(&rows, -100, dev);
        let dec_in = model.shift_right(&labels);
        let enc_mask = attention_mask.index_select(0, &idx);
        let out = model.forward_encoded(enc.index_select(0, &idx), &enc_mask, &dec_in, false, false);
        let logp = out.logits.log_softmax(-1, Kind::Float); // (N, T, V)
        let tok = logp.gather(-1, &labels.clamp_min(0).unsqueeze(-1), false).squeeze_dim(-1); // (N, T)
        let scores = (tok * mask.to_kind(Kind::Float)).sum_dim_intlist(-1, false, Kind::Float);
        let flat = Vec::<f32>::try_from(scores.to_device(tch::Device::Cpu)).unwrap_or_default();
        let mut it = flat.into_iter();
        candidates.iter().map(|c| it.by_ref().take(c.len()).collect()).collect()
    })
}
