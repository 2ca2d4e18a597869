//! Evidence lines stored once: the single writer remembers where each line it stored is,
//! so a window or incident that shows a line again writes only its place; blocks no record
//! references any more are collected once their lines are older than every rule's horizon.

use super::codec::{CodecError, Loc, block_newest_ms, line_hash};
use super::{Batch, Space, Store, StoreError};
use crate::detection::Evidence;
use std::collections::{HashMap, HashSet};

/// Where the lines this writer stored (or read back) are. Forgetting one costs only
/// storing it again, so the map is trimmed with the blocks.
#[derive(Default)]
pub struct EvidenceLog {
    stored: HashMap<u64, Loc>,
    /// Added to the batch being built, not yet committed.
    pending: Vec<u64>,
}

impl EvidenceLog {
    /// Where the line is stored: where it already was, else in `batch`'s block.
    pub fn store(&mut self, store: &Store, batch: &mut Batch, e: &Evidence) -> Loc {
        let hash = line_hash(e);
        if let Some(loc) = self.stored.get(&hash) {
            return *loc;
        }
        let loc = batch.add_evidence(store, e);
        self.stored.insert(hash, loc);
        self.pending.push(hash);
        loc
    }

    /// Notes where a line read back from the store is, so it is not stored again.
    pub fn remember(&mut self, e: &Evidence, loc: Loc) {
        self.stored.insert(line_hash(e), loc);
    }

    /// The batch holding the lines added since the last call was committed.
    pub fn committed(&mut self) {
        self.pending.clear();
    }

    /// The batch holding the lines added since the last [`EvidenceLog::committed`] was
    /// dropped: they are not stored.
    pub fn abandoned(&mut self) {
        for hash in self.pending.drain(..) {
            self.stored.remove(&hash);
        }
    }

    /// How many lines the writer knows the place of.
    pub fn remembered(&self) -> usize {
        self.stored.len()
    }

    /// Deletes, into `batch`, the blocks no record in `referenced` names whose lines are
    /// all older than `before_ms`, and forgets the lines in them. Returns how many blocks
    /// go.
    pub fn collect(
        &mut self,
        store: &Store,
        referenced: &HashSet<u64>,
        before_ms: i64,
        batch: &mut Batch,
    ) -> Result<usize, StoreError> {
        let mut gone = HashSet::new();
        for (key, value) in store.scan_raw(Space::Evidence)? {
            let Some(block) = block_id(&key) else {
                continue;
            };
            if referenced.contains(&block) || block_newest_ms(&value)? >= before_ms {
                continue;
            }
            batch.remove(Space::Evidence, &key);
            gone.insert(block);
        }
        self.stored.retain(|_, loc| !gone.contains(&loc.block));
        store.forget_blocks(&gone);
        Ok(gone.len())
    }
}

/// The store key of evidence block `block`.
pub fn block_key(block: u64) -> [u8; 8] {
    block.to_be_bytes()
}

fn block_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Reads the evidence line at `loc` from `store`.
pub fn resolve(store: &Store, loc: Loc) -> Result<Evidence, CodecError> {
    store.evidence(loc)
}
