//! The sled engine: one tree in a database in the state directory, reopened after an I/O
//! error (sled's errors are sticky: after one, it refuses every later write).
//!
//! sled is not handed every commit. Flushing it per commit rewrote its nodes (and cleaned
//! its segments) for a few changed keys each time: about five times the bytes it was given,
//! most of the daemon's writes under an attack. Instead each applied batch is appended,
//! deflated, to a write-ahead journal (`wal/`, a [`Journal`]) and kept as the newest value
//! per key in an overlay that reads consult first; [`Engine::flush`] syncs the journal (one
//! fdatasync: that is what makes a commit durable). Every [`CHECKPOINT_EVERY`] (or once the
//! overlay holds [`CHECKPOINT_BYTES`]) the overlay goes to sled in one batch with the
//! journal position it covers, sled is flushed, and the journal segments before it go. An
//! incident head or checkpoint updated by every commit thus reaches sled once per interval.
//! On open (and reopen) the journal records past the covered position are applied to sled
//! again: whole puts and removals, so applying one twice changes nothing.

use super::StoreError;
use super::engine::{Engine, Pair, Write};
use super::segmented::{deflate_changes, inflate_changes};
use super::segments::{FileSegments, HEADER, Journal, Pos, SegmentError, SegmentIo};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Page cache for sled; its default (1 GiB) is far too much for a host agent.
const CACHE_BYTES: u64 = 64 << 20;

/// sled's own periodic flush is off: sled is flushed when it takes a checkpoint
/// ([`Deferred::checkpoint`]), and between checkpoints it has nothing new to write.
const BACKGROUND_FLUSH: Option<u64> = None;

/// How long [`SledEngine::reopen`] waits for the old database's file lock to be let go
/// (sled's flusher thread and any operation still in flight hold it a moment after it is
/// dropped).
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// How often the overlay of applied writes is handed to sled (and sled flushed).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Overlay size (keys and values) that hands it to sled before [`CHECKPOINT_EVERY`].
const CHECKPOINT_BYTES: u64 = 8 << 20;
/// sled key (outside every table's prefix) of the journal position the tree covers.
const COVERED_KEY: &[u8] = b"wal-covered";
/// Journal record kind: one applied batch.
const BATCH: u8 = 1;

/// sled, with everything in one tree so any set of records commits as one batch.
pub struct SledEngine {
    dir: PathBuf,
    /// `None` only while the database is being reopened.
    open: RwLock<Option<Handles>>,
    /// Writes applied since sled last took them; its lock also orders applies.
    deferred: Mutex<Deferred>,
}

/// The write-ahead journal and what it holds that sled does not have yet.
struct Deferred {
    wal: Journal,
    /// Newest value per key written since the last checkpoint (`None`: removed).
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values in the overlay.
    bytes: u64,
    /// When sled last took the overlay.
    checkpointed: Instant,
}

impl Deferred {
    /// Recovers the journal in `dir/wal` and applies what sled has not got yet to it.
    fn recover(dir: &Path, handles: &Handles) -> Result<Deferred, StoreError> {
        let io: Arc<dyn SegmentIo> = Arc::new(FileSegments::open(dir.join("wal"))?);
        let covered = match handles.tree.get(COVERED_KEY)? {
            Some(v) => {
                Pos::unpack(u64::from_le_bytes(v.as_ref().try_into().map_err(|_| {
                    super::codec::CodecError::Malformed("journal position")
                })?))
            }
            None => Pos::default(),
        };
        // Every whole record past the covered position was applied (and possibly made
        // durable); a torn last record (a crash in the middle of its append) ends the
        // journal. Anything else that cannot be read is an error: cutting the journal
        // there would silently drop the committed writes after it.
        let last = io.list()?.last().copied().unwrap_or(0).max(covered.seg);
        let scan = Journal::reading(io.clone());
        let mut end = covered;
        let mut batch = sled::Batch::default();
        let mut replayed = 0usize;
        let corrupt = |at: Pos, reason: String| StoreError::CorruptJournal {
            file: dir
                .join("wal")
                .join(format!("{:08}.seg", at.seg))
                .display()
                .to_string(),
            offset: at.off,
            reason,
        };
        let to = Pos {
            seg: last,
            off: u32::try_from(io.len(last)?).unwrap_or(u32::MAX),
        };
        for record in scan.records(covered, to) {
            let (at, kind, payload) = match record {
                Ok(record) => record,
                Err(SegmentError::Corrupt(at, reason)) => {
                    if is_torn_tail(io.as_ref(), at, last)? {
                        tracing::warn!(at = %at, reason, "store journal: torn last record cut");
                        break;
                    }
                    return Err(corrupt(at, reason.to_string()));
                }
                Err(SegmentError::NewerRecord(at, version)) => {
                    return Err(corrupt(
                        at,
                        format!("record version {version} is newer than this release reads"),
                    ));
                }
                Err(SegmentError::Io(e)) => return Err(StoreError::Segment(e)),
            };
            if kind != BATCH {
                return Err(corrupt(at, format!("unknown record kind {kind}")));
            }
            let writes = inflate_changes(&payload)
                .map_err(|e| corrupt(at, format!("batch unreadable: {e}")))?;
            for (key, value) in writes {
                match value {
                    Some(value) => batch.insert(key, value),
                    None => batch.remove(key),
                }
            }
            end = Pos {
                seg: at.seg,
                off: at.off + (HEADER + payload.len()) as u32,
            };
            replayed += 1;
        }
        let mut wal = Journal::recover(io, end)?;
        if replayed > 0 {
            batch.insert(COVERED_KEY, &end.pack().to_le_bytes());
            handles.tree.apply_batch(batch)?;
            handles.db.flush()?;
            wal.drop_before(end.seg)?;
            tracing::info!(batches = replayed, "store journal replayed");
        }
        Ok(Deferred {
            wal,
            overlay: BTreeMap::new(),
            bytes: 0,
            checkpointed: Instant::now(),
        })
    }

    /// Whether sled should take the overlay now.
    fn due(&self) -> bool {
        !self.overlay.is_empty()
            && (self.checkpointed.elapsed() >= CHECKPOINT_EVERY || self.bytes >= CHECKPOINT_BYTES)
    }

    /// Hands the overlay to sled with the journal position it covers, flushes sled and
    /// drops the journal segments it no longer needs.
    fn checkpoint(&mut self, handles: &Handles) -> Result<(), StoreError> {
        let end = self.wal.end();
        let mut batch = sled::Batch::default();
        for (key, value) in &self.overlay {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        batch.insert(COVERED_KEY, &end.pack().to_le_bytes());
        handles.tree.apply_batch(batch)?;
        handles.db.flush()?;
        self.overlay.clear();
        self.bytes = 0;
        self.checkpointed = Instant::now();
        if let Err(e) = self.wal.drop_before(end.seg) {
            tracing::warn!(error = %e, "store journal segments not collected");
        }
        Ok(())
    }
}

/// Whether the unreadable record at `at` is a torn last record: a crash in the middle of
/// its append (the journal is synced after every commit, so only the last record can be
/// torn). It is when no later segment holds a byte and nothing but zeros (blocks the file
/// system had allocated but not written) follows the bytes the record claims; a record
/// with whole bytes after it was corrupted after it was written.
fn is_torn_tail(io: &dyn SegmentIo, at: Pos, last: u32) -> Result<bool, StoreError> {
    for seg in at.seg + 1..=last {
        if io.len(seg)? > 0 {
            return Ok(false);
        }
    }
    let len = io.len(at.seg)?;
    let start = u64::from(at.off);
    let head = io.read_at(at.seg, start, HEADER.min((len - start.min(len)) as usize))?;
    // Past the record's claimed end (a length nobody could have written: past its header).
    let claimed = match head.get(0..4) {
        Some(b) => u64::from(u32::from_le_bytes(b.try_into().expect("4 bytes"))),
        None => 0,
    };
    let after = (start + HEADER as u64)
        .saturating_add(claimed)
        .min(len)
        .max(start + head.len() as u64);
    if after >= len {
        return Ok(true);
    }
    let rest = io.read_at(at.seg, after, (len - after) as usize)?;
    Ok(rest.iter().all(|&b| b == 0))
}

/// The open database and its one tree.
#[derive(Clone)]
struct Handles {
    db: sled::Db,
    tree: sled::Tree,
}

impl Handles {
    fn open(dir: &Path) -> Result<Handles, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(BACKGROUND_FLUSH)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(dir.display().to_string())
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Sled(other),
            })?;
        let tree = db.open_tree("logwarden")?;
        Ok(Handles { db, tree })
    }
}

impl SledEngine {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let handles = Handles::open(dir)?;
        let deferred = Deferred::recover(dir, &handles)?;
        Ok(SledEngine {
            dir: dir.to_path_buf(),
            open: RwLock::new(Some(handles)),
            deferred: Mutex::new(deferred),
        })
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The overlay's entries from `from` (inclusive) to `to` (exclusive, `None`: no end).
    fn overlay_range(&self, from: &[u8], to: Option<&[u8]>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let end = match to {
            Some(to) => Bound::Excluded(to.to_vec()),
            None => Bound::Unbounded,
        };
        self.deferred()
            .overlay
            .range((Bound::Included(from.to_vec()), end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The open database (cheap clones of sled's handles, so no lock is held while sled
    /// works).
    fn handles(&self) -> Result<Handles, StoreError> {
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.deferred().overlay.get(key) {
            return Ok(value.clone());
        }
        // Not in the overlay: a checkpoint since the look-up put nothing newer in sled.
        Ok(self.handles()?.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if self
            .open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(StoreError::Reopening);
        }
        let record = deflate_changes(writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
        let mut deferred = self.deferred();
        deferred.wal.append(BATCH, &record)?;
        for (key, value) in writes {
            deferred.bytes += (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
            deferred.overlay.insert(key, value);
        }
        Ok(())
    }

    fn range<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<Pair, StoreError>> + 'a> {
        let tree = match self.handles() {
            Ok(h) => h.tree,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        // The overlay first (a checkpoint after this puts the same values in sled).
        let overlay = self.overlay_range(from, to);
        let iter = match to {
            Some(to) => tree.range(from.to_vec()..to.to_vec()),
            None => tree.range(from.to_vec()..),
        };
        // The journal position is the engine's own record, not one of the caller's.
        let tree = iter
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .filter(|item| !matches!(item, Ok((k, _)) if k == COVERED_KEY));
        Box::new(Merged {
            overlay: overlay.into_iter().peekable(),
            tree: tree.peekable(),
        })
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        let end = super::engine::prefix_end(prefix);
        let overlay = self.overlay_range(prefix, end.as_deref());
        let newest_overlay = overlay
            .iter()
            .rev()
            .find_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())));
        // sled's last key not removed (or replaced) in the overlay.
        let mut newest_tree = None;
        for item in self.handles()?.tree.scan_prefix(prefix).rev() {
            let (k, v) = item?;
            if k == COVERED_KEY {
                continue;
            }
            match overlay.binary_search_by(|(o, _)| o.as_slice().cmp(&k)) {
                Ok(_) => continue,
                Err(_) => {
                    newest_tree = Some((k.to_vec(), v.to_vec()));
                    break;
                }
            }
        }
        Ok(match (newest_overlay, newest_tree) {
            (Some(o), Some(t)) => Some(if o.0 >= t.0 { o } else { t }),
            (o, t) => o.or(t),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        let handles = self.handles()?;
        let mut deferred = self.deferred();
        deferred.wal.sync()?;
        if deferred.due() {
            deferred.checkpoint(&handles)?;
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        self.deferred().due()
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        let overlay_empty = self.deferred().overlay.values().all(Option::is_none);
        let tree = self.handles()?.tree;
        let tree_empty = tree.is_empty() || (tree.len() == 1 && tree.contains_key(COVERED_KEY)?);
        Ok(overlay_empty && tree_empty)
    }

    fn ids_above(&self) -> Result<u64, StoreError> {
        // sled reserves id ranges durably and skips ahead after a crash.
        Ok(self.handles()?.db.generate_id()? + 1)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.open.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        let handles = loop {
            match Handles::open(&self.dir) {
                Ok(handles) => break handles,
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        // What was applied is in the journal (synced or not): it goes to sled again.
        let mut deferred = self.deferred();
        *deferred = Deferred::recover(&self.dir, &handles)?;
        *self.open.write().unwrap_or_else(|e| e.into_inner()) = Some(handles);
        Ok(())
    }
}

/// The overlay's entries merged over sled's pairs, both in key order: the overlay's value
/// wins, its removals hide sled's pair.
struct Merged<O: Iterator, T: Iterator> {
    overlay: std::iter::Peekable<O>,
    tree: std::iter::Peekable<T>,
}

impl<O, T> Iterator for Merged<O, T>
where
    O: Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    T: Iterator<Item = Result<Pair, StoreError>>,
{
    type Item = Result<Pair, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.overlay.peek(), self.tree.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) | (Some(_), Some(Err(_))) => std::cmp::Ordering::Greater,
                (Some((o, _)), Some(Ok((t, _)))) => o.cmp(t),
            };
            if order == std::cmp::Ordering::Equal {
                // Replaced or removed in the overlay.
                self.tree.next();
            }
            if order != std::cmp::Ordering::Greater {
                let (key, value) = self.overlay.next().expect("peeked");
                match value {
                    Some(value) => return Some(Ok((key, value))),
                    None => continue,
                }
            }
            return self.tree.next();
        }
    }
}

#[cfg(test)]
mod tests;
