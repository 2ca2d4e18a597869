//! Tailing files so that every line is read exactly once across rotation, truncation and
//! restarts.
//!
//! A file is tracked by its inode identity, not its path: a renamed file keeps being read
//! through its open descriptor until it has been quiet at its end for a grace period, while
//! the new file at the path is read from offset 0. A file shorter than what was read was
//! truncated (copytruncate) and is read again from 0. The file system is polled as the source
//! of truth; watcher events only cut the wait short.

use super::discover::PathSet;
use super::lines::LineSplitter;
use super::{Batch, Checkpoint, FileId, Fingerprint, LogLine, Progress};
use crate::config::{SourceConfig, StartAt};
use crate::metrics::Metrics;
use chrono::Utc;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Bytes of a file's head that identify it beside its inode.
const FINGERPRINT_BYTES: u64 = 256;
/// Most bytes read from one file per round, so one busy file cannot starve the others.
const READ_BUDGET: usize = 256 * 1024;
/// Size of one read call.
const CHUNK: usize = 64 * 1024;
/// How long a file that left its path is still read after its last growth.
const GONE_GRACE: Duration = Duration::from_secs(2);
/// Open descriptors kept at most; idle files beyond it are closed and reopened on growth.
const MAX_OPEN_FILES: usize = 256;
/// Longest wait between polls when no watcher event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// One tracked file.
struct Tracked {
    path: PathBuf,
    id: FileId,
    fingerprint: Fingerprint,
    file: Option<File>,
    splitter: LineSplitter,
    /// Size seen by the last discovery `stat`, to skip opening idle closed files.
    seen_len: u64,
    /// Set when the file is no longer at any watched path.
    gone_since: Option<Instant>,
    last_growth: Instant,
}

/// One configured file source and the files it tracks.
struct FileSource {
    name: Arc<str>,
    paths: PathSet,
    start_at: StartAt,
    max_line_bytes: usize,
    files: HashMap<FileId, Tracked>,
    /// True until the first scan of a source that has never been checkpointed: only then
    /// does `start_at: end` apply.
    first_sight: bool,
    warned_missing: bool,
}

/// Reads every file source on one dedicated thread (std I/O; the async runtime stays free).
pub struct FileTailer {
    sources: Vec<FileSource>,
    checkpoints: HashMap<FileId, Checkpoint>,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hashes the first `len` bytes of `file`; `None` if it has fewer.
fn fingerprint_of(file: &File, len: u64) -> Option<Fingerprint> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(Fingerprint {
        len,
        hash: fnv1a(&buf),
    })
}

fn id_of(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

impl FileTailer {
    /// Prepares the tailer for the file sources of the config (stdin sources are skipped).
    pub fn new(
        configs: &[SourceConfig],
        checkpoints: Vec<Checkpoint>,
        tx: mpsc::Sender<Batch>,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, String> {
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
                paths: PathSet::new(&files, &cfg.exclude)
                    .map_err(|e| format!("source {:?}: {e}", cfg.name))?,
                start_at: cfg.start_at,
                max_line_bytes: cfg.max_line_bytes,
                files: HashMap::new(),
                first_sight,
                warned_missing: false,
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

    /// Directories whose events should wake the tailer.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .sources
            .iter()
            .flat_map(|s| s.paths.watch_dirs())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Runs until shutdown or until the pipeline goes away. `wake` carries watcher events;
    /// `ready` is set once every source has been scanned.
    pub fn run(mut self, wake: std::sync::mpsc::Receiver<()>, ready: Arc<AtomicBool>) {
        let mut first = true;
        while !self.shutdown.load(Ordering::Relaxed) {
            for i in 0..self.sources.len() {
                self.discover(i);
            }
            if first {
                self.recover_orphans();
                ready.store(true, Ordering::Relaxed);
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
                match wake.recv_timeout(POLL_INTERVAL) {
                    Ok(()) => while wake.try_recv().is_ok() {},
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(POLL_INTERVAL)
                    }
                }
            }
        }
    }

    /// Matches what is on disk now against what is tracked.
    fn discover(&mut self, index: usize) {
        let source = &mut self.sources[index];
        let paths = source.paths.expand();
        if paths.is_empty() && !source.warned_missing {
            tracing::warn!(source = %source.name, "no file matches the source's paths yet; waiting for one to appear");
            source.warned_missing = true;
        }
        let mut present = HashMap::with_capacity(paths.len());
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            present.insert(id_of(&meta), (path, meta.len()));
        }
        for (id, (path, len)) in &present {
            if let Some(tracked) = source.files.get_mut(id) {
                tracked.seen_len = *len;
                if tracked.path != *path {
                    tracing::info!(source = %source.name, from = %tracked.path.display(), to = %path.display(), "tailed file renamed within the source");
                    tracked.path = path.clone();
                }
                tracked.gone_since = None;
                continue;
            }
            let Ok(file) = File::open(path) else { continue };
            let checkpoint = self.checkpoints.remove(id);
            let tracked = start_tracking(source, path, *id, *len, file, checkpoint, &self.metrics);
            source.files.insert(*id, tracked);
        }
        source.first_sight = false;
        for tracked in source.files.values_mut() {
            if !present.contains_key(&tracked.id) && tracked.gone_since.is_none() {
                tracing::info!(source = %source.name, path = %tracked.path.display(), "tailed file left its path (rotated or deleted); draining it");
                self.metrics
                    .file_rotations
                    .with_label_values(&[&source.name])
                    .inc();
                tracked.gone_since = Some(Instant::now());
                tracked.last_growth = Instant::now();
            }
        }
        self.metrics
            .files_watched
            .with_label_values(&[&source.name])
            .set(source.files.len() as i64);
    }

    /// Checkpointed files that are no longer at a watched path (rotated while the daemon was
    /// down) are found by inode in their old directory and read to their end.
    fn recover_orphans(&mut self) {
        let orphans: Vec<Checkpoint> = self.checkpoints.drain().map(|(_, c)| c).collect();
        for checkpoint in orphans {
            let Some(index) = self
                .sources
                .iter()
                .position(|s| *s.name == checkpoint.source)
            else {
                continue;
            };
            let found = find_by_id(Path::new(&checkpoint.path), checkpoint.id);
            let source = &mut self.sources[index];
            match found {
                Some((path, file, len)) => {
                    tracing::info!(source = %source.name, path = %path.display(), "reading the rest of a file rotated while logwarden was down");
                    let id = checkpoint.id;
                    let mut tracked = start_tracking(
                        source,
                        &path,
                        id,
                        len,
                        file,
                        Some(checkpoint),
                        &self.metrics,
                    );
                    tracked.gone_since = Some(Instant::now());
                    source.files.insert(id, tracked);
                }
                None => {
                    // Nothing left to read: forget the checkpoint.
                    let _ = self.tx.blocking_send(Batch {
                        lines: Vec::new(),
                        progress: Some(Progress::Done(checkpoint.id)),
                    });
                }
            }
        }
    }

    /// Reads new lines from every file of one source; files that left their path first.
    fn read_source(&mut self, index: usize) -> Result<bool, Closed> {
        let source = &mut self.sources[index];
        let mut ids: Vec<(bool, FileId)> = source
            .files
            .values()
            .map(|t| (t.gone_since.is_none(), t.id))
            .collect();
        ids.sort_unstable_by_key(|(present, id)| (*present, id.dev, id.ino));
        let mut progressed = false;
        for (_, id) in ids {
            let tracked = source.files.get_mut(&id).expect("listed above");
            let batch = read_file(
                source.name.clone(),
                source.max_line_bytes,
                tracked,
                &self.metrics,
            );
            let finished = tracked.gone_since.is_some_and(|_| {
                batch.lines.is_empty() && tracked.last_growth.elapsed() >= GONE_GRACE
            });
            if let Some(batch) = batch.into_batch(tracked, &source.name) {
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
                    })
                    .into_iter()
                    .collect();
                self.tx
                    .blocking_send(Batch {
                        lines,
                        progress: Some(Progress::Done(id)),
                    })
                    .map_err(|_| Closed)?;
            }
        }
        Ok(progressed)
    }

    /// Closes the least recently grown files when too many descriptors are open.
    fn limit_open_files(&mut self) {
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
        if open.len() <= MAX_OPEN_FILES {
            return;
        }
        open.sort_unstable_by_key(|(at, _, _)| *at);
        let excess = open.len() - MAX_OPEN_FILES;
        for (_, i, id) in open.into_iter().take(excess) {
            if let Some(t) = self.sources[i].files.get_mut(&id) {
                t.file = None;
            }
        }
    }
}

/// The pipeline went away: stop reading.
struct Closed;

fn start_tracking(
    source: &FileSource,
    path: &Path,
    id: FileId,
    len: u64,
    file: File,
    checkpoint: Option<Checkpoint>,
    metrics: &Metrics,
) -> Tracked {
    let head = len.min(FINGERPRINT_BYTES);
    let resumed = checkpoint.and_then(|c| {
        let matches = fingerprint_of(&file, c.fingerprint.len) == Some(c.fingerprint);
        matches.then_some(c)
    });
    let (offset, fingerprint) = match resumed {
        Some(c) if c.offset <= len => (c.offset, c.fingerprint),
        Some(c) => {
            tracing::warn!(source = %source.name, path = %path.display(), "file is shorter than its checkpoint (truncated while logwarden was down); reading it from the start");
            metrics
                .file_truncations
                .with_label_values(&[&source.name])
                .inc();
            (0, c.fingerprint)
        }
        None => {
            let offset = if source.first_sight && source.start_at == StartAt::End {
                len
            } else {
                0
            };
            (offset, fingerprint_of(&file, head).unwrap_or_default())
        }
    };
    Tracked {
        path: path.to_path_buf(),
        id,
        fingerprint,
        file: Some(file),
        splitter: LineSplitter::new(offset, source.max_line_bytes),
        seen_len: len,
        gone_since: None,
        last_growth: Instant::now(),
    }
}

/// Looks in the directory `near` lives in for the file with this identity.
fn find_by_id(near: &Path, id: FileId) -> Option<(PathBuf, File, u64)> {
    let dir = near.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
            && id_of(&meta) == id
        {
            let file = File::open(&path).ok()?;
            return Some((path, file, meta.len()));
        }
    }
    None
}

/// What one read of a file produced.
struct ReadResult {
    lines: Vec<LogLine>,
    moved: bool,
}

impl ReadResult {
    fn into_batch(self, tracked: &Tracked, source: &str) -> Option<Batch> {
        if self.lines.is_empty() && !self.moved {
            return None;
        }
        Some(Batch {
            lines: self.lines,
            progress: Some(Progress::At(Checkpoint {
                source: source.to_string(),
                path: tracked.path.to_string_lossy().into_owned(),
                id: tracked.id,
                fingerprint: tracked.fingerprint,
                offset: tracked.splitter.checkpoint(),
            })),
        })
    }
}

fn read_file(
    source: Arc<str>,
    max_line_bytes: usize,
    tracked: &mut Tracked,
    metrics: &Metrics,
) -> ReadResult {
    let mut result = ReadResult {
        lines: Vec::new(),
        moved: false,
    };
    if tracked.file.is_none() {
        if tracked.seen_len == tracked.splitter.next_offset() && tracked.gone_since.is_none() {
            return result;
        }
        tracked.file = reopen(tracked);
    }
    let Some(file) = &tracked.file else {
        return result;
    };
    let Ok(meta) = file.metadata() else {
        return result;
    };
    if meta.len() < tracked.splitter.next_offset() {
        tracing::warn!(source = %source, path = %tracked.path.display(), "file truncated; reading it from the start");
        metrics.file_truncations.with_label_values(&[&source]).inc();
        tracked.splitter = LineSplitter::new(0, max_line_bytes);
        tracked.fingerprint = Fingerprint::default();
        result.moved = true;
    }
    if tracked.fingerprint.len < FINGERPRINT_BYTES.min(meta.len())
        && let Some(fp) = fingerprint_of(file, FINGERPRINT_BYTES.min(meta.len()))
    {
        tracked.fingerprint = fp;
    }
    let path: Arc<str> = Arc::from(tracked.path.to_string_lossy().as_ref());
    let arrival = Utc::now();
    let mut buf = vec![0u8; CHUNK];
    let mut budget = READ_BUDGET;
    let mut truncated = 0u64;
    let mut bytes_read = 0u64;
    while budget > 0 {
        let want = budget.min(CHUNK);
        let n = match file.read_at(&mut buf[..want], tracked.splitter.next_offset()) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        budget -= n;
        bytes_read += n as u64;
        tracked.splitter.feed(&buf[..n], |line| {
            truncated += u64::from(line.truncated);
            result.lines.push(LogLine {
                source: source.clone(),
                path: path.clone(),
                offset: line.offset,
                bytes: line.bytes.to_vec(),
                arrival,
            });
        });
    }
    if bytes_read > 0 {
        tracked.last_growth = Instant::now();
        result.moved = true;
        metrics
            .bytes_read
            .with_label_values(&[&source])
            .inc_by(bytes_read);
    }
    metrics
        .lines_read
        .with_label_values(&[&source])
        .inc_by(result.lines.len() as u64);
    if truncated > 0 {
        metrics
            .lines_truncated
            .with_label_values(&[&source])
            .inc_by(truncated);
    }
    result
}

/// Reopens a file closed to save descriptors, at its path or, if it moved, by identity.
fn reopen(tracked: &Tracked) -> Option<File> {
    if let Ok(file) = File::open(&tracked.path)
        && file.metadata().is_ok_and(|m| id_of(&m) == tracked.id)
    {
        return Some(file);
    }
    find_by_id(&tracked.path, tracked.id).map(|(_, f, _)| f)
}
