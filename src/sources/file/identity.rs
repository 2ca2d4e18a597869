//! A file's identity: its inode, and a hash of the head bytes already read, which tells a
//! copy (same head, other inode) and a rewrite (same inode, other head) from the file itself.

use crate::sources::{FileId, Fingerprint};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Bytes of a file's head that identify it beside its inode. A file's fingerprint covers the
/// part of its head already read (or skipped), up to this many bytes: a file that starts with
/// exactly those bytes is a copy of it, and a file whose head no longer has them was rewritten.
pub(super) const FINGERPRINT_BYTES: u64 = 256;

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hashes the first `len` bytes of `file`; `None` if it has fewer. Nothing read is the
/// default (empty) fingerprint, the same value a reset stores, so the two always compare
/// equal.
pub(super) fn fingerprint_of(file: &File, len: u64) -> Option<Fingerprint> {
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
pub(super) fn head_bytes(file: &File) -> Vec<u8> {
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

pub(super) fn id_of(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

pub(super) fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// Looks in `dir` for a regular file satisfying `wanted`.
pub(super) fn find_in_dir(
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

/// Reopens a file closed to save descriptors, at its path or, if it moved, by identity.
pub(super) fn reopen(path: &Path, id: FileId) -> Option<File> {
    if let Ok(file) = File::open(path)
        && file.metadata().is_ok_and(|m| id_of(&m) == id)
    {
        return Some(file);
    }
    find_in_dir(&parent(path), |_, meta| id_of(meta) == id).map(|(_, f, _)| f)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{append, lines, source, track};
    use super::*;

    #[test]
    fn a_copy_has_the_same_fingerprint_and_a_rewrite_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        append(&a, &lines(0, 3));
        std::fs::copy(&a, &b).unwrap();
        append(&c, &lines(1, 4));
        let open = |p: &Path| File::open(p).unwrap();
        let of_a = fingerprint_of(&open(&a), FINGERPRINT_BYTES);
        assert!(of_a.is_some());
        assert_eq!(of_a, fingerprint_of(&open(&b), FINGERPRINT_BYTES));
        assert_ne!(of_a, fingerprint_of(&open(&c), FINGERPRINT_BYTES));
    }

    #[test]
    fn a_file_shorter_than_the_fingerprint_has_none_and_nothing_read_has_the_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        append(&path, "abc\n");
        let file = File::open(&path).unwrap();
        assert_eq!(fingerprint_of(&file, 5), None);
        assert_eq!(fingerprint_of(&file, 0), Some(Fingerprint::default()));
        assert_eq!(fingerprint_of(&file, 4).map(|f| f.len), Some(4));
    }

    #[test]
    fn the_head_is_at_most_the_fingerprint_length() {
        let dir = tempfile::tempdir().unwrap();
        let (long, short) = (dir.path().join("long"), dir.path().join("short"));
        append(&long, &lines(0, 10));
        append(&short, "abc\n");
        let head = head_bytes(&File::open(&long).unwrap());
        assert_eq!(head.len() as u64, FINGERPRINT_BYTES);
        assert_eq!(head, lines(0, 10).as_bytes()[..FINGERPRINT_BYTES as usize]);
        assert_eq!(head_bytes(&File::open(&short).unwrap()), b"abc\n");
    }

    #[test]
    fn a_closed_file_renamed_away_is_reopened_by_its_inode_not_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rotated) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
        append(&log, "old\n");
        let mut tracked = track(&source(dir.path()), &log, 0);
        tracked.file = None;
        std::fs::rename(&log, &rotated).unwrap();
        append(&log, "new\n");
        let reopened = reopen(&tracked.path, tracked.id).expect("found beside its old path");
        assert_eq!(id_of(&reopened.metadata().unwrap()), tracked.id);
        std::fs::remove_file(&rotated).unwrap();
        assert!(
            reopen(&tracked.path, tracked.id).is_none(),
            "the new file at the path is not it"
        );
    }

    #[test]
    fn only_regular_files_are_searched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        append(&dir.path().join("f"), "x\n");
        let found = find_in_dir(dir.path(), |_, _| true).map(|(p, _, _)| p);
        assert_eq!(found, Some(dir.path().join("f")));
        assert!(find_in_dir(&dir.path().join("missing"), |_, _| true).is_none());
    }
}
