//! A one-line progress indicator on stderr for long replays.
//!
//! Shown only when stderr is a terminal (never in scripts, CI logs or pipes) and only once
//! a run has taken long enough for a person to wonder, so small inputs print nothing.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Quiet period before the first update: short runs never show it.
const FIRST: Duration = Duration::from_millis(500);
/// Time between updates.
const EVERY: Duration = Duration::from_millis(250);

/// Progress through the input bytes, drawn on stderr as one line that updates itself;
/// silent when stderr is not a terminal or the run ends quickly.
pub struct Progress {
    enabled: bool,
    read: Arc<AtomicU64>,
    total: u64,
    started: Instant,
    next: Instant,
    shown: bool,
}

impl Progress {
    /// Progress over `total` bytes, counted by `read`.
    pub fn new(read: Arc<AtomicU64>, total: u64) -> Self {
        let started = Instant::now();
        Progress {
            enabled: std::io::stderr().is_terminal(),
            read,
            total,
            started,
            next: started + FIRST,
            shown: false,
        }
    }

    /// Called now and then with the lines done; redraws when it is time.
    pub fn tick(&mut self, lines: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + EVERY;
        let percent = if self.total == 0 {
            100.0
        } else {
            (self.read.load(Ordering::Relaxed) as f64 * 100.0 / self.total as f64).min(100.0)
        };
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\rreplay: {percent:5.1}%  {lines} lines  {:.0} lines/s ",
            lines as f64 / seconds
        );
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    /// Clears the line so the report starts on a clean terminal line.
    pub fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.shown = false;
        }
    }
}
