//! A write set: the changes one [`Store::commit`] applies atomically, sorted by where they
//! go (engine records, the evidence block, window changes), with the ids taken for them.

use super::engine::Write;
use super::{Space, Store, StoreError, codec, evidence, segmented};
use crate::base::evidence::Evidence;
use codec::Loc;
use serde::Serialize;
use std::sync::Arc;

/// Changes written together by [`Store::commit`]; cloneable so a failed commit can be
/// retried with the same changes.
#[derive(Default, Clone)]
pub struct Batch {
    pub(super) writes: Vec<Write>,
    pub(super) empty: bool,
    pub(super) bytes: usize,
    /// Ids were taken for this batch: the commit stores the new high mark with it.
    pub(super) took_ids: bool,
    /// The evidence lines this batch stores, as one block: its id and the lines.
    pub(super) block: Option<(u64, Vec<Evidence>)>,
    /// Sealed evidence blocks (key, encoded) for the evidence journal.
    pub(super) blocks: Vec<(Vec<u8>, Vec<u8>)>,
    /// Window changes for the window journal.
    pub(super) windows: Vec<segmented::Change>,
    /// Evidence blocks this batch removes.
    pub(super) dropped: Vec<u64>,
}

impl Batch {
    /// A batch that changes nothing yet; [`Store::commit`] of it writes nothing at all.
    pub fn new() -> Self {
        Batch {
            writes: Vec::new(),
            empty: true,
            bytes: 0,
            took_ids: false,
            block: None,
            blocks: Vec::new(),
            windows: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Writes a record as JSON.
    pub fn put<T: Serialize>(
        &mut self,
        space: Space,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        self.put_raw(space, key, serde_json::to_vec(value)?);
        Ok(())
    }

    /// Writes a record's bytes as they are (binary codecs). Evidence blocks and windows go
    /// to their journals, everything else to the engine.
    pub fn put_raw(&mut self, space: Space, key: &[u8], value: Vec<u8>) {
        self.bytes += space.prefix().len() + key.len() + value.len();
        self.empty = false;
        match space {
            Space::Evidence => self.blocks.push((key.to_vec(), value)),
            Space::Windows => self.windows.push((key.into(), Some(value.into()))),
            _ => self.writes.push((space.key(key), Some(value))),
        }
    }

    /// Writes (`Some`) or removes (`None`) a window: what [`Batch::put_raw`] and
    /// [`Batch::remove`] do for [`Space::Windows`], with key and value already shared (a
    /// busy commit changes thousands of windows, and the batch is cloned for retries).
    pub fn set_window(&mut self, key: Arc<[u8]>, value: Option<Arc<[u8]>>) {
        self.bytes +=
            Space::Windows.prefix().len() + key.len() + value.as_ref().map_or(0, |v| v.len());
        self.empty = false;
        self.windows.push((key, value));
    }

    /// Deletes a record at the commit; removing an evidence block also lets the journal
    /// segments that only it kept alive be cut.
    pub fn remove(&mut self, space: Space, key: &[u8]) {
        self.bytes += space.prefix().len() + key.len();
        self.empty = false;
        match space {
            Space::Windows => self.windows.push((key.into(), None)),
            Space::Evidence => {
                if let Ok(block) = key.try_into().map(u64::from_be_bytes) {
                    self.dropped.push(block);
                }
                self.writes.push((space.key(key), None));
            }
            _ => self.writes.push((space.key(key), None)),
        }
    }

    /// Removes a record the engine itself holds, whatever table it is in (a migration
    /// moving a table out of the engine).
    pub(crate) fn remove_from_engine(&mut self, space: Space, key: &[u8]) {
        self.writes.push((space.key(key), None));
        self.empty = false;
    }

    /// A number never handed out before, also across restarts and crashes: the high mark
    /// is stored by the commit of this batch, so an id exists exactly when the records
    /// that use it do (a batch never committed wastes its ids, which is harmless).
    pub fn take_id(&mut self, store: &Store) -> u64 {
        let mut next = store.ids.lock().expect("ids lock");
        let id = *next;
        *next += 1;
        self.took_ids = true;
        self.empty = false;
        id
    }

    /// Adds an evidence line to this batch's block; returns where it will be.
    pub fn add_evidence(&mut self, store: &Store, e: &Evidence) -> Loc {
        if self.block.is_none() {
            let id = self.take_id(store);
            self.block = Some((id, Vec::new()));
        }
        let (block, lines) = self.block.as_mut().expect("made above");
        lines.push(e.clone());
        Loc {
            block: *block,
            index: (lines.len() - 1) as u32,
        }
    }

    /// Writes the evidence block (compressed) into the batch; the lines added since are
    /// another block. Done by [`Store::commit`] at the latest.
    pub fn seal(&mut self) {
        if let Some((block, lines)) = self.block.take() {
            self.put_raw(
                Space::Evidence,
                &evidence::block_key(block),
                codec::encode_block(&lines),
            );
        }
    }

    /// Whether the batch neither changes a record nor took an id: [`Store::commit`] then
    /// writes nothing, not even the id high mark.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Bytes of keys and values written (removals count their key).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records the batch writes or removes (window changes included; the evidence lines
    /// not yet sealed count as one block).
    pub fn records(&self) -> usize {
        self.writes.len() + self.windows.len() + usize::from(self.block.is_some())
    }
}
