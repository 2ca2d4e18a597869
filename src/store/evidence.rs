//! Evidence lines stored once: the single writer remembers where each line it stored is,
//! so a window or incident that shows a line again writes only its place; blocks no record
//! references any more are collected once their lines are older than every rule's horizon.

use super::codec::{CodecError, Loc, line_hash};
use super::{Batch, Space, Store, StoreError};
use crate::base::evidence::Evidence;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the lines this writer stored (or read back) are. Forgetting one costs only
/// storing it again, so the map is trimmed with the blocks.
pub struct EvidenceLog {
    /// Line hash to place ([`line_hash`] under `seed`).
    stored: foldhash::HashMap<u64, Loc>,
    seed: foldhash::quality::RandomState,
    /// Added to the batch being built, not yet committed.
    pending: Vec<u64>,
    /// Which places held lines may remember from this writer ([`super::codec::PlaceMemo`]): unique
    /// in the process, and new whenever a place it gave may no longer hold (a batch
    /// abandoned, blocks collected), so no line shows a place from before.
    generation: u32,
}

/// The last [`EvidenceLog`] generation handed out.
static GENERATIONS: AtomicU32 = AtomicU32::new(0);

/// A generation no other writer of this process has (after four billion it wraps, never
/// to 0 or `u32::MAX`: a place remembered that many generations ago is long forgotten).
fn next_generation() -> u32 {
    loop {
        let g = GENERATIONS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if g != 0 && g != u32::MAX {
            return g;
        }
    }
}

impl Default for EvidenceLog {
    fn default() -> Self {
        EvidenceLog {
            stored: Default::default(),
            seed: Default::default(),
            pending: Vec::new(),
            generation: next_generation(),
        }
    }
}

impl EvidenceLog {
    /// The generation whose places held lines may remember: any place [`EvidenceLog::store`]
    /// gave since it began still holds (stored, or in the batch being built).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Where the line is stored: where it already was, else in `batch`'s block.
    pub fn store(&mut self, store: &Store, batch: &mut Batch, e: &Evidence) -> Loc {
        let hash = line_hash(&self.seed, e);
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
        self.stored.insert(line_hash(&self.seed, e), loc);
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
        self.generation = next_generation();
    }

    /// How many lines the writer knows the place of.
    pub fn remembered(&self) -> usize {
        self.stored.len()
    }

    /// Deletes, into `batch`, the blocks none of the `referenced` lines is in whose lines
    /// are all older than `before_ms`, and forgets every line no record references (called
    /// between commits, when the stored records are all the references there are, so a
    /// forgotten line is never shown again). Returns how many blocks go.
    pub fn collect(
        &mut self,
        store: &Store,
        referenced: &HashSet<Loc>,
        before_ms: i64,
        batch: &mut Batch,
    ) -> Result<usize, StoreError> {
        let blocks: HashSet<u64> = referenced.iter().map(|loc| loc.block).collect();
        let mut gone = HashSet::new();
        for (block, newest_ms) in store.evidence_blocks() {
            if blocks.contains(&block) || newest_ms >= before_ms {
                continue;
            }
            batch.remove(Space::Evidence, &block_key(block));
            gone.insert(block);
        }
        self.stored.retain(|_, loc| referenced.contains(loc));
        if !gone.is_empty() {
            self.generation = next_generation();
        }
        store.forget_blocks(&gone);
        Ok(gone.len())
    }
}

/// The store key of evidence block `block`.
pub fn block_key(block: u64) -> [u8; 8] {
    block.to_be_bytes()
}

/// Reads the evidence line at `loc` from `store`.
pub fn resolve(store: &Store, loc: Loc) -> Result<Evidence, CodecError> {
    store.evidence(loc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn line(ms: i64, text: &str) -> Evidence {
        Evidence {
            source: "auth".into(),
            path: "auth.log".into(),
            offset: ms as u64,
            time: DateTime::from_timestamp_millis(ms).unwrap(),
            line: text.into(),
        }
    }

    #[test]
    fn a_line_is_stored_once_and_blocks_nobody_references_are_collected_once_old() {
        let store = Store::memory();
        let mut log = EvidenceLog::default();
        // Commit 1: two old lines; commit 2: one of them again (no new block) and a young one.
        let mut batch = Batch::new();
        let kept = log.store(&store, &mut batch, &line(1_000, "kept"));
        let dropped = log.store(&store, &mut batch, &line(2_000, "dropped"));
        store.commit(batch).unwrap();
        log.committed();
        let mut batch = Batch::new();
        assert_eq!(log.store(&store, &mut batch, &line(1_000, "kept")), kept);
        let young = log.store(&store, &mut batch, &line(90_000, "young"));
        assert_ne!(young.block, kept.block);
        store.commit(batch).unwrap();
        log.committed();
        assert_eq!(store.evidence_blocks().len(), 2);

        // Only `kept` is referenced: its block stays (with `dropped` in it); the young block
        // is not referenced but not past the horizon either.
        let mut batch = Batch::new();
        let referenced = HashSet::from([kept]);
        assert_eq!(
            log.collect(&store, &referenced, 50_000, &mut batch)
                .unwrap(),
            0
        );
        store.commit(batch).unwrap();
        assert_eq!(store.evidence(dropped).unwrap().line.as_ref(), "dropped");
        // Nothing referenced: the old block goes, the young one stays.
        let mut batch = Batch::new();
        assert_eq!(
            log.collect(&store, &HashSet::new(), 50_000, &mut batch)
                .unwrap(),
            1
        );
        store.commit(batch).unwrap();
        assert!(store.evidence(kept).is_err());
        assert_eq!(store.evidence(young).unwrap().line.as_ref(), "young");
        assert_eq!(log.remembered(), 0, "unreferenced lines are forgotten");
        // An abandoned batch's lines are not taken for stored.
        let mut batch = Batch::new();
        let again = log.store(&store, &mut batch, &line(1_000, "kept"));
        log.abandoned();
        drop(batch);
        let mut batch = Batch::new();
        assert_ne!(log.store(&store, &mut batch, &line(1_000, "kept")), again);
    }
}
