//! The store's high-volume tables, kept in segment journals ([`super::segments`]) instead
//! of the engine: evidence blocks (`ev/`: the engine holds a 17-byte pointer per block)
//! and detection windows (`win/`: the engine holds nothing per window). Every commit
//! appends its evidence block and its window changes, syncs them, and only then applies
//! the engine batch, which records where both journals end ([`Ends`]). A restart reads the
//! windows back from the last snapshot up to that end; whatever lies past it was never
//! committed and is cut off.
//!
//! Windows are journaled as changes (key → new value or removal), deflated, one record
//! per commit; once the changes since the last snapshot outweigh it, a commit writes a
//! whole snapshot instead and the segments before it are dropped. The committed windows
//! are kept in memory (what a restart would read back), so reading them costs no I/O.

use super::StoreError;
use super::codec;
use super::engine::{Engine, Write, prefix_end};
use super::schema::Space;
use super::segments::{Journal, Pos, SegmentError, SegmentIo, read};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::sync::Arc;

/// Record kinds.
const EVIDENCE_BLOCK: u8 = 1;
const WINDOW_CHANGES: u8 = 2;
const WINDOW_SNAPSHOT: u8 = 3;
/// First byte of an evidence pointer (an inline block of format 2 starts with 1).
const POINTER_TAG: u8 = 0xB1;
/// Changes journaled since the last snapshot before a new one is considered (small in
/// unit tests, so a few commits take several snapshots).
const SNAPSHOT_MIN_BYTES: u64 = if cfg!(test) { 16 << 10 } else { 1 << 20 };
/// Meta key of the committed journal ends.
pub(super) const ENDS_KEY: &[u8] = b"segments";
/// Most bytes a window record inflates to (bounds a corrupt one).
const MAX_WINDOW_RECORD: u64 = 1 << 30;

/// Where the journals ended at the last commit, stored by that commit (packed [`Pos`]).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Ends {
    evidence: u64,
    windows: u64,
    /// The last window snapshot: where a restart starts reading windows.
    windows_from: u64,
}

/// A window change: key (without prefix) and its new value, `None` to remove it. Shared,
/// not owned: a commit's batch is cloned (so a failed commit can be retried) and its
/// changes end up in the table, and neither copies the bytes.
pub(super) type Change = (Arc<[u8]>, Option<Arc<[u8]>>);

/// The committed windows, key to encoded window. A hash table, not a tree: every commit
/// replaces thousands of entries, while the ordered reads (a restart, evidence collection)
/// are rare and sort what they take.
pub(super) type WindowTable = foldhash::HashMap<Arc<[u8]>, Arc<[u8]>>;

/// The journals, the committed windows and where each live evidence block is.
pub(super) struct Segmented {
    evidence: Journal,
    windows: Journal,
    ends: Ends,
    table: WindowTable,
    /// Committed window changes not yet in `table`: the next commit applies them on its
    /// deflating thread, a read before that on its own (so the pipeline thread does not).
    unapplied: Vec<Change>,
    /// Bytes of window changes journaled since the last snapshot, and that snapshot's size.
    since_snapshot: u64,
    snapshot_bytes: u64,
    /// Live evidence blocks: segment and newest line time (ms).
    blocks: HashMap<u64, (u32, i64)>,
}

/// A commit's journal records, appended and synced, waiting for the engine batch.
pub(super) struct Prepared {
    /// Evidence pointers and the new ends, to apply with the batch.
    pub writes: Vec<Write>,
    changes: Vec<Change>,
    added: Vec<(u64, (u32, i64))>,
    dropped: Vec<u64>,
    ends: Ends,
    before: (Pos, Pos),
    snapshot: Option<u64>,
    change_bytes: u64,
    /// Bytes appended to the journals (headers included), by record kind.
    pub appended: Written,
}

/// Bytes the store handed to the disk, by where they went: the engine (keys and values of
/// its batches) and the journals (records with their headers, by kind).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Keys and values applied by the engine.
    pub engine: u64,
    /// Bytes of sealed evidence blocks appended to the evidence journal.
    pub evidence: u64,
    /// Bytes of incremental window change records appended to the window journal.
    pub window_changes: u64,
    /// Bytes of whole window tables appended to the window journal (taken once the changes
    /// since the last one outgrow it, so older segments can go).
    pub window_snapshots: u64,
}

/// Where to cut the journals once the engine state that no longer needs them is durable.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    evidence: u32,
    windows: u32,
}

impl Segmented {
    /// The journals over `evidence` and `windows`, cut back to the ends `engine` holds,
    /// and the windows they hold.
    pub fn load(
        engine: &dyn Engine,
        evidence: Arc<dyn SegmentIo>,
        windows: Arc<dyn SegmentIo>,
    ) -> Result<Segmented, StoreError> {
        let ends: Ends = match engine.get(&Space::Meta.key(ENDS_KEY))? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => Ends::default(),
        };
        let evidence = Journal::recover(evidence, Pos::unpack(ends.evidence))?;
        let windows = Journal::recover(windows, Pos::unpack(ends.windows))?;
        let mut table = WindowTable::default();
        let (mut since_snapshot, mut snapshot_bytes) = (0, 0);
        for record in windows.records(Pos::unpack(ends.windows_from), windows.end()) {
            let (at, kind, payload) = match record {
                Ok(record) => record,
                Err(e) => {
                    // Windows are caches of counts: what cannot be read starts again.
                    tracing::error!(error = %e, "window journal unreadable; the windows after it start again");
                    break;
                }
            };
            let changes = match inflate_changes(&payload) {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::error!(at = %at, error = %e, "window record unreadable; the windows after it start again");
                    break;
                }
            };
            if kind == WINDOW_SNAPSHOT {
                table.clear();
                snapshot_bytes = payload.len() as u64;
                since_snapshot = 0;
            } else {
                since_snapshot += payload.len() as u64;
            }
            apply(&mut table, changes.into_iter().map(shared));
        }
        let mut blocks = HashMap::new();
        let prefix = Space::Evidence.prefix();
        let end = prefix_end(prefix);
        for item in engine.range(prefix, end.as_deref()) {
            let (key, value) = item?;
            // Inline blocks (format 2) are moved into the journal by the migration.
            if let (Some(block), Some((at, newest))) =
                (block_of(&key[prefix.len()..]), decode_pointer(&value))
            {
                blocks.insert(block, (at.seg, newest));
            }
        }
        Ok(Segmented {
            evidence,
            windows,
            ends,
            table,
            unapplied: Vec::new(),
            since_snapshot,
            snapshot_bytes,
            blocks,
        })
    }

    /// The same journals and engine read again (after the engine was reopened: commits it
    /// lost are cut from the journals too).
    pub fn reload(&mut self, engine: &dyn Engine) -> Result<(), StoreError> {
        let evidence = self.evidence.io().clone();
        let windows = self.windows.io().clone();
        *self = Segmented::load(engine, evidence, windows)?;
        Ok(())
    }

    /// The committed window table (key to encoded window), rebuilt from the last snapshot
    /// and the changes after it; window reads are served from here, not the engine.
    pub fn windows(&mut self) -> &WindowTable {
        apply(&mut self.table, self.unapplied.drain(..));
        &self.table
    }

    /// Live evidence blocks and their newest line time (ms).
    pub fn evidence_blocks(&self) -> Vec<(u64, i64)> {
        self.blocks.iter().map(|(b, (_, ms))| (*b, *ms)).collect()
    }

    /// Appends and syncs a commit's evidence blocks (key, encoded block) and window
    /// changes; `dropped`: blocks the commit removes.
    pub fn prepare(
        &mut self,
        blocks: Vec<(Vec<u8>, Vec<u8>)>,
        changes: Vec<Change>,
        dropped: Vec<u64>,
    ) -> Result<Prepared, StoreError> {
        let before = (self.evidence.end(), self.windows.end());
        match self.append(blocks, changes, dropped, before) {
            Ok(prepared) => Ok(prepared),
            Err(e) => {
                self.evidence.rewind(before.0);
                self.windows.rewind(before.1);
                Err(e)
            }
        }
    }

    fn append(
        &mut self,
        blocks: Vec<(Vec<u8>, Vec<u8>)>,
        changes: Vec<Change>,
        dropped: Vec<u64>,
        before: (Pos, Pos),
    ) -> Result<Prepared, StoreError> {
        let mut writes = Vec::new();
        let mut added = Vec::new();
        let mut appended = Written::default();
        let (table, evidence, windows) = (&mut self.table, &mut self.evidence, &mut self.windows);
        let unapplied = std::mem::take(&mut self.unapplied);
        let (since_snapshot, snapshot_bytes) = (self.since_snapshot, self.snapshot_bytes);
        // The window table catches up with the earlier commits, and this one's window
        // record is deflated, appended and synced, on a thread of their own while the
        // evidence blocks are appended and synced: the pipeline waits for the longer of
        // the two, not both. Both journals are durable before the engine commit that
        // points at them.
        let record = std::thread::scope(|scope| -> Result<_, StoreError> {
            let record = (!changes.is_empty() || !unapplied.is_empty()).then(|| {
                std::thread::Builder::new()
                    .name("store-windows".into())
                    .spawn_scoped(scope, || -> Result<_, StoreError> {
                        apply(table, unapplied);
                        if changes.is_empty() {
                            return Ok(None);
                        }
                        let record = window_record(table, &changes, since_snapshot, snapshot_bytes);
                        let at = match &record {
                            WindowRecord::Snapshot(whole) => {
                                windows.append(WINDOW_SNAPSHOT, whole)?
                            }
                            WindowRecord::Changes(bytes) => {
                                windows.append(WINDOW_CHANGES, bytes)?
                            }
                        };
                        windows.sync()?;
                        Ok(Some((record, at)))
                    })
                    // As `scope.spawn` would: a thread that cannot start is a panic.
                    .expect("starting the store's window thread")
            });
            for (key, bytes) in blocks {
                let block = block_of(&key).ok_or(codec::CodecError::Malformed("evidence key"))?;
                let newest = codec::block_newest_ms(&bytes)?;
                let at = evidence.append(EVIDENCE_BLOCK, &bytes)?;
                appended.evidence += record_size(&bytes);
                writes.push((Space::Evidence.key(&key), Some(encode_pointer(at, newest))));
                added.push((block, (at.seg, newest)));
            }
            evidence.sync()?;
            let Some(windows) = record else {
                return Ok(None);
            };
            windows
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        let mut ends = self.ends;
        let mut snapshot = None;
        let mut change_bytes = 0;
        match record {
            Some((WindowRecord::Snapshot(whole), at)) => {
                ends.windows_from = at.pack();
                snapshot = Some(whole.len() as u64);
                appended.window_snapshots += record_size(&whole);
            }
            Some((WindowRecord::Changes(record), _)) => {
                change_bytes = record.len() as u64;
                appended.window_changes += record_size(&record);
            }
            None => {}
        }
        ends.evidence = self.evidence.end().pack();
        ends.windows = self.windows.end().pack();
        // A commit that appended nothing leaves the ends as they were: no need to store them.
        if (ends.evidence, ends.windows, ends.windows_from)
            != (
                self.ends.evidence,
                self.ends.windows,
                self.ends.windows_from,
            )
        {
            writes.push((Space::Meta.key(ENDS_KEY), Some(serde_json::to_vec(&ends)?)));
        }
        Ok(Prepared {
            writes,
            changes,
            added,
            dropped,
            ends,
            before,
            snapshot,
            change_bytes,
            appended,
        })
    }

    /// The engine applied the batch `prepared` was made for.
    pub fn committed(&mut self, prepared: Prepared) {
        self.unapplied.extend(prepared.changes);
        for block in prepared.dropped {
            self.blocks.remove(&block);
        }
        self.blocks.extend(prepared.added);
        self.ends = prepared.ends;
        match prepared.snapshot {
            Some(bytes) => {
                self.snapshot_bytes = bytes;
                self.since_snapshot = 0;
            }
            None => self.since_snapshot += prepared.change_bytes,
        }
    }

    /// The engine refused the batch: its records are forgotten.
    pub fn abandoned(&mut self, prepared: Prepared) {
        self.evidence.rewind(prepared.before.0);
        self.windows.rewind(prepared.before.1);
    }

    /// Where the journals may be cut once what the engine holds now is durable.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            evidence: self
                .blocks
                .values()
                .map(|(seg, _)| *seg)
                .min()
                .unwrap_or(u32::MAX),
            windows: Pos::unpack(self.ends.windows_from).seg,
        }
    }

    /// Removes the segments before `bounds` (nothing durable points into them).
    pub fn collect(&mut self, bounds: Bounds) {
        for (journal, before) in [
            (&mut self.evidence, bounds.evidence),
            (&mut self.windows, bounds.windows),
        ] {
            match journal.drop_before(before) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(segments = n, "journal segments collected"),
                Err(e) => tracing::warn!(error = %e, "journal segments not collected"),
            }
        }
    }
}

/// The evidence block `pointer` points at, read from `io`.
pub(super) fn read_block(io: &dyn SegmentIo, pointer: &[u8]) -> Result<Vec<u8>, codec::CodecError> {
    let (at, _) =
        decode_pointer(pointer).ok_or(codec::CodecError::Malformed("evidence pointer"))?;
    match read(io, at) {
        Ok((EVIDENCE_BLOCK, bytes)) => Ok(bytes),
        Ok(_) => Err(codec::CodecError::Malformed("not an evidence record")),
        Err(e) => {
            tracing::error!(error = %e, "cannot read an evidence block");
            Err(codec::CodecError::Malformed("evidence record unreadable"))
        }
    }
}

/// Bytes a record with `payload` takes in its journal.
fn record_size(payload: &[u8]) -> u64 {
    (super::segments::HEADER + payload.len()) as u64
}

fn block_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn encode_pointer(at: Pos, newest_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(POINTER_TAG);
    out.extend_from_slice(&at.pack().to_le_bytes());
    out.extend_from_slice(&newest_ms.to_le_bytes());
    out
}

fn decode_pointer(bytes: &[u8]) -> Option<(Pos, i64)> {
    if bytes.len() != 17 || bytes[0] != POINTER_TAG {
        return None;
    }
    let at = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    let newest = i64::from_le_bytes(bytes[9..17].try_into().ok()?);
    Some((Pos::unpack(at), newest))
}

/// A commit's window changes as the window journal takes them.
enum WindowRecord {
    /// The changes alone.
    Changes(Vec<u8>),
    /// The whole table with the changes applied: the changes since the last snapshot
    /// would outgrow it otherwise, and a snapshot lets older segments go.
    Snapshot(Vec<u8>),
}

/// `changes` deflated, or the snapshot of `table` with them applied once the changes since
/// the last snapshot (`since_snapshot` bytes; the last one took `snapshot_bytes`) would
/// outgrow [`SNAPSHOT_MIN_BYTES`] and twice the last snapshot.
fn window_record(
    table: &WindowTable,
    changes: &[Change],
    since_snapshot: u64,
    snapshot_bytes: u64,
) -> WindowRecord {
    let record = deflate_changes(changes.iter().map(|(k, v)| (&**k, v.as_deref())));
    if since_snapshot + record.len() as u64 <= SNAPSHOT_MIN_BYTES.max(2 * snapshot_bytes) {
        return WindowRecord::Changes(record);
    }
    let mut table = table.clone();
    apply(&mut table, changes.iter().cloned());
    WindowRecord::Snapshot(deflate_changes(
        table.iter().map(|(k, v)| (&**k, Some(&**v))),
    ))
}

fn apply(table: &mut WindowTable, changes: impl IntoIterator<Item = Change>) {
    for (key, value) in changes {
        match value {
            Some(value) => table.insert(key, value),
            None => table.remove(&*key),
        };
    }
}

/// A change read back from the journal, as the table holds it.
fn shared((key, value): (Vec<u8>, Option<Vec<u8>>)) -> Change {
    (key.into(), value.map(Into::into))
}

/// Changes as count, then per change key length, key, presence, value length, value (u32
/// LE lengths), deflated.
pub(super) fn deflate_changes<'a>(
    changes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut n = 0u32;
    body.extend_from_slice(&[0; 4]);
    for (key, value) in changes {
        n += 1;
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key);
        match value {
            Some(v) => {
                body.push(1);
                body.extend_from_slice(&(v.len() as u32).to_le_bytes());
                body.extend_from_slice(v);
            }
            None => body.push(0),
        }
    }
    body[0..4].copy_from_slice(&n.to_le_bytes());
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&body).expect("writing to memory");
    z.finish().expect("writing to memory")
}

fn take_bytes<'a>(body: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], SegmentError> {
    let slice = body
        .get(*at..at.saturating_add(n))
        .ok_or(SegmentError::Corrupt(
            Pos::default(),
            "window record cut short",
        ))?;
    *at += n;
    Ok(slice)
}

pub(super) fn inflate_changes(bytes: &[u8]) -> Result<Vec<Write>, SegmentError> {
    let bad = |what| SegmentError::Corrupt(Pos::default(), what);
    let mut body = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(MAX_WINDOW_RECORD)
        .read_to_end(&mut body)
        .map_err(|_| bad("window record does not inflate"))?;
    let mut at = 0usize;
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let n = u32_at(take_bytes(&body, &mut at, 4)?);
    let mut changes = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let klen = u32_at(take_bytes(&body, &mut at, 4)?);
        let key = take_bytes(&body, &mut at, klen)?.to_vec();
        let value = match take_bytes(&body, &mut at, 1)?[0] {
            0 => None,
            _ => {
                let vlen = u32_at(take_bytes(&body, &mut at, 4)?);
                Some(take_bytes(&body, &mut at, vlen)?.to_vec())
            }
        };
        changes.push((key, value));
    }
    Ok(changes)
}
