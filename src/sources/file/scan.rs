//! Matching what is on disk against what is tracked: files already known keep their
//! position, files rotated while the daemon was down are found by inode, and new files are
//! started where they continue something already read.

use super::identity::{FINGERPRINT_BYTES, find_in_dir, fingerprint_of, id_of, parent};
use super::rotation::{CopyIndex, NewFile, recover_truncated, resume, start_new};
use super::tracked::{FileSource, cap_descriptors, new_tracked, publish_watched};
use crate::metrics::Metrics;
use crate::sources::{Batch, Checkpoint, FileId, Progress};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a new file too short to fingerprint waits (it may be a copy still being
/// written) before it is read as a new file.
const DEFER_SHORT: Duration = Duration::from_millis(500);
/// How long a truncated file's last read position is kept for a copy to turn up.
const TRUNCATION_MEMORY: Duration = Duration::from_secs(30);

/// Matches what is on disk now against what is tracked: first the files already known
/// (tracked, or checkpointed by an earlier run), then new ones, which may turn out to be
/// copies of known files.
/// `open`: descriptors open across all sources, so new files beyond the cap are tracked
/// closed.
pub(super) fn discover(
    source: &mut FileSource,
    checkpoints: &mut HashMap<FileId, Checkpoint>,
    mut open: usize,
    metrics: &Metrics,
) {
    let found = source.paths.expand();
    if found.is_empty() && !source.warned_missing {
        tracing::warn!(source = %source.name, "no file matches the source's paths yet; waiting for one to appear");
        source.warned_missing = true;
    }
    let mut present: HashMap<FileId, (PathBuf, u64, bool)> = HashMap::with_capacity(found.len());
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
        } else if let Some(checkpoint) = checkpoints.remove(id) {
            let Ok(file) = File::open(path) else { continue };
            let (tracked, truncated) = resume(source, checkpoint, path, *len, file, metrics);
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
    let copies = CopyIndex::new(source, checkpoints);
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
        let found = NewFile {
            path,
            id,
            len: *len,
            rotated: *rotated,
            file,
        };
        if let Some(tracked) = start_new(source, &copies, found) {
            source.files.insert(id, cap_descriptors(tracked, &mut open));
        }
    }
    for tracked in source.files.values_mut() {
        if !present.contains_key(&tracked.id) && tracked.gone_since.is_none() {
            tracing::info!(source = %source.name, path = %tracked.path.display(), "tailed file left the source (moved away or deleted); draining it");
            metrics
                .file_rotations
                .with_label_values(&[&source.name])
                .inc();
            tracked.gone_since = Some(Instant::now());
            tracked.last_growth = Instant::now();
        }
    }
    source.first_sight = false;
    publish_watched(source, metrics);
}

/// Checkpointed files that are no longer at a watched path (rotated while the daemon was
/// down) are found by inode in their old directory and read to their end.
pub(super) fn recover_orphans(
    sources: &mut [FileSource],
    checkpoints: &mut HashMap<FileId, Checkpoint>,
    tx: &mpsc::Sender<Batch>,
) {
    let orphans: Vec<Checkpoint> = checkpoints.drain().map(|(_, c)| c).collect();
    for checkpoint in orphans {
        let Some(index) = sources.iter().position(|s| *s.name == checkpoint.source) else {
            continue;
        };
        let found = find_in_dir(&parent(Path::new(&checkpoint.path)), |_, meta| {
            id_of(meta) == checkpoint.id
        });
        let source = &mut sources[index];
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
                let _ = tx.blocking_send(Batch {
                    lines: Vec::new(),
                    progress: Some(Progress::Done(checkpoint.id)),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{append, lines, source};
    use super::*;

    #[test]
    fn a_file_rotated_while_down_is_resumed_by_inode_and_a_vanished_one_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rotated) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
        append(&rotated, &lines(0, 4));
        let file = File::open(&rotated).unwrap();
        let id = id_of(&file.metadata().unwrap());
        let gone = FileId { dev: 0, ino: 1 };
        let at = |id, offset| Checkpoint {
            source: "app".into(),
            path: log.to_string_lossy().into_owned(),
            id,
            fingerprint: fingerprint_of(&file, FINGERPRINT_BYTES).unwrap(),
            offset,
        };
        let offset = lines(0, 2).len() as u64;
        let mut checkpoints = HashMap::from([(id, at(id, offset)), (gone, at(gone, 10))]);
        let mut sources = vec![source(dir.path())];
        let (tx, mut rx) = mpsc::channel(8);
        recover_orphans(&mut sources, &mut checkpoints, &tx);
        let resumed = &sources[0].files[&id];
        assert_eq!(resumed.splitter.next_offset(), offset);
        assert!(resumed.gone_since.is_some(), "drained, then dropped");
        let batch = rx.try_recv().unwrap();
        assert!(matches!(batch.progress, Some(Progress::Done(f)) if f == gone));
        assert!(checkpoints.is_empty());
    }

    #[test]
    fn a_new_file_too_short_to_fingerprint_waits_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = source(dir.path());
        let log = dir.path().join("app.log");
        append(&log, "short\n");
        let metrics = Metrics::new();
        discover(&mut src, &mut HashMap::new(), 0, &metrics);
        assert!(src.files.is_empty(), "it may be a copy still being written");
        let id = *src.deferred.keys().next().expect("deferred");
        // As if first seen longer ago than the deferral.
        let earlier = Instant::now().checked_sub(DEFER_SHORT).unwrap();
        src.deferred.insert(id, earlier);
        discover(&mut src, &mut HashMap::new(), 0, &metrics);
        assert_eq!(src.files[&id].splitter.next_offset(), 0);
        assert!(src.deferred.is_empty());
    }
}
