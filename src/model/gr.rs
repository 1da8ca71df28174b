//! The GR model: a T5 generating docids, with the standard decoder output (h_iᵀe_v) or PAWA's
//! adaptive one ([`super::pawa`]). Everything that turns decoder states into docid-token
//! scores goes through here — training's teacher-forced logits, beam search's step states
//! and their logits, the rerank likelihoods, the analyses' output vectors — so a decoder
//! variant is one branch in this file, not one per caller. The backbone's own methods
//! (`encode`, `shift_right`, `config`, …) are reached through `Deref`; its logit methods
//! (`lm_logits`, `step`, `greedy_generate`) are the standard decoder's only, so GR code calls
//! this type's `forward`, `forward_encoded`, `step_state`/`state_logits` and
//! `output_rows_at` instead.
use std::ops::Deref;

use tch::Tensor;

use super::pawa::Pawa;
use super::t5_attention::T5Cache;
use super::t5_model::{Seq2SeqOutput, T5ForConditionalGeneration};

#[derive(Debug)]
pub struct GrModel {
    pub t5: T5ForConditionalGeneration,
    /// PAWA's prefix decoder and adaptive projection (`model.decoder = "pawa"`).
    pub pawa: Option<Pawa>,
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
        GrModel { t5, pawa: None }
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
        let h = self.t5.decoder.decode_step(ids, &mut cache.t5, false).hidden.squeeze_dim(1); // (R, D)
        match (&self.pawa, &mut cache.prefix) {
            (Some(p), Some(c)) => Tensor::cat(&[h, p.latent_step(ids, c).squeeze_dim(1)], -1), // (R, 2D)
            _ => h,
        }
    }

    /// Vocabulary logits (c, V) of decoding states (c, S) from [`Self::step_state`].
    pub fn state_logits(&self, states: &Tensor) -> Tensor {
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
    /// e_v + E_v d'_i (Eq. 18's Ẽ_d D̃').
    pub fn output_rows_at(&self, labels: &Tensor, decoder_input_ids: &Tensor) -> Tensor {
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
