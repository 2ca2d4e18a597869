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

use super::discover::PathSet;
use super::lines::LineSplitter;
use super::watch::Wakeups;
use super::{Batch, Checkpoint, FileId, Fingerprint, LogLine, Progress};
use crate::config::{SourceConfig, StartAt};
use crate::metrics::Metrics;
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Bytes of a file's head that identify it beside its inode. A file's fingerprint covers the
/// part of its head already read (or skipped), up to this many bytes: a file that starts with
/// exactly those bytes is a copy of it, and a file whose head no longer has them was rewritten.
const FINGERPRINT_BYTES: u64 = 256;
/// Most bytes read from one file per round, so one busy file cannot starve the others.
const READ_BUDGET: usize = 256 * 1024;
/// Size of one read call.
const CHUNK: usize = 64 * 1024;
/// How long a file that left its path is still read after its last growth.
const GONE_GRACE: Duration = Duration::from_secs(2);
/// Open descriptors kept at most; idle files beyond it are closed and reopened on growth.
pub const MAX_OPEN_FILES: usize = 256;
/// Longest wait between polls when no watcher event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long a new file too short to fingerprint waits (it may be a copy still being
/// written) before it is read as a new file.
const DEFER_SHORT: Duration = Duration::from_millis(500);
/// How long a copy waits, unread, for its original to be truncated (copytruncate) before it
/// is taken for a plain copy and only its additions are read.
const COPY_WAIT: Duration = Duration::from_secs(10);
/// How long a truncated file's last read position is kept for a copy to turn up.
const TRUNCATION_MEMORY: Duration = Duration::from_secs(30);

/// One tracked file.
struct Tracked {
    path: PathBuf,
    id: FileId,
    fingerprint: Fingerprint,
    file: Option<File>,
    splitter: LineSplitter,
    /// Size seen by the last discovery `stat`, to skip opening idle closed files.
    seen_len: u64,
    /// Modification time seen last: a file rewritten to exactly the size already read
    /// shows up only here.
    seen_mtime: Option<std::time::SystemTime>,
    /// Modification time when the file was last read.
    read_mtime: Option<std::time::SystemTime>,
    /// Set when the file is no longer at any watched path.
    gone_since: Option<Instant>,
    last_growth: Instant,
    /// Set while this file looks like a copy of another tracked (or checkpointed) file, with
    /// when that was seen: it is not read, and is rewound to where the original was read up
    /// to if the original turns out truncated.
    copy_of: Option<(FileId, Instant)>,
    /// Its position has not been stored yet: every tracked file is checkpointed at once, so
    /// a restart never takes a file it already knew for a new one.
    unsaved: bool,
    /// Whether any line of it has been read since tracking began (a copy that has not can
    /// still be rewound).
    read_any: bool,
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
    /// Truncated files whose copy has not been found yet.
    truncated: Vec<(Truncated, Instant)>,
    /// New files too short to fingerprint, by when they were first seen.
    deferred: HashMap<FileId, Instant>,
}

/// Reads every file source on one dedicated thread (std I/O; the async runtime stays free).
pub struct FileTailer {
    sources: Vec<FileSource>,
    /// Checkpoints loaded at start and not yet matched to a file.
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

/// Hashes the first `len` bytes of `file`; `None` if it has fewer. Nothing read is the
/// default (empty) fingerprint, the same value a reset stores, so the two always compare
/// equal.
fn fingerprint_of(file: &File, len: u64) -> Option<Fingerprint> {
    if len == 0 {
        return Some(Fingerprint::default());
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(Fingerprint {
        len,
        hash: fnv1a(&buf),
    })
}

/// Up to [`FINGERPRINT_BYTES`] of a file's head.
fn head_bytes(file: &File) -> Vec<u8> {
    let mut buf = vec![0u8; FINGERPRINT_BYTES as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    buf.truncate(filled);
    buf
}

fn id_of(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// A file found truncated: what had been read of it, to find the rest in its copy.
#[derive(Clone)]
struct Truncated {
    id: FileId,
    dir: PathBuf,
    fingerprint: Fingerprint,
    checkpoint: u64,
}

impl FileTailer {
    /// Prepares the tailer for the file sources of the config (stdin and network sources
    /// are read elsewhere).
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
    pub fn run(mut self, ready: Arc<AtomicBool>) {
        let (wake_tx, wake) = std::sync::mpsc::sync_channel(1);
        // A full channel already holds a wake-up: one is as good as many.
        let mut watcher = Wakeups::new(move || {
            let _ = wake_tx.try_send(());
        });
        let mut first = true;
        while !self.shutdown.load(Ordering::Relaxed) {
            watcher.watch(&self.watch_dirs());
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

    /// Matches what is on disk now against what is tracked: first the files already known
    /// (tracked, or checkpointed by an earlier run), then new ones, which may turn out to be
    /// copies of known files.
    fn discover(&mut self, index: usize) {
        let found = self.sources[index].paths.expand();
        let mut open = self.open_files();
        let source = &mut self.sources[index];
        if found.is_empty() && !source.warned_missing {
            tracing::warn!(source = %source.name, "no file matches the source's paths yet; waiting for one to appear");
            source.warned_missing = true;
        }
        let mut present: HashMap<FileId, (PathBuf, u64, bool)> =
            HashMap::with_capacity(found.len());
        let mut mtimes = HashMap::with_capacity(found.len());
        let mut order = Vec::with_capacity(found.len());
        for f in found {
            if let Ok(meta) = std::fs::metadata(&f.path) {
                let id = id_of(&meta);
                mtimes.insert(id, meta.modified().ok());
                if present
                    .insert(id, (f.path, meta.len(), f.rotated))
                    .is_none()
                {
                    order.push(id);
                }
            }
        }
        let mut truncations = Vec::new();
        let mut unknown = Vec::new();
        for id in &order {
            let (path, len, _) = &present[id];
            if let Some(tracked) = source.files.get_mut(id) {
                tracked.seen_len = *len;
                tracked.seen_mtime = mtimes[id];
                if tracked.path != *path {
                    tracing::info!(source = %source.name, from = %tracked.path.display(), to = %path.display(), "tailed file renamed");
                    tracked.path = path.clone();
                }
                tracked.gone_since = None;
            } else if let Some(checkpoint) = self.checkpoints.remove(id) {
                let Ok(file) = File::open(path) else { continue };
                let (tracked, truncated) =
                    resume(source, checkpoint, path, *len, file, &self.metrics);
                truncations.extend(truncated);
                source
                    .files
                    .insert(*id, cap_descriptors(tracked, &mut open));
            } else {
                unknown.push(*id);
            }
        }
        for t in truncations {
            recover_truncated(source, t);
        }
        source
            .truncated
            .retain(|(_, at)| at.elapsed() < TRUNCATION_MEMORY);
        source.deferred.retain(|id, _| present.contains_key(id));
        let copies = CopyIndex::new(source, &self.checkpoints);
        for id in unknown {
            if source.files.contains_key(&id) {
                // Started by the truncation recovery above.
                continue;
            }
            let (path, len, rotated) = &present[&id];
            if !source.first_sight && *len < FINGERPRINT_BYTES {
                let since = *source.deferred.entry(id).or_insert_with(Instant::now);
                if since.elapsed() < DEFER_SHORT {
                    continue;
                }
            }
            source.deferred.remove(&id);
            let Ok(file) = File::open(path) else { continue };
            if let Some(tracked) = start_new(source, &copies, path, id, *len, *rotated, file) {
                source.files.insert(id, cap_descriptors(tracked, &mut open));
            }
        }
        for tracked in source.files.values_mut() {
            if !present.contains_key(&tracked.id) && tracked.gone_since.is_none() {
                tracing::info!(source = %source.name, path = %tracked.path.display(), "tailed file left the source (moved away or deleted); draining it");
                self.metrics
                    .file_rotations
                    .with_label_values(&[&source.name])
                    .inc();
                tracked.gone_since = Some(Instant::now());
                tracked.last_growth = Instant::now();
            }
        }
        source.first_sight = false;
        publish_watched(source, &self.metrics);
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
            let found = find_in_dir(&parent(Path::new(&checkpoint.path)), |_, meta| {
                id_of(meta) == checkpoint.id
            });
            let source = &mut self.sources[index];
            let resumable = found.filter(|(_, file, _)| {
                fingerprint_of(file, checkpoint.fingerprint.len) == Some(checkpoint.fingerprint)
            });
            match resumable {
                Some((path, file, meta)) if !source.files.contains_key(&checkpoint.id) => {
                    let len = meta.len();
                    tracing::info!(source = %source.name, path = %path.display(), "reading the rest of a file rotated while logwarden was down");
                    let offset = checkpoint.offset.min(len);
                    let mut tracked =
                        new_tracked(source, &path, checkpoint.id, len, Some(file), offset);
                    tracked.fingerprint = checkpoint.fingerprint;
                    tracked.gone_since = Some(Instant::now());
                    source.files.insert(checkpoint.id, tracked);
                }
                _ => {
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

/// Keeps a new file's descriptor only while fewer than [`MAX_OPEN_FILES`] are open; the
/// file is fingerprinted either way and reopened when it grows.
fn cap_descriptors(mut tracked: Tracked, open: &mut usize) -> Tracked {
    if *open >= MAX_OPEN_FILES {
        tracked.file = None;
    } else {
        *open += 1;
    }
    tracked
}

fn publish_watched(source: &FileSource, metrics: &Metrics) {
    metrics
        .files_watched
        .with_label_values(&[&source.name])
        .set(source.files.len() as i64);
}

/// The pipeline went away: stop reading.
struct Closed;

fn new_tracked(
    source: &FileSource,
    path: &Path,
    id: FileId,
    len: u64,
    file: Option<File>,
    offset: u64,
) -> Tracked {
    let fingerprint = file
        .as_ref()
        .and_then(|f| fingerprint_of(f, offset.min(FINGERPRINT_BYTES)))
        .unwrap_or_default();
    Tracked {
        path: path.to_path_buf(),
        id,
        fingerprint,
        file,
        splitter: LineSplitter::new(offset, source.max_line_bytes),
        seen_len: len,
        seen_mtime: None,
        read_mtime: None,
        gone_since: None,
        last_growth: Instant::now(),
        copy_of: None,
        unsaved: true,
        read_any: false,
    }
}

/// Resumes a file from its checkpoint, unless it was truncated or replaced while logwarden
/// was down: then it is read from 0 and the truncation is reported, so the copy can supply
/// the rest.
fn resume(
    source: &FileSource,
    checkpoint: Checkpoint,
    path: &Path,
    len: u64,
    file: File,
    metrics: &Metrics,
) -> (Tracked, Option<Truncated>) {
    let id = checkpoint.id;
    let same_head =
        fingerprint_of(&file, checkpoint.fingerprint.len) == Some(checkpoint.fingerprint);
    if same_head && checkpoint.offset <= len {
        let mut tracked = new_tracked(source, path, id, len, Some(file), checkpoint.offset);
        tracked.fingerprint = checkpoint.fingerprint;
        return (tracked, None);
    }
    tracing::warn!(source = %source.name, path = %path.display(), "file was truncated or replaced while logwarden was down; reading it from the start");
    metrics
        .file_truncations
        .with_label_values(&[&source.name])
        .inc();
    let truncated = Truncated {
        id,
        dir: parent(path),
        fingerprint: checkpoint.fingerprint,
        checkpoint: checkpoint.offset,
    };
    (
        new_tracked(source, path, id, len, Some(file), 0),
        Some(truncated),
    )
}

/// Decides where a file never seen before starts: where a truncated file's copy continues
/// it; parked at its end when it copies a file being read; at its end when it was there
/// before the source was first seen (rotated history, or `start_at: end`); else at 0 (a new
/// file, or a generation created and rotated away between two looks). `None`: a copy still
/// being written, to be looked at again.
#[allow(clippy::too_many_arguments)]
fn start_new(
    source: &mut FileSource,
    copies: &CopyIndex,
    path: &Path,
    id: FileId,
    len: u64,
    rotated: bool,
    file: File,
) -> Option<Tracked> {
    let head = head_bytes(&file);
    match copies.origin(&head) {
        Some(Origin::Truncated(t)) if len < t.checkpoint => return None,
        Some(Origin::Truncated(t)) => {
            source.truncated.retain(|(other, _)| other.id != t.id);
            tracing::info!(source = %source.name, path = %path.display(), offset = t.checkpoint, "reading the truncated file's last lines from its copy");
            return Some(new_tracked(source, path, id, len, Some(file), t.checkpoint));
        }
        Some(Origin::File(original)) => {
            tracing::info!(source = %source.name, path = %path.display(), "file is a copy of a tailed file; waiting to see whether the original is truncated");
            let mut tracked = new_tracked(source, path, id, len, Some(file), len);
            tracked.copy_of = Some((original, Instant::now()));
            return Some(tracked);
        }
        None => {}
    }
    let at_end = source.first_sight && (rotated || source.start_at == StartAt::End);
    let offset = if at_end { len } else { 0 };
    tracing::info!(source = %source.name, path = %path.display(), offset, "tailing a new file");
    Some(new_tracked(source, path, id, len, Some(file), offset))
}

/// What a new file may be a copy of.
#[derive(Clone)]
enum Origin {
    /// A truncated file whose copy has not turned up yet: the copy continues it.
    Truncated(Truncated),
    /// A file being read (or checkpointed): the copy may be the first half of a copytruncate.
    File(FileId),
}

/// The files a new file could be a copy of, by the hash of the head bytes read from them,
/// grouped by how many bytes that is, so a new file costs one hash per distinct length.
struct CopyIndex {
    by_len: HashMap<u64, HashMap<u64, Origin>>,
}

impl CopyIndex {
    fn new(source: &FileSource, checkpoints: &HashMap<FileId, Checkpoint>) -> Self {
        let mut by_len: HashMap<u64, HashMap<u64, Origin>> = HashMap::new();
        let mut add = |fp: Fingerprint, origin: Origin| {
            if fp.len > 0 {
                by_len
                    .entry(fp.len)
                    .or_default()
                    .entry(fp.hash)
                    .or_insert(origin);
            }
        };
        for (t, _) in &source.truncated {
            add(t.fingerprint, Origin::Truncated(t.clone()));
        }
        for t in source.files.values().filter(|t| t.copy_of.is_none()) {
            add(t.fingerprint, Origin::File(t.id));
        }
        for c in checkpoints.values().filter(|c| *c.source == *source.name) {
            add(c.fingerprint, Origin::File(c.id));
        }
        CopyIndex { by_len }
    }

    /// The origin whose read head this file starts with; truncated origins first.
    fn origin(&self, head: &[u8]) -> Option<Origin> {
        let mut found = None;
        for (len, hashes) in &self.by_len {
            if *len as usize > head.len() {
                continue;
            }
            match hashes.get(&fnv1a(&head[..*len as usize])) {
                Some(o @ Origin::Truncated(_)) => return Some(o.clone()),
                Some(o) => found = Some(o.clone()),
                None => {}
            }
        }
        found
    }
}

/// After a truncation, reads what the copy of the truncated file holds beyond what was read:
/// a copy already tracked (waiting, unread) is rewound; else the directory is searched; else
/// the truncation is remembered for a copy that turns up later.
fn recover_truncated(source: &mut FileSource, t: Truncated) {
    // A copy waiting for this truncation, or (after a restart) a copy resumed at its end
    // that has read nothing since and starts with what was read of the truncated file.
    let is_copy = |c: &Tracked| {
        c.copy_of.is_some_and(|(original, _)| original == t.id)
            || (c.id != t.id
                && !c.read_any
                && t.fingerprint.len > 0
                && c.splitter.next_offset() >= t.checkpoint
                && c.file
                    .as_ref()
                    .is_some_and(|f| fingerprint_of(f, t.fingerprint.len) == Some(t.fingerprint)))
    };
    if let Some(copy) = source.files.values_mut().find(|c| is_copy(c)) {
        // A copy shorter than what was read of the original holds nothing unread: it is
        // positioned at its end, never past it (which would look like a truncation).
        let len = copy
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(copy.seen_len, |m| m.len());
        tracing::info!(source = %source.name, path = %copy.path.display(), "reading the truncated file's last lines from its copy");
        copy.splitter = LineSplitter::new(t.checkpoint.min(len), source.max_line_bytes);
        copy.copy_of = None;
        copy.unsaved = true;
        return;
    }
    if t.fingerprint.len == 0 {
        return;
    }
    let tracked: HashSet<FileId> = source.files.keys().copied().collect();
    let found = find_in_dir(&t.dir, |file, meta| {
        !tracked.contains(&id_of(meta))
            && meta.len() >= t.checkpoint
            && fingerprint_of(file, t.fingerprint.len) == Some(t.fingerprint)
    });
    if let Some((path, file, meta)) = found {
        tracing::info!(source = %source.name, path = %path.display(), "reading the truncated file's last lines from its copy");
        let id = id_of(&meta);
        // Whether the copy belongs to the source is settled by the next discovery.
        let tracked = new_tracked(source, &path, id, meta.len(), Some(file), t.checkpoint);
        source.files.insert(id, tracked);
    } else {
        source.truncated.push((t, Instant::now()));
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// Looks in `dir` for a regular file satisfying `wanted`.
fn find_in_dir(
    dir: &Path,
    wanted: impl Fn(&File, &std::fs::Metadata) -> bool,
) -> Option<(PathBuf, File, std::fs::Metadata)> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if wanted(&file, &meta) {
            return Some((path, file, meta));
        }
    }
    None
}

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

fn checkpoint_of(tracked: &Tracked, source: &str) -> Checkpoint {
    Checkpoint {
        source: source.to_string(),
        path: tracked.path.to_string_lossy().into_owned(),
        id: tracked.id,
        fingerprint: tracked.fingerprint,
        offset: tracked.splitter.checkpoint(),
    }
}

/// What one read of a file produced.
struct ReadResult {
    lines: Vec<LogLine>,
    moved: bool,
    truncated: Option<(Fingerprint, u64)>,
}

impl ReadResult {
    fn into_batch(self, tracked: &Tracked, source: &str) -> (Option<Batch>, Option<Truncated>) {
        let truncation = self.truncated.map(|(fingerprint, checkpoint)| Truncated {
            id: tracked.id,
            dir: parent(&tracked.path),
            fingerprint,
            checkpoint,
        });
        if self.lines.is_empty() && !self.moved {
            return (None, truncation);
        }
        let batch = Batch {
            lines: self.lines,
            progress: Some(Progress::At(checkpoint_of(tracked, source))),
        };
        (Some(batch), truncation)
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
        truncated: None,
    };
    if tracked.file.is_none() {
        let unchanged = tracked.seen_len == tracked.splitter.next_offset()
            && (tracked.read_mtime.is_none() || tracked.seen_mtime == tracked.read_mtime);
        if unchanged && tracked.gone_since.is_none() {
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
    let next = tracked.splitter.next_offset();
    let mtime = meta.modified().ok();
    let touched =
        meta.len() > next || (tracked.read_mtime.is_some() && mtime != tracked.read_mtime);
    tracked.read_mtime = mtime;
    // Shorter than what was read, or (truncated and refilled to or past the old offset
    // between two looks) a head that is no longer the one fingerprinted.
    let rewritten = meta.len() < next
        || (touched
            && tracked.fingerprint.len > 0
            && fingerprint_of(file, tracked.fingerprint.len) != Some(tracked.fingerprint));
    if rewritten {
        tracing::warn!(source = %source, path = %tracked.path.display(), "file truncated; reading it from the start");
        metrics.file_truncations.with_label_values(&[&source]).inc();
        result.truncated = Some((tracked.fingerprint, tracked.splitter.checkpoint()));
        tracked.splitter = LineSplitter::new(0, max_line_bytes);
        tracked.fingerprint = Fingerprint::default();
        tracked.copy_of = None;
        result.moved = true;
    }
    let path: Arc<str> = Arc::from(tracked.path.to_string_lossy().as_ref());
    let arrival = Utc::now();
    let mut buf = vec![0u8; CHUNK];
    let mut budget = READ_BUDGET;
    let mut truncated_lines = 0u64;
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
            truncated_lines += u64::from(line.truncated);
            result.lines.push(LogLine {
                source: source.clone(),
                path: path.clone(),
                offset: line.offset,
                bytes: line.bytes.to_vec(),
                arrival,
                time: None,
            });
        });
    }
    let consumed = FINGERPRINT_BYTES.min(tracked.splitter.next_offset());
    if tracked.fingerprint.len < consumed
        && let Some(fp) = fingerprint_of(file, consumed)
    {
        tracked.fingerprint = fp;
    }
    tracked.read_any |= !result.lines.is_empty();
    if bytes_read > 0 {
        tracked.last_growth = Instant::now();
        result.moved = true;
        metrics
            .bytes_read
            .with_label_values(&[&source])
            .inc_by(bytes_read);
    }
    tracked.seen_len = tracked.seen_len.max(tracked.splitter.next_offset());
    metrics
        .lines_read
        .with_label_values(&[&source])
        .inc_by(result.lines.len() as u64);
    if truncated_lines > 0 {
        metrics
            .lines_truncated
            .with_label_values(&[&source])
            .inc_by(truncated_lines);
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
    find_in_dir(&parent(&tracked.path), |_, meta| id_of(meta) == tracked.id).map(|(_, f, _)| f)
}
