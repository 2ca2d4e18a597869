//! Rewrites a state directory of an older format into the current one, in the batch that
//! also sets the new format marker: a crash during the rewrite leaves the old format whole,
//! and the next start does it again.
//!
//! Format 3 → 4: nothing is rewritten. Format 4 keeps the engine's latest writes in a
//! write-ahead journal next to sled (`wal/`); the new marker keeps a release of format 3,
//! which would not read that journal, from opening the directory and missing them.
//!
//! Format 2 → 3 (→ 4): evidence blocks and windows move out of the engine into their segment
//! journals (the engine keeps a pointer per block and no windows). Their bytes are kept as
//! they were.
//!
//! Format 1 → 2 (→ 3): incidents (whole JSON documents with their evidence lines) become head,
//! body and timeline records with each evidence line stored once; windows (JSON with
//! evidence copies) become the binary window codec with references. Every other table
//! (checkpoints, outbox, dead letters, audit chain, escalation progress, silences, firing
//! alerts, meta) kept its layout.
//!
//! This sits above the store, not in it: the old records are rewritten with the codecs of
//! incidents and windows, and those modules store through the store. `Store::open` is
//! defined here so every caller opens with the rewrite at hand.

use crate::detection::SavedWindow;
use crate::incidents::{Incident, stored};
use crate::store::evidence::EvidenceLog;
use crate::store::{Batch, Space, Store, StoreError};
use std::path::Path;

impl Store {
    /// Opens (creating if needed) the database in `dir`, rewriting an older format.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, run)
    }
}

/// Adds the rewrite of a store of format `found` to `batch`.
pub fn run(store: &Store, found: u64, batch: &mut Batch) -> Result<(), StoreError> {
    match found {
        1 => from_v1(store, batch),
        2 => from_v2(store, batch),
        // Format 3 → 4 added the engine's write-ahead journal (`wal/`), which a format-3
        // directory simply does not have yet: nothing to rewrite.
        _ => Ok(()),
    }
}

/// Moves a format-2 store's evidence blocks and windows into the journals.
fn from_v2(store: &Store, batch: &mut Batch) -> Result<(), StoreError> {
    let mut blocks = 0;
    for (key, bytes) in store.engine_records(Space::Evidence)? {
        // The pointer the commit writes replaces the block under the same key.
        batch.put_raw(Space::Evidence, &key, bytes);
        blocks += 1;
    }
    let mut windows = 0;
    for (key, bytes) in store.engine_records(Space::Windows)? {
        batch.remove_from_engine(Space::Windows, &key);
        batch.put_raw(Space::Windows, &key, bytes);
        windows += 1;
    }
    tracing::info!(blocks, windows, "store format 2 rewritten");
    Ok(())
}

/// Adds the rewrite of a format-1 store to `batch`.
fn from_v1(store: &Store, batch: &mut Batch) -> Result<(), StoreError> {
    let mut log = EvidenceLog::default();
    let mut incidents = 0;
    for (key, bytes) in store.scan_raw(Space::Incidents)? {
        match serde_json::from_slice::<Incident>(&bytes) {
            Ok(incident) => {
                stored::write(store, batch, &incident, None, &mut log)?;
                incidents += 1;
            }
            Err(e) => {
                // Kept as it is: readers skip it with a warning, as they did before.
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "an unreadable incident is left as it was")
            }
        }
    }
    let mut windows = 0;
    for (key, bytes) in store.engine_records(Space::Windows)? {
        batch.remove_from_engine(Space::Windows, &key);
        match serde_json::from_slice::<SavedWindow>(&bytes) {
            Ok((id, state)) => {
                let value = crate::detection::encode_window(
                    &id.rule_hash,
                    &state,
                    &mut Vec::new(),
                    &mut |e| log.store(store, batch, e),
                    None,
                );
                batch.set_window(key.into(), Some(value));
                windows += 1;
            }
            Err(e) => {
                // Window state is a cache of counts: one that cannot be read starts again.
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "an unreadable window is dropped");
            }
        }
    }
    tracing::info!(
        incidents,
        windows,
        evidence_lines = log.remembered(),
        "store format 1 rewritten"
    );
    Ok(())
}
