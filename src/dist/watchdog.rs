//! No hangs: a thread per rank watches the collective that rank is waiting in. A peer
//! that died is normally noticed by the launcher (mpirun/srun end the job and name the
//! rank); the watchdog is the backstop for a peer that is alive but never arrives (hung,
//! diverged control flow, exited cleanly too early). Past `GRDR_COLLECTIVE_TIMEOUT`
//! seconds (default 300; 0 = off) in one collective it prints which rank waited in which
//! collective and aborts the whole job.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::comm::World;

/// Seconds a rank may wait inside one collective before the job is aborted.
pub const DEFAULT_TIMEOUT_S: u64 = 300;

pub(crate) fn timeout_from_env() -> Option<Duration> {
    let secs = std::env::var("GRDR_COLLECTIVE_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(DEFAULT_TIMEOUT_S as f64);
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

#[derive(Default)]
struct State {
    /// The collective in progress: name, start, sequence number.
    current: Option<(&'static str, Instant, u64)>,
    entered: u64,
}

pub(crate) struct Watchdog {
    state: Arc<Mutex<State>>,
}

/// Marks the span of one collective; dropping it marks the rank idle again.
pub(crate) struct Guard<'a> {
    state: &'a Mutex<State>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.current = None;
        }
    }
}

impl Watchdog {
    /// Starts the watching thread; `abort` must end the whole job (it never returns).
    pub(crate) fn start(world: World, timeout: Option<Duration>, abort: fn(i32) -> !) -> Watchdog {
        let state = Arc::new(Mutex::new(State::default()));
        if let Some(timeout) = timeout {
            let watched = Arc::clone(&state);
            let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            std::thread::Builder::new()
                .name("grdr-watchdog".into())
                .spawn(move || loop {
                    std::thread::sleep(tick);
                    let late = {
                        let s = match watched.lock() {
                            Ok(s) => s,
                            Err(_) => return,
                        };
                        s.current.filter(|(_, t0, _)| t0.elapsed() > timeout)
                    };
                    if let Some((op, t0, seq)) = late {
                        eprintln!(
                            "grdr: {}: collective `{op}` (#{seq}) has waited {:.0} s for the other \
                             ranks (GRDR_COLLECTIVE_TIMEOUT={:.0} s): a rank died, hung or took a \
                             different path; aborting the job",
                            world.label(),
                            t0.elapsed().as_secs_f64(),
                            timeout.as_secs_f64()
                        );
                        abort(3);
                    }
                })
                .expect("spawn watchdog thread");
        }
        Watchdog { state }
    }

    pub(crate) fn enter(&self, op: &'static str) -> Guard<'_> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.entered += 1;
        let seq = s.entered;
        s.current = Some((op, Instant::now(), seq));
        Guard { state: &self.state }
    }

    /// Number of collectives entered so far (tests and stats).
    pub(crate) fn entered(&self) -> u64 {
        self.state.lock().map(|s| s.entered).unwrap_or(0)
    }
}
