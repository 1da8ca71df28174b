//! Every collective of the `Comm` trait, on every kind the trainer uses, checked against
//! its definition: on 2 MPI ranks, on 1 MPI rank, and in a world of one without mpirun.
mod dist_common;

use dist_common::checks::{check_collectives, check_ordering};
use grdr::dist::{self, Backend, World};
use tch::Device;

#[test]
#[ignore = "worker: started by the multi-rank tests through launcher/grdr-launch"]
fn worker_collectives() {
    let out = dist_common::worker_out();
    let comm = dist::init(Backend::Auto, Device::Cpu).unwrap();
    check_collectives(comm.as_ref(), Device::Cpu);
    check_ordering(comm.as_ref(), Device::Cpu);
    std::fs::write(out.join(format!("ok-{}-of-{}", comm.world().rank, comm.world().size)), b"ok").unwrap();
}

fn run(ranks: usize) {
    let out = tempfile::tempdir().unwrap();
    dist_common::run_worker(ranks, "worker_collectives", out.path(), &[]);
    for r in 0..ranks {
        assert!(out.path().join(format!("ok-{r}-of-{ranks}")).exists(), "rank {r} did not finish");
    }
}

#[test]
fn collectives_on_two_mpi_ranks() {
    run(2);
}

#[test]
fn collectives_on_one_mpi_rank() {
    run(1);
}

#[test]
fn world_of_one_without_a_launcher() {
    // This test process was not started by mpirun: init must not touch MPI.
    assert!(!dist::mpi::launched_by_mpi());
    let comm = dist::init(Backend::Auto, Device::Cpu).unwrap();
    assert_eq!(comm.world(), World::SINGLE);
    check_collectives(comm.as_ref(), Device::Cpu);
}

#[test]
fn launcher_sets_library_paths_and_root_permission() {
    let out = std::process::Command::new(dist_common::launcher())
        .args(["-n", "2", "--dry-run", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("LD_LIBRARY_PATH=") && text.contains("torch/lib"), "{text}");
    assert!(text.contains("mpirun -np 2"), "{text}");
}

#[test]
fn launcher_links_pip_nccl_where_cudarc_looks() {
    // A torch wheel layout with NCCL (as on GPU machines): site/torch/lib, site/nvidia/nccl/lib.
    let site = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site.path().join("torch/lib")).unwrap();
    let nccl_dir = site.path().join("nvidia/nccl/lib");
    std::fs::create_dir_all(&nccl_dir).unwrap();
    std::fs::write(nccl_dir.join("libnccl.so.2"), b"").unwrap();
    let out = std::process::Command::new(dist_common::launcher())
        .args(["-n", "1", "--dry-run", "--", "true"])
        .env("LIBTORCH", site.path().join("torch"))
        .env("GRDR_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let link = cache.path().join("lib/libnccl.so");
    assert_eq!(std::fs::read_link(&link).unwrap(), nccl_dir.join("libnccl.so.2"));
    let ldp = text.lines().find(|l| l.starts_with("LD_LIBRARY_PATH=")).unwrap();
    assert!(ldp.contains(&format!("{}:", cache.path().join("lib").display())), "{ldp}");
    assert!(ldp.contains("nvidia/nccl/lib"), "{ldp}");
}
