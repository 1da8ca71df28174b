//! The GR model: a T5 generating docids, with the standard decoder output (h_iᵀe_v), PAWA's
//! adaptive one ([`super::pawa`]) or NP-decoding's contextual entries ([`super::np`]: the
//! "vocabulary" is then the entries, and decoder inputs are entry ids, embedded as their
//! tokens). Everything that turns decoder states into docid-token
//! scores goes through here — training's teacher-forced logits, beam search's step states
//! and their logits, the rerank likelihoods, the analyses' output vectors — so a decoder
//! variant is one branch in this file, not one per caller. The backbone's own methods
//! (`encode`, `shift_right`, `config`, …) are reached through `Deref`; its logit methods
//! (`lm_logits`, `step`, `greedy_generate`) are the standard decoder's only, so GR code calls
//! this type's `forward`, `forward_encoded`, `step_state`/`state_logits` and
//! `output_rows_at`, `lm_head_rows` instead.
use std::ops::Deref;

use tch::Tensor;

use super::np::Np;
use super::pawa::Pawa;
use super::t5_attention::T5Cache;
use super::t5_model::{Seq2SeqOutput, T5ForConditionalGeneration};

#[derive(Debug)]
pub struct GrModel {
    pub t5: T5ForConditionalGeneration,
    /// PAWA's prefix decoder and adaptive projection (`model.decoder = "pawa"`).
    pub pawa: Option<Pawa>,
    /// NP-decoding's entry table (`model.decoder = "np"`).
    pub np: Option<Np>,
}

impl Deref for GrModel {
    type Target = T5ForConditionalGeneration;
    fn deref(&self) -> &T5ForConditionalGeneration {
        &self.t5
    }
}

/// Decoding caches: the decoder's, and PAWA's prefix decoder's beside it.
pub struct GrCache {
    pub t5: T5Cache,
    pub prefix: Option<T5Cache>,
}

impl GrCache {
    /// Keeps rows `index`, in that order (beam reordering), in both caches.
    pub fn reorder(&self, index: &[i64]) -> GrCache {
        GrCache { t5: self.t5.reorder(index), prefix: self.prefix.as_ref().map(|c| c.reorder(index)) }
    }
}

impl GrModel {
    pub fn standard(t5: T5ForConditionalGeneration) -> Self {
        GrModel { t5, pawa: None, np: None }
    }

    /// Decoder input tokens of `ids` (B, T): NP's entry ids become their tokens.
    fn input_tokens(&self, ids: &Tensor) -> Tensor {
        match &self.np {
            Some(np) => np.tokens_of(ids),
            None => ids.shallow_clone(),
        }
    }

    /// The tokens of a docid sequence `ids` (NP: of its entries; else `ids` themselves).
    pub fn tokens_of(&self, ids: &[i64]) -> Vec<i64> {
        match &self.np {
            Some(np) => Vec::try_from(
                np.tokens_of(&Tensor::from_slice(ids).to_device(np.entry_token.device())).to_device(tch::Device::Cpu),
            )
            .expect("i64"),
            None => ids.to_vec(),
        }
    }

    /// The width of the logits: the vocabulary, or NP's entries.
    pub fn lm_head_rows(&self) -> i64 {
        match &self.np {
            Some(np) => np.n_entries(),
            None => self.t5.lm_head_rows(),
        }
    }

    /// Teacher forcing (see [`T5ForConditionalGeneration::forward`]), PAWA's adaptive part
    /// included in the logits.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        train: bool,
        need_cross_attentions: bool,
    ) -> Seq2SeqOutput {
        let enc = self.t5.encode(input_ids, attention_mask, train);
        self.forward_encoded(enc, attention_mask, decoder_input_ids, train, need_cross_attentions)
    }

    /// [`Self::forward`] from encoder states already computed.
    pub fn forward_encoded(
        &self,
        encoder_hidden: Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        train: bool,
        need_cross_attentions: bool,
    ) -> Seq2SeqOutput {
        if let Some(np) = &self.np {
            let tokens = np.tokens_of(decoder_input_ids);
            let out = self.t5.decoder.decode(&tokens, &encoder_hidden, attention_mask, train, need_cross_attentions);
            let logits = np.logits(&self.t5.logit_states(&out.hidden)); // (B, T, E)
            return Seq2SeqOutput {
                logits,
                decoder_hidden: out.hidden,
                encoder_hidden,
                cross_attentions: out.cross_attentions,
            };
        }
        let mut out =
            self.t5.forward_encoded(encoder_hidden, attention_mask, decoder_input_ids, train, need_cross_attentions);
        if let Some(p) = &self.pawa {
            let latents = p.latents(decoder_input_ids, train); // (B, T, D)
            out.logits = p.add_to(&out.logits, &self.t5.logit_states(&out.decoder_hidden), &latents);
        }
        out
    }

    /// A decoding cache for encoder states `enc` (B, L, D) under `enc_mask` (B, L).
    pub fn new_cache(&self, enc: &Tensor, enc_mask: &Tensor) -> GrCache {
        GrCache { t5: self.t5.new_cache(enc, enc_mask), prefix: self.pawa.as_ref().map(|p| p.new_cache(enc.size()[0])) }
    }

    /// One decoding step of `ids` (R, 1) after the cached prefix → the rows' decoding
    /// states (R, S): the decoder state h (S = D), with PAWA [h, d'] (S = 2D). Rows can be
    /// selected and reordered freely; [`Self::state_logits`] turns them into logits.
    pub fn step_state(&self, ids: &Tensor, cache: &mut GrCache) -> Tensor {
        let h = self.t5.decoder.decode_step(&self.input_tokens(ids), &mut cache.t5, false).hidden.squeeze_dim(1); // (R, D)
        match (&self.pawa, &mut cache.prefix) {
            (Some(p), Some(c)) => Tensor::cat(&[h, p.latent_step(ids, c).squeeze_dim(1)], -1), // (R, 2D)
            _ => h,
        }
    }

    /// Vocabulary logits (c, V) of decoding states (c, S) from [`Self::step_state`].
    pub fn state_logits(&self, states: &Tensor) -> Tensor {
        if let Some(np) = &self.np {
            return np.logits(&self.t5.logit_states(states));
        }
        match &self.pawa {
            None => self.t5.lm_logits(states),
            Some(p) => {
                let d = self.t5.config.d_model;
                let (h, latents) = (states.narrow(-1, 0, d), states.narrow(-1, d, d));
                p.add_to(&self.t5.lm_logits(&h), &self.t5.logit_states(&h), &latents)
            }
        }
    }

    /// The output vectors (B, T, D) of target tokens `labels` (B, T) after decoder inputs
    /// `decoder_input_ids` (B, T): logit(v at i) = h_i · row — Wu et al.'s e_v, with PAWA
    /// e_v + E_v d'_i (Eq. 18's Ẽ_d D̃'), with NP the entries' rows of D (Eq. 20).
    pub fn output_rows_at(&self, labels: &Tensor, decoder_input_ids: &Tensor) -> Tensor {
        if let Some(np) = &self.np {
            let rows = Tensor::embedding(&np.table, &labels.clamp_min(0), -1, false, false);
            return self.t5.logit_states(&rows);
        }
        let rows = self.t5.output_rows(&labels.clamp_min(0));
        match &self.pawa {
            None => rows,
            Some(p) => {
                let latents = p.latents(decoder_input_ids, false);
                let adaptive = p.adaptive_rows(&labels.clamp_min(0), &latents);
                // `logit_states` scales h for v1.0 models, so the adaptive rows carry that scale.
                let adaptive = self.t5.logit_states(&adaptive);
                rows + adaptive
            }
        }
    }
}
