//! The state of the files being read: each file's identity, position and descriptor, and
//! the sources they belong to. Every other part of the tailer reads and updates this.

use super::identity::{FINGERPRINT_BYTES, fingerprint_of};
use crate::config::StartAt;
use crate::metrics::Metrics;
use crate::sources::discover::PathSet;
use crate::sources::lines::LineSplitter;
use crate::sources::{Checkpoint, FileId, Fingerprint};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Open descriptors kept at most; idle files beyond it are closed and reopened on growth.
pub const MAX_OPEN_FILES: usize = 256;

/// One file being read, keyed by its inode rather than its path, so a rename keeps its
/// position and a new file at the same path starts its own.
pub(super) struct Tracked {
    pub(super) path: PathBuf,
    pub(super) id: FileId,
    pub(super) fingerprint: Fingerprint,
    pub(super) file: Option<File>,
    pub(super) splitter: LineSplitter,
    /// Size seen by the last discovery `stat`, to skip opening idle closed files.
    pub(super) seen_len: u64,
    /// Modification time seen last: a file rewritten to exactly the size already read
    /// shows up only here.
    pub(super) seen_mtime: Option<std::time::SystemTime>,
    /// Modification time when the file was last read.
    pub(super) read_mtime: Option<std::time::SystemTime>,
    /// Set when the file is no longer at any watched path.
    pub(super) gone_since: Option<Instant>,
    pub(super) last_growth: Instant,
    /// Set while this file looks like a copy of another tracked (or checkpointed) file, with
    /// when that was seen: it is not read, and is rewound to where the original was read up
    /// to if the original turns out truncated.
    pub(super) copy_of: Option<(FileId, Instant)>,
    /// Its position has not been stored yet: every tracked file is checkpointed at once, so
    /// a restart never takes a file it already knew for a new one.
    pub(super) unsaved: bool,
    /// Whether any line of it has been read since tracking began (a copy that has not can
    /// still be rewound).
    pub(super) read_any: bool,
}

/// One configured file source and the files it tracks.
pub(super) struct FileSource {
    pub(super) name: Arc<str>,
    pub(super) paths: PathSet,
    pub(super) start_at: StartAt,
    pub(super) max_line_bytes: usize,
    pub(super) files: HashMap<FileId, Tracked>,
    /// True until the first scan of a source that has never been checkpointed: only then
    /// does `start_at: end` apply.
    pub(super) first_sight: bool,
    pub(super) warned_missing: bool,
    /// Truncated files whose copy has not been found yet.
    pub(super) truncated: Vec<(Truncated, Instant)>,
    /// New files too short to fingerprint, by when they were first seen.
    pub(super) deferred: HashMap<FileId, Instant>,
}

/// Keeps a new file's descriptor only while fewer than [`MAX_OPEN_FILES`] are open; the
/// file is fingerprinted either way and reopened when it grows.
pub(super) fn cap_descriptors(mut tracked: Tracked, open: &mut usize) -> Tracked {
    if *open >= MAX_OPEN_FILES {
        tracked.file = None;
    } else {
        *open += 1;
    }
    tracked
}

pub(super) fn publish_watched(source: &FileSource, metrics: &Metrics) {
    metrics
        .files_watched
        .with_label_values(&[&source.name])
        .set(source.files.len() as i64);
}

pub(super) fn new_tracked(
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

pub(super) fn checkpoint_of(tracked: &Tracked, source: &str) -> Checkpoint {
    Checkpoint {
        source: source.to_string(),
        path: tracked.path.to_string_lossy().into_owned(),
        id: tracked.id,
        fingerprint: tracked.fingerprint,
        offset: tracked.splitter.checkpoint(),
    }
}

/// A file found truncated: what had been read of it, to find the rest in its copy.
#[derive(Clone)]
pub(super) struct Truncated {
    pub(super) id: FileId,
    /// Where its copy is looked for: logrotate puts the copy beside the original.
    pub(super) dir: PathBuf,
    /// The head read before the truncation, which the copy starts with.
    pub(super) fingerprint: Fingerprint,
    /// Where reading stopped: the copy is read from here.
    pub(super) checkpoint: u64,
}
