//! Data parallelism from outside the model: [`Ddp`] holds (shallow handles to) the
//! trainable parameters of a `VarStore` and
//! - at start, broadcasts them from rank 0 and checks every rank holds the same bytes;
//! - after the last backward of a step, averages the gradients: flattened into buckets
//!   of ~25 MB, one all-reduce per bucket (micro-steps of gradient accumulation just call
//!   `backward` again: nothing is communicated until [`Ddp::sync_gradients`]);
//! - clips by the global gradient norm.
//!
//! tch has no autograd hooks, so buckets are reduced after the backward pass rather than
//! overlapped with it.
use sha2::{Digest, Sha256};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::comm::{dist_err, tch_err, Comm, ReduceOp, World};
use crate::error::Result;

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct DdpOptions {
    /// Target bucket size in bytes (a parameter larger than this gets its own bucket).
    pub bucket_bytes: usize,
}

impl Default for DdpOptions {
    fn default() -> Self {
        DdpOptions { bucket_bytes: DEFAULT_BUCKET_BYTES }
    }
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DdpStats {
    /// Calls of `sync_gradients`.
    pub syncs: u64,
    /// Bucket all-reduces issued.
    pub bucket_all_reduces: u64,
}

/// Consecutive parameters of one kind and device, reduced by one collective.
struct Bucket {
    kind: Kind,
    device: Device,
    /// (parameter index, offset, numel) in the flat bucket.
    members: Vec<(usize, i64, i64)>,
    numel: i64,
}

pub struct Ddp<'c> {
    comm: &'c dyn Comm,
    names: Vec<String>,
    params: Vec<Tensor>,
    buckets: Vec<Bucket>,
    /// Flat send/receive buffers per (kind, device), sized for the largest bucket; reused
    /// by every bucket (collectives are issued in order, so reuse is safe on every backend).
    scratch: Vec<(Kind, Device, Tensor, Tensor)>,
    stats: DdpStats,
}

impl<'c> Ddp<'c> {
    /// Wraps the trainable variables of `vs` (ordered by name, the same on every rank),
    /// broadcasts them from rank 0 and checks the ranks agree.
    pub fn from_var_store(comm: &'c dyn Comm, vs: &VarStore, options: DdpOptions) -> Result<Ddp<'c>> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new(comm, named, options)
    }

    /// Wraps named parameters (every rank must pass the same names, shapes and kinds in
    /// the same order).
    pub fn new(comm: &'c dyn Comm, named: Vec<(String, Tensor)>, options: DdpOptions) -> Result<Ddp<'c>> {
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let buckets = plan_buckets(&params, options.bucket_bytes.max(1));
        let mut scratch: Vec<(Kind, Device, Tensor, Tensor)> = Vec::new();
        for b in &buckets {
            match scratch.iter_mut().find(|s| s.0 == b.kind && s.1 == b.device) {
                Some(s) if s.2.numel() as i64 >= b.numel => {}
                Some(s) => {
                    s.2 = Tensor::empty([b.numel], (b.kind, b.device));
                    s.3 = Tensor::empty([b.numel], (b.kind, b.device));
                }
                None => scratch.push((
                    b.kind,
                    b.device,
                    Tensor::empty([b.numel], (b.kind, b.device)),
                    Tensor::empty([b.numel], (b.kind, b.device)),
                )),
            }
        }
        let mut ddp = Ddp { comm, names, params, buckets, scratch, stats: DdpStats::default() };
        ddp.check_structure()?;
        ddp.broadcast_parameters()?;
        ddp.check_consistency()?;
        Ok(ddp)
    }

    pub fn world(&self) -> World {
        self.comm.world()
    }

    pub fn stats(&self) -> DdpStats {
        self.stats
    }

    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    pub fn parameters(&self) -> &[Tensor] {
        &self.params
    }

    /// Names, shapes and kinds must match on every rank before anything is broadcast
    /// (a mismatch would otherwise surface as a truncated message deep inside MPI).
    fn check_structure(&self) -> Result<()> {
        let mut h = Sha256::new();
        for (n, p) in self.names.iter().zip(&self.params) {
            h.update(format!("{n}:{:?}:{:?};", p.size(), p.kind()).as_bytes());
        }
        self.compare_digests(h.finalize().to_vec(), "parameter names/shapes/kinds")
    }

    fn compare_digests(&self, mine: Vec<u8>, what: &str) -> Result<()> {
        let all = self.comm.all_gather_bytes(&mine)?;
        let differing: Vec<usize> = (0..all.len()).filter(|&r| all[r] != all[0]).collect();
        if !differing.is_empty() {
            return Err(dist_err(self.world(), "DDP", format!("{what} differ from rank 0's on ranks {differing:?}")));
        }
        Ok(())
    }

    /// Rank 0's parameter values to every rank (bucketed broadcasts).
    pub fn broadcast_parameters(&mut self) -> Result<()> {
        let world = self.world();
        if world.size == 1 {
            return Ok(());
        }
        for bi in 0..self.buckets.len() {
            let b = &self.buckets[bi];
            let flat = self.scratch_for(b.kind, b.device).0.narrow(0, 0, b.numel);
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                for &(pi, off, n) in &b.members {
                    flat.narrow(0, off, n).f_copy_(&self.params[pi].detach().reshape([-1]))?;
                }
                Ok(())
            })
            .map_err(|e| tch_err(world, "DDP broadcast", e))?;
            let mut flat = flat;
            self.comm.broadcast_(&mut flat, 0)?;
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                for &(pi, off, n) in &self.buckets[bi].members {
                    let mut p = self.params[pi].shallow_clone();
                    let shape = p.size();
                    p.f_copy_(&flat.narrow(0, off, n).reshape(shape.as_slice()))?;
                }
                Ok(())
            })
            .map_err(|e| tch_err(world, "DDP broadcast", e))?;
        }
        Ok(())
    }

    /// SHA-256 of every parameter's bytes, compared across ranks: exact, and cheap next
    /// to a training step (run at start and around checkpoints).
    pub fn check_consistency(&self) -> Result<()> {
        let mut h = Sha256::new();
        for p in &self.params {
            let cpu = p.detach().to_device(Device::Cpu).contiguous();
            let bytes = cpu.numel() * cpu.kind().elt_size_in_bytes();
            if bytes > 0 {
                // SAFETY: contiguous CPU tensor of `bytes` bytes, alive for the call.
                h.update(unsafe { std::slice::from_raw_parts(cpu.data_ptr() as *const u8, bytes) });
            }
        }
        self.compare_digests(h.finalize().to_vec(), "parameter values")
    }

    /// Averages the gradients over ranks; call once per optimizer step, after the last
    /// micro-batch's backward. A parameter without a gradient on this rank contributes
    /// zeros (and gets the averaged gradient), so ranks never disagree on the buckets.
    pub fn sync_gradients(&mut self) -> Result<()> {
        let world = self.world();
        self.stats.syncs += 1;
        if world.size == 1 {
            return Ok(());
        }
        self.materialise_missing_grads()?;
        for bi in 0..self.buckets.len() {
            let b = &self.buckets[bi];
            let (send, recv) = self.scratch_for(b.kind, b.device);
            let (send, mut recv) = (send.narrow(0, 0, b.numel), recv.narrow(0, 0, b.numel));
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                for &(pi, off, n) in &b.members {
                    send.narrow(0, off, n).f_copy_(&self.params[pi].grad().reshape([-1]))?;
                }
                Ok(())
            })
            .map_err(|e| tch_err(world, "DDP flatten", e))?;
            self.comm.all_reduce_into(&send, &mut recv, ReduceOp::Mean)?;
            self.stats.bucket_all_reduces += 1;
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                for &(pi, off, n) in &self.buckets[bi].members {
                    let mut g = self.params[pi].grad();
                    let shape = g.size();
                    g.f_copy_(&recv.narrow(0, off, n).reshape(shape.as_slice()))?;
                }
                Ok(())
            })
            .map_err(|e| tch_err(world, "DDP unflatten", e))?;
        }
        Ok(())
    }

    /// Global L2 norm of the (already averaged, hence identical on every rank) gradients;
    /// when above `max_norm`, scales them down to it. Returns the norm before clipping.
    /// Same rule as torch's `clip_grad_norm_` (coefficient `max / (norm + 1e-6)`).
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<f64> {
        let world = self.world();
        tch::no_grad(|| -> std::result::Result<f64, tch::TchError> {
            let mut sq = 0f64;
            for p in &self.params {
                let g = p.grad();
                if g.defined() {
                    sq += g.f_to_kind(Kind::Double)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
                }
            }
            let norm = sq.sqrt();
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                for p in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.f_mul_scalar_(coef)?;
                    }
                }
            }
            Ok(norm)
        })
        .map_err(|e| tch_err(world, "clip_grad_norm", e))
    }

    fn materialise_missing_grads(&self) -> Result<()> {
        for p in &self.params {
            if !p.grad().defined() {
                // Back-propagating 0·sum(p) defines p.grad as zeros.
                (p.sum(p.kind()) * 0.0).f_backward().map_err(|e| tch_err(self.world(), "zero gradient", e))?;
            }
        }
        Ok(())
    }

    fn scratch_for(&self, kind: Kind, device: Device) -> (Tensor, Tensor) {
        let s = self.scratch.iter().find(|s| s.0 == kind && s.1 == device).expect("scratch planned per bucket kind");
        (s.2.shallow_clone(), s.3.shallow_clone())
    }
}

/// Groups consecutive parameters of the same kind/device until a bucket reaches
/// `bucket_bytes`.
fn plan_buckets(params: &[Tensor], bucket_bytes: usize) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let (kind, device, n) = (p.kind(), p.device(), p.numel() as i64);
        let bytes_per = kind.elt_size_in_bytes() as i64;
        let fits = buckets
            .last()
            .is_some_and(|b| b.kind == kind && b.device == device && (b.numel * bytes_per) < bucket_bytes as i64);
        if !fits {
            buckets.push(Bucket { kind, device, members: Vec::new(), numel: 0 });
        }
        let b = buckets.last_mut().expect("just pushed");
        b.members.push((i, b.numel, n));
        b.numel += n;
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_the_size_and_at_kind_changes() {
        let ps = [
            Tensor::zeros([10], (Kind::Float, Device::Cpu)),
            Tensor::zeros([10], (Kind::Float, Device::Cpu)),
            Tensor::zeros([10], (Kind::Float, Device::Cpu)),
            Tensor::zeros([4], (Kind::Double, Device::Cpu)),
        ];
        // 80 bytes per bucket: two 40-byte params each, then the f64 one on its own.
        let b = plan_buckets(&ps, 80);
        let members: Vec<Vec<usize>> = b.iter().map(|b| b.members.iter().map(|m| m.0).collect()).collect();
        assert_eq!(members, vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(b[0].members[1], (1, 10, 10));
    }
}
