//! PAWA, the prefix-aware weight-adaptive decoder of NCI (Wang et al., NeurIPS 2022), as Wu
//! et al. (SIGIR 2024, §5.1, Eq. 17–19) read it: the logit of docid token v at position i is
//! not h_iᵀe_v with one static embedding per token but h_iᵀ(e_v + E_v d'_i), where d'_i is a
//! latent vector of the docid prefix d_<i — a small transformer decoder over the tokens
//! generated so far — and E_v a D×D projection per docid token. Semantic docid tokens are
//! per level, so E_v is per (position, token) as the paper's E_{i,v}; the static e_v is NCI's
//! (its "efficient" adaptor adds the adaptive table to the lm_head's), and equals Eq. 17's
//! E_{i,v} d'_i with d'_i extended by a constant 1.
//!
//! Storage: a full D×D per token (NCI's) is D²·V_d parameters — 655 M for atomic docids of
//! SciFact at D = 256. Here E_v = U_v W has rank r (`model.pawa_rank`): U (V_d, D, r) per
//! token and one W (r, D) that every token shares, D·r·V_d + r·D parameters. U starts at zero,
//! so a PAWA model starts as the DSI model it extends.
//!
//! The prefix decoder is a T5 decoder stack (`model.pawa_layers` blocks, the model's width and
//! heads, relative positions) over the GR decoder's own input tokens and embeddings; its
//! cross-attention reads one learned memory vector, as NCI's adaptor reads a learned
//! embedding. In beam search it keeps its own KV cache beside the decoder's.
use tch::{nn, Kind, Tensor};

use super::t5::{T5Config, T5Stack};
use super::t5_attention::T5Cache;
use crate::error::Result;

#[derive(Debug)]
pub struct Pawa {
    /// Decoder stack over the docid prefix: its outputs are the latent vectors d'_i.
    pub prefix: T5Stack,
    /// The one vector (1, 1, D) the prefix decoder cross-attends to.
    pub memory: Tensor,
    /// W (r, D): the factor of every token's projection.
    pub shared_factor: Tensor,
    /// U (V_d, D, r): E_v = U_v W.
    pub token_factors: Tensor,
    /// Token id of the first docid token; docid tokens are `first_token .. first_token + V_d`.
    pub first_token: i64,
}

impl Pawa {
    /// Variables under `p` (`memory`, `shared_factor`, `token_factors`, `prefix.block.*`);
    /// the prefix decoder embeds tokens with `shared` (the model's embeddings).
    pub fn new(
        p: &nn::Path,
        t5: &T5Config,
        shared: &Tensor,
        first_token: i64,
        n_tokens: i64,
        rank: i64,
        layers: i64,
    ) -> Result<Self> {
        let d = t5.d_model;
        let cfg = T5Config { num_decoder_layers: Some(layers), ..t5.clone() };
        let prefix = T5Stack::new(p / "prefix", &cfg, shared, true)?;
        let memory = p.var("memory", &[1, 1, d], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let shared_factor =
            p.var("shared_factor", &[rank, d], nn::Init::Randn { mean: 0.0, stdev: (d as f64).powf(-0.5) });
        let token_factors = p.var("token_factors", &[n_tokens, d, rank], nn::Init::Const(0.0));
        Ok(Pawa { prefix, memory, shared_factor, token_factors, first_token })
    }

    /// Number of docid tokens V_d.
    pub fn n_tokens(&self) -> i64 {
        self.token_factors.size()[0]
    }

    /// Parameters of the adaptive projection (U and W, not the prefix decoder).
    pub fn projection_parameters(&self) -> i64 {
        self.token_factors.numel() as i64 + self.shared_factor.numel() as i64
    }

    fn memory_for(&self, b: i64) -> (Tensor, Tensor) {
        let d = self.memory.size()[2];
        let dev = self.memory.device();
        (self.memory.expand([b, 1, d], false), Tensor::ones([b, 1], (Kind::Int64, dev)))
    }

    /// Latent vectors d' (B, T, D) of decoder inputs `dec_in` (B, T), teacher forced.
    pub fn latents(&self, dec_in: &Tensor, train: bool) -> Tensor {
        let (memory, mask) = self.memory_for(dec_in.size()[0]);
        self.prefix.decode(dec_in, &memory, &mask, train, false).hidden
    }

    /// A prefix-decoder cache for `b` queries.
    pub fn new_cache(&self, b: i64) -> T5Cache {
        let (memory, mask) = self.memory_for(b);
        self.prefix.new_cache(&memory, &mask)
    }

    /// Latent vectors (R, t, D) of the next `ids` (R, t) after the cached prefix.
    pub fn latent_step(&self, ids: &Tensor, cache: &mut T5Cache) -> Tensor {
        self.prefix.decode_step(ids, cache, false).hidden
    }

    /// W d' (…, r).
    fn reduced(&self, latents: &Tensor) -> Tensor {
        latents.matmul(&self.shared_factor.tr())
    }

    /// The adaptive part of the docid tokens' logits, xᵀ U_v W d' for every docid token v:
    /// `x` (…, D) the decoder states as the lm_head multiplies them, `latents` (…, D) → (…, V_d).
    pub fn adaptive_logits(&self, x: &Tensor, latents: &Tensor) -> Tensor {
        let (vd, d, r) = self.token_factors.size3().expect("(V_d, D, r)");
        let outer = (x.unsqueeze(-1) * self.reduced(latents).unsqueeze(-2)).flatten(-2, -1); // (…, D·r)
        outer.matmul(&self.token_factors.reshape([vd, d * r]).tr()) // (…, V_d)
    }

    /// The adaptive output vectors E_v d' = U_v W d' (…, D) of tokens `ids` (…) at positions
    /// whose latents are `latents` (…, D); zero for tokens that are not docid tokens (eos).
    pub fn adaptive_rows(&self, ids: &Tensor, latents: &Tensor) -> Tensor {
        let (vd, d, r) = self.token_factors.size3().expect("(V_d, D, r)");
        let local = ids - self.first_token;
        let valid = local.ge(0).logical_and(&local.lt(vd)); // (…)
        let shape = ids.size();
        let u = self.token_factors.index_select(0, &local.clamp(0, vd - 1).reshape([-1])); // (N, D, r)
        let w = self.reduced(latents).reshape([-1, r, 1]); // (N, r, 1)
        let rows = u.matmul(&w).reshape([shape.as_slice(), &[d]].concat()); // (…, D)
        let keep = valid.unsqueeze(-1).to_kind(rows.kind());
        rows * keep
    }

    /// Adds the adaptive part to full-vocabulary `logits` (…, V) of states `x` (…, D).
    pub fn add_to(&self, logits: &Tensor, x: &Tensor, latents: &Tensor) -> Tensor {
        let v = *logits.size().last().expect("(…, V)");
        let (lo, vd) = (self.first_token, self.n_tokens());
        let extra = self.adaptive_logits(x, latents).to_kind(logits.kind());
        let mut parts = vec![logits.narrow(-1, 0, lo), logits.narrow(-1, lo, vd) + extra];
        if lo + vd < v {
            parts.push(logits.narrow(-1, lo + vd, v - lo - vd));
        }
        Tensor::cat(&parts, -1)
    }
}
