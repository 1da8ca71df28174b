//! The MPI backend (rsmpi over OpenMPI): CPU collectives, and the bootstrap of every job
//! (rank, size, local rank, the NCCL id). Works under `mpirun -np N` and
//! `srun --mpi=pmix`; `launcher/grdr-launch` starts both.
//!
//! Tensors travel through contiguous host buffers typed by element kind. Reductions of
//! bf16/f16 run in f32 on the wire (MPI has no 16-bit float type, and the wider sum is
//! the more accurate one); moves of 16-bit floats travel as their u16 bit patterns.
//! CUDA tensors are staged through host memory (use the NCCL backend on GPUs).
use std::cell::RefCell;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use tch::{Device, Kind, Tensor};

use super::comm::{check_op_kind, check_root, dist_err, tch_err, Comm, ReduceOp, World};
use super::watchdog::{self, Watchdog};
use crate::error::Result;

/// True when this process was started by an MPI launcher (mpirun, srun --mpi=pmix,
/// hydra), i.e. when `MPI_Init` will join a job rather than start a singleton.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Default piece size of large all-reduces, in MB (see `all_reduce_typed`).
pub const DEFAULT_CHUNK_MB: f64 = 4.0;

/// Receive buffers of in-place all-reduces up to this size are kept for reuse: a fresh
/// buffer per call costs a page fault per 4 KiB, comparable to the transfer itself.
const SCRATCH_MAX_BYTES: usize = 256 << 20;

pub struct MpiComm {
    comm: SimpleCommunicator,
    world: World,
    watchdog: Watchdog,
    /// Largest single MPI all-reduce (`GRDR_MPI_CHUNK_MB`, default [`DEFAULT_CHUNK_MB`]).
    chunk_bytes: usize,
    /// One flat receive buffer per wire kind (see [`SCRATCH_MAX_BYTES`]).
    scratch: RefCell<Vec<Tensor>>,
    // Last field: dropped (MPI_Finalize) after every communicator above.
    _universe: Universe,
}

/// Aborts every rank of MPI_COMM_WORLD; callable from any thread (MPI is initialised
/// with MPI_THREAD_MULTIPLE where the library offers it).
fn abort_world(code: i32) -> ! {
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    // MPI_Abort does not return in OpenMPI; be sure anyway.
    std::process::exit(code)
}

impl MpiComm {
    /// Initialises MPI (once per process) and works out this rank's place in the job.
    /// Installs a panic hook that aborts the job, so a panicking rank ends every rank.
    pub fn init() -> Result<MpiComm> {
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| crate::Error::dist(0, "MPI was already initialised in this process"))?;
        let comm = universe.world();
        let rank = comm.rank() as usize;
        let size = comm.size() as usize;

        // Ranks sharing memory = ranks on one node; the local rank picks the CUDA device.
        let shared = comm.split_shared(rank as i32);
        let local_rank = shared.rank() as usize;
        let local_size = shared.size() as usize;
        let mut leader = rank as i64;
        shared.process_at_rank(0).broadcast_into(&mut leader);
        drop(shared);
        let mut leaders = vec![0i64; size];
        comm.all_gather_into(&leader, &mut leaders[..]);
        leaders.sort_unstable();
        leaders.dedup();
        let node = leaders.iter().position(|&l| l == leader).unwrap_or(0);

        let world = World { rank, size, local_rank, local_size, node };
        let watchdog = Watchdog::start(world, watchdog::timeout_from_env(), abort_world);
        install_panic_abort(world);
        let chunk_mb =
            std::env::var("GRDR_MPI_CHUNK_MB").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(DEFAULT_CHUNK_MB);
        let chunk_bytes = if chunk_mb > 0.0 { (chunk_mb * (1 << 20) as f64) as usize } else { usize::MAX };
        Ok(MpiComm { comm, world, watchdog, chunk_bytes, scratch: RefCell::new(Vec::new()), _universe: universe })
    }

    /// The communicator, for code that needs raw MPI (e.g. the NCCL bootstrap).
    pub fn raw(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// A contiguous receive buffer shaped and typed like `src`: reused scratch when small
    /// enough, else a fresh allocation.
    fn receive_buffer(&self, src: &Tensor) -> Tensor {
        let (n, kind) = (src.numel(), src.kind());
        if n * kind.elt_size_in_bytes() > SCRATCH_MAX_BYTES {
            return src.empty_like();
        }
        let mut scratch = self.scratch.borrow_mut();
        let slot = match scratch.iter().position(|t| t.kind() == kind) {
            Some(i) => i,
            None => {
                scratch.push(Tensor::empty([n as i64], (kind, Device::Cpu)));
                scratch.len() - 1
            }
        };
        if scratch[slot].numel() < n {
            scratch[slot] = Tensor::empty([n as i64], (kind, Device::Cpu));
        }
        scratch[slot].narrow(0, 0, n as i64).view(src.size().as_slice())
    }

    /// All-reduce in pieces of at most `chunk_bytes`: OpenMPI's shared-memory all-reduce
    /// runs at cache speed on a few MB and several times slower on tens of MB (measured
    /// in docs/BENCHMARKS.md), so large buffers go as a sequence of cache-sized ones.
    fn all_reduce_typed<T: Equivalence>(&self, src: &Tensor, dst: &Tensor, op: SystemOperation) {
        let n = src.numel();
        let (s, d) = unsafe { (host_slice::<T>(src, n), host_slice_mut::<T>(dst, n)) };
        let chunk = (self.chunk_bytes / std::mem::size_of::<T>().max(1)).max(1);
        for (s, d) in s.chunks(chunk).zip(d.chunks_mut(chunk)) {
            self.comm.all_reduce_into(s, d, op);
        }
    }

    /// Gathers `src` (n elements of `elt` bytes each) from every rank into `dst` at
    /// `counts`/`displs` (elements); `root = None` = all-gather.
    fn gather_typed<T: Equivalence>(
        &self,
        src: &Tensor,
        dst: Option<&Tensor>,
        counts: &[i32],
        displs: &[i32],
        root: Option<usize>,
    ) {
        let n = src.numel();
        let s = unsafe { host_slice::<T>(src, n) };
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        match (root, dst) {
            (None, Some(dst)) => {
                let d = unsafe { host_slice_mut::<T>(dst, total) };
                let mut part = PartitionMut::new(d, counts, displs);
                self.comm.all_gather_varcount_into(s, &mut part);
            }
            (Some(r), Some(dst)) => {
                let d = unsafe { host_slice_mut::<T>(dst, total) };
                let mut part = PartitionMut::new(d, counts, displs);
                self.comm.process_at_rank(r as i32).gather_varcount_into_root(s, &mut part);
            }
            (Some(r), None) => self.comm.process_at_rank(r as i32).gather_varcount_into(s),
            (None, None) => unreachable!("all-gather needs a receive buffer"),
        }
    }

    fn broadcast_typed<T: Equivalence>(&self, buf: &Tensor, root: usize) {
        let n = buf.numel();
        let b = unsafe { host_slice_mut::<T>(buf, n) };
        self.comm.process_at_rank(root as i32).broadcast_into(b);
    }

    /// Every rank's `(dim 0, elements per dim-0 row)`, checking that rows agree.
    fn row_layout(&self, t: &Tensor, what: &str) -> Result<(Vec<i64>, i64)> {
        let (d0, row) = rows_of(t);
        let mine = [d0, row];
        let mut all = vec![0i64; 2 * self.world.size];
        {
            let _g = self.watchdog.enter("all_gather(sizes)");
            self.comm.all_gather_into(&mine[..], &mut all[..]);
        }
        let rows: Vec<i64> = all.chunks(2).map(|c| c[1]).collect();
        if let Some(r) = rows.iter().position(|&x| x != row) {
            return Err(dist_err(
                self.world,
                what,
                format!("rank {r} sends rows of {} elements, this rank {row} (shape {:?})", rows[r], t.size()),
            ));
        }
        Ok((all.chunks(2).map(|c| c[0]).collect(), row))
    }

    /// Gather with variable dim 0: to every rank (`root=None`) or to `root`.
    fn gather_rows(&self, t: &Tensor, root: Option<usize>, what: &'static str) -> Result<(Option<Tensor>, Vec<i64>)> {
        let (sizes, row) = self.row_layout(t, what)?;
        let src = to_host_contiguous(t, t.kind(), self.world)?;
        let counts: Vec<i64> = sizes.iter().map(|s| s * row).collect();
        let total: i64 = counts.iter().sum();
        check_count(self.world, total, what)?;
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i64, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d as i32)
            })
            .collect();
        let counts: Vec<i32> = counts.iter().map(|&c| c as i32).collect();
        let mut shape = t.size();
        if shape.is_empty() {
            shape.push(1);
        }
        shape[0] = sizes.iter().sum();
        let receives = root.is_none() || root == Some(self.world.rank);
        let dst = receives.then(|| Tensor::empty(shape.as_slice(), (t.kind(), Device::Cpu)));
        {
            let _g = self.watchdog.enter(what);
            match t.kind().elt_size_in_bytes() {
                1 => self.gather_typed::<u8>(&src, dst.as_ref(), &counts, &displs, root),
                2 => self.gather_typed::<u16>(&src, dst.as_ref(), &counts, &displs, root),
                4 => self.gather_typed::<u32>(&src, dst.as_ref(), &counts, &displs, root),
                8 => self.gather_typed::<u64>(&src, dst.as_ref(), &counts, &displs, root),
                _ => return Err(unsupported(self.world, what, t.kind())),
            }
        }
        let dst = match dst {
            Some(d) => Some(d.f_to_device(t.device()).map_err(|e| tch_err(self.world, what, e))?),
            None => None,
        };
        Ok((dst, sizes))
    }
}

impl Comm for MpiComm {
    fn world(&self) -> World {
        self.world
    }

    fn backend_name(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        let world = self.world;
        check_op_kind(world, op, tensor.kind())?;
        let wire = match tensor.kind() {
            Kind::BFloat16 | Kind::Half => Kind::Float,
            k => k,
        };
        let src = to_host_contiguous(tensor, wire, world)?;
        check_count(world, src.numel() as i64, "all_reduce")?;
        let dst = self.receive_buffer(&src);
        let sys_op = match op {
            ReduceOp::Sum | ReduceOp::Mean => SystemOperation::sum(),
            ReduceOp::Max => SystemOperation::max(),
        };
        {
            let _g = self.watchdog.enter("all_reduce");
            match wire {
                Kind::Float => self.all_reduce_typed::<f32>(&src, &dst, sys_op),
                Kind::Double => self.all_reduce_typed::<f64>(&src, &dst, sys_op),
                Kind::Int64 => self.all_reduce_typed::<i64>(&src, &dst, sys_op),
                Kind::Int => self.all_reduce_typed::<i32>(&src, &dst, sys_op),
                Kind::Uint8 => self.all_reduce_typed::<u8>(&src, &dst, sys_op),
                k => return Err(unsupported(world, "all_reduce", k)),
            }
        }
        tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
            let mut dst = dst;
            if op == ReduceOp::Mean {
                dst = dst.f_div_scalar(world.size as f64)?;
            }
            tensor.f_copy_(&dst)
        })
        .map_err(|e| tch_err(world, "all_reduce", e))
    }

    fn all_reduce_into(&self, src: &Tensor, dst: &mut Tensor, op: ReduceOp) -> Result<()> {
        let world = self.world;
        let direct = dst.device() == Device::Cpu
            && dst.is_contiguous()
            && dst.kind() == src.kind()
            && dst.numel() == src.numel()
            && matches!(dst.kind(), Kind::Float | Kind::Double | Kind::Int64 | Kind::Int | Kind::Uint8);
        if !direct {
            tch::no_grad(|| dst.f_copy_(src)).map_err(|e| tch_err(world, "all_reduce_into", e))?;
            return self.all_reduce_(dst, op);
        }
        check_op_kind(world, op, src.kind())?;
        let src = to_host_contiguous(src, src.kind(), world)?;
        check_count(world, src.numel() as i64, "all_reduce_into")?;
        let sys_op = match op {
            ReduceOp::Sum | ReduceOp::Mean => SystemOperation::sum(),
            ReduceOp::Max => SystemOperation::max(),
        };
        {
            let _g = self.watchdog.enter("all_reduce");
            match src.kind() {
                Kind::Float => self.all_reduce_typed::<f32>(&src, dst, sys_op),
                Kind::Double => self.all_reduce_typed::<f64>(&src, dst, sys_op),
                Kind::Int64 => self.all_reduce_typed::<i64>(&src, dst, sys_op),
                Kind::Int => self.all_reduce_typed::<i32>(&src, dst, sys_op),
                Kind::Uint8 => self.all_reduce_typed::<u8>(&src, dst, sys_op),
                k => return Err(unsupported(world, "all_reduce", k)),
            }
        }
        if op == ReduceOp::Mean {
            tch::no_grad(|| dst.f_div_scalar_(world.size as f64).map(|_| ()))
                .map_err(|e| tch_err(world, "all_reduce_into", e))?;
        }
        Ok(())
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let (out, sizes) = self.gather_rows(tensor, None, "all_gather")?;
        if let Some(r) = sizes.iter().position(|&s| s != sizes[self.world.rank]) {
            return Err(dist_err(
                self.world,
                "all_gather",
                format!(
                    "dim 0 differs: rank {r} has {}, this rank {} (use all_gather_varsize)",
                    sizes[r], sizes[self.world.rank]
                ),
            ));
        }
        Ok(out.expect("all-gather receives on every rank"))
    }

    fn all_gather_varsize(&self, tensor: &Tensor) -> Result<(Tensor, Vec<i64>)> {
        let (out, sizes) = self.gather_rows(tensor, None, "all_gather_varsize")?;
        Ok((out.expect("all-gather receives on every rank"), sizes))
    }

    fn broadcast_(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let world = self.world;
        check_root(world, root)?;
        let buf = to_host_contiguous(tensor, tensor.kind(), world)?;
        check_count(world, buf.numel() as i64, "broadcast")?;
        {
            let _g = self.watchdog.enter("broadcast");
            match tensor.kind().elt_size_in_bytes() {
                1 => self.broadcast_typed::<u8>(&buf, root),
                2 => self.broadcast_typed::<u16>(&buf, root),
                4 => self.broadcast_typed::<u32>(&buf, root),
                8 => self.broadcast_typed::<u64>(&buf, root),
                _ => return Err(unsupported(world, "broadcast", tensor.kind())),
            }
        }
        if buf.data_ptr() != tensor.data_ptr() {
            tch::no_grad(|| tensor.f_copy_(&buf)).map_err(|e| tch_err(world, "broadcast", e))?;
        }
        Ok(())
    }

    fn gather_to_root(&self, tensor: &Tensor, root: usize) -> Result<Option<Tensor>> {
        check_root(self.world, root)?;
        Ok(self.gather_rows(tensor, Some(root), "gather_to_root")?.0)
    }

    fn barrier(&self) -> Result<()> {
        let _g = self.watchdog.enter("barrier");
        self.comm.barrier();
        Ok(())
    }

    fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!("grdr: {}: {message}", self.world.label());
        abort_world(code)
    }

    fn collectives_issued(&self) -> u64 {
        self.watchdog.entered()
    }
}

/// A panicking rank prints its panic (default hook), names itself and aborts the job:
/// unwinding into MPI_Finalize would leave its peers waiting in a collective.
fn install_panic_abort(world: World) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A panic that a reader recovers from (crate::panic_guard) is not a failing rank.
        if crate::panic_guard::is_guarded() {
            return;
        }
        previous(info);
        eprintln!("grdr: {}: panicked; aborting the job", world.label());
        abort_world(101);
    }));
}

/// (dim 0, elements per dim-0 row); a 0-dim tensor is one row of one element.
pub(crate) fn rows_of(t: &Tensor) -> (i64, i64) {
    let shape = t.size();
    match shape.split_first() {
        None => (1, 1),
        Some((d0, rest)) => (*d0, rest.iter().product()),
    }
}

/// A contiguous CPU tensor of `kind` with `t`'s values: `t` itself when it already is one
/// (so an in-place receive into it reaches the caller's tensor), a copy otherwise.
pub(crate) fn to_host_contiguous(t: &Tensor, kind: Kind, world: World) -> Result<Tensor> {
    let r = (|| -> std::result::Result<Tensor, tch::TchError> {
        t.detach().f_to_device(Device::Cpu)?.f_to_kind(kind)?.f_contiguous()
    })();
    r.map_err(|e| tch_err(world, "stage to host", e))
}

fn check_count(world: World, n: i64, what: &str) -> Result<()> {
    if n > i32::MAX as i64 {
        return Err(dist_err(world, what, format!("{n} elements exceed MPI's 32-bit count; split the tensor")));
    }
    Ok(())
}

fn unsupported(world: World, what: &str, kind: Kind) -> crate::Error {
    dist_err(world, what, format!("tensors of kind {kind:?} are not supported"))
}

/// # Safety
/// `t` must be a contiguous CPU tensor of at least `n` elements of type `T`'s size.
unsafe fn host_slice<T>(t: &Tensor, n: usize) -> &[T] {
    if n == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const T, n)
}

/// # Safety
/// As [`host_slice`]; the caller must hold no other view of the buffer during the call.
#[allow(clippy::mut_from_ref)]
unsafe fn host_slice_mut<T>(t: &Tensor, n: usize) -> &mut [T] {
    if n == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n)
}
