//! Panics of third-party decoders turned into errors. Some libraries panic on damaged input
//! instead of returning an error (the parquet crate's footer decoder does, on a mangled
//! Thrift footer: found by `tests/fuzz_readers.rs`). grdr's promise is one clear error and
//! the README's exit code, never a panic: readers of user files run such calls through
//! [`catch`], which turns a panic into the error its caller builds. While a guarded call runs,
//! the panic hooks (the default one and the multi-rank abort hook of `dist::mpi`) stay quiet,
//! so a recovered panic neither prints a backtrace nor aborts the job.
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside [`catch`] (panic hooks consult it).
pub fn is_guarded() -> bool {
    GUARDED.with(Cell::get)
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !is_guarded() {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it becomes `on_panic(message)`.
pub fn catch<T>(
    f: impl FnOnce() -> crate::Result<T>,
    on_panic: impl FnOnce(String) -> crate::Error,
) -> crate::Result<T> {
    install_quiet_hook();
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder panicked".into());
        Err(on_panic(message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_callers_error() {
        let r: crate::Result<()> = catch(|| panic!("bad footer"), |m| crate::Error::usage("file", m));
        assert!(r.unwrap_err().to_string().contains("bad footer"));
        assert!(!is_guarded());
        assert_eq!(catch(|| Ok(3), |m| crate::Error::usage("x", m)).unwrap(), 3);
    }
}
