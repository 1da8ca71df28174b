//! Deterministic CPU parallelism over libtorch: units of work on worker threads with
//! libtorch single-threaded in each, read-only sharing of models with those workers, and the
//! intra-op thread count set for a scope and restored however the scope ends.
use tch::Device;

/// Sets libtorch's intra-op thread count of the calling thread for the guard's lifetime and
/// restores the previous count on drop — also when a worker panics and the panic unwinds
/// through the scope that set it.
pub struct IntraOpThreads {
    saved: i32,
}

impl IntraOpThreads {
    pub fn set(threads: i32) -> IntraOpThreads {
        let saved = tch::get_num_threads();
        tch::set_num_threads(threads);
        IntraOpThreads { saved }
    }
}

impl Drop for IntraOpThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.saved);
    }
}

/// Types that worker threads may share by reference for **no-grad forward passes only**:
/// models and search structures whose tensors nobody mutates while the workers run.
///
/// # Safety
/// tch marks `Tensor` `Send` but not `Sync` because it cannot know how a tensor is used.
/// Implement this only for types whose shared use is reading tensors in no-grad forward
/// passes (no autograd graph is built, nothing is written in place): libtorch runs such
/// concurrent reads of the same parameters safely. Every implementation names this trait's
/// contract beside it.
pub unsafe trait ForwardOnly {}

/// A [`ForwardOnly`] value shared read-only with worker threads.
pub struct Shared<'a, T: ForwardOnly + ?Sized>(pub &'a T);

// SAFETY: `T: ForwardOnly` promises that concurrent use is no-grad reads of its tensors, and
// `Shared` hands out shared references only.
unsafe impl<T: ForwardOnly + ?Sized> Sync for Shared<'_, T> {}

impl<'a, T: ForwardOnly + ?Sized> Shared<'a, T> {
    /// The shared value (a method, so closures capture the `Sync` wrapper, not its field).
    pub fn get(&self) -> &'a T {
        self.0
    }
}

/// Maps `f` over `units`, in order, as deterministic units of work: on the CPU each unit runs
/// on one of libtorch's intra-op thread count of workers with libtorch itself single-
/// threaded, so a unit's numbers depend only on the unit — never on how many threads or
/// ranks share the machine (a multi-threaded GEMM may split a reduction differently for 1
/// and 2 threads, and the last bit of a score decides ties). On CUDA units run in turn.
pub fn parallel_map<U: Send, R: Send>(device: Device, units: Vec<U>, f: impl Fn(U) -> R + Sync) -> Vec<R> {
    let threads = tch::get_num_threads().max(1) as usize;
    let workers = if device == Device::Cpu { threads.min(units.len()) } else { 1 };
    if workers <= 1 {
        // One worker: libtorch still single-threaded, for the same numbers as with many.
        let _threads = (device == Device::Cpu).then(|| IntraOpThreads::set(1));
        return units.into_iter().map(|u| tch::no_grad(|| f(u))).collect();
    }
    let n = units.len();
    let queue = std::sync::Mutex::new(units.into_iter().enumerate());
    let _threads = IntraOpThreads::set(1);
    let mut results: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    // OpenMP's thread count is per thread: set it in the worker itself.
                    tch::set_num_threads(1);
                    let mut mine = Vec::new();
                    loop {
                        let next = queue.lock().expect("work queue").next();
                        let Some((i, u)) = next else { break };
                        mine.push((i, tch::no_grad(|| f(u))));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker panicked")).collect()
    });
    results.sort_by_key(|r| r.0);
    debug_assert_eq!(results.len(), n);
    results.into_iter().map(|r| r.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_is_restored_after_a_panicking_scope() {
        let before = tch::get_num_threads();
        let r = std::panic::catch_unwind(|| {
            let _g = IntraOpThreads::set(1);
            panic!("worker failed");
        });
        assert!(r.is_err());
        assert_eq!(tch::get_num_threads(), before);
    }

    #[test]
    fn parallel_map_keeps_order() {
        let out = parallel_map(Device::Cpu, (0..50).collect(), |i: i32| i * 2);
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
    }
}
