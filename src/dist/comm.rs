//! The process group every distributed piece of grdr talks to: [`World`] says who this
//! process is, [`Comm`] moves tensors between processes. Backends: [`crate::dist::mpi`]
//! (CPU, and bootstrap for everything), [`crate::dist::nccl`] (CUDA tensors), and
//! [`LocalComm`], the world of one that a binary started without a launcher gets.
//!
//! Semantics shared by all backends (the tests pin them on every backend):
//! - every rank calls the same collectives in the same order; a collective returns when
//!   all ranks have entered it (or the watchdog aborts the job, see `watchdog.rs`);
//! - gathers concatenate along dim 0 in rank order; trailing dims must agree;
//! - `ReduceOp::Mean` is the sum divided by the world size (floating kinds only).
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Who this process is in the job. Plain data: cheap to copy into any component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// 0-based rank in the job; rank 0 is the coordinator (does the I/O).
    pub rank: usize,
    /// Number of processes in the job.
    pub size: usize,
    /// Rank among the processes on this node: the CUDA device index this rank uses.
    pub local_rank: usize,
    /// Number of processes on this node.
    pub local_size: usize,
    /// 0-based index of this node (nodes ordered by their lowest global rank).
    pub node: usize,
}

impl World {
    /// The world of one process.
    pub const SINGLE: World = World { rank: 0, size: 1, local_rank: 0, local_size: 1, node: 0 };

    pub fn is_coordinator(&self) -> bool {
        self.rank == 0
    }

    /// The factor a rank multiplies its loss by before `backward` so that DDP's *mean* of
    /// the gradients equals the gradient of the global loss: each rank back-propagates
    /// only its own share of the global loss (its own slice of a gather, its own tokens),
    /// and the shares are summed, not averaged, in the one-process computation.
    pub fn backward_scale(&self) -> f64 {
        self.size as f64
    }

    /// `rank/size` for messages.
    pub fn label(&self) -> String {
        format!("rank {}/{}", self.rank, self.size)
    }
}

/// Reduction applied by [`Comm::all_reduce_`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the world size; floating-point kinds only.
    Mean,
    Max,
}

/// Collectives on tch tensors. Tensors may live on any device the backend supports
/// (MPI stages CUDA tensors through host memory; NCCL works on CUDA tensors directly and
/// hands CPU tensors to its MPI bootstrap communicator). Kinds: f32, f64, bf16, f16,
/// i64, i32, u8.
///
/// Not `Sync`: one thread of a rank issues the collectives (as MPI and NCCL require of
/// a communicator used without extra locking).
pub trait Comm {
    fn world(&self) -> World;

    /// The collectives' backend as recorded in `world.json`: `local`, `mpi` or `nccl`.
    fn backend_name(&self) -> &'static str;

    /// In-place all-reduce of `tensor` (any shape; contiguous or not).
    fn all_reduce_(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()>;

    /// All-reduce of `src` into `dst` (same shape and kind): saves the copy back that
    /// [`Comm::all_reduce_`] needs when the caller owns a receive buffer (DDP buckets).
    fn all_reduce_into(&self, src: &Tensor, dst: &mut Tensor, op: ReduceOp) -> Result<()> {
        tch::no_grad(|| dst.f_copy_(src)).map_err(|e| tch_err(self.world(), "all_reduce_into", e))?;
        self.all_reduce_(dst, op)
    }

    /// All-gather of equally shaped tensors: `(d0, ...)` on every rank → `(size·d0, ...)`.
    /// The result carries no gradient (see `gather.rs` for the autograd version).
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor>;

    /// All-gather of tensors whose dim 0 differs by rank: returns the concatenation and
    /// every rank's dim-0 size.
    fn all_gather_varsize(&self, tensor: &Tensor) -> Result<(Tensor, Vec<i64>)>;

    /// Overwrites `tensor` on every rank with its value on `root`.
    fn broadcast_(&self, tensor: &mut Tensor, root: usize) -> Result<()>;

    /// Gathers tensors (dim 0 may differ by rank) onto `root`: the concatenation in rank
    /// order there, `None` elsewhere.
    fn gather_to_root(&self, tensor: &Tensor, root: usize) -> Result<Option<Tensor>>;

    fn barrier(&self) -> Result<()>;

    /// Ends the whole job now: prints `message` naming this rank, then aborts every rank
    /// (MPI_Abort). The error path of a rank that cannot go on, so no peer hangs.
    fn abort(&self, message: &str, code: i32) -> !;

    /// Collectives this rank has entered so far (stats; tests use it to prove that
    /// accumulation micro-steps communicate nothing).
    fn collectives_issued(&self) -> u64 {
        0
    }

    // Host values: small vectors, built on the tensor collectives of the CPU path.

    fn all_reduce_f64(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        let mut t = Tensor::from_slice(values);
        self.all_reduce_(&mut t, op)?;
        t.f_copy_data(values, values.len()).map_err(|e| tch_err(self.world(), "all_reduce_f64", e))
    }

    fn all_reduce_i64(&self, values: &mut [i64], op: ReduceOp) -> Result<()> {
        let mut t = Tensor::from_slice(values);
        self.all_reduce_(&mut t, op)?;
        t.f_copy_data(values, values.len()).map_err(|e| tch_err(self.world(), "all_reduce_i64", e))
    }

    /// Every rank's byte string, in rank order.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (all, sizes) = self.all_gather_varsize(&Tensor::from_slice(bytes))?;
        let flat = tensor_to_vec::<u8>(&all, self.world())?;
        let mut out = Vec::with_capacity(sizes.len());
        let mut at = 0usize;
        for s in sizes {
            out.push(flat[at..at + s as usize].to_vec());
            at += s as usize;
        }
        Ok(out)
    }

    /// `root`'s byte string on every rank (other ranks' `bytes` are replaced).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let mut len = [if self.world().rank == root { bytes.len() as i64 } else { 0 }];
        self.all_reduce_i64(&mut len, ReduceOp::Max)?;
        bytes.resize(len[0] as usize, 0);
        let mut t = Tensor::from_slice(bytes.as_slice());
        self.broadcast_(&mut t, root)?;
        *bytes = tensor_to_vec::<u8>(&t, self.world())?;
        Ok(())
    }
}

/// The world of one: every collective is the identity (gathers return their input).
/// What `dist::init` gives a process that no launcher started.
#[derive(Debug, Default)]
pub struct LocalComm;

impl Comm for LocalComm {
    fn world(&self) -> World {
        World::SINGLE
    }

    fn backend_name(&self) -> &'static str {
        "local"
    }
    fn all_reduce_(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        check_op_kind(self.world(), op, tensor.kind())
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.detach().copy())
    }
    fn all_gather_varsize(&self, tensor: &Tensor) -> Result<(Tensor, Vec<i64>)> {
        let d0 = tensor.size().first().copied().unwrap_or(1);
        Ok((tensor.detach().copy(), vec![d0]))
    }
    fn broadcast_(&self, _tensor: &mut Tensor, root: usize) -> Result<()> {
        check_root(self.world(), root)
    }
    fn gather_to_root(&self, tensor: &Tensor, root: usize) -> Result<Option<Tensor>> {
        check_root(self.world(), root)?;
        Ok(Some(tensor.detach().copy()))
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!("grdr: rank 0/1: {message}");
        std::process::exit(code)
    }
}

/// A distributed-layer error naming the rank (all dist errors go through here).
pub(crate) fn dist_err(world: World, context: &str, message: impl std::fmt::Display) -> Error {
    Error::dist(world.rank, format!("{context}: {message}"))
}

pub(crate) fn tch_err(world: World, context: &str, e: tch::TchError) -> Error {
    dist_err(world, context, e)
}

pub(crate) fn check_root(world: World, root: usize) -> Result<()> {
    if root >= world.size {
        return Err(dist_err(world, "root", format!("root {root} outside a world of {}", world.size)));
    }
    Ok(())
}

pub(crate) fn check_op_kind(world: World, op: ReduceOp, kind: Kind) -> Result<()> {
    let floating = matches!(kind, Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half);
    if op == ReduceOp::Mean && !floating {
        return Err(dist_err(world, "all_reduce", format!("mean of {kind:?} tensors is not defined")));
    }
    Ok(())
}

/// Copies a 1-D-able CPU/CUDA tensor of element type `T` into a Vec.
pub(crate) fn tensor_to_vec<T: tch::kind::Element + Default + Clone>(t: &Tensor, world: World) -> Result<Vec<T>> {
    let n = t.numel();
    let mut out = vec![T::default(); n];
    t.f_copy_data(&mut out, n).map_err(|e| tch_err(world, "copy to host", e))?;
    Ok(out)
}
