//! Exact inner-product top-k over document embeddings held in chunks (in memory or spilled
//! to disk): a (query block × doc chunk) matmul at a time, so memory is bounded by
//! `query_block × chunk rows` scores and never a full queries × docs matrix.
//!
//! Exactness: every hit that can enter a query's [`TopK`] is pushed into it — the chunk's own
//! k-th score and the query's running threshold only prune hits that cannot, and ties at the
//! cut are all kept (`>=`), so the result equals sorting every score by grdr's order (score
//! desc, doc index asc) and truncating, whatever the chunking. Sharded runs equal one process
//! when every doc's score is computed identically, which the eval driver ensures by giving
//! chunks the same rows (row-group aligned) whatever the number of ranks.
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::search::topk::{Hit, TopK};

/// Where a chunk's embeddings live.
#[derive(Debug)]
enum Storage {
    /// (C, D) on the search device.
    Memory(Tensor),
    /// Raw little-endian f32 rows in a file, memory-mapped only while the chunk is searched.
    Disk(PathBuf),
}

/// Rows `first_doc .. first_doc + rows` of the corpus.
#[derive(Debug)]
pub struct Chunk {
    pub first_doc: i64,
    pub rows: i64,
    storage: Storage,
}

/// A rank's document embeddings: chunks of consecutive global doc indices, each held in
/// memory or spilled to `spill_dir`. Peak memory is then one chunk plus the scores.
#[derive(Debug)]
pub struct EmbeddingStore {
    pub dim: i64,
    pub device: Device,
    spill_dir: Option<PathBuf>,
    chunks: Vec<Chunk>,
}

impl EmbeddingStore {
    /// An empty store of `dim`-wide vectors; `spill_dir` keeps chunks on disk (removed with
    /// the store).
    pub fn new(dim: i64, device: Device, spill_dir: Option<&Path>) -> Result<Self> {
        if let Some(dir) = spill_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create the spill directory", e))?;
        }
        Ok(EmbeddingStore { dim, device, spill_dir: spill_dir.map(Path::to_path_buf), chunks: Vec::new() })
    }

    /// Appends the embeddings (C, D) of docs `first_doc ..`: chunks are searched separately,
    /// so a chunk's rows are the unit that fixes how a doc's score is computed.
    pub fn push(&mut self, first_doc: i64, emb: &Tensor) -> Result<()> {
        let (rows, dim) = emb.size2().map_err(|e| Error::usage("embeddings", e.to_string()))?;
        if dim != self.dim {
            return Err(Error::usage("embeddings", format!("width {dim}, the store holds {}", self.dim)));
        }
        let storage = match &self.spill_dir {
            None => Storage::Memory(emb.detach().to_device(self.device)),
            Some(dir) => {
                let path = dir.join(format!("chunk-{first_doc:012}.f32"));
                let host = emb.detach().to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
                let n = (rows * dim) as usize;
                let mut bytes = vec![0f32; n];
                host.copy_data(&mut bytes, n);
                let raw: Vec<u8> = bytes.iter().flat_map(|v| v.to_le_bytes()).collect();
                std::fs::write(&path, raw).map_err(|e| Error::io(&path, "cannot spill embeddings", e))?;
                Storage::Disk(path)
            }
        };
        self.chunks.push(Chunk { first_doc, rows, storage });
        Ok(())
    }

    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    pub fn rows(&self) -> i64 {
        self.chunks.iter().map(|c| c.rows).sum()
    }

    /// The embeddings of a chunk (C, D) on the search device (read from disk when spilled).
    pub fn load(&self, chunk: &Chunk) -> Result<Tensor> {
        match &chunk.storage {
            Storage::Memory(t) => Ok(t.shallow_clone()),
            Storage::Disk(path) => Ok(load_file(path, chunk.rows, self.dim)?.to_device(self.device)),
        }
    }

    /// Rows `doc_idx` (global indices this store holds) → (n, D), for scoring given docs.
    pub fn gather(&self, doc_idx: &[i64]) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(doc_idx.len());
        for &d in doc_idx {
            let c = self
                .chunks
                .iter()
                .find(|c| (c.first_doc..c.first_doc + c.rows).contains(&d))
                .ok_or_else(|| Error::usage("doc_idx", format!("doc {d} is not in this shard")))?;
            rows.push(self.load(c)?.get(d - c.first_doc));
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros([0, self.dim], (Kind::Float, self.device)));
        }
        Ok(Tensor::stack(&rows, 0))
    }
}

impl Drop for EmbeddingStore {
    fn drop(&mut self) {
        for c in &self.chunks {
            if let Storage::Disk(p) = &c.storage {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Pushes every hit of `scores` (Q, C) (doc `first_doc + column`) that can enter `tops[q]`.
/// Scores are compared on the host as f32, the kind [`Hit`] keeps.
pub fn push_block(scores: &Tensor, first_doc: i64, tops: &mut [TopK]) {
    let (q, c) = scores.size2().expect("scores (Q, C)");
    assert_eq!(q as usize, tops.len());
    if c == 0 || q == 0 {
        return;
    }
    let k = tops[0].k() as i64;
    if k == 0 {
        return;
    }
    let scores = scores.to_kind(Kind::Float);
    // Cut per query: the running threshold when the TopK is full, else the chunk's k-th best
    // (whichever is higher); `>=` keeps ties at the cut, which the doc-index order may favour.
    let running: Vec<f32> = tops.iter().map(|t| t.threshold().map_or(f32::NEG_INFINITY, |h| h.score)).collect();
    let running = Tensor::from_slice(&running).to_device(scores.device()).unsqueeze(1); // (Q, 1)
    let cut = if tops.iter().all(|t| t.threshold().is_some()) {
        running
    } else {
        let (kth, _) = scores.topk(k.min(c), 1, true, false);
        kth.amin(1, true).maximum(&running) // (Q, 1)
    };
    let keep = scores.ge_tensor(&cut); // (Q, C)
    let at = keep.nonzero(); // (M, 2): (query, column)
    let values = scores.masked_select(&keep); // (M,) in the same row-major order
    let m = values.size()[0] as usize;
    if m == 0 {
        return;
    }
    let at: Vec<i64> = Vec::try_from(at.to_device(Device::Cpu).reshape([-1])).expect("i64 indices");
    let values: Vec<f32> = Vec::try_from(values.to_device(Device::Cpu)).expect("f32 scores");
    for i in 0..m {
        let (row, col) = (at[2 * i] as usize, at[2 * i + 1]);
        // `+ 0.0` turns −0.0 into +0.0: BLAS kernels differ in the sign of zero sums, and
        // `Hit` orders −0.0 below +0.0.
        tops[row].push(Hit { score: values[i] + 0.0, doc_idx: first_doc + col });
    }
}

/// The most scores one (query block × document slice) product makes: 64 MB in f32, per
/// worker thread. Memory of a search is bounded by this, not by the chunk or corpus size.
pub const SCORE_BLOCK_ELEMS: i64 = 1 << 24;

/// Exact top-k by inner product for every query `queries` (Q, D) over the store, queries
/// processed `query_block` at a time. Returns one [`TopK`] per query (unsorted heaps, so
/// sharded callers can merge before sorting).
pub fn search(store: &EmbeddingStore, queries: &Tensor, k: usize, query_block: i64) -> Result<Vec<TopK>> {
    search_observed(store, queries, k, query_block, &|_, _, _| {})
}

/// A chunk as a worker thread takes it (tensors are `Send`, not `Sync`: each worker owns
/// its handles).
enum Source {
    Tensor(Tensor),
    File(PathBuf),
}

/// A worker's queries and (first doc, rows, source) of its chunks.
type Job = (Tensor, Vec<(i64, i64, Source)>);

/// [`search`], showing every score block to `observe(first_query, first_doc, scores (Qb, C))`
/// — how calibration accumulates the full-softmax normaliser in the same pass.
///
/// On the CPU the (query block × chunk) products are spread over libtorch's intra-op thread
/// count as *single-threaded* GEMMs, one chunk per task: a score then depends only on the
/// block and chunk shapes, never on how many threads or ranks there are (a multi-threaded
/// GEMM may split its reduction differently for 1 and 2 threads, which changes the last bit
/// of a score and, through ties and near-ties, the run file).
pub fn search_observed(
    store: &EmbeddingStore,
    queries: &Tensor,
    k: usize,
    query_block: i64,
    observe: &(dyn Fn(i64, i64, &Tensor) + Sync),
) -> Result<Vec<TopK>> {
    let (nq, dim) = queries.size2().map_err(|e| Error::usage("queries", e.to_string()))?;
    if dim != store.dim {
        return Err(Error::usage("queries", format!("width {dim}, the documents have {}", store.dim)));
    }
    let block = query_block.max(1);
    let queries = queries.to_device(store.device);
    let workers = if store.device == Device::Cpu {
        (tch::get_num_threads().max(1) as usize).min(store.chunks.len().max(1))
    } else {
        1
    };
    // Deal chunks round-robin; every worker owns handles to its chunks and to the queries.
    let mut jobs: Vec<Job> = (0..workers).map(|_| (queries.shallow_clone(), Vec::new())).collect();
    for (i, c) in store.chunks.iter().enumerate() {
        let src = match &c.storage {
            Storage::Memory(t) => Source::Tensor(t.shallow_clone()),
            Storage::Disk(p) => Source::File(p.clone()),
        };
        jobs[i % workers].1.push((c.first_doc, c.rows, src));
    }
    let (device, sdim) = (store.device, store.dim);
    let run = move |(queries, chunks): Job| -> Result<Vec<TopK>> {
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        tch::no_grad(|| -> Result<()> {
            for (first_doc, rows, src) in chunks {
                let docs = match src {
                    Source::Tensor(t) => t,
                    Source::File(path) => load_file(&path, rows, sdim)?.to_device(device),
                }
                .to_kind(queries.kind()); // (C, D); bf16 stores score in f32
                let docs_t = docs.transpose(0, 1); // (D, C)
                                                   // Column slices of the chunk bound a score block to SCORE_BLOCK_ELEMS (a
                                                   // ColBERT token pool's chunk is a whole row group's tokens, ~10⁵ rows).
                let width = (SCORE_BLOCK_ELEMS / block).max(1);
                for c0 in (0..rows).step_by(width as usize) {
                    let part = docs_t.narrow(1, c0, width.min(rows - c0)); // (D, c)
                    for start in (0..nq).step_by(block as usize) {
                        let n = block.min(nq - start);
                        let scores = queries.narrow(0, start, n).matmul(&part); // (Qb, c)
                        observe(start, first_doc + c0, &scores);
                        push_block(&scores, first_doc + c0, &mut tops[start as usize..(start + n) as usize]);
                    }
                }
            }
            Ok(())
        })?;
        Ok(tops)
    };
    let parts: Vec<Result<Vec<TopK>>> = if workers == 1 {
        jobs.into_iter().map(run).collect()
    } else {
        let _threads = crate::parallel::IntraOpThreads::set(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|job| {
                    s.spawn(|| {
                        // OpenMP's thread count is per thread: set it in the worker itself.
                        tch::set_num_threads(1);
                        run(job)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("search worker panicked")).collect()
        })
    };
    let mut merged: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
    for part in parts {
        for (m, t) in merged.iter_mut().zip(part?) {
            m.merge(t.into_sorted_vec());
        }
    }
    Ok(merged)
}

fn load_file(path: &Path, rows: i64, dim: i64) -> Result<Tensor> {
    let name = path.to_str().ok_or_else(|| Error::usage("spill", "non-UTF-8 path"))?;
    let t = Tensor::f_from_file(name, false, Some(rows * dim), (Kind::Float, Device::Cpu))
        .map_err(|e| Error::usage("spill", format!("{}: {e}", path.display())))?;
    Ok(t.view([rows, dim]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force(q: &[f32], d: &[f32], dim: usize, k: usize) -> Vec<Vec<Hit>> {
        q.chunks(dim)
            .map(|qv| {
                let mut hits: Vec<Hit> = d
                    .chunks(dim)
                    .enumerate()
                    // fold from +0.0 as BLAS does (`sum()` starts at −0.0, which `Hit` orders below +0.0).
                    .map(|(i, dv)| Hit {
                        score: qv.iter().zip(dv).fold(0.0f32, |s, (a, b)| s + a * b),
                        doc_idx: i as i64,
                    })
                    .collect();
                hits.sort_by(|a, b| b.cmp(a));
                hits.truncate(k);
                hits
            })
            .collect()
    }

    fn run(q: &[f32], d: &[f32], dim: usize, k: usize, chunk: usize, block: i64, spill: bool) -> Vec<Vec<Hit>> {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = EmbeddingStore::new(dim as i64, Device::Cpu, spill.then(|| tmp.path())).unwrap();
        let n = d.len() / dim;
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            let t = Tensor::from_slice(&d[start * dim..(start + rows) * dim]).view([rows as i64, dim as i64]);
            store.push(start as i64, &t).unwrap();
        }
        let qt = Tensor::from_slice(q).view([(q.len() / dim) as i64, dim as i64]);
        search(&store, &qt, k, block).unwrap().into_iter().map(TopK::into_sorted_vec).collect()
    }

    proptest! {
        // Small integer-valued vectors: dot products are exact in f32 and tie often, so the
        // doc-index tie-break at every cut (chunk k-th, running threshold) is exercised.
        #[test]
        fn equals_brute_force(
            dim in 1usize..5,
            nq in 1usize..6,
            nd in 0usize..60,
            k in 0usize..20,
            chunk in 1usize..17,
            block in 1i64..4,
            spill in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) % 5) as f32 - 2.0 };
            let q: Vec<f32> = (0..nq * dim).map(|_| next()).collect();
            let d: Vec<f32> = (0..nd * dim).map(|_| next()).collect();
            prop_assert_eq!(run(&q, &d, dim, k, chunk, block, spill), brute_force(&q, &d, dim, k));
        }
    }

    /// A chunk far wider than a score block allows (a token pool's row group) is searched in
    /// column slices: the same top-k as brute force, the chunk never scored whole.
    #[test]
    fn chunks_wider_than_a_score_block_are_sliced() {
        let (dim, block) = (2usize, 1i64 << 13);
        let width = (SCORE_BLOCK_ELEMS / block) as usize; // 2,048 columns
        let nd = 2 * width + 37;
        let d: Vec<f32> = (0..nd * dim).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let q: Vec<f32> = (0..3 * dim).map(|i| (i % 5) as f32 - 2.0).collect();
        assert_eq!(run(&q, &d, dim, 9, nd, block, false), brute_force(&q, &d, dim, 9));
        let mut store = EmbeddingStore::new(dim as i64, Device::Cpu, None).unwrap();
        store.push(0, &Tensor::from_slice(&d).view([nd as i64, dim as i64])).unwrap();
        let largest = std::sync::Mutex::new(0i64);
        let qs = Tensor::from_slice(&vec![1f32; block as usize * dim]).view([block, dim as i64]);
        search_observed(&store, &qs, 1, block, &|_, _, scores| {
            let mut l = largest.lock().unwrap();
            *l = (*l).max(scores.numel() as i64);
        })
        .unwrap();
        assert_eq!(largest.into_inner().unwrap(), SCORE_BLOCK_ELEMS);
    }

    #[test]
    fn shards_merge_to_the_whole() {
        let dim = 3;
        let d: Vec<f32> = (0..90).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        let q: Vec<f32> = vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let whole = run(&q, &d, dim, 7, 4, 2, false);
        let mut merged: Vec<TopK> = (0..2).map(|_| TopK::new(7)).collect();
        for (first, last) in [(0usize, 12usize), (12, 30)] {
            let mut store = EmbeddingStore::new(dim as i64, Device::Cpu, None).unwrap();
            store
                .push(first as i64, &Tensor::from_slice(&d[first * dim..last * dim]).view([(last - first) as i64, 3]))
                .unwrap();
            let local = search(&store, &Tensor::from_slice(&q).view([2, 3]), 7, 8).unwrap();
            for (m, l) in merged.iter_mut().zip(local) {
                m.merge(l.into_sorted_vec());
            }
        }
        let merged: Vec<Vec<Hit>> = merged.into_iter().map(TopK::into_sorted_vec).collect();
        assert_eq!(merged, whole);
    }

    #[test]
    fn gather_returns_rows_by_global_index() {
        let mut store = EmbeddingStore::new(2, Device::Cpu, None).unwrap();
        store.push(10, &Tensor::from_slice(&[1f32, 2., 3., 4.]).view([2, 2])).unwrap();
        let g = store.gather(&[11, 10]).unwrap();
        assert_eq!(Vec::<f32>::try_from(g.view([-1])).unwrap(), vec![3., 4., 1., 2.]);
        assert!(store.gather(&[3]).is_err());
    }
}
