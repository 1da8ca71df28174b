//! Cross-rank gathers with autograd semantics, and global normalisation: the pieces that
//! make a loss computed on N ranks equal the loss of one process holding the whole batch.
//!
//! The scheme (Tevatron's): every rank gathers everyone's embeddings, puts its *own*,
//! gradient-carrying tensor in its slot, and computes the loss over the global batch —
//! the same value on every rank. Back-propagating that loss gives each rank the gradient
//! through its own slice only; the one-process gradient is the *sum* of those over ranks.
//! DDP averages, so each rank scales its loss by [`World::backward_scale`] (= N) before
//! `backward`. The same factor serves globally normalised token losses: rank r's share
//! `S_r / T_global` summed over ranks is the global loss.
use tch::{Kind, Tensor};

use super::comm::{tch_err, Comm, ReduceOp, World};
use crate::error::Result;

/// All-gather along dim 0 (dim 0 may differ by rank) where this rank's slice is `local`
/// itself, keeping its autograd history; the other slices are constants.
/// `(B_r, ...)` → `(ΣB, ...)`, rank order.
pub fn all_gather_with_grad(comm: &dyn Comm, local: &Tensor) -> Result<Tensor> {
    let world = comm.world();
    if world.size == 1 {
        return Ok(local.shallow_clone());
    }
    let (all, sizes) = comm.all_gather_varsize(&local.detach())?;
    let start: i64 = sizes[..world.rank].iter().sum();
    let mine = sizes[world.rank];
    let total: i64 = sizes.iter().sum();
    let before = all.narrow(0, 0, start);
    let after = all.narrow(0, start + mine, total - start - mine);
    Tensor::f_cat(&[before, local.shallow_clone(), after], 0).map_err(|e| tch_err(world, "all_gather_with_grad", e))
}

/// Multi-vector (token) embeddings of every rank, padded to the longest sequence of the
/// job: `tokens (B_r, L_r, D)` and `mask (B_r, L_r)` → `(ΣB, L_max, D)` and
/// `(ΣB, L_max)`. Padding rows are zeros with mask 0, so masked scoring (MaxSim) gives
/// the same scores as without padding; this rank's slice keeps its gradient.
pub fn all_gather_padded_with_grad(comm: &dyn Comm, tokens: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let world = comm.world();
    let len = tokens.size()[1];
    let mut max_len = [len];
    comm.all_reduce_i64(&mut max_len, ReduceOp::Max)?;
    let pad = max_len[0] - len;
    let (tokens, mask) = if pad > 0 {
        // constant_pad_nd lists (before, after) pairs from the last dim backwards.
        let t = tokens.f_constant_pad_nd([0, 0, 0, pad]).map_err(|e| tch_err(world, "pad tokens", e))?;
        let m = mask.f_constant_pad_nd([0, pad]).map_err(|e| tch_err(world, "pad mask", e))?;
        (t, m)
    } else {
        (tokens.shallow_clone(), mask.shallow_clone())
    };
    let all_tokens = all_gather_with_grad(comm, &tokens)?;
    let all_mask = if world.size == 1 { mask } else { comm.all_gather_varsize(&mask)?.0 };
    Ok((all_tokens, all_mask))
}

/// Every rank's values, concatenated in rank order (small host data).
pub fn all_gather_i64(comm: &dyn Comm, local: &[i64]) -> Result<Vec<i64>> {
    let bytes: Vec<u8> = local.iter().flat_map(|x| x.to_le_bytes()).collect();
    let parts = comm.all_gather_bytes(&bytes)?;
    Ok(parts
        .iter()
        .flat_map(|p| p.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))))
        .collect())
}

/// A count (tokens, queries) summed over all ranks. Pass the sum over every
/// accumulation micro-batch of the step so that the step's loss is normalised once.
pub fn global_count(comm: &dyn Comm, local: i64) -> Result<i64> {
    let mut v = [local];
    comm.all_reduce_i64(&mut v, ReduceOp::Sum)?;
    Ok(v[0])
}

/// This rank's share of a globally normalised sum (e.g. its token NLL sum over the global
/// token count), scaled for DDP's averaging: back-propagate the returned tensor.
pub fn global_mean_share(world: World, local_sum: &Tensor, global_count: i64) -> Tensor {
    local_sum * (world.backward_scale() / global_count.max(1) as f64)
}

/// The global value of a loss that every rank holds a share of (detached, summed over
/// ranks, f64) — for logging: `Σ_r share_r / backward_scale`.
pub fn global_value_of_shares(comm: &dyn Comm, share: &Tensor) -> Result<f64> {
    let world = comm.world();
    let mut v = [share.detach().to_kind(Kind::Double).double_value(&[]) / world.backward_scale()];
    comm.all_reduce_f64(&mut v, ReduceOp::Sum)?;
    Ok(v[0])
}
