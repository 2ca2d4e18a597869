//! The tamper-evident audit log: every incident change, notification attempt, approval,
//! silence change, rule reload and refused API call, appended to a hash chain in the store.
//!
//! Each record carries a sequence number, the SHA-256 of the previous record and its own
//! SHA-256 over its canonical bytes (the record's JSON without its own hash, fields in a
//! fixed order). Records are written in the same store batch as the change they describe,
//! so the evidence cannot be missing for a change that happened. One lock orders every
//! writer (pipeline, delivery lanes, HTTP), so the chain never forks. A meta record keeps
//! the head (last sequence and hash), so deleting records from the end is found too.
//!
//! That head is unkeyed: whoever can write the state directory can cut the chain, or
//! rewrite it, and fix the head up. [`head`] and [`anchor`] sign the head with a key kept
//! elsewhere and publish it, so `audit verify --against` and the daemon's start catch both;
//! [`coverage`] compares the stored incidents with what their records say.
//!
//! Each record names the SOC 2 controls it is evidence for; [`AuditEvent::controls`] is the
//! mapping.

pub mod anchor;
pub mod coverage;
mod csv;
pub mod event;
mod export;
pub mod head;
pub mod pack;
pub mod population;
/// The head-signing key sits below the config (which checks it), so it is a base module;
/// re-exported here where its users look for it.
pub use crate::base::signing;

use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

pub use event::{AuditEvent, RecordedEvent};
pub use export::{ExportFormat, TimeError, export, parse_time, records};

/// Actor name of the daemon's own changes.
pub const DAEMON: &str = "logwarden";

/// `prev` of the first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Meta key of the chain head.
const HEAD_KEY: &[u8] = b"audit_head";

/// Something to record; sealed into a [`Record`] when committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// What happened: a known event, so the record always names its controls.
    pub event: AuditEvent,
    /// Who did it: a token name, or `logwarden` for the daemon itself.
    pub actor: String,
    /// The incident concerned, if any.
    pub incident: Option<String>,
    /// Event-specific facts (states, receivers, versions, reasons).
    pub details: Value,
}

impl Entry {
    /// An entry; `details` should be a JSON object.
    pub fn new(event: AuditEvent, actor: &str, incident: Option<&str>, details: Value) -> Self {
        Entry {
            event,
            actor: actor.to_string(),
            incident: incident.map(str::to_string),
            details,
        }
    }
}

/// One sealed audit record as stored and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was recorded: exports select periods by it.
    pub at: DateTime<Utc>,
    /// What happened (kept as stored, even when this release does not know the name).
    pub event: RecordedEvent,
    /// Who did it: `logwarden` or the API token's name, never a secret.
    pub actor: String,
    /// The incident concerned, so an evidence pack can gather its records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// SOC 2 controls this record is evidence for.
    pub controls: Vec<String>,
    /// Event-specific facts, free-form so a new fact needs no new chain format.
    pub details: Value,
    /// SHA-256 (hex) of the previous record; [`GENESIS`] for the first.
    pub prev: String,
    /// SHA-256 (hex) of this record's canonical bytes.
    pub hash: String,
}

impl Record {
    /// The bytes the hash covers: the record's JSON without `hash`, fields in declaration
    /// order, object keys sorted (serde_json's map), no whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Canonical<'a> {
            seq: u64,
            at: &'a DateTime<Utc>,
            event: &'a str,
            actor: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            incident: &'a Option<String>,
            controls: &'a [String],
            details: &'a Value,
            prev: &'a str,
        }
        serde_json::to_vec(&Canonical {
            seq: self.seq,
            at: &self.at,
            event: self.event.as_str(),
            actor: &self.actor,
            incident: &self.incident,
            controls: &self.controls,
            details: &self.details,
            prev: &self.prev,
        })
        .expect("records serialise")
    }

    /// SHA-256 (hex) of [`Record::canonical_bytes`]: what the next record's `prev` names.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// Store key: the sequence number, zero-padded so keys sort by it.
    pub fn key(seq: u64) -> Vec<u8> {
        format!("{seq:020}").into_bytes()
    }
}

/// The chain's last sequence number and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the last record (0 when empty).
    pub seq: u64,
    /// Its hash ([`GENESIS`] when empty).
    pub hash: String,
}

/// The chain head as the store holds it: its last record (or the empty chain's).
fn read_head(store: &Store) -> Result<Head, StoreError> {
    let head = match store.last_raw(Space::Audit)? {
        None => Head {
            seq: 0,
            hash: GENESIS.into(),
        },
        Some((key, bytes)) => match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) => Head {
                seq: r.seq,
                hash: r.hash,
            },
            Err(e) => {
                // Keep appending after it; `audit verify` will name the bad record.
                tracing::error!(error = %e, "the last audit record is unreadable");
                Head {
                    seq: std::str::from_utf8(&key)
                        .ok()
                        .and_then(|k| k.parse().ok())
                        .unwrap_or(0),
                    hash: hex::encode(Sha256::digest(&bytes)),
                }
            }
        },
    };
    Ok(head)
}

/// Appends to the audit chain; cheap to clone, one per store (every writer must share it so
/// the chain has one head).
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    head: Arc<Mutex<Head>>,
}

impl AuditLog {
    /// Reads the chain head from the store's last record.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(AuditLog {
            store: store.clone(),
            head: Arc::new(Mutex::new(read_head(store)?)),
        })
    }

    /// Reads the head again from the store, after [`Store::reopen`] may have lost records
    /// that were committed but never made durable: the next record links to the last one
    /// the store really holds.
    pub fn reload_head(&self) -> Result<(), StoreError> {
        let head = read_head(&self.store)?;
        *self.head.lock().expect("audit head lock") = head;
        Ok(())
    }

    /// The chain's current head (sequence number and hash of the last record committed).
    pub fn current_head(&self) -> Head {
        self.head.lock().expect("audit head lock").clone()
    }

    /// Commits `batch` with `entries` sealed onto the chain, atomically. The batch is only
    /// borrowed: after an error nothing was written and the same call can be retried.
    /// Durable only after [`Store::flush`].
    pub fn commit(&self, batch: &store::Batch, entries: &[Entry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return self.store.commit(batch.clone());
        }
        let mut head = self.head.lock().expect("audit head lock");
        let mut batch = batch.clone();
        let mut next = head.clone();
        let at = Utc::now();
        for entry in entries {
            let mut record = Record {
                seq: next.seq + 1,
                at,
                event: entry.event.into(),
                actor: entry.actor.clone(),
                incident: entry.incident.clone(),
                controls: entry.event.controls(&entry.details),
                details: entry.details.clone(),
                prev: next.hash.clone(),
                hash: String::new(),
            };
            record.hash = record.compute_hash();
            batch.put(Space::Audit, &Record::key(record.seq), &record)?;
            next = Head {
                seq: record.seq,
                hash: record.hash,
            };
        }
        batch.put(Space::Meta, HEAD_KEY, &next)?;
        self.store.commit(batch)?;
        *head = next;
        Ok(())
    }

    /// Records entries on their own (a refused API call): committed, not flushed.
    pub fn record(&self, entries: &[Entry]) {
        if let Err(e) = self.commit(&store::Batch::new(), entries) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// What [`verify`] found: the CLI's exit code and the API's answer both follow it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every record is intact and linked; `count` records, the last with `head`.
    Intact {
        /// Records checked.
        count: u64,
        /// Hash of the last record.
        head: String,
    },
    /// The first record that does not check out.
    Broken {
        /// 1-based position in key order.
        position: u64,
        /// Its sequence number as stored (when readable).
        seq: Option<u64>,
        /// What is wrong.
        reason: String,
    },
}

/// Checks the whole chain: every record readable, numbered 1, 2, 3…, its hash matching its
/// content, its `prev` matching the record before, and the last one matching the stored
/// head.
pub fn verify(store: &Store) -> Result<Verdict, StoreError> {
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    for (key, bytes) in store.scan_raw(Space::Audit)? {
        let position = count + 1;
        let broken = |seq, reason: String| {
            Ok(Verdict::Broken {
                position,
                seq,
                reason,
            })
        };
        let record: Record = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return broken(None, format!("unreadable record: {e}")),
        };
        let seq = Some(record.seq);
        if key != Record::key(record.seq) {
            return broken(
                seq,
                format!(
                    "stored under key {} but numbered {}",
                    String::from_utf8_lossy(&key),
                    record.seq
                ),
            );
        }
        if record.seq != position {
            return broken(
                seq,
                format!("expected sequence number {position} (a record is missing)"),
            );
        }
        if record.compute_hash() != record.hash {
            return broken(
                seq,
                "content does not match its hash (the record was altered)".into(),
            );
        }
        if record.prev != prev {
            return broken(
                seq,
                "previous-record hash does not match the record before it".into(),
            );
        }
        prev = record.hash;
        count = position;
    }
    let head: Option<Head> = store.get(Space::Meta, HEAD_KEY)?;
    let expected = head.unwrap_or(Head {
        seq: 0,
        hash: GENESIS.into(),
    });
    if expected.seq != count || expected.hash != prev {
        return Ok(Verdict::Broken {
            position: count + 1,
            seq: Some(expected.seq),
            reason: format!(
                "the chain ends at record {count} but its head says {} (records were removed from the end)",
                expected.seq
            ),
        });
    }
    Ok(Verdict::Intact { count, head: prev })
}

#[cfg(test)]
mod tests {
    use super::csv::csv_field;
    use super::export::render;
    use super::*;
    use serde_json::json;

    fn entry(n: u64) -> Entry {
        Entry::new(
            AuditEvent::IncidentTransitioned,
            "oncall",
            Some("INC-1"),
            json!({"from": "open", "to": "acknowledged", "n": n}),
        )
    }

    #[test]
    fn the_chain_verifies_and_continues_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let log = AuditLog::open(&store).unwrap();
            log.commit(&store::Batch::new(), &[entry(1), entry(2)])
                .unwrap();
            log.record(&[entry(3)]);
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        AuditLog::open(&store).unwrap().record(&[entry(4)]);
        let Verdict::Intact { count, .. } = verify(&store).unwrap() else {
            panic!("{:?}", verify(&store));
        };
        assert_eq!(count, 4);
        let all = records(&store, None, None).unwrap();
        assert_eq!(all[0].prev, GENESIS);
        assert_eq!(all[3].prev, all[2].hash);
        assert_eq!(all[0].controls, ["CC7.3"]);
    }

    #[test]
    fn an_altered_record_a_gap_and_a_cut_end_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = AuditLog::open(&store).unwrap();
        log.record(&[entry(1), entry(2), entry(3), entry(4)]);

        let mut altered: Record = store.get(Space::Audit, &Record::key(2)).unwrap().unwrap();
        altered.actor = "someone-else".into();
        let mut b = store::Batch::new();
        b.put(Space::Audit, &Record::key(2), &altered).unwrap();
        store.commit(b).unwrap();
        let Verdict::Broken {
            position, reason, ..
        } = verify(&store).unwrap()
        else {
            panic!("not found");
        };
        assert_eq!(position, 2);
        assert!(reason.contains("altered"), "{reason}");

        // A record re-hashed after the change breaks the link from the next one instead.
        altered.hash = altered.compute_hash();
        let mut b = store::Batch::new();
        b.put(Space::Audit, &Record::key(2), &altered).unwrap();
        store.commit(b).unwrap();
        let Verdict::Broken { position, .. } = verify(&store).unwrap() else {
            panic!("not found");
        };
        assert_eq!(position, 3);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        AuditLog::open(&store)
            .unwrap()
            .record(&[entry(1), entry(2), entry(3)]);
        let mut b = store::Batch::new();
        b.remove(Space::Audit, &Record::key(3));
        store.commit(b).unwrap();
        let Verdict::Broken { reason, .. } = verify(&store).unwrap() else {
            panic!("a cut end was not found");
        };
        assert!(reason.contains("removed from the end"), "{reason}");
        let mut b = store::Batch::new();
        b.remove(Space::Audit, &Record::key(1));
        store.commit(b).unwrap();
        let Verdict::Broken {
            position, reason, ..
        } = verify(&store).unwrap()
        else {
            panic!("a gap was not found");
        };
        assert_eq!((position, reason.contains("missing")), (1, true));
    }

    #[test]
    fn a_record_of_an_event_this_release_does_not_know_verifies_and_exports_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = Record {
            seq: 1,
            at: Utc::now(),
            event: RecordedEvent::from_name("incident.teleported"),
            actor: "someone".into(),
            incident: None,
            controls: vec!["CC9.9".into()],
            details: json!({}),
            prev: GENESIS.into(),
            hash: String::new(),
        };
        old.hash = old.compute_hash();
        let mut b = store::Batch::new();
        b.put(Space::Audit, &Record::key(1), &old).unwrap();
        b.put(
            Space::Meta,
            HEAD_KEY,
            &Head {
                seq: 1,
                hash: old.hash.clone(),
            },
        )
        .unwrap();
        store.commit(b).unwrap();
        AuditLog::open(&store).unwrap().record(&[entry(2)]);
        let Verdict::Intact { count, .. } = verify(&store).unwrap() else {
            panic!("{:?}", verify(&store));
        };
        assert_eq!(count, 2);
        let all = records(&store, None, None).unwrap();
        assert_eq!(
            (all[0].event.known(), all[0].event.as_str()),
            (None, "incident.teleported")
        );
        assert_eq!(all[0].controls, ["CC9.9"]);
        let csv = render(&all, &Default::default(), true);
        assert!(csv.contains(",incident.teleported,CC9.9,"), "{csv}");
    }

    #[test]
    fn events_map_to_controls_and_csv_is_quoted() {
        let c = |e: &str, d: Value| AuditEvent::parse(e).expect("a known event").controls(&d);
        assert_eq!(c("incident.opened", json!({})), ["CC7.2", "CC7.3"]);
        assert_eq!(
            c("incident.transitioned", json!({"to": "contained"})),
            ["CC7.4"]
        );
        assert_eq!(
            c("incident.transitioned", json!({"to": "closed"})),
            ["CC7.5"]
        );
        assert_eq!(c("incident.reviewed", json!({})), ["CC7.5"]);
        assert_eq!(c("incident.approved", json!({})), ["CC2.3"]);
        assert_eq!(
            c("notification.delivered", json!({"external": true})),
            ["CC7.4", "CC2.3"]
        );
        assert_eq!(c("rules.reloaded", json!({})), ["CC8.1"]);
        assert_eq!(c("api.denied", json!({})), ["CC6.1"]);
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("=cmd"), "'=cmd");
    }
}
