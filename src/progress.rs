//! Progress of long loops (encoding, search, decoding, training): a bar on a terminal; off a
//! terminal (a batch job's log, CI), one log line with done/total, rate and ETA at most every
//! [`LOG_EVERY`], so a log shows that a long step is alive and how far it is.
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often a progress line is logged when there is no terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// A bar over `len` items labelled `what`: drawn on a terminal, logged every [`LOG_EVERY`]
/// otherwise. An empty bar (`len` 0 or no label: ranks other than the coordinator) is hidden.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let terminal = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
    let target = if len == 0 || what.is_empty() {
        ProgressDrawTarget::hidden()
    } else if terminal {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like_with_hz(Box::new(LogLines::new(LOG_EVERY)), 1)
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A "terminal" that turns the bar's redraws into log lines, at most one per `every`.
#[derive(Debug)]
struct LogLines {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    fn new(every: Duration) -> Self {
        LogLines { every, last: Mutex::new(None) }
    }

    fn log(&self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let mut last = self.last.lock().expect("progress clock");
        if last.is_none_or(|t| t.elapsed() >= self.every) {
            *last = Some(Instant::now());
            tracing::info!("progress: {line}");
        }
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.log(s);
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.log(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}
