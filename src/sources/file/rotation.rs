//! Rotation and truncation: where a file that was truncated, replaced or copied continues,
//! so logrotate's rename, copytruncate and a restart in between lose and repeat nothing.

use super::identity::{find_in_dir, fingerprint_of, fnv1a, head_bytes, id_of, parent};
use super::tracked::{FileSource, Tracked, Truncated, new_tracked};
use crate::config::StartAt;
use crate::metrics::Metrics;
use crate::sources::lines::LineSplitter;
use crate::sources::{Checkpoint, FileId, Fingerprint};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a copy waits, unread, for its original to be truncated (copytruncate) before it
/// is taken for a plain copy and only its additions are read.
pub(super) const COPY_WAIT: Duration = Duration::from_secs(10);

/// Resumes a file from its checkpoint, unless it was truncated or replaced while logwarden
/// was down: then it is read from 0 and the truncation is reported, so the copy can supply
/// the rest.
pub(super) fn resume(
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
pub(super) fn start_new(
    source: &mut FileSource,
    copies: &CopyIndex,
    found: NewFile<'_>,
) -> Option<Tracked> {
    let NewFile {
        path,
        id,
        len,
        rotated,
        file,
    } = found;
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

/// A file seen for the first time by a scan, opened: what [`start_new`] decides about.
pub(super) struct NewFile<'a> {
    /// The path the scan found it at: the name it is tailed and logged under.
    pub(super) path: &'a Path,
    /// Its identity (device and inode).
    pub(super) id: FileId,
    /// Its length when the scan saw it.
    pub(super) len: u64,
    /// Whether it is a rotated generation (a name the source's pattern rotates to).
    pub(super) rotated: bool,
    /// The open file, read from where `start_new` says.
    pub(super) file: File,
}

/// What a new file may be a copy of.
#[derive(Clone)]
pub(super) enum Origin {
    /// A truncated file whose copy has not turned up yet: the copy continues it.
    Truncated(Truncated),
    /// A file being read (or checkpointed): the copy may be the first half of a copytruncate.
    File(FileId),
}

/// The files a new file could be a copy of, by the hash of the head bytes read from them,
/// grouped by how many bytes that is, so a new file costs one hash per distinct length.
pub(super) struct CopyIndex {
    by_len: HashMap<u64, HashMap<u64, Origin>>,
}

impl CopyIndex {
    pub(super) fn new(source: &FileSource, checkpoints: &HashMap<FileId, Checkpoint>) -> Self {
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
    pub(super) fn origin(&self, head: &[u8]) -> Option<Origin> {
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
pub(super) fn recover_truncated(source: &mut FileSource, t: Truncated) {
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

#[cfg(test)]
mod tests {
    use super::super::identity::FINGERPRINT_BYTES;
    use super::super::testing::{append, lines, source, track};
    use super::*;
    use std::path::PathBuf;

    /// `app.log` with four lines, tracked and read to its end.
    fn read_original(dir: &Path) -> (FileSource, PathBuf, FileId) {
        let mut src = source(dir);
        let log = dir.join("app.log");
        append(&log, &lines(0, 4));
        let len = std::fs::metadata(&log).unwrap().len();
        let tracked = track(&src, &log, len);
        let id = tracked.id;
        assert_eq!(tracked.fingerprint.len, FINGERPRINT_BYTES);
        src.files.insert(id, tracked);
        (src, log, id)
    }

    /// The truncation of the tracked file `original` after it was read up to `read_up_to`.
    fn truncation(src: &FileSource, original: FileId, read_up_to: u64) -> Truncated {
        let tracked = &src.files[&original];
        Truncated {
            id: original,
            dir: parent(&tracked.path),
            fingerprint: tracked.fingerprint,
            checkpoint: read_up_to,
        }
    }

    fn start(src: &mut FileSource, path: &Path, rotated: bool) -> Option<Tracked> {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        let copies = CopyIndex::new(src, &HashMap::new());
        let found = NewFile {
            path,
            id: id_of(&meta),
            len: meta.len(),
            rotated,
            file,
        };
        start_new(src, &copies, found)
    }

    fn checkpoint(path: &Path, id: FileId, fingerprint: Fingerprint, offset: u64) -> Checkpoint {
        Checkpoint {
            source: "app".into(),
            path: path.to_string_lossy().into_owned(),
            id,
            fingerprint,
            offset,
        }
    }

    #[test]
    fn a_copy_of_a_file_being_read_waits_unread_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut src, log, original) = read_original(dir.path());
        let copy = dir.path().join("app.log.1");
        std::fs::copy(&log, &copy).unwrap();
        let tracked = start(&mut src, &copy, true).expect("tracked");
        assert_eq!(tracked.copy_of.map(|(id, _)| id), Some(original));
        assert_eq!(tracked.splitter.next_offset(), lines(0, 4).len() as u64);
    }

    #[test]
    fn copytruncate_rewinds_the_waiting_copy_to_where_the_original_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut src, log, original) = read_original(dir.path());
        let read_up_to = lines(0, 4).len() as u64;
        append(&log, &lines(4, 6));
        let copy = dir.path().join("app.log.1");
        std::fs::copy(&log, &copy).unwrap();
        let tracked = start(&mut src, &copy, true).unwrap();
        let copy_id = tracked.id;
        src.files.insert(copy_id, tracked);
        let truncated = truncation(&src, original, read_up_to);
        recover_truncated(&mut src, truncated);
        let copy = &src.files[&copy_id];
        assert_eq!(copy.splitter.next_offset(), read_up_to);
        assert!(copy.copy_of.is_none() && copy.unsaved);
        assert!(src.truncated.is_empty());
    }

    #[test]
    fn a_copy_that_turns_up_after_the_truncation_continues_the_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut src, _, original) = read_original(dir.path());
        let read_up_to = lines(0, 4).len() as u64;
        let truncated = truncation(&src, original, read_up_to);
        // Nothing to find yet: remembered for the copy to come.
        recover_truncated(&mut src, truncated);
        assert_eq!(src.truncated.len(), 1);
        let copy = dir.path().join("app.log.1");
        std::fs::write(&copy, lines(0, 3)).unwrap();
        assert!(
            start(&mut src, &copy, true).is_none(),
            "a copy shorter than what was read is still being written"
        );
        append(&copy, &lines(3, 6));
        let tracked = start(&mut src, &copy, true).expect("the copy");
        assert_eq!(tracked.splitter.next_offset(), read_up_to);
        assert!(src.truncated.is_empty());
    }

    #[test]
    fn after_a_truncation_an_untracked_copy_is_found_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut src, log, original) = read_original(dir.path());
        let read_up_to = lines(0, 4).len() as u64;
        append(&log, &lines(4, 5));
        let copy = dir.path().join("app.log-20261122");
        std::fs::copy(&log, &copy).unwrap();
        let truncated = truncation(&src, original, read_up_to);
        recover_truncated(&mut src, truncated);
        let copy_id = id_of(&std::fs::metadata(&copy).unwrap());
        assert_eq!(src.files[&copy_id].splitter.next_offset(), read_up_to);
    }

    #[test]
    fn a_new_file_starts_at_zero_and_history_found_at_first_sight_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = source(dir.path());
        let (log, old) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
        append(&log, &lines(0, 2));
        append(&old, &lines(5, 9));
        src.first_sight = true;
        let history = start(&mut src, &old, true).unwrap();
        assert_eq!(history.splitter.next_offset(), lines(5, 9).len() as u64);
        let current = start(&mut src, &log, false).unwrap();
        assert_eq!(current.splitter.next_offset(), 0, "start_at: beginning");
        src.first_sight = false;
        let later = start(&mut src, &old, true).unwrap();
        assert_eq!(
            later.splitter.next_offset(),
            0,
            "created and rotated between looks"
        );
    }

    /// `app.log` with four lines, as a checkpoint of an earlier run would know it: its
    /// identity and head fingerprint.
    fn known_file(dir: &Path) -> (FileSource, PathBuf, File, FileId, Fingerprint) {
        let log = dir.join("app.log");
        append(&log, &lines(0, 4));
        let file = File::open(&log).unwrap();
        let id = id_of(&file.metadata().unwrap());
        let fingerprint = fingerprint_of(&file, FINGERPRINT_BYTES).unwrap();
        (source(dir), log, file, id, fingerprint)
    }

    #[test]
    fn resume_continues_at_the_checkpoint_of_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log, file, id, fp) = known_file(dir.path());
        let len = lines(0, 4).len() as u64;
        let at = checkpoint(&log, id, fp, 200);
        let (tracked, truncated) = resume(&src, at, &log, len, file, &Metrics::new());
        assert!(truncated.is_none());
        assert_eq!(tracked.splitter.next_offset(), 200);
        assert_eq!(tracked.fingerprint, fp);
    }

    #[test]
    fn a_file_replaced_while_down_is_read_from_zero_and_its_truncation_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log, _, id, old) = known_file(dir.path());
        // Rewritten in place to the same size with another head.
        std::fs::write(&log, lines(10, 14)).unwrap();
        let file = File::open(&log).unwrap();
        let len = file.metadata().unwrap().len();
        let at = checkpoint(&log, id, old, len);
        let (tracked, truncated) = resume(&src, at, &log, len, file, &Metrics::new());
        assert_eq!(tracked.splitter.next_offset(), 0);
        let truncated = truncated.expect("reported");
        assert_eq!((truncated.fingerprint, truncated.checkpoint), (old, len));
    }

    #[test]
    fn a_truncated_origin_wins_over_a_file_with_the_same_head() {
        let dir = tempfile::tempdir().unwrap();
        let (mut src, log, original) = read_original(dir.path());
        let fingerprint = src.files[&original].fingerprint;
        let gone = FileId { dev: 0, ino: 1 };
        src.truncated.push((
            Truncated {
                id: gone,
                dir: dir.path().to_path_buf(),
                fingerprint,
                checkpoint: 10,
            },
            Instant::now(),
        ));
        let head = head_bytes(&File::open(&log).unwrap());
        let origin = CopyIndex::new(&src, &HashMap::new()).origin(&head);
        assert!(matches!(origin, Some(Origin::Truncated(t)) if t.id == gone));
        let other = CopyIndex::new(&source(dir.path()), &HashMap::new()).origin(&head);
        assert!(other.is_none(), "an unrelated source knows no origin");
    }
}
