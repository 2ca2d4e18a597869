//! Evidence lines stored once: the single writer remembers which lines it stored, so a
//! window or incident that references a line again writes only its 16-byte reference; lines
//! no record references any more are collected once they are older than every rule's
//! horizon.

use super::codec::{CodecError, EvidenceRef, decode_evidence, encode_evidence};
use super::{Batch, Space, Store, StoreError};
use crate::detection::Evidence;
use std::collections::HashSet;

/// The evidence lines this writer stored (or found stored) since it started. Forgetting one
/// costs only a rewrite of the same bytes, so the set is trimmed with the records.
#[derive(Default)]
pub struct EvidenceLog {
    written: HashSet<EvidenceRef>,
    /// Added to the batch being built, not yet committed.
    pending: Vec<EvidenceRef>,
}

impl EvidenceLog {
    /// Adds the line to `batch` unless it was stored already.
    pub fn store(&mut self, batch: &mut Batch, r: EvidenceRef, e: &Evidence) {
        if self.written.insert(r) {
            self.pending.push(r);
            batch.put_raw(Space::Evidence, &r.key(), encode_evidence(e));
        }
    }

    /// The batch holding the lines added since the last call was committed.
    pub fn committed(&mut self) {
        self.pending.clear();
    }

    /// The batch holding the lines added since the last [`EvidenceLog::committed`] was
    /// dropped: they are not stored.
    pub fn abandoned(&mut self) {
        for r in self.pending.drain(..) {
            self.written.remove(&r);
        }
    }

    /// How many lines the writer remembers storing.
    pub fn remembered(&self) -> usize {
        self.written.len()
    }

    /// Deletes stored lines older than `before_ms` that no record in `referenced` names,
    /// into `batch`; forgets every line older than `before_ms`. Returns how many lines
    /// were deleted.
    pub fn collect(
        &mut self,
        store: &Store,
        referenced: &HashSet<EvidenceRef>,
        before_ms: i64,
        batch: &mut Batch,
    ) -> Result<usize, StoreError> {
        let from = EvidenceRef::first_key_at(i64::MIN);
        let to = EvidenceRef::first_key_at(before_ms);
        let mut deleted = 0;
        for key in store.keys_between(Space::Evidence, &from, &to)? {
            let Some(r) = EvidenceRef::from_key(&key) else {
                continue;
            };
            if !referenced.contains(&r) {
                batch.remove(Space::Evidence, &key);
                deleted += 1;
            }
        }
        self.written.retain(|r| r.time_ms >= before_ms);
        Ok(deleted)
    }
}

/// Reads the evidence line a reference names from `store`.
pub fn resolve(store: &Store, r: EvidenceRef) -> Result<Evidence, CodecError> {
    match store.get_raw(Space::Evidence, &r.key()) {
        Ok(Some(bytes)) => decode_evidence(&bytes),
        Ok(None) => Err(CodecError::MissingEvidence(r.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "cannot read an evidence line");
            Err(CodecError::MissingEvidence(r.to_string()))
        }
    }
}
