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

pub mod export;

use super::{Batch, JournalGap, JournalPosition, LogLine, Progress};
use crate::config::{JournalConfig, SourceConfig, StartAt};
use crate::diag::{Diagnostic, YamlLocator};
use crate::health::Health;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use export::{Entry, ExportReader, OUTPUT_FIELDS};
use std::io::{BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
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
/// Longest stderr line logged, so a child printing without newlines cannot grow the
/// daemon's memory or flood its log.
const MAX_STDERR_LINE: usize = 1024;

/// Which journal to read and which entries of it: the journalctl arguments every run of a
/// source shares.
#[derive(Debug, Clone)]
pub struct Selection {
    config: JournalConfig,
}

impl Selection {
    /// The selection of a source's `journal:` settings.
    pub fn new(config: &JournalConfig) -> Self {
        Selection {
            config: config.clone(),
        }
    }

    /// A journalctl command for this selection; `extra` goes before the matches.
    fn command(&self, extra: &[String]) -> Command {
        let mut cmd = Command::new(JOURNALCTL);
        if let Some(dir) = &self.config.directory {
            cmd.arg("--directory").arg(dir);
        }
        if let Some(ns) = &self.config.namespace {
            cmd.arg(format!("--namespace={ns}"));
        }
        cmd.arg("--no-pager").args(extra).args(&self.config.matches);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The `path` of this selection's lines (and their evidence).
    fn path(&self) -> String {
        match (&self.config.directory, &self.config.namespace) {
            (Some(dir), _) => format!("journal:{}", dir.display()),
            (None, Some(ns)) => format!("journal:{ns}"),
            (None, None) => "journal".to_string(),
        }
    }

    /// This selection's journal, in words.
    fn describe(&self) -> String {
        match (&self.config.directory, &self.config.namespace) {
            (Some(dir), _) => format!("the journal directory {}", dir.display()),
            (None, Some(ns)) => format!("the journal namespace {ns}"),
            (None, None) => "the system journal".to_string(),
        }
    }
}

/// Why a journal cannot be read, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// What is wrong and what to do.
    pub reason: String,
    /// There are no journal files at all (yet): an empty journal, not a refused one.
    pub no_files: bool,
}

/// Whether the journal of a selection can be read. Used by `check` and by the source
/// before each start (shown by `/readyz`).
pub fn probe(selection: &Selection) -> Result<(), Unreadable> {
    probe_reason(selection).map_err(|problem| Unreadable {
        no_files: matches!(problem, ProbeFailure::NoFiles { .. }),
        reason: problem.to_string(),
    })
}

/// What running journalctl for one entry showed about the journal.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("{cmd} not found on PATH (it comes with systemd)", cmd = JOURNALCTL)]
    NotInstalled,
    #[error("cannot run {cmd}: {0}", cmd = JOURNALCTL)]
    CannotRun(std::io::Error),
    #[error(
        "no permission to read the journal: run logwarden in group systemd-journal or adm (SupplementaryGroups=systemd-journal adm)"
    )]
    Permission,
    /// journalctl's last line of stderr, which says why.
    #[error("{cmd} failed ({status}): {reason}", cmd = JOURNALCTL)]
    Failed {
        status: std::process::ExitStatus,
        reason: String,
    },
    /// An empty journal, not a refused one: the source waits instead of failing.
    #[error("no journal files found in {place} (not written yet, or journald has Storage=none)")]
    NoFiles { place: String },
}

fn probe_reason(selection: &Selection) -> Result<(), ProbeFailure> {
    let out = selection
        .command(&["--lines=1".into(), "--output=short".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ProbeFailure::NotInstalled,
            _ => ProbeFailure::CannotRun(e),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let permission = stderr.contains("insufficient permissions")
        || stderr.contains("not seeing messages from other users");
    if permission {
        return Err(ProbeFailure::Permission);
    }
    if !out.status.success() {
        let reason = stderr.trim().lines().last().unwrap_or("").to_string();
        return Err(ProbeFailure::Failed {
            status: out.status,
            reason,
        });
    }
    if stderr.contains("No journal files were found") {
        return Err(ProbeFailure::NoFiles {
            place: selection.describe(),
        });
    }
    Ok(())
}

/// A warning for each journal source of `config` whose journal cannot be read (`check`):
/// the daemon would run, but blind for that source. Each points at the source's `journal:`.
pub fn unreadable(config: &crate::config::Config) -> Vec<Diagnostic> {
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    let loc = YamlLocator::new(&text);
    config
        .sources
        .iter()
        .enumerate()
        .filter_map(|(i, source)| {
            let journal = source.journal.as_ref()?;
            let problem = probe(&Selection::new(journal)).err()?;
            Some(Diagnostic::at(
                &config.path,
                loc.key_in_block(loc.item("sources", i), "journal"),
                format!(
                    "source {:?}: the journal cannot be read: {}",
                    source.name, problem.reason
                ),
            ))
        })
        .collect()
}

/// Stops a source's thread: ends its running journalctl and cuts its waits short.
#[derive(Default)]
pub struct Control {
    state: Mutex<ControlState>,
    wake: Condvar,
}

#[derive(Default)]
struct ControlState {
    stopped: bool,
    child: Option<Child>,
}

impl Control {
    /// Asks the source to stop; its thread returns once the child has ended.
    pub fn stop(&self) {
        let mut state = self.state.lock().expect("journal control");
        state.stopped = true;
        if let Some(child) = state.child.as_mut() {
            let _ = child.kill();
        }
        self.wake.notify_all();
    }

    fn stopped(&self) -> bool {
        self.state.lock().expect("journal control").stopped
    }

    /// Hands over the running child so [`Control::stop`] can end it; `false` (child killed)
    /// when stopping already.
    fn adopt(&self, mut child: Child) -> bool {
        let mut state = self.state.lock().expect("journal control");
        if state.stopped {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        state.child = Some(child);
        true
    }

    /// Takes back the child once reading has ended, ends it if it still runs (reading can
    /// stop on unreadable output or a closed pipeline), and reaps it.
    fn reap(&self) -> Option<std::process::ExitStatus> {
        let child = self.state.lock().expect("journal control").child.take();
        child.and_then(|mut c| match c.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                let _ = c.kill();
                c.wait().ok()
            }
        })
    }

    /// Waits `wait` unless stopped first; `false` when stopped.
    fn sleep(&self, wait: Duration) -> bool {
        let state = self.state.lock().expect("journal control");
        let (state, _) = self
            .wake
            .wait_timeout_while(state, wait, |s| !s.stopped)
            .expect("journal control");
        !state.stopped
    }
}

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

/// One configured journal source.
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
    pub fn run(self, ready: crate::ready::Ready) {
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
            ready.set();
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
                        if !self.control.sleep(backoff) {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    Err(Closed) => return,
                }
            }
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

    fn position(&self, cursor: Option<String>, realtime_usec: Option<u64>) -> JournalPosition {
        JournalPosition {
            source: self.name.to_string(),
            cursor,
            realtime_usec,
        }
    }

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

/// The pipeline went away.
struct Closed;

/// The state of one run's reading: where it stands and the batch being filled.
struct Reading<'a> {
    source: &'a JournalSource,
    start: Start,
    /// The next entry is the first of this run.
    first: bool,
    lines: Vec<LogLine>,
    /// Whether any line went to the pipeline.
    delivered: bool,
    /// Position after the last entry read in this run.
    position: Option<JournalPosition>,
    /// A gap found and not yet handed over.
    gap: Option<JournalGap>,
    path: Arc<str>,
}

impl Reading<'_> {
    fn read_all(&mut self, stdout: std::process::ChildStdout) -> Result<(), Closed> {
        use std::os::fd::AsRawFd;
        let fd = stdout.as_raw_fd();
        let mut reader = ExportReader::new(stdout, self.source.max_line_bytes);
        loop {
            match reader.next_entry() {
                Ok(Some(entry)) => self.take(entry),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(source = %self.source.name, error = %e, "unreadable journalctl output; restarting it");
                    break;
                }
            }
            // A batch goes as soon as journalctl has nothing more to say right now (live
            // entries wait for nothing), or when full (a backlog goes in large batches).
            if self.lines.len() >= MAX_BATCH || (!reader.has_buffered() && !readable(fd)) {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Decides what a read entry is: the saved entry again (dropped), the first after a
    /// gap, or the next line.
    fn take(&mut self, entry: Entry) {
        let first = std::mem::replace(&mut self.first, false);
        match (&self.start, first) {
            (Start::Cursor { cursor, .. }, true) if entry.cursor.as_deref() == Some(cursor) => {
                return;
            }
            (
                Start::Cursor {
                    cursor,
                    realtime_usec,
                },
                true,
            ) => {
                let gap = JournalGap {
                    saved_cursor: cursor.clone(),
                    saved_time: usec_time(*realtime_usec),
                    resumed_cursor: entry.cursor.clone(),
                    resumed_time: entry.time(),
                    reason:
                        "the saved entry is no longer in the journal (vacuumed or rotated away)"
                            .into(),
                };
                self.source.count_gap(&gap);
                self.gap = Some(gap);
            }
            (Start::Since { gap, .. }, true) => {
                let mut gap = gap.clone();
                gap.resumed_cursor = entry.cursor.clone();
                gap.resumed_time = entry.time();
                self.gap = Some(gap);
            }
            _ => {}
        }
        let arrival = Utc::now();
        let (bytes, cut) = entry.line(arrival, self.source.max_line_bytes);
        if cut {
            self.source
                .metrics
                .lines_truncated
                .with_label_values(&[&self.source.name])
                .inc();
        }
        self.lines.push(LogLine {
            source: self.source.name.clone(),
            path: self.path.clone(),
            offset: 0,
            bytes,
            arrival,
            time: Some(entry.time().unwrap_or(arrival)),
        });
        if let Some(cursor) = entry.cursor {
            self.position = Some(self.source.position(Some(cursor), entry.realtime_usec));
        }
    }

    /// Hands the lines read so far to the pipeline with the position they reach.
    fn flush(&mut self) -> Result<(), Closed> {
        if self.lines.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.lines);
        self.delivered = true;
        self.source
            .metrics
            .lines_read
            .with_label_values(&[&self.source.name])
            .inc_by(lines.len() as u64);
        match &self.position {
            Some(position) => self.source.send(lines, position.clone(), self.gap.take()),
            // Entries without a cursor (never seen from journalctl) move no position.
            None => self
                .source
                .tx
                .blocking_send(Batch {
                    lines,
                    progress: None,
                })
                .map_err(|_| Closed),
        }
    }

    /// Where the next run starts: after the last entry read; else, when journalctl
    /// refused the saved cursor, by time from the saved entry; else where this run did.
    fn next_start(&mut self, last_error: &str) -> Start {
        if let Some(JournalPosition {
            cursor: Some(cursor),
            realtime_usec,
            ..
        }) = &self.position
        {
            return Start::Cursor {
                cursor: cursor.clone(),
                realtime_usec: realtime_usec.unwrap_or(0),
            };
        }
        match &self.start {
            Start::Cursor {
                cursor,
                realtime_usec,
            } if self.first && last_error.contains("cursor") => {
                let gap = JournalGap {
                    saved_cursor: cursor.clone(),
                    saved_time: usec_time(*realtime_usec),
                    resumed_cursor: None,
                    resumed_time: None,
                    reason: format!("journalctl refused the saved cursor: {last_error}"),
                };
                self.source.count_gap(&gap);
                // The saved entry itself was read: start just after its time (an entry
                // logged in the same microsecond after it is taken as read too).
                Start::Since {
                    realtime_usec: realtime_usec.saturating_add(1),
                    gap,
                }
            }
            other => other.clone(),
        }
    }
}

/// Whether reading `fd` would return at once (data waiting, or its end).
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut poll, 1, 0) > 0 }
}

fn usec_time(usec: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(i64::try_from(usec).ok()?)
}

/// Logs the child's stderr as warnings, keeping its last line for the restart message.
fn spawn_stderr_logger(
    source: Arc<str>,
    stderr: impl Read + Send + 'static,
    last: Arc<Mutex<String>>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("journalctl-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match export::read_bounded(&mut reader, b"\n", MAX_STDERR_LINE, &mut line) {
                    Ok(Some(_)) => {}
                    Ok(None) if !line.is_empty() => {}
                    _ => return,
                }
                line.truncate(MAX_STDERR_LINE);
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if !text.is_empty() {
                    tracing::warn!(source = %source, "journalctl: {text}");
                    *last.lock().expect("stderr") = text;
                }
            }
        })
        .ok()
}

/// Makes the child end with the daemon, and only through it: a SIGKILLed daemon must not
/// leave a journalctl behind waiting for entries, and a Ctrl-C in a terminal goes to the
/// daemon alone, which then stops its children after the entries already read.
fn die_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid) are made.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}
