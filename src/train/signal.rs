//! Preemption: SIGTERM (Slurm's preemption and time limit, `scancel`) and SIGUSR1 (`sbatch
//! --signal=USR1@120`, the conventional "checkpoint now") set a flag. The trainer polls it
//! once per step; ranks agree through the step's small all-reduce, so every rank finishes
//! the same step, the coordinator checkpoints, and all exit with [`PREEMPTED_EXIT_CODE`].
use std::sync::atomic::{AtomicI32, Ordering};

/// Exit code after a checkpoint on SIGTERM/SIGUSR1: EX_TEMPFAIL (sysexits.h), "try again
/// later". A Slurm script requeues on it: `[ $? -eq 75 ] && scontrol requeue $SLURM_JOB_ID`.
pub const PREEMPTED_EXIT_CODE: i32 = crate::error::exit_code::PREEMPTED as i32;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// The handlers, installed while this value lives: dropping it restores the default action,
/// so a SIGTERM after the step loop (during the end-of-run evaluation) ends the process
/// instead of being swallowed by a flag nobody polls any more.
#[must_use = "the handlers are removed when this is dropped"]
pub struct Handlers(());

impl Drop for Handlers {
    fn drop(&mut self) {
        for sig in [libc::SIGTERM, libc::SIGUSR1] {
            // SAFETY: restoring the default disposition of a signal.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Installs the handlers until the returned value is dropped. A second signal while
/// stopping changes nothing.
pub fn install() -> Handlers {
    for sig in [libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
    Handlers(())
}

/// The signal received since start, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A signal's name for logs and state.json.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}
