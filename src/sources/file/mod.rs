//! Tailing files so that every line is read exactly once across rotation, truncation and
//! restarts.
//!
//! A file is tracked by its inode identity, not its path: a renamed file keeps being read
//! through its open descriptor until it has been quiet at its end for a grace period, while
//! the new file at the path is read from offset 0. A file shorter than what was read was
//! truncated: it is read again from 0, and if the truncation was logrotate's copytruncate,
//! the copy (recognised by its head) supplies the lines written between the last read and
//! the truncation. The file system is polled as the source of truth; watcher events only cut
//! the wait short, so a full inotify queue or an NFS mount degrades to polling, never to loss.
//!
//! This module holds the tailer's state and its loop; `scan` matches the disk against what is
//! tracked, `identity` tells files apart, `rotation` decides where a truncated, replaced or
//! copied file continues, `read` reads what a file gained, and `wake` waits between looks.

mod identity;
mod read;
mod rotation;
mod scan;
mod tracked;
mod wake;

use super::discover::PathSet;
use super::lines::LineSplitter;
use super::{Batch, Checkpoint, FileId, LogLine, Progress, SourceError};
use crate::base::ready::Ready;
use crate::base::shutdown::Listener;
use crate::config::SourceConfig;
use crate::metrics::Metrics;
use chrono::Utc;
use read::read_file;
use rotation::{COPY_WAIT, recover_truncated};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
pub use tracked::MAX_OPEN_FILES;
use tracked::{FileSource, checkpoint_of, publish_watched};
use wake::Wake;

/// How long a file that left its path is still read after its last growth.
const GONE_GRACE: Duration = Duration::from_secs(2);
/// Longest wait between polls when no watcher event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Reads every file source on one dedicated thread (std I/O; the async runtime stays free).
pub struct FileTailer {
    sources: Vec<FileSource>,
    /// Checkpoints loaded at start and not yet matched to a file.
    checkpoints: HashMap<FileId, Checkpoint>,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
    shutdown: Listener,
}

impl FileTailer {
    /// Prepares the tailer for the file sources of the config (stdin and network sources
    /// are read elsewhere).
    pub fn new(
        configs: &[SourceConfig],
        checkpoints: Vec<Checkpoint>,
        tx: mpsc::Sender<Batch>,
        metrics: Arc<Metrics>,
        shutdown: Listener,
    ) -> Result<Self, SourceError> {
        let mut sources = Vec::new();
        for cfg in configs {
            let files: Vec<PathBuf> = cfg
                .paths
                .iter()
                .filter(|p| p.as_os_str() != "-")
                .cloned()
                .collect();
            if files.is_empty() {
                continue;
            }
            let first_sight = !checkpoints.iter().any(|c| c.source == cfg.name);
            sources.push(FileSource {
                name: Arc::from(cfg.name.as_str()),
                paths: PathSet::new(&files, &cfg.exclude).map_err(|error| SourceError::Paths {
                    name: cfg.name.clone(),
                    error,
                })?,
                start_at: cfg.start_at,
                max_line_bytes: cfg.max_line_bytes,
                files: HashMap::new(),
                first_sight,
                warned_missing: false,
                truncated: Vec::new(),
                deferred: HashMap::new(),
            });
        }
        Ok(FileTailer {
            sources,
            checkpoints: checkpoints.into_iter().map(|c| (c.id, c)).collect(),
            tx,
            metrics,
            shutdown,
        })
    }

    /// Whether there is any file source to tail.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .sources
            .iter()
            .flat_map(|s| s.paths.watch_dirs())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Runs until shutdown or until the pipeline goes away; `ready` is set once every
    /// source has been scanned.
    pub fn run(mut self, ready: Ready) {
        let mut wake = Wake::new();
        let mut first = true;
        while !self.shutdown.is_shutdown() {
            wake.watch(&self.watch_dirs());
            for i in 0..self.sources.len() {
                self.discover(i);
            }
            if first {
                self.recover_orphans();
                ready.set();
                first = false;
            }
            let mut progressed = false;
            for i in 0..self.sources.len() {
                match self.read_source(i) {
                    Ok(p) => progressed |= p,
                    Err(Closed) => return,
                }
            }
            self.limit_open_files();
            if !progressed {
                wake.wait(POLL_INTERVAL);
            }
        }
    }

    /// Matches what is on disk now against what source `index` tracks (see [`scan`]).
    fn discover(&mut self, index: usize) {
        let open = self.open_files();
        scan::discover(
            &mut self.sources[index],
            &mut self.checkpoints,
            open,
            &self.metrics,
        );
    }

    /// Reads checkpointed files rotated away while the daemon was down (see [`scan`]); run
    /// once, after the first scan, so checkpoints of files still at their paths match first.
    fn recover_orphans(&mut self) {
        scan::recover_orphans(&mut self.sources, &mut self.checkpoints, &self.tx);
    }

    /// Reads new lines from every file of one source; files that left their path first.
    fn read_source(&mut self, index: usize) -> Result<bool, Closed> {
        let mut open = self.open_files();
        let source = &mut self.sources[index];
        let mut ids: Vec<(bool, FileId)> = source
            .files
            .values()
            .map(|t| (t.gone_since.is_none(), t.id))
            .collect();
        ids.sort_unstable_by_key(|(present, id)| (*present, id.dev, id.ino));
        let mut progressed = false;
        announce(source, &self.tx)?;
        for (_, id) in ids {
            let Some(tracked) = source.files.get_mut(&id) else {
                continue;
            };
            if let Some((_, since)) = tracked.copy_of {
                if since.elapsed() < COPY_WAIT {
                    continue;
                }
                // The original was never truncated: a plain copy; read only what it gains.
                tracked.copy_of = None;
                let len = tracked.seen_len;
                tracked.splitter = LineSplitter::new(len, source.max_line_bytes);
            }
            let was_open = tracked.file.is_some();
            let result = read_file(
                source.name.clone(),
                source.max_line_bytes,
                tracked,
                &self.metrics,
            );
            if !was_open && tracked.file.is_some() {
                // Reopened to read what it gained: beyond the cap, close it again at once.
                if open >= MAX_OPEN_FILES && tracked.gone_since.is_none() {
                    tracked.file = None;
                } else {
                    open += 1;
                }
            }
            let finished = tracked.gone_since.is_some()
                && result.lines.is_empty()
                && tracked.last_growth.elapsed() >= GONE_GRACE;
            let (batch, truncation) = result.into_batch(tracked, &source.name);
            if let Some(t) = truncation {
                // Where the copy continues must be stored before the truncated file's new
                // position, or a crash in between would read the copy from 0.
                recover_truncated(source, t);
                announce(source, &self.tx)?;
            }
            if let Some(batch) = batch {
                progressed = true;
                self.tx.blocking_send(batch).map_err(|_| Closed)?;
            }
            if finished {
                let mut tracked = source.files.remove(&id).expect("listed above");
                let lines = tracked
                    .splitter
                    .finish()
                    .map(|(offset, bytes, _)| LogLine {
                        source: source.name.clone(),
                        path: Arc::from(tracked.path.to_string_lossy().as_ref()),
                        offset,
                        bytes,
                        arrival: Utc::now(),
                        time: None,
                    })
                    .into_iter()
                    .collect();
                self.tx
                    .blocking_send(Batch {
                        lines,
                        progress: Some(Progress::Done(id)),
                    })
                    .map_err(|_| Closed)?;
                publish_watched(source, &self.metrics);
            }
        }
        Ok(progressed)
    }

    /// Closes the least recently grown files when too many descriptors are open.
    fn open_files(&self) -> usize {
        self.sources
            .iter()
            .flat_map(|s| s.files.values())
            .filter(|t| t.file.is_some())
            .count()
    }

    fn limit_open_files(&mut self) {
        let open_files = self.open_files();
        if open_files <= MAX_OPEN_FILES {
            return;
        }
        let mut open: Vec<(Instant, usize, FileId)> = self
            .sources
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.files
                    .values()
                    .filter(|t| t.file.is_some() && t.gone_since.is_none())
                    .map(move |t| (t.last_growth, i, t.id))
            })
            .collect();
        open.sort_unstable_by_key(|(at, _, _)| *at);
        let excess = open_files - MAX_OPEN_FILES;
        for (_, i, id) in open.into_iter().take(excess) {
            if let Some(t) = self.sources[i].files.get_mut(&id) {
                t.file = None;
            }
        }
    }
}

/// The pipeline went away: stop reading.
struct Closed;

/// Stores the position of every file whose position is not stored yet (new files, copies
/// just positioned), ahead of any line read after it.
fn announce(source: &mut FileSource, tx: &mpsc::Sender<Batch>) -> Result<(), Closed> {
    for tracked in source.files.values_mut().filter(|t| t.unsaved) {
        tracked.unsaved = false;
        tx.blocking_send(Batch {
            lines: Vec::new(),
            progress: Some(Progress::At(checkpoint_of(tracked, &source.name))),
        })
        .map_err(|_| Closed)?;
    }
    Ok(())
}

/// Real files in a temporary directory and the tailer's state built around them, shared by
/// the unit tests of the tailer's parts.
#[cfg(test)]
mod testing {
    use super::tracked::{Tracked, new_tracked};
    use super::*;
    use crate::config::StartAt;
    use std::fs::File;
    use std::io::Write;
    use std::path::Path;

    /// A source tailing `app.log` (and its rotated generations) in `dir` from the start.
    pub(super) fn source(dir: &Path) -> FileSource {
        FileSource {
            name: Arc::from("app"),
            paths: PathSet::new(&[dir.join("app.log")], &[]).unwrap(),
            start_at: StartAt::Beginning,
            max_line_bytes: 1024,
            files: HashMap::new(),
            first_sight: false,
            warned_missing: false,
            truncated: Vec::new(),
            deferred: HashMap::new(),
        }
    }

    /// Starts tracking the file at `path` at `offset`.
    pub(super) fn track(source: &FileSource, path: &Path, offset: u64) -> Tracked {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        let id = identity::id_of(&meta);
        new_tracked(source, path, id, meta.len(), Some(file), offset)
    }

    pub(super) fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// Numbered lines long enough that a few of them fill a fingerprint's head.
    pub(super) fn lines(from: usize, to: usize) -> String {
        (from..to)
            .map(|i| format!("line {i:03} {}\n", "x".repeat(100)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{append, lines};
    use super::tracked::cap_descriptors;
    use super::*;

    struct Harness {
        dir: tempfile::TempDir,
        tailer: FileTailer,
        rx: mpsc::Receiver<Batch>,
        /// Kept, not signalled: a dropped owner would stop the tailer.
        _shutdown: crate::base::shutdown::Shutdown,
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config: SourceConfig = serde_yaml::from_str(&format!(
                "{{name: app, paths: [{:?}], start_at: beginning}}",
                dir.path().join("app.log")
            ))
            .unwrap();
            let (tx, rx) = mpsc::channel(1024);
            let shutdown = crate::base::shutdown::Shutdown::new();
            let tailer = FileTailer::new(
                &[config],
                Vec::new(),
                tx,
                Arc::new(Metrics::new()),
                shutdown.listener(),
            )
            .unwrap();
            Harness {
                dir,
                tailer,
                rx,
                _shutdown: shutdown,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// One look and read of every source, as one turn of `run`; the lines it sent.
        fn round(&mut self) -> Vec<String> {
            for i in 0..self.tailer.sources.len() {
                self.tailer.discover(i);
            }
            for i in 0..self.tailer.sources.len() {
                assert!(self.tailer.read_source(i).is_ok(), "the receiver is alive");
            }
            let mut read = Vec::new();
            while let Ok(batch) = self.rx.try_recv() {
                read.extend(
                    batch
                        .lines
                        .into_iter()
                        .map(|l| String::from_utf8(l.bytes).unwrap()),
                );
            }
            read
        }

        fn rounds(&mut self, n: usize) -> Vec<String> {
            (0..n).flat_map(|_| self.round()).collect()
        }
    }

    fn expected(from: usize, to: usize) -> Vec<String> {
        lines(from, to).lines().map(str::to_string).collect()
    }

    fn sorted(mut lines: Vec<String>) -> Vec<String> {
        lines.sort();
        lines
    }

    #[test]
    fn a_file_renamed_away_is_drained_and_its_successor_read_from_the_start() {
        let mut h = Harness::new();
        let (log, rotated) = (h.path("app.log"), h.path("app.log.1"));
        append(&log, &lines(0, 3));
        assert_eq!(h.round(), expected(0, 3));
        append(&log, &lines(3, 4));
        std::fs::rename(&log, &rotated).unwrap();
        // Written by a writer still holding the old descriptor after the rename.
        append(&rotated, &lines(4, 5));
        // Long enough to fingerprint, so it is not held back as a copy still being written.
        append(&log, &lines(5, 8));
        assert_eq!(sorted(h.rounds(3)), expected(3, 8));
    }

    #[test]
    fn copytruncate_reads_the_lines_between_the_last_read_and_the_truncation_from_the_copy() {
        let mut h = Harness::new();
        let (log, copy) = (h.path("app.log"), h.path("app.log.1"));
        append(&log, &lines(0, 4));
        assert_eq!(h.round(), expected(0, 4));
        // Written after the last read, then copied away and truncated before the next look.
        append(&log, &lines(4, 6));
        std::fs::copy(&log, &copy).unwrap();
        std::fs::write(&log, lines(6, 7)).unwrap();
        assert_eq!(sorted(h.rounds(3)), expected(4, 7));
    }

    #[test]
    fn a_plain_copy_of_a_tailed_file_is_not_read_again() {
        let mut h = Harness::new();
        let (log, copy) = (h.path("app.log"), h.path("app.log.1"));
        append(&log, &lines(0, 4));
        assert_eq!(h.round(), expected(0, 4));
        std::fs::copy(&log, &copy).unwrap();
        append(&log, &lines(4, 5));
        assert_eq!(h.rounds(3), expected(4, 5));
    }

    #[test]
    fn every_tracked_file_is_checkpointed_before_any_of_its_lines() {
        let mut h = Harness::new();
        append(&h.path("app.log"), &lines(0, 2));
        for i in 0..h.tailer.sources.len() {
            h.tailer.discover(i);
            assert!(h.tailer.read_source(i).is_ok());
        }
        let first = h.rx.try_recv().unwrap();
        assert!(first.lines.is_empty(), "the position comes first");
        assert!(matches!(first.progress, Some(Progress::At(ref c)) if c.offset == 0));
        let second = h.rx.try_recv().unwrap();
        assert_eq!(second.lines.len(), 2);
    }

    #[test]
    fn beyond_the_descriptor_cap_a_new_file_is_tracked_without_a_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = testing::source(dir.path());
        let mut open = MAX_OPEN_FILES - 1;
        for name in ["a", "b"] {
            let path = dir.path().join(name);
            append(&path, "x\n");
            let tracked = cap_descriptors(testing::track(&source, &path, 0), &mut open);
            source.files.insert(tracked.id, tracked);
        }
        let open_now: Vec<bool> = source.files.values().map(|t| t.file.is_some()).collect();
        assert_eq!(open, MAX_OPEN_FILES);
        assert_eq!(open_now.iter().filter(|o| **o).count(), 1);
    }
}
