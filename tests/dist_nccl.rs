//! The NCCL backend. What needs CUDA is ignored by default and fails when run without a GPU,
//! a CUDA-enabled libtorch or a loadable libnccl (on a GPU machine: `cargo test --test
//! dist_nccl -- --ignored`); what runs everywhere is that a missing NCCL is an error, never a
//! panic, and that `Auto` falls back to the host backend.
mod dist_common;

use dist_common::checks::{check_collectives, check_ordering};
use grdr::dist::nccl::{nccl_available, nccl_version, NcclComm, StreamOrdering};
use grdr::dist::{self, Backend, Comm, LocalComm, ReduceOp};
use tch::{Device, Kind, Tensor};

/// The GPU tests need CUDA and a loadable NCCL: without them they fail (they are ignored by
/// default and run on a GPU machine with `cargo test --test dist_nccl -- --ignored`).
fn require_nccl() {
    nccl_available().expect("this test needs CUDA and a loadable NCCL");
}

#[test]
fn without_nccl_init_is_an_error_and_auto_falls_back() {
    if nccl_available().is_ok() {
        eprintln!("NCCL is available here (version {:?}); the fallback path is not exercised", nccl_version());
        return;
    }
    let err = NcclComm::new(Box::new(LocalComm)).err().expect("NCCL backend without NCCL must fail");
    assert!(err.to_string().contains("NCCL backend"), "{err}");
    let comm = dist::init(Backend::Auto, Device::Cuda(0)).unwrap();
    assert_eq!(comm.world().size, 1);
    assert!(dist::init(Backend::Nccl, Device::Cuda(0)).is_err());
}

#[test]
#[ignore = "needs a GPU: cargo test --test dist_nccl -- --ignored"]
fn nccl_world_of_one_collectives() {
    require_nccl();
    eprintln!("NCCL version {:?}", nccl_version());
    let mut comm = NcclComm::new(Box::new(LocalComm)).unwrap();
    let device = comm.device();
    for ordering in [StreamOrdering::DefaultStream, StreamOrdering::Synchronize] {
        comm.set_ordering(ordering);
        check_collectives(&comm, device);
        check_ordering(&comm, device);
        // CPU tensors go to the bootstrap communicator.
        let mut t = Tensor::ones([3], (Kind::Float, Device::Cpu));
        comm.all_reduce_(&mut t, ReduceOp::Sum).unwrap();
        assert_eq!(t.double_value(&[0]), 1.0);
    }
}

#[test]
#[ignore = "worker: started by nccl_two_ranks through launcher/grdr-launch"]
fn worker_nccl() {
    let out = dist_common::worker_out();
    let comm = dist::init(Backend::Nccl, Device::Cpu).unwrap();
    let device = Device::Cuda(comm.world().local_rank);
    check_collectives(comm.as_ref(), device);
    check_ordering(comm.as_ref(), device);
    std::fs::write(out.join(format!("ok-{}", comm.world().rank)), b"ok").unwrap();
}

#[test]
#[ignore = "needs 2 GPUs: cargo test --test dist_nccl -- --ignored"]
fn nccl_two_ranks() {
    require_nccl();
    assert!(tch::Cuda::device_count() >= 2, "nccl_two_ranks needs 2 CUDA devices");
    let out = tempfile::tempdir().unwrap();
    dist_common::run_worker(2, "worker_nccl", out.path(), &[]);
    assert!(out.path().join("ok-0").exists() && out.path().join("ok-1").exists());
}
