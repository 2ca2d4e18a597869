//! The store: every table's layout ([`schema`]), its codecs ([`codec`]), its format version,
//! over a storage engine ([`engine`]: [`sled`] on disk, [`memory`] for tools and tests) for
//! the small structured records and append-only segment journals ([`segments`],
//! [`segmented`]) for the high-volume ones (evidence blocks, detection windows). Domain code
//! reads and writes through here, never through the engine or the journals.
//!
//! One ordered key space with a prefix per table lets a whole pipeline step (incident
//! changes, window state, file checkpoints and journal cursors) be written as one atomic
//! batch: after a crash either all of a step is there or none of it, and the replayed
//! lines redo exactly the missing part.
//!
//! Rewriting an older format needs the codecs of the records themselves (incidents,
//! windows), which store through here; so the rewrite lives above the store
//! (`crate::writer::upgrade`, which also defines `Store::open`) and is handed in as an [`Upgrade`]:
//! the store depends on no domain module. A write set is a [`Batch`] ([`batch`]).

mod batch;
pub mod codec;
pub mod engine;
pub mod evidence;
pub mod memory;
pub mod schema;
pub mod segmented;
pub mod segments;
pub mod sled;

use crate::base::evidence::Evidence;
pub use batch::Batch;
use codec::{CodecError, Loc};
use engine::{Engine, prefix_end};
pub use schema::Space;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The layout of records this release reads and writes. A state directory without a
/// marker was written by a release before markers existed (format 1); one with a larger
/// number was written by a newer release and is refused rather than misread.
pub const FORMAT: u64 = 4;
/// Meta key of the format marker.
const FORMAT_KEY: &[u8] = b"format";
/// Meta key of the next id to hand out.
const NEXT_ID_KEY: &[u8] = b"next_id";
/// Decoded evidence blocks kept for reads (restoring windows, API pages).
const BLOCKS_CACHED: usize = 64;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is open in another process (sled holds a file lock).
    #[error(
        "the state directory {0} is in use by another process (is the daemon running? stop it or work on a copy)"
    )]
    Locked(String),
    /// sled failed.
    #[error("store error: {0}")]
    Sled(#[from] ::sled::Error),
    /// A record could not be (de)serialised.
    #[error("store record error: {0}")]
    Record(#[from] serde_json::Error),
    /// The database is closed for a moment while it is reopened after an I/O error.
    #[error("the store is being reopened after an I/O error")]
    Reopening,
    /// A binary record could not be decoded.
    #[error("store record error: {0}")]
    Codec(#[from] codec::CodecError),
    /// A segment journal could not be written or read (a full disk, a failing one).
    #[error("store segment error: {0}")]
    Segment(#[from] std::io::Error),
    /// A write-ahead journal record that is not a torn last record cannot be read: the
    /// store refuses to open rather than drop the committed writes after it.
    #[error(
        "the store journal {file} is corrupt at byte {offset} ({reason}); refusing to open rather than drop the committed writes recorded after it: restore the state directory from a backup, or move {file} aside to lose what it and the later journal files hold"
    )]
    CorruptJournal {
        /// The journal segment file.
        file: String,
        /// Where the record starts in it.
        offset: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The state directory was written by a newer release.
    #[error(
        "the state directory {dir} holds store format {found}, newer than the format {supported} this release reads: run the release that wrote it (or a newer one), or start from an empty state directory"
    )]
    NewerFormat {
        /// The state directory.
        dir: String,
        /// Its format.
        found: u64,
        /// The newest format this release reads.
        supported: u64,
    },
}

/// A record's key (without its prefix) and undecoded value.
pub type RawRecord = (Vec<u8>, Vec<u8>);

/// Rewrites the records of a store of an older format (the `u64`) into `batch`, which also
/// sets the new format marker, so a crash during the rewrite leaves the old format whole.
pub type Upgrade = fn(&Store, u64, &mut Batch) -> Result<(), StoreError>;

/// Handle to the store; cheap to clone and safe to share across threads. Every clone sees
/// the same database, also after [`Store::reopen`].
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    /// Evidence blocks read lately, decoded (blocks never change; collected ones are
    /// forgotten).
    blocks: Arc<Mutex<HashMap<u64, Arc<Vec<Evidence>>>>>,
    /// The next id to hand out (see [`Batch::take_id`]), shared by every handle.
    ids: Arc<Mutex<u64>>,
    /// The tables kept in segment journals; its lock also orders commits.
    segmented: Arc<Mutex<segmented::Segmented>>,
    /// The evidence journal's segments, read without the commit lock.
    evidence_io: Arc<dyn segments::SegmentIo>,
    /// Bytes committed so far, by where they went.
    written: Arc<Mutex<segmented::Written>>,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, rewriting an older format with
    /// `upgrade` first: the engine in `dir/db`, the journals in `dir/evidence` and
    /// `dir/windows`. Callers use `Store::open` (in `crate::writer::upgrade`), which supplies it.
    pub fn open_with(dir: &Path, upgrade: Upgrade) -> Result<Store, StoreError> {
        let engine = sled::SledEngine::open(dir)?;
        let evidence = segments::FileSegments::open(dir.join("evidence"))?;
        let windows = segments::FileSegments::open(dir.join("windows"))?;
        Store::on(
            Arc::new(engine),
            Arc::new(evidence),
            Arc::new(windows),
            &dir.display().to_string(),
            upgrade,
        )
    }

    /// A store in memory, empty: the same layout, codecs and journals, nothing on disk.
    pub fn memory() -> Store {
        // Empty, so of the current format: there is nothing to rewrite.
        let nothing_to_rewrite: Upgrade = |_, _, _| Ok(());
        Store::on(
            Arc::new(memory::MemoryEngine::default()),
            Arc::new(segments::MemorySegments::default()),
            Arc::new(segments::MemorySegments::default()),
            "(memory)",
            nothing_to_rewrite,
        )
        .expect("an empty store in memory opens")
    }

    /// The store over `engine` and the journals' segments, checked for its format
    /// (`place` names it in errors; `upgrade` rewrites an older one).
    fn on(
        engine: Arc<dyn Engine>,
        evidence: Arc<dyn segments::SegmentIo>,
        windows: Arc<dyn segments::SegmentIo>,
        place: &str,
        upgrade: Upgrade,
    ) -> Result<Store, StoreError> {
        let segmented = segmented::Segmented::load(engine.as_ref(), evidence.clone(), windows)?;
        let mut store = Store {
            engine,
            blocks: Arc::new(Mutex::new(HashMap::new())),
            ids: Arc::new(Mutex::new(0)),
            segmented: Arc::new(Mutex::new(segmented)),
            evidence_io: evidence,
            written: Arc::default(),
        };
        // A store without a marker is empty (new) or of format 1, which had none.
        let found = match store.get::<u64>(Space::Meta, FORMAT_KEY)? {
            Some(found) => found,
            None if store.engine.is_empty()? => FORMAT,
            None => 1,
        };
        if found > FORMAT {
            return Err(StoreError::NewerFormat {
                dir: place.to_string(),
                found,
                supported: FORMAT,
            });
        }
        // Ids continue above every id stored and every id sled handed out (format 1 took
        // ids from sled; its counter survives crashes by skipping ahead).
        let stored_next = store.get::<u64>(Space::Meta, NEXT_ID_KEY)?.unwrap_or(0);
        store.ids = Arc::new(Mutex::new(stored_next.max(store.engine.ids_above()?)));
        // The rewrite and the new marker are one commit: a crash leaves format 1 whole.
        let mut batch = Batch::new();
        if found < FORMAT {
            upgrade(&store, found, &mut batch)?;
            tracing::info!(dir = %place, from = found, to = FORMAT, "state directory migrated");
        }
        if found < FORMAT || store.get::<u64>(Space::Meta, FORMAT_KEY)?.is_none() {
            batch.put(Space::Meta, FORMAT_KEY, &FORMAT)?;
            store.commit(batch)?;
            store.flush_blocking()?;
        }
        Ok(store)
    }

    /// Applies a batch atomically (not yet durable: see [`Store::flush`]). Its evidence
    /// block and window changes are appended to their journals and synced first; the
    /// engine batch then records where the journals end, so a crash before it leaves
    /// records nothing points at (cut off at the next start).
    pub fn commit(&self, mut batch: Batch) -> Result<(), StoreError> {
        batch.seal();
        if batch.empty {
            return Ok(());
        }
        let mut segmented = self.segmented.lock().expect("segments lock");
        let mut prepared = segmented.prepare(
            std::mem::take(&mut batch.blocks),
            std::mem::take(&mut batch.windows),
            std::mem::take(&mut batch.dropped),
        )?;
        let mut writes = batch.writes;
        writes.append(&mut prepared.writes);
        let mut engine_bytes: u64 = writes
            .iter()
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        let applied = if batch.took_ids {
            // The high mark read and applied under the ids lock: a commit that took ids
            // earlier cannot store a lower mark after one that took them later.
            let next = self.ids.lock().expect("ids lock");
            let key = Space::Meta.key(NEXT_ID_KEY);
            let value = serde_json::to_vec(&*next)?;
            engine_bytes += (key.len() + value.len()) as u64;
            writes.push((key, Some(value)));
            self.engine.apply(writes)
        } else {
            self.engine.apply(writes)
        };
        match applied {
            Ok(()) => {
                let mut written = self.written.lock().expect("written lock");
                written.engine += engine_bytes;
                written.evidence += prepared.appended.evidence;
                written.window_changes += prepared.appended.window_changes;
                written.window_snapshots += prepared.appended.window_snapshots;
                drop(written);
                segmented.committed(prepared);
                Ok(())
            }
            Err(e) => {
                segmented.abandoned(prepared);
                Err(e)
            }
        }
    }

    /// Bytes committed through this handle's store since it was opened, by where they went.
    pub fn written(&self) -> segmented::Written {
        *self.written.lock().expect("written lock")
    }

    /// Closes the database and opens it again, for every clone of this handle. After an
    /// I/O error (a full disk) sled refuses every later write until it is reopened; what
    /// was committed but not yet flushed may be gone afterwards, so a writer re-commits
    /// what it could not make durable.
    pub fn reopen(&self) -> Result<(), StoreError> {
        self.blocks.lock().expect("blocks lock").clear();
        let mut segmented = self.segmented.lock().expect("segments lock");
        self.engine.reopen()?;
        // The journals follow the engine back to what it kept.
        segmented.reload(self.engine.as_ref())
    }

    /// Makes everything committed so far durable on disk (on the blocking pool: the
    /// engine's flush waits for the disk).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|e| StoreError::Sled(::sled::Error::ReportableBug(e.to_string())))?
    }

    /// Brings the committed window table up to date with the commits so far (it is
    /// otherwise brought up to date by the next commit or window read): a writer that has
    /// time between commits does it then, so the next commit does not wait for it.
    pub fn catch_up_windows(&self) {
        self.segmented.lock().expect("segments lock").windows();
    }

    /// Whether [`Store::flush`] has work to do without a commit (see
    /// [`engine::Engine::checkpoint_due`]).
    pub fn checkpoint_due(&self) -> bool {
        self.engine.checkpoint_due()
    }

    /// Blocking variant of [`Store::flush`] for threads outside the runtime. Once the
    /// engine's state is durable, journal segments it no longer points into are removed
    /// (the bounds are taken before the flush, so they never run ahead of it).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let bounds = self.segmented.lock().expect("segments lock").bounds();
        self.engine.flush()?;
        self.segmented
            .lock()
            .expect("segments lock")
            .collect(bounds);
        Ok(())
    }

    /// Live evidence blocks and the time (ms) of each one's newest line.
    pub fn evidence_blocks(&self) -> Vec<(u64, i64)> {
        self.segmented
            .lock()
            .expect("segments lock")
            .evidence_blocks()
    }

    /// The records the engine itself holds in a table (a migration reading what an older
    /// format kept there).
    pub(crate) fn engine_records(&self, space: Space) -> Result<Vec<RawRecord>, StoreError> {
        let from = space.key(b"");
        let to = prefix_end(&from);
        let skip = from.len();
        self.engine
            .range(&from, to.as_deref())
            .map(|item| item.map(|(k, v)| (k[skip..].to_vec(), v)))
            .collect()
    }

    /// The pairs of a table whose keys (without the table's prefix) start with `within`,
    /// in key order, keys without the table's prefix.
    fn within<'a>(
        &'a self,
        space: Space,
        within: &[u8],
    ) -> Box<dyn Iterator<Item = Result<RawRecord, StoreError>> + 'a> {
        if space == Space::Windows {
            let mut segmented = self.segmented.lock().expect("segments lock");
            let mut records: Vec<RawRecord> = segmented
                .windows()
                .iter()
                .filter(|(k, _)| k.starts_with(within))
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            drop(segmented);
            records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            return Box::new(records.into_iter().map(Ok));
        }
        let from = space.key(within);
        let to = prefix_end(&from);
        let skip = space.prefix().len();
        Box::new(
            self.engine
                .range(&from, to.as_deref())
                .map(move |item| item.map(|(k, v)| (k[skip..].to_vec(), v))),
        )
    }

    /// The evidence line at `loc`.
    pub fn evidence(&self, loc: Loc) -> Result<Evidence, CodecError> {
        let missing = || CodecError::MissingEvidence(loc.to_string());
        let cached = self
            .blocks
            .lock()
            .expect("blocks lock")
            .get(&loc.block)
            .cloned();
        let lines = match cached {
            Some(lines) => lines,
            None => {
                let pointer = self
                    .get_raw(Space::Evidence, &evidence::block_key(loc.block))
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot read an evidence block");
                        missing()
                    })?
                    .ok_or_else(missing)?;
                let bytes = segmented::read_block(self.evidence_io.as_ref(), &pointer)?;
                let lines = Arc::new(codec::decode_block(&bytes)?);
                let mut blocks = self.blocks.lock().expect("blocks lock");
                if blocks.len() >= BLOCKS_CACHED {
                    blocks.clear();
                }
                blocks.insert(loc.block, lines.clone());
                lines
            }
        };
        lines.get(loc.index as usize).cloned().ok_or_else(missing)
    }

    /// Drops collected blocks from the cache of decoded ones.
    pub fn forget_blocks(&self, gone: &std::collections::HashSet<u64>) {
        self.blocks
            .lock()
            .expect("blocks lock")
            .retain(|b, _| !gone.contains(b));
    }

    /// Reads one record's bytes (an evidence block's: where it is in its journal).
    pub fn get_raw(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if space == Space::Windows {
            let mut segmented = self.segmented.lock().expect("segments lock");
            return Ok(segmented.windows().get(key).map(|v| v.to_vec()));
        }
        self.engine.get(&space.key(key))
    }

    /// Every record of a kind whose key (without the kind's prefix) starts with `within`,
    /// undecoded, in key order.
    pub fn scan_prefix_raw(
        &self,
        space: Space,
        within: &[u8],
    ) -> Result<Vec<RawRecord>, StoreError> {
        self.within(space, within).collect()
    }

    /// Keys of the records of a kind from `from` (inclusive) to `to` (exclusive), without
    /// their prefix.
    pub fn keys_between(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let skip = space.prefix().len();
        self.engine
            .range(&space.key(from), Some(&space.key(to)))
            .map(|item| item.map(|(k, _)| k[skip..].to_vec()))
            .collect()
    }

    /// Reads one JSON record of a kind by key, `None` when there is none; binary records
    /// (windows, evidence) are read with [`Store::get_raw`] and their codec.
    pub fn get<T: DeserializeOwned>(
        &self,
        space: Space,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.engine.get(&space.key(key))? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The keys of every record of a kind, in order.
    pub fn keys(&self, space: Space) -> Result<Vec<Vec<u8>>, StoreError> {
        self.within(space, b"")
            .map(|item| item.map(|(k, _)| k))
            .collect()
    }

    /// The last record of a kind in key order, undecoded (the audit log's head).
    pub fn last_raw(&self, space: Space) -> Result<Option<RawRecord>, StoreError> {
        let skip = space.prefix().len();
        Ok(self
            .engine
            .last_with_prefix(space.prefix())?
            .map(|(k, v)| (k[skip..].to_vec(), v)))
    }

    /// Every record of a kind in key order, undecoded, so a checker can report an
    /// unreadable record at its position instead of skipping it.
    pub fn scan_raw(&self, space: Space) -> Result<Vec<RawRecord>, StoreError> {
        self.within(space, b"").collect()
    }

    /// Records of a kind in key order after the key `after` (from the first without it),
    /// decoded by `decode` (`None`: not wanted), at most `limit` of them, and the key to
    /// continue after when there may be more. Reads only as far as the page needs, so a
    /// page costs the same however many records there are (unless most are not wanted).
    pub fn page<T>(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
        mut decode: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
    ) -> Result<(Vec<T>, Option<Vec<u8>>), StoreError> {
        let prefix = space.prefix();
        let start = match after {
            // The smallest key greater than `prefix + after`.
            Some(after) => {
                let mut k = space.key(after);
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let end = prefix_end(prefix);
        let mut out: Vec<(Vec<u8>, T)> = Vec::new();
        for item in self.engine.range(&start, end.as_deref()) {
            let (key, value) = item?;
            let key = &key[prefix.len()..];
            if out.len() == limit {
                // More records follow: the next page starts after this page's last.
                let next = out.last().map(|(k, _): &(Vec<u8>, T)| k.clone());
                return Ok((out.into_iter().map(|(_, v)| v).collect(), next));
            }
            match decode(key, &value) {
                Ok(Some(v)) => out.push((key.to_vec(), v)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "skipping unreadable store record")
                }
            }
        }
        Ok((out.into_iter().map(|(_, v)| v).collect(), None))
    }

    /// Every record of a kind, in key order; unreadable records are skipped with a warning
    /// rather than failing the whole scan.
    pub fn scan<T: DeserializeOwned>(&self, space: Space) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        self.scan_under(space, b"")
    }

    /// [`Store::scan`] of the records of a kind whose keys start with `under`.
    pub fn scan_under<T: DeserializeOwned>(
        &self,
        space: Space,
        under: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.within(space, under) {
            let (key, value) = item?;
            match serde_json::from_slice(&value) {
                Ok(v) => out.push((key, v)),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "skipping unreadable store record")
                }
            }
        }
        Ok(out)
    }
}

/// Writes a format marker into the store in `dir` (creating it), for tests of what a
/// release does with a state directory of another format.
#[doc(hidden)]
pub fn mark_format_for_test(dir: &Path, format: u64) -> Result<(), StoreError> {
    let store = Store::open(dir)?;
    let mut batch = Batch::new();
    batch.put(Space::Meta, FORMAT_KEY, &format)?;
    store.commit(batch)?;
    store.flush_blocking()
}

#[cfg(test)]
mod tests;
