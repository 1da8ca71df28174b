//! The T5 models over the stacks: HF `T5ForConditionalGeneration` (GR) and `T5EncoderModel`
//! (T5 dual encoders, T5-ColBERT).
use tch::{nn, Kind, Tensor};

use super::gemm::Gemm;
use super::t5::{DecoderOutput, T5Config, T5Stack};
use super::t5_attention::T5Cache;
use super::Encoder;
use crate::error::Result;

/// HF `T5ForConditionalGeneration`: `shared`, `encoder`, `decoder`, `lm_head`.
#[derive(Debug)]
pub struct T5ForConditionalGeneration {
    pub config: T5Config,
    /// `shared.weight` (V, D): the token embeddings of both stacks.
    pub shared: Tensor,
    pub encoder: T5Stack,
    pub decoder: T5Stack,
    /// `lm_head.weight` (V, D); `None` when tied to `shared` (v1.0).
    pub lm_head: Option<Tensor>,
}

/// Output of a teacher-forced forward.
#[derive(Debug)]
pub struct Seq2SeqOutput {
    /// (B, T, V)
    pub logits: Tensor,
    /// Decoder states before the lm_head (B, T, D).
    pub decoder_hidden: Tensor,
    /// (B, L, D)
    pub encoder_hidden: Tensor,
    /// Per decoder block (B, H, T, L), when asked for.
    pub cross_attentions: Option<Vec<Tensor>>,
}

impl T5ForConditionalGeneration {
    /// A model tied or not as `config.json` says (see [`T5Config::ties_lm_head`]).
    pub fn new(p: &nn::Path, config: T5Config) -> Result<Self> {
        let tied = config.ties_lm_head();
        Self::new_with_tying(p, config, tied)
    }

    /// A model whose lm_head is `shared` when `tied`, else its own `lm_head.weight`.
    pub fn new_with_tying(p: &nn::Path, config: T5Config, tied: bool) -> Result<Self> {
        let f = config.initializer_factor;
        let shared = super::nn_util::weight(&(p / "shared"), &[config.vocab_size, config.d_model], f);
        let encoder = T5Stack::new(p / "encoder", &config, &shared, false)?;
        let decoder = T5Stack::new(p / "decoder", &config, &shared, true)?;
        let lm_head = (!tied).then(|| {
            let std = f * (config.d_model as f64).powf(-0.5);
            super::nn_util::weight(&(p / "lm_head"), &[config.vocab_size, config.d_model], std)
        });
        Ok(T5ForConditionalGeneration { config, shared, encoder, decoder, lm_head })
    }

    /// Encoder states (B, L, D) of `input_ids` (B, L) under `attention_mask` (B, L).
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        self.encoder.encode(input_ids, attention_mask, train)
    }

    /// Vocabulary logits of decoder states (B, T, D) → (B, T, V). v1.0 models rescale the
    /// states by d_model^-0.5 first, as the tied matrix was trained at embedding scale.
    pub fn lm_logits(&self, hidden: &Tensor) -> Tensor {
        let w = self.lm_head.as_ref().unwrap_or(&self.shared);
        Gemm::fastest_for(hidden).matmul_t(&self.logit_states(hidden), w, None)
    }

    /// Decoder states as the lm_head multiplies them: v1.0 models rescale by d_model^-0.5.
    pub fn logit_states(&self, hidden: &Tensor) -> Tensor {
        if self.config.scales_decoder_outputs() {
            hidden * (self.config.d_model as f64).powf(-0.5)
        } else {
            hidden.shallow_clone()
        }
    }

    /// The output vectors of `ids` (…) → (…, D): `lm_logits(h)[…, v] = h · output_rows(v)`,
    /// the d_model^-0.5 of v1.0 models included (Wu et al.'s e_v).
    pub fn output_rows(&self, ids: &Tensor) -> Tensor {
        let w = self.lm_head.as_ref().unwrap_or(&self.shared);
        let rows = Tensor::embedding(w, ids, -1, false, false);
        if self.config.scales_decoder_outputs() {
            rows * (self.config.d_model as f64).powf(-0.5)
        } else {
            rows
        }
    }

    /// Rows of the vocabulary projection (the vocabulary size the logits have).
    pub fn lm_head_rows(&self) -> i64 {
        self.lm_head.as_ref().unwrap_or(&self.shared).size()[0]
    }

    /// Teacher forcing: full-sequence decoder logits for `decoder_input_ids` (B, T) (the
    /// targets shifted right, see [`Self::shift_right`]).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        train: bool,
        need_cross_attentions: bool,
    ) -> Seq2SeqOutput {
        let encoder_hidden = self.encode(input_ids, attention_mask, train);
        self.forward_encoded(encoder_hidden, attention_mask, decoder_input_ids, train, need_cross_attentions)
    }

    /// [`Self::forward`] from encoder states already computed (B, L, D) under
    /// `attention_mask` (B, L): training encodes its batches in length-sorted sub-batches
    /// first (`encoder::encode_length_sorted`; the cross-attention masks the re-padded
    /// positions).
    pub fn forward_encoded(
        &self,
        encoder_hidden: Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
        train: bool,
        need_cross_attentions: bool,
    ) -> Seq2SeqOutput {
        let DecoderOutput { hidden, cross_attentions, .. } =
            self.decoder.decode(decoder_input_ids, &encoder_hidden, attention_mask, train, need_cross_attentions);
        Seq2SeqOutput { logits: self.lm_logits(&hidden), decoder_hidden: hidden, encoder_hidden, cross_attentions }
    }

    /// HF `_shift_right`: `[decoder_start] + labels[:-1]`, with ignored labels (-100) as pad.
    pub fn shift_right(&self, labels: &Tensor) -> Tensor {
        let (b, t) = labels.size2().unwrap();
        let start = Tensor::full([b, 1], self.config.decoder_start_token_id, (Kind::Int64, labels.device()));
        let shifted = Tensor::cat(&[start, labels.narrow(1, 0, t - 1)], 1);
        let pad = shifted.full_like(self.config.pad_token_id);
        pad.where_self(&shifted.eq(-100), &shifted)
    }

    /// A decoding cache for encoder states `enc` (B, L, D) under `enc_mask` (B, L).
    pub fn new_cache(&self, enc: &Tensor, enc_mask: &Tensor) -> T5Cache {
        self.decoder.new_cache(enc, enc_mask)
    }

    /// One incremental step: logits (B, t, V) of `ids` (B, t) after the cached prefix.
    pub fn step(&self, ids: &Tensor, cache: &mut T5Cache) -> Tensor {
        let out = self.decoder.decode_step(ids, cache, false);
        self.lm_logits(&out.hidden)
    }

    /// Greedy decoding as HF `generate(num_beams=1, do_sample=False)`: starts from
    /// `decoder_start_token_id`, stops a row at `eos_token_id` and pads it afterwards.
    /// Returns (B, 1 + n) with n ≤ `max_new_tokens` (all rows finished earlier).
    pub fn greedy_generate(&self, input_ids: &Tensor, attention_mask: &Tensor, max_new_tokens: i64) -> Tensor {
        tch::no_grad(|| {
            let enc = self.encode(input_ids, attention_mask, false);
            let mut cache = self.new_cache(&enc, attention_mask);
            let b = input_ids.size()[0];
            let dev = input_ids.device();
            let mut tokens = vec![Tensor::full([b, 1], self.config.decoder_start_token_id, (Kind::Int64, dev))];
            let mut done = Tensor::zeros([b, 1], (Kind::Bool, dev));
            for _ in 0..max_new_tokens {
                let logits = self.step(tokens.last().unwrap(), &mut cache); // (B, 1, V)
                let next = logits.argmax(-1, false); // (B, 1)
                let next = next.full_like(self.config.pad_token_id).where_self(&done, &next);
                done = done.logical_or(&next.eq(self.config.eos_token_id));
                tokens.push(next);
                if bool::try_from(done.all()).unwrap_or(false) {
                    break;
                }
            }
            Tensor::cat(&tokens, 1)
        })
    }
}

impl Encoder for T5ForConditionalGeneration {
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        self.encoder.encode(input_ids, attention_mask, train)
    }
    fn hidden_size(&self) -> i64 {
        self.config.d_model
    }
}

/// HF `T5EncoderModel`: `shared` and `encoder` only (GTR / sentence-T5 / T5-ColBERT towers).
#[derive(Debug)]
pub struct T5EncoderModel {
    pub config: T5Config,
    /// `shared.weight` (V, D)
    pub shared: Tensor,
    pub encoder: T5Stack,
}

impl T5EncoderModel {
    pub fn new(p: &nn::Path, config: T5Config) -> Result<Self> {
        let shared =
            super::nn_util::weight(&(p / "shared"), &[config.vocab_size, config.d_model], config.initializer_factor);
        let encoder = T5Stack::new(p / "encoder", &config, &shared, false)?;
        Ok(T5EncoderModel { config, shared, encoder })
    }
}

impl Encoder for T5EncoderModel {
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        self.encoder.encode(input_ids, attention_mask, train)
    }
    fn hidden_size(&self) -> i64 {
        self.config.d_model
    }
}
