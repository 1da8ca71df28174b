//! Distributed core: who this process is ([`World`]), how ranks exchange tensors
//! ([`Comm`]: MPI on CPU, NCCL on CUDA, [`LocalComm`] for a world of one), data
//! parallelism from outside the model ([`ddp::Ddp`]), and the gathers and normalisations
//! that make N ranks × batch B compute exactly what one process with batch N·B computes
//! ([`gather`]). Model code never calls any of this; the trainer wraps models with it.
//!
//! Start a job with `launcher/grdr-launch -n N -- grdr …` (mpirun locally, `srun
//! --mpi=pmix` inside a Slurm allocation). A binary started without a launcher is a world
//! of one and never touches MPI.
//!
//! Failure: a rank that returns an error calls [`exit_on_error`] (or [`Comm::abort`]),
//! which names the rank and aborts every rank; a panicking rank does the same through a
//! panic hook; a rank that dies is reported by the launcher, which ends the job; a rank
//! stuck in a collective past `GRDR_COLLECTIVE_TIMEOUT` seconds aborts the job itself.
pub mod comm;
pub mod ddp;
pub mod describe;
pub mod gather;
pub mod mpi;
pub mod nccl;
mod watchdog;

pub use comm::{Comm, LocalComm, ReduceOp, World};
pub use ddp::{Ddp, DdpOptions};
pub use watchdog::DEFAULT_TIMEOUT_S as DEFAULT_COLLECTIVE_TIMEOUT_S;

/// Which collectives a job uses (`dist.backend`; defined beside the config that names it).
pub use crate::config::Backend;

use crate::error::Result;

/// Joins the job this process was launched into. Call once per process, before any
/// other collective; keep the returned communicator alive until the end of `main`
/// (dropping it finalises MPI).
pub fn init(backend: Backend, device: tch::Device) -> Result<Box<dyn Comm>> {
    let host = || -> Result<Box<dyn Comm>> {
        if self::mpi::launched_by_mpi() {
            Ok(Box::new(self::mpi::MpiComm::init()?))
        } else {
            Ok(Box::new(LocalComm))
        }
    };
    match backend {
        Backend::Local => Ok(Box::new(LocalComm)),
        Backend::Mpi => host(),
        Backend::Nccl => Ok(Box::new(nccl::NcclComm::new(host()?)?)),
        Backend::Auto => {
            let bootstrap = host()?;
            if device.is_cuda() && nccl::nccl_available().is_ok() {
                Ok(Box::new(nccl::NcclComm::new(bootstrap)?))
            } else {
                Ok(bootstrap)
            }
        }
    }
}

/// The error path of a rank: on error, prints it naming this rank and aborts every rank
/// of the job (exit code 1), so no peer waits forever in a collective. In a world of one
/// it just returns the error to the caller's usual handling.
pub fn exit_on_error<T>(comm: &dyn Comm, result: Result<T>) -> Result<T> {
    match result {
        Err(e) if comm.world().size > 1 => {
            let mut message = format!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
            comm.abort(&message, i32::from(e.exit_code()))
        }
        other => other,
    }
}
