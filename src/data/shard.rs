//! Sharding and deterministic order. Row groups of a Parquet file are the unit of work:
//! the coordinator reads the row-group layout from the file's metadata (no data) and
//! broadcasts it, so every rank plans from the same numbers. Orders are pure functions of
//! (seed, tags such as the epoch), drawn from SplitMix64 — platform- and rank-count-
//! independent, so an epoch's order is the same on 1 or N ranks and after a resume.
use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::{Deserialize, Serialize};

use crate::dist::{Comm, World};
use crate::error::{Error, Result};

/// One row group: its index in the file and the rows it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowGroup {
    pub index: usize,
    pub first_row: u64,
    pub rows: u64,
}

/// The row-group layout of a Parquet file, from its footer.
pub fn read_row_groups(path: &Path) -> Result<Vec<RowGroup>> {
    crate::panic_guard::catch(|| read_row_groups_unguarded(path), |m| Error::bad_parquet(path, "damaged", m))
}

fn read_row_groups_unguarded(path: &Path) -> Result<Vec<RowGroup>> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| Error::bad_parquet(path, "cannot read metadata", e))?;
    let mut first_row = 0u64;
    Ok((0..reader.metadata().num_row_groups())
        .map(|index| {
            let rows = reader.metadata().row_group(index).num_rows() as u64;
            let g = RowGroup { index, first_row, rows };
            first_row += rows;
            g
        })
        .collect())
}

/// The coordinator reads the layout and broadcasts it; every rank returns the same plan.
pub fn plan_row_groups(comm: &dyn Comm, path: &Path) -> Result<Vec<RowGroup>> {
    let mut bytes = Vec::new();
    if comm.world().is_coordinator() {
        bytes = serde_json::to_vec(&read_row_groups(path)?).expect("row groups serialise");
    }
    comm.broadcast_bytes(&mut bytes, 0)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::dist(comm.world().rank, format!("row-group plan: {e}")))
}

/// Rank `world.rank`'s shard: a contiguous run of row groups, the runs balanced by rows
/// (each rank's share ends at the group boundary nearest to rank·total/size).
pub fn assign(groups: &[RowGroup], world: World) -> Vec<RowGroup> {
    let total: u64 = groups.iter().map(|g| g.rows).sum();
    let bound = |r: usize| -> usize {
        let target = total * r as u64 / world.size as u64;
        groups.iter().position(|g| g.first_row + g.rows / 2 >= target).unwrap_or(groups.len())
    };
    let (start, end) =
        (bound(world.rank), if world.rank + 1 == world.size { groups.len() } else { bound(world.rank + 1) });
    groups[start..end.max(start)].to_vec()
}

pub use crate::rng::SplitMix64;

/// Tags that keep the streams of different uses apart.
pub mod tag {
    pub const PAIRS: u64 = 1;
    pub const INDEX: u64 = 2;
    pub const MIX: u64 = 3;
    pub const NEGATIVES: u64 = 4;
    pub const TARGET: u64 = 5;
    pub const SPAN: u64 = 6;
    pub const TORCH: u64 = 7;
    pub const SUBSAMPLE: u64 = 8;
    pub const BANK: u64 = 9;
    pub const GRAD_CACHE: u64 = 10;
}

/// A permutation of `0..n` keyed by `parts`.
pub fn permutation(n: usize, parts: &[u64]) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    SplitMix64::keyed(parts).shuffle(&mut p);
    p
}

/// Rows of a file in a block-shuffled order: row groups permuted, then rows shuffled within
/// windows of `window` consecutive (permuted) groups. A reader walking this order touches
/// `window` row groups at a time (bounded memory) yet sees a well-mixed stream.
pub fn block_shuffled(groups: &[RowGroup], window: usize, parts: &[u64]) -> Vec<u32> {
    let mut rng = SplitMix64::keyed(parts);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    rng.shuffle(&mut order);
    let mut rows = Vec::with_capacity(groups.iter().map(|g| g.rows as usize).sum());
    for chunk in order.chunks(window.max(1)) {
        let start = rows.len();
        for &g in chunk {
            let g = groups[g];
            rows.extend(g.first_row as u32..(g.first_row + g.rows) as u32);
        }
        rng.shuffle(&mut rows[start..]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(sizes: &[u64]) -> Vec<RowGroup> {
        let mut first = 0;
        sizes
            .iter()
            .enumerate()
            .map(|(index, &rows)| {
                let g = RowGroup { index, first_row: first, rows };
                first += rows;
                g
            })
            .collect()
    }

    #[test]
    fn shards_cover_every_group_once() {
        let gs = groups(&[1024, 1024, 1024, 1024, 91]);
        for size in 1..=6 {
            let mut all = Vec::new();
            for rank in 0..size {
                let w = World { rank, size, local_rank: rank, local_size: size, node: 0 };
                all.extend(assign(&gs, w).into_iter().map(|g| g.index));
            }
            assert_eq!(all, vec![0, 1, 2, 3, 4], "size {size}");
        }
    }

    #[test]
    fn orders_are_permutations_and_keyed() {
        let gs = groups(&[5, 5, 3]);
        let a = block_shuffled(&gs, 2, &[1, 2]);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..13).collect::<Vec<u32>>());
        assert_eq!(a, block_shuffled(&gs, 2, &[1, 2]));
        assert_ne!(a, block_shuffled(&gs, 2, &[1, 3]));
        let p = permutation(100, &[7]);
        assert_eq!(p.len(), 100);
        assert_ne!(p, permutation(100, &[8]));
    }
}
