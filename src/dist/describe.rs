//! Who is in a job, recorded as `RUNDIR/world.json` so that a run says where it ran: the
//! backend, the launcher, and each rank's host, node, local rank, device and pid. A
//! multi-node run shows several hosts; reports read the number of nodes and ranks from it.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Comm;
use crate::error::{Error, Result};

/// One rank of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankInfo {
    pub rank: usize,
    pub host: String,
    pub node: usize,
    pub local_rank: usize,
    pub device: String,
    pub pid: u32,
}

/// `world.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldInfo {
    /// `local`, `mpi` or `nccl`.
    pub backend: String,
    /// `srun`, `mpirun` or `none` (a process started without a launcher).
    pub launcher: String,
    pub world_size: usize,
    /// Distinct hosts.
    pub nodes: usize,
    pub ranks: Vec<RankInfo>,
}

/// This host's name (its UTS namespace's: what Slurm and MPI see).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How this process was started, from the launcher's environment.
fn launcher() -> &'static str {
    let set = |v: &str| std::env::var_os(v).is_some();
    if set("SLURM_STEP_ID") && set("SLURM_PROCID") {
        "srun"
    } else if set("OMPI_COMM_WORLD_SIZE") || set("PMIX_RANK") {
        "mpirun"
    } else {
        "none"
    }
}

/// Gathers every rank's description (a collective: every rank calls it).
pub fn describe(comm: &dyn Comm, device: tch::Device) -> Result<WorldInfo> {
    let w = comm.world();
    let me = RankInfo {
        rank: w.rank,
        host: hostname(),
        node: w.node,
        local_rank: w.local_rank,
        device: format!("{device:?}"),
        pid: std::process::id(),
    };
    let bytes = serde_json::to_vec(&me).expect("rank info serialises");
    let ranks = comm
        .all_gather_bytes(&bytes)?
        .iter()
        .map(|b| serde_json::from_slice::<RankInfo>(b))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::dist(w.rank, format!("world description: {e}")))?;
    let nodes = ranks.iter().map(|r| r.host.as_str()).collect::<BTreeSet<_>>().len();
    Ok(WorldInfo { backend: comm.backend_name().into(), launcher: launcher().into(), world_size: w.size, nodes, ranks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_describes_itself() {
        let info = describe(&crate::dist::LocalComm, tch::Device::Cpu).unwrap();
        assert_eq!((info.backend.as_str(), info.world_size, info.nodes), ("local", 1, 1));
        assert_eq!(info.ranks[0].pid, std::process::id());
        assert!(!info.ranks[0].host.is_empty());
    }
}
