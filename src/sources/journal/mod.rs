//! Reading the systemd journal exactly once across restarts, rotation and vacuum.
//!
//! Each journal source runs a supervised `journalctl --follow --output=export` child on its
//! own thread (the reasons for a child over libsystemd are in the README: no C library
//! linked in, no SIGBUS while journald rotates files on systemd < 255, and the same tool an
//! operator uses to check what the daemon sees). Entries become lines
//! `TIME HOST IDENTIFIER[PID]: MESSAGE` that carry the entry's own time.
//!
//! Position: every batch hands the pipeline the cursor of its last entry, which is stored in
//! the same atomic commit as the batch's effects. On start the source resumes with
//! `--cursor=SAVED`, which is inclusive, and drops the first entry only when it is the saved
//! one (`--after-cursor` silently skips an entry on systemd 252 when the saved entry's file
//! was vacuumed). When the first entry is another one, or journalctl refuses the cursor, the
//! saved entry is gone: reading goes on at the next entry (journalctl's own ordering, or by
//! time from the saved entry's timestamp) and the gap is counted and written to the audit
//! log with that position. `--follow` alone shows only the last 10 entries, so every child
//! is started with `--lines=all` or a position.
//!
//! This file is the restart loop; `selection` (which journal, readable?), `reading` (one
//! run's entries), `control` (stopping), `child` (the process) and `export` (the format)
//! hold the rest.

mod child;
mod control;
pub mod export;
mod reading;
mod selection;

pub use control::Control;
pub use selection::{Selection, Unreadable, probe, unreadable};

use super::{Batch, JournalGap, JournalPosition, LogLine, Progress};
use crate::base::health::Health;
use crate::config::{JournalConfig, SourceConfig, StartAt};
use crate::metrics::Metrics;
use child::{die_with_parent, spawn_stderr_logger};
use export::{ExportReader, OUTPUT_FIELDS};
use reading::{Closed, Reading};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The program run; found on `PATH`.
const JOURNALCTL: &str = "journalctl";
/// Most lines in one batch.
const MAX_BATCH: usize = 2048;
/// First wait before restarting a journalctl that ended.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between restarts: a journal that comes back (permissions fixed, journald
/// restarted) is read again within this long, without hammering one that does not.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: the next restart waits only [`MIN_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Where the next journalctl starts.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    /// The first entry (nothing read yet, or the journal was empty when first seen).
    Head,
    /// The journal's last entry: `start_at: end` on first sight, resolved before following.
    Tail,
    /// At a saved entry, inclusive: it is dropped when it comes first, else it is gone.
    Cursor { cursor: String, realtime_usec: u64 },
    /// By time (`--since`, inclusive), after journalctl refused a saved cursor; the gap is
    /// recorded with the first entry read.
    Since { realtime_usec: u64, gap: JournalGap },
}

/// How one run of journalctl ended.
struct RunEnd {
    /// Where the next run starts.
    next: Start,
    /// Whether any entry was handed to the pipeline.
    delivered: bool,
    /// The pipeline is gone: stop.
    closed: bool,
    status: Option<std::process::ExitStatus>,
    last_error: String,
}

/// One configured journal source: runs `journalctl --output=export` over its selection
/// and hands the entries on as lines, resuming from its stored position.
pub struct JournalSource {
    name: Arc<str>,
    selection: Selection,
    start_at: StartAt,
    max_line_bytes: usize,
    saved: Option<JournalPosition>,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    control: Arc<Control>,
}

impl JournalSource {
    /// The journal source `source` (whose `journal` settings are `journal`), resuming from
    /// `saved` (its stored position), stopped through `control`.
    pub fn new(
        source: &SourceConfig,
        journal: &JournalConfig,
        saved: Option<JournalPosition>,
        tx: mpsc::Sender<Batch>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        control: Arc<Control>,
    ) -> Self {
        let name = source.name.as_str();
        // Present at 0, so a gap shows as a change rather than a new series.
        metrics.journal_gaps.with_label_values(&[name]);
        metrics.lines_read.with_label_values(&[name]);
        JournalSource {
            name: Arc::from(name),
            selection: Selection::new(journal),
            start_at: source.start_at,
            max_line_bytes: source.max_line_bytes.max(1),
            saved,
            tx,
            metrics,
            health,
            control,
        }
    }

    /// Where reading starts: the stored position wins; on first sight `start_at` decides.
    fn first_start(&self) -> Start {
        match &self.saved {
            Some(JournalPosition {
                cursor: Some(cursor),
                realtime_usec,
                ..
            }) => Start::Cursor {
                cursor: cursor.clone(),
                realtime_usec: realtime_usec.unwrap_or(0),
            },
            Some(_) => Start::Head,
            None if self.start_at == StartAt::End => Start::Tail,
            None => Start::Head,
        }
    }

    /// Reads until stopped or until the pipeline goes away; `ready` is set once the
    /// journal has been looked at (readable or not: `/readyz` names a problem).
    pub fn run(self, ready: crate::base::ready::Ready) {
        let mut start = self.first_start();
        let mut backoff = MIN_BACKOFF;
        let mut reported: Option<Unreadable> = None;
        while !self.control.stopped() {
            let problem = probe(&self.selection).err();
            if problem != reported {
                match &problem {
                    Some(p) => {
                        tracing::warn!(source = %self.name, problem = %p.reason, "journal cannot be read")
                    }
                    None if reported.is_some() => {
                        tracing::info!(source = %self.name, "journal readable again")
                    }
                    None => {}
                }
                let reason = problem.as_ref().map(|p| p.reason.clone());
                self.health.source_problem(&self.name, reason);
                reported = problem.clone();
            }
            if start == Start::Tail {
                // A journal that refuses us would look empty: its end is found only once
                // it can be read (an empty one has no end to skip to).
                let refused = problem.as_ref().is_some_and(|p| !p.no_files);
                let resolved = match refused {
                    true => Ok(None),
                    false => self.tail(),
                };
                match resolved {
                    Ok(Some(resolved)) => start = resolved,
                    Ok(None) => {
                        ready.set();
                        if !self.control.sleep(backoff) {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    Err(Closed) => return,
                }
            }
            // Ready only once the end is found: with `start_at: end`, an entry written
            // after the daemon reported ready is new, not part of the skipped backlog.
            ready.set();
            let started = Instant::now();
            let end = self.follow(start.clone());
            if end.closed || self.control.stopped() {
                return;
            }
            if end.delivered {
                reported = None;
                self.health.source_problem(&self.name, None);
            }
            start = end.next;
            if end.delivered || started.elapsed() >= HEALTHY_RUN {
                backoff = MIN_BACKOFF;
            }
            self.metrics
                .journal_restarts
                .with_label_values(&[&self.name])
                .inc();
            let status = end.status.map_or("unknown".into(), |s| s.to_string());
            tracing::warn!(source = %self.name, %status, error = %end.last_error, retry_in = ?backoff, "journalctl ended; restarting");
            if !self.control.sleep(backoff) {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// `start_at: end` on first sight: stores the last entry's position (or, for an empty
    /// journal, that everything is new) before following, so a restart does not skip what
    /// was written meanwhile. `Ok(None)` when journalctl failed (tried again later).
    fn tail(&self) -> Result<Option<Start>, Closed> {
        let out = self
            .selection
            .command(&[
                "--lines=1".into(),
                "--output=export".into(),
                format!("--output-fields={OUTPUT_FIELDS}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        let out = match out {
            Ok(out) if out.status.success() => out,
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                tracing::warn!(source = %self.name, error = %err.trim(), "cannot find the journal's end");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "cannot run {JOURNALCTL}");
                return Ok(None);
            }
        };
        let mut reader = ExportReader::new(&out.stdout[..], 0);
        let last = reader.next_entry().ok().flatten();
        let (start, position) = match last.as_ref().and_then(|e| e.cursor.clone()) {
            Some(cursor) => {
                let realtime_usec = last.as_ref().and_then(|e| e.realtime_usec);
                let start = Start::Cursor {
                    cursor: cursor.clone(),
                    realtime_usec: realtime_usec.unwrap_or(0),
                };
                (start, self.position(Some(cursor), realtime_usec))
            }
            None => (Start::Head, self.position(None, None)),
        };
        tracing::info!(source = %self.name, "journal first seen: reading entries written from now on");
        self.send(Vec::new(), position, None)?;
        Ok(Some(start))
    }

    /// Counts a gap as soon as it is found; its audit record goes with the position after it.
    fn count_gap(&self, gap: &JournalGap) {
        tracing::warn!(source = %self.name, saved = %gap.saved_cursor, resumed = ?gap.resumed_cursor, reason = %gap.reason, "journal position lost; resuming at the next entry");
        self.metrics
            .journal_gaps
            .with_label_values(&[&self.name])
            .inc();
    }

    /// The position of this source at an entry.
    fn position(&self, cursor: Option<String>, realtime_usec: Option<u64>) -> JournalPosition {
        JournalPosition {
            source: self.name.to_string(),
            cursor,
            realtime_usec,
        }
    }

    /// Hands lines and the position they reach (and a gap found before them) over.
    fn send(
        &self,
        lines: Vec<LogLine>,
        position: JournalPosition,
        gap: Option<JournalGap>,
    ) -> Result<(), Closed> {
        self.tx
            .blocking_send(Batch {
                lines,
                progress: Some(Progress::Journal { position, gap }),
            })
            .map_err(|_| Closed)
    }

    /// One run of `journalctl --follow` from `start`, until its output ends.
    fn follow(&self, start: Start) -> RunEnd {
        let mut args = vec![
            "--follow".to_string(),
            "--lines=all".to_string(),
            "--all".to_string(),
            "--output=export".to_string(),
            format!("--output-fields={OUTPUT_FIELDS}"),
        ];
        match &start {
            Start::Cursor { cursor, .. } => args.push(format!("--cursor={cursor}")),
            Start::Since { realtime_usec, .. } => args.push(format!(
                "--since=@{}.{:06}",
                realtime_usec / 1_000_000,
                realtime_usec % 1_000_000
            )),
            Start::Head | Start::Tail => {}
        }
        let mut end = RunEnd {
            next: start.clone(),
            delivered: false,
            closed: false,
            status: None,
            last_error: String::new(),
        };
        let mut cmd = self.selection.command(&args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                end.last_error = format!("cannot run {JOURNALCTL}: {e}");
                return end;
            }
        };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return end;
        };
        if !self.control.adopt(child) {
            return end;
        }
        tracing::info!(source = %self.name, journal = %self.selection.path(), start = ?start, "following the journal");
        let last_error = Arc::new(Mutex::new(String::new()));
        let logger = spawn_stderr_logger(self.name.clone(), stderr, last_error.clone());
        let mut reading = Reading {
            source: self,
            start,
            first: true,
            lines: Vec::new(),
            delivered: false,
            position: None,
            gap: None,
            path: Arc::from(self.selection.path()),
        };
        let result = reading.read_all(stdout);
        end.delivered = reading.delivered;
        end.closed = result.is_err();
        end.status = self.control.reap();
        if let Some(logger) = logger {
            let _ = logger.join();
        }
        end.last_error = last_error.lock().expect("stderr").clone();
        end.next = reading.next_start(&end.last_error);
        end
    }
}
