//! The NCCL backend: collectives on CUDA tensors through `cudarc`'s NCCL bindings,
//! loaded at run time (no CUDA needed to build, or to run anything else). Host values and
//! CPU tensors go to the bootstrap communicator (MPI, or the world of one), which also
//! carries the NCCL unique id from rank 0 to everyone.
//!
//! Ordering with libtorch: tch exposes no streams, and libtorch's current stream is the
//! legacy default stream unless someone sets another. Collectives are enqueued on that
//! same stream (`stream = NULL`), so they run after the kernels that produced their input
//! and before the kernels that consume their output, with no host synchronisation.
//! `GRDR_NCCL_SYNC=1` instead synchronises the device around every call (the safe,
//! slower fallback, should some code ever set a non-default current stream).
//!
//! Library lookup: cudarc dlopens `libnccl.so`, pip ships `libnccl.so.2`;
//! `launcher/grdr-launch` puts a `libnccl.so` link on LD_LIBRARY_PATH. Built against the
//! NCCL 2.28 API (torch 2.11.0 ships 2.28.9); older libraries are refused at start.
use std::cell::Cell;
use std::ffi::c_void;

use cudarc::nccl::{result as nccl, sys};
use tch::{Device, Kind, Tensor};

use super::comm::{check_op_kind, check_root, dist_err, tch_err, Comm, ReduceOp, World};
use super::mpi::rows_of;
use super::watchdog::{self, Watchdog};
use crate::error::Result;

/// Lowest NCCL (major·10000 + minor·100 + patch) these bindings are written against.
const MIN_NCCL_VERSION: i32 = 22800;

/// Why the NCCL backend cannot run here, or `Ok` when CUDA, libcudart and libnccl are
/// all present. Nothing in cudarc is called before these checks pass (its loaders panic
/// when a library is missing).
pub fn nccl_available() -> std::result::Result<(), String> {
    let mut missing = Vec::new();
    // SAFETY: the probes only dlopen cudarc's candidate names.
    if !unsafe { cudarc::runtime::sys::is_culib_present() } {
        missing.push("libcudart not loadable (libcudart.so.13 from the torch wheel's nvidia/cu13/lib)");
    }
    if !unsafe { sys::is_culib_present() } {
        missing.push(
            "libnccl.so not loadable (start ranks with launcher/grdr-launch, which links pip's \
             libnccl.so.2 as libnccl.so on LD_LIBRARY_PATH)",
        );
    }
    if !tch::Cuda::is_available() {
        missing.push("libtorch sees no CUDA device");
    }
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    // cudarc asks for `libnccl.so`; libtorch_cuda links `libnccl.so.2`. Where those resolve
    // to two files (a system NCCL beside pip's), both load, the second's calls bind to the
    // first's symbols, and every collective fails with "corrupted comm object". The probe
    // above unloads what it opened: load cudarc's NCCL for good, then look.
    // SAFETY: presence checked above, so this does not panic.
    let _ = unsafe { sys::culib() };
    let loaded = mapped_libraries("/libnccl.so");
    if loaded.len() > 1 {
        return Err(format!(
            "two NCCL libraries are loaded ({}): put a `libnccl.so` link to the one libtorch \
             uses first on LD_LIBRARY_PATH (launcher/grdr-launch does)",
            loaded.join(", ")
        ));
    }
    Ok(())
}

/// Distinct files mapped into this process whose path contains `needle` (Linux; empty
/// elsewhere).
fn mapped_libraries(needle: &str) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(needle))
        .map(|p| std::fs::canonicalize(p).map_or_else(|_| p.to_string(), |c| c.display().to_string()))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The loaded NCCL's version code (e.g. 22809 for 2.28.9); `None` when not loadable.
pub fn nccl_version() -> Option<i32> {
    nccl_available().ok()?;
    nccl::get_nccl_version().ok()
}

/// How collectives are ordered with libtorch's kernels (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOrdering {
    /// Enqueue on the legacy default stream, libtorch's stream: no host sync.
    DefaultStream,
    /// Synchronise the device before and after each collective.
    Synchronize,
}

impl StreamOrdering {
    pub fn from_env() -> StreamOrdering {
        match std::env::var("GRDR_NCCL_SYNC").as_deref() {
            Ok("1") | Ok("true") => StreamOrdering::Synchronize,
            _ => StreamOrdering::DefaultStream,
        }
    }
}

pub struct NcclComm {
    comm: sys::ncclComm_t,
    device: usize,
    world: World,
    ordering: StreamOrdering,
    watchdog: Watchdog,
    issued: Cell<u64>,
    // Dropped after `comm` is destroyed (see Drop): MPI must outlive NCCL's teardown.
    bootstrap: Box<dyn Comm>,
}

fn abort_job(code: i32) -> ! {
    if ::mpi::environment::is_initialized() && !::mpi::environment::is_finalized() {
        unsafe {
            ::mpi::ffi::MPI_Abort(::mpi::ffi::RSMPI_COMM_WORLD, code);
        }
    }
    std::process::exit(code)
}

impl NcclComm {
    /// One NCCL communicator over the bootstrap's ranks, on CUDA device `local_rank`.
    pub fn new(bootstrap: Box<dyn Comm>) -> Result<NcclComm> {
        let world = bootstrap.world();
        nccl_available().map_err(|why| dist_err(world, "NCCL backend", why))?;
        let version = nccl::get_nccl_version().map_err(|e| nccl_err(world, "ncclGetVersion", e))?;
        if version < MIN_NCCL_VERSION {
            return Err(dist_err(world, "NCCL backend", format!("NCCL {version} is older than 2.28")));
        }
        let devices = tch::Cuda::device_count() as usize;
        if world.local_rank >= devices {
            return Err(dist_err(
                world,
                "NCCL backend",
                format!("local rank {} but only {devices} CUDA devices on this node", world.local_rank),
            ));
        }
        let device = world.local_rank;
        // SAFETY: plain runtime call; libcudart presence checked above.
        let rc = unsafe { cudarc::runtime::sys::cudaSetDevice(device as i32) };
        if rc != cudarc::runtime::sys::cudaError::cudaSuccess {
            return Err(dist_err(world, "cudaSetDevice", format!("{rc:?}")));
        }

        // Rank 0 makes the id; the bootstrap carries it to every rank.
        let mut id_bytes = vec![0u8; 128];
        if world.rank == 0 {
            let id = nccl::get_uniqueid().map_err(|e| nccl_err(world, "ncclGetUniqueId", e))?;
            for (b, c) in id_bytes.iter_mut().zip(id.internal.iter()) {
                *b = *c as u8;
            }
        }
        bootstrap.broadcast_bytes(&mut id_bytes, 0)?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (c, b) in id.internal.iter_mut().zip(id_bytes.iter()) {
            *c = *b as std::ffi::c_char;
        }

        let watchdog = Watchdog::start(world, watchdog::timeout_from_env(), abort_job);
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        {
            let _g = watchdog.enter("ncclCommInitRank");
            // SAFETY: `comm` is a valid out-pointer; id identical on every rank.
            unsafe { nccl::comm_init_rank(&mut comm, world.size as i32, id, world.rank as i32) }
                .map_err(|e| nccl_err(world, "ncclCommInitRank", e))?;
        }
        Ok(NcclComm {
            comm,
            device,
            world,
            ordering: StreamOrdering::from_env(),
            watchdog,
            issued: Cell::new(0),
            bootstrap,
        })
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.device)
    }

    pub fn ordering(&self) -> StreamOrdering {
        self.ordering
    }

    pub fn set_ordering(&mut self, ordering: StreamOrdering) {
        self.ordering = ordering;
    }

    /// Waits until every collective enqueued so far has finished on the device.
    pub fn synchronize(&self) {
        let _g = self.watchdog.enter("cuda synchronize");
        tch::Cuda::synchronize(self.device as i64);
    }

    /// Runs one NCCL call with the configured ordering; `f` gets the stream.
    fn enqueue(
        &self,
        what: &'static str,
        f: impl FnOnce(sys::cudaStream_t) -> std::result::Result<nccl::NcclStatus, nccl::NcclError>,
    ) -> Result<()> {
        self.issued.set(self.issued.get() + 1);
        // NCCL and the NULL stream act on the calling thread's current device, which is
        // per thread: set it for whichever thread issues this collective.
        // SAFETY: plain runtime call; libcudart was loaded in `new`.
        let rc = unsafe { cudarc::runtime::sys::cudaSetDevice(self.device as i32) };
        if rc != cudarc::runtime::sys::cudaError::cudaSuccess {
            return Err(dist_err(self.world, "cudaSetDevice", format!("{rc:?}")));
        }
        if self.ordering == StreamOrdering::Synchronize {
            self.synchronize();
        }
        f(std::ptr::null_mut()).map_err(|e| nccl_err(self.world, what, e))?;
        if self.ordering == StreamOrdering::Synchronize {
            let _g = self.watchdog.enter(what);
            tch::Cuda::synchronize(self.device as i64);
        }
        Ok(())
    }

    fn on_device(&self, t: &Tensor, what: &str) -> Result<bool> {
        match t.device() {
            Device::Cuda(d) if d == self.device => Ok(true),
            Device::Cuda(d) => Err(dist_err(
                self.world,
                what,
                format!("tensor on cuda:{d}, this rank's NCCL communicator is on cuda:{}", self.device),
            )),
            _ => Ok(false),
        }
    }

    /// Every rank's dim-0 size (rows must agree), over the bootstrap.
    fn row_sizes(&self, t: &Tensor, what: &str) -> Result<(Vec<i64>, i64)> {
        let (d0, row) = rows_of(t);
        let pairs = self.bootstrap.all_gather_bytes(&[d0.to_le_bytes(), row.to_le_bytes()].concat())?;
        let mut sizes = Vec::with_capacity(pairs.len());
        for (r, p) in pairs.iter().enumerate() {
            let other_row = i64::from_le_bytes(p[8..16].try_into().expect("16 bytes"));
            if other_row != row {
                return Err(dist_err(
                    self.world,
                    what,
                    format!("rank {r} sends rows of {other_row} elements, this rank {row}"),
                ));
            }
            sizes.push(i64::from_le_bytes(p[..8].try_into().expect("16 bytes")));
        }
        Ok((sizes, row))
    }

    fn contiguous(&self, t: &Tensor, what: &str) -> Result<Tensor> {
        t.detach().f_contiguous().map_err(|e| tch_err(self.world, what, e))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if !self.comm.is_null() {
            tch::Cuda::synchronize(self.device as i64);
            // SAFETY: the communicator is ours and no call is in flight after the sync.
            let _ = unsafe { nccl::comm_destroy(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }
}

impl Comm for NcclComm {
    fn world(&self) -> World {
        self.world
    }

    fn backend_name(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        if !self.on_device(tensor, "all_reduce")? {
            return self.bootstrap.all_reduce_(tensor, op);
        }
        check_op_kind(self.world, op, tensor.kind())?;
        let dtype = nccl_dtype(self.world, tensor.kind(), "all_reduce")?;
        let buf = self.contiguous(tensor, "all_reduce")?;
        let n = buf.numel();
        let ptr = buf.data_ptr();
        // SAFETY: in-place all-reduce of `n` elements of `buf` on this rank's device.
        self.enqueue("ncclAllReduce", |s| unsafe {
            nccl::all_reduce(ptr as *const c_void, ptr, n, dtype, nccl_op(op), self.comm, s)
        })?;
        if buf.data_ptr() != tensor.data_ptr() {
            tch::no_grad(|| tensor.f_copy_(&buf)).map_err(|e| tch_err(self.world, "all_reduce", e))?;
        }
        Ok(())
    }

    fn all_reduce_into(&self, src: &Tensor, dst: &mut Tensor, op: ReduceOp) -> Result<()> {
        let direct = self.on_device(src, "all_reduce_into")?
            && self.on_device(dst, "all_reduce_into")?
            && src.is_contiguous()
            && dst.is_contiguous()
            && src.kind() == dst.kind()
            && src.numel() == dst.numel();
        if !direct {
            tch::no_grad(|| dst.f_copy_(src)).map_err(|e| tch_err(self.world, "all_reduce_into", e))?;
            return self.all_reduce_(dst, op);
        }
        check_op_kind(self.world, op, src.kind())?;
        let dtype = nccl_dtype(self.world, src.kind(), "all_reduce_into")?;
        let (n, s_ptr, d_ptr) = (src.numel(), src.data_ptr(), dst.data_ptr());
        // SAFETY: both buffers hold `n` contiguous elements on this rank's device.
        self.enqueue("ncclAllReduce", |s| unsafe {
            nccl::all_reduce(s_ptr as *const c_void, d_ptr, n, dtype, nccl_op(op), self.comm, s)
        })
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let (out, sizes) = self.all_gather_varsize(tensor)?;
        let mine = sizes[self.world.rank];
        if let Some(r) = sizes.iter().position(|&s| s != mine) {
            return Err(dist_err(
                self.world,
                "all_gather",
                format!("dim 0 differs: rank {r} has {}, this rank {mine}", sizes[r]),
            ));
        }
        Ok(out)
    }

    fn all_gather_varsize(&self, tensor: &Tensor) -> Result<(Tensor, Vec<i64>)> {
        if !self.on_device(tensor, "all_gather")? {
            return self.bootstrap.all_gather_varsize(tensor);
        }
        let world = self.world;
        let dtype = nccl_dtype(world, tensor.kind(), "all_gather")?;
        let (sizes, row) = self.row_sizes(tensor, "all_gather")?;
        let max_rows = sizes.iter().copied().max().unwrap_or(0);
        // Equal slots of `max_rows` rows per rank: pad, gather, then drop the padding.
        let local = self.contiguous(tensor, "all_gather")?.reshape([rows_of(tensor).0, row]);
        let slot = if rows_of(tensor).0 == max_rows {
            local
        } else {
            let pad = Tensor::zeros([max_rows - rows_of(tensor).0, row], (tensor.kind(), self.device()));
            Tensor::cat(&[local, pad], 0)
        };
        let gathered = Tensor::empty([world.size as i64 * max_rows, row], (tensor.kind(), self.device()));
        let (n, s_ptr, d_ptr) = (slot.numel(), slot.data_ptr(), gathered.data_ptr());
        // SAFETY: `slot` holds n elements, `gathered` size·n, both on this device.
        self.enqueue("ncclAllGather", |s| unsafe {
            nccl::all_gather(s_ptr as *const c_void, d_ptr, n, dtype, self.comm, s)
        })?;
        let parts: Vec<Tensor> =
            sizes.iter().enumerate().map(|(r, &s)| gathered.narrow(0, r as i64 * max_rows, s)).collect();
        let mut shape = tensor.size();
        if shape.is_empty() {
            shape.push(1);
        }
        shape[0] = sizes.iter().sum();
        let out = Tensor::cat(&parts, 0).reshape(shape.as_slice());
        Ok((out, sizes))
    }

    fn broadcast_(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        if !self.on_device(tensor, "broadcast")? {
            return self.bootstrap.broadcast_(tensor, root);
        }
        check_root(self.world, root)?;
        let dtype = nccl_dtype(self.world, tensor.kind(), "broadcast")?;
        let buf = self.contiguous(tensor, "broadcast")?;
        let (n, ptr) = (buf.numel(), buf.data_ptr());
        // SAFETY: in-place broadcast of n elements on this device.
        self.enqueue("ncclBroadcast", |s| unsafe {
            nccl::broadcast(ptr as *const c_void, ptr, n, dtype, root as i32, self.comm, s)
        })?;
        if buf.data_ptr() != tensor.data_ptr() {
            tch::no_grad(|| tensor.f_copy_(&buf)).map_err(|e| tch_err(self.world, "broadcast", e))?;
        }
        Ok(())
    }

    fn gather_to_root(&self, tensor: &Tensor, root: usize) -> Result<Option<Tensor>> {
        if !self.on_device(tensor, "gather_to_root")? {
            return self.bootstrap.gather_to_root(tensor, root);
        }
        check_root(self.world, root)?;
        let world = self.world;
        let dtype = nccl_dtype(world, tensor.kind(), "gather_to_root")?;
        let (sizes, row) = self.row_sizes(tensor, "gather_to_root")?;
        let local = self.contiguous(tensor, "gather_to_root")?;
        let comm = self.comm;
        if world.rank != root {
            let (n, ptr) = (local.numel(), local.data_ptr());
            // SAFETY: n contiguous elements on this device; root posts the matching recv.
            self.enqueue("ncclSend", |s| unsafe { nccl::send(ptr as *const c_void, n, dtype, root as i32, comm, s) })?;
            return Ok(None);
        }
        let mut shape = tensor.size();
        if shape.is_empty() {
            shape.push(1);
        }
        shape[0] = sizes.iter().sum();
        let out = Tensor::empty(shape.as_slice(), (tensor.kind(), self.device()));
        let flat = out.view([-1]);
        let mut at = 0i64;
        let mut recvs = Vec::new();
        for (r, &rows) in sizes.iter().enumerate() {
            let part = flat.narrow(0, at * row, rows * row);
            if r == root {
                tch::no_grad(|| part.shallow_clone().f_copy_(&local.reshape([-1])))
                    .map_err(|e| tch_err(world, "gather_to_root", e))?;
            } else {
                recvs.push((r, part));
            }
            at += rows;
        }
        self.enqueue("ncclRecv(group)", |s| unsafe {
            nccl::group_start()?;
            for (r, part) in &recvs {
                nccl::recv(part.data_ptr(), part.numel(), dtype, *r as i32, comm, s)?;
            }
            nccl::group_end()
        })?;
        Ok(Some(out))
    }

    fn barrier(&self) -> Result<()> {
        self.synchronize();
        self.bootstrap.barrier()
    }

    fn abort(&self, message: &str, code: i32) -> ! {
        if !self.comm.is_null() {
            // SAFETY: tears down in-flight NCCL work so the abort cannot block on it.
            let _ = unsafe { nccl::comm_abort(self.comm) };
        }
        self.bootstrap.abort(message, code)
    }

    fn collectives_issued(&self) -> u64 {
        self.issued.get() + self.bootstrap.collectives_issued()
    }
}

fn nccl_dtype(world: World, kind: Kind, what: &str) -> Result<sys::ncclDataType_t> {
    use sys::ncclDataType_t::*;
    Ok(match kind {
        Kind::Float => ncclFloat32,
        Kind::Double => ncclFloat64,
        Kind::BFloat16 => ncclBfloat16,
        Kind::Half => ncclFloat16,
        Kind::Int64 => ncclInt64,
        Kind::Int => ncclInt32,
        Kind::Uint8 | Kind::Bool => ncclUint8,
        Kind::Int8 => ncclInt8,
        k => return Err(dist_err(world, what, format!("tensors of kind {k:?} are not supported by NCCL"))),
    })
}

fn nccl_op(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Mean => sys::ncclRedOp_t::ncclAvg,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
    }
}

fn nccl_err(world: World, what: &str, e: nccl::NcclError) -> crate::Error {
    dist_err(world, what, format!("{:?}", e.0))
}

#[cfg(test)]
mod tests {
    use super::mapped_libraries;

    #[test]
    fn mapped_libraries_finds_each_file_once() {
        // libtorch_cpu is mapped in several segments of one file; nothing maps a made-up name.
        let torch = mapped_libraries("/libtorch_cpu.so");
        assert_eq!(torch.len(), 1, "{torch:?}");
        assert!(mapped_libraries("/libgrdr-no-such-library.so").is_empty());
    }
}
