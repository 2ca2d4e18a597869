//! Evidence packs: one incident's evidence as a ZIP an auditor can take away and check
//! offline with standard tools.
//!
//! The pack holds the incident record (as the API serves it), its timeline, its evidence
//! lines and its audit records with their chain positions, plus `manifest.json` — the
//! SHA-256 of every other file, the verified chain head, and the public key — and
//! `manifest.sig`, the raw 64-byte Ed25519 signature over the exact bytes of the manifest.
//! `openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in manifest.json -sigfile
//! manifest.sig` checks the signature and `sha256sum` each file: a changed byte anywhere
//! fails one or the other.

use super::signing::HeadSigner;
use super::{Record, Verdict};
use crate::base::zip::{StoredZip, ZipError};
use crate::incidents::{Incident, stored};
use crate::store::{Space, Store, StoreError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The manifest's `format`: what a reader of the pack can rely on.
pub const FORMAT: &str = "logwarden-evidence-pack/1";

/// Why a pack cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// No stored incident has this id or uid.
    #[error("no incident {0}")]
    NoIncident(String),
    /// The chain does not verify: a signed pack would vouch for a broken chain.
    #[error(
        "the audit chain is broken at record {position}: {reason} (run `logwarden audit verify`); no pack is signed over a broken chain"
    )]
    BrokenChain {
        /// 1-based position of the first bad record.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive cannot be written.
    #[error(transparent)]
    Zip(#[from] ZipError),
}

/// The chain head the manifest names.
#[derive(Serialize)]
struct ManifestHead {
    sequence: u64,
    hash: String,
}

/// Which incident the pack is about.
#[derive(Serialize)]
struct ManifestIncident<'a> {
    id: &'a str,
    uid: &'a str,
}

/// `manifest.json`.
#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    incident: ManifestIncident<'a>,
    created_at: String,
    /// File name → SHA-256 (hex) of its bytes, sorted by name.
    files: BTreeMap<&'static str, String>,
    /// The chain head verified when the pack was made: every record in `audit.jsonl` is at
    /// or before it.
    head: ManifestHead,
    /// The raw Ed25519 public key (base64) whose signature is `manifest.sig`.
    public_key: String,
}

/// The pack of incident `handle` (its id or uid) as ZIP bytes, signed by `signer`, dated
/// `now`. Checks the whole chain first. `record` makes `incident.json` as the API serves it
/// (the incident with its containments): the caller passes it in because containment
/// stands above the audit log, which must not import it.
pub fn build(
    store: &Store,
    handle: &str,
    signer: &HeadSigner,
    now: DateTime<Utc>,
    record: impl FnOnce(&Incident) -> Result<serde_json::Value, StoreError>,
) -> Result<Vec<u8>, PackError> {
    let missing = || PackError::NoIncident(handle.to_string());
    let number = Incident::handle_number(handle).ok_or_else(missing)?;
    let incident = stored::read(store, number)?
        .filter(|i| i.is_named_by(handle))
        .ok_or_else(missing)?;
    let (count, head_hash) = match super::verify(store)? {
        Verdict::Intact { count, head } => (count, head),
        Verdict::Broken {
            position, reason, ..
        } => return Err(PackError::BrokenChain { position, reason }),
    };

    let record = record(&incident)?;
    let files: [(&'static str, Vec<u8>); 4] = [
        ("incident.json", pretty(&record)?),
        ("timeline.jsonl", json_lines(&incident.timeline)?),
        ("evidence.jsonl", json_lines(&incident.evidence)?),
        ("audit.jsonl", audit_lines(store, &incident.id)?),
    ];
    let manifest = Manifest {
        format: FORMAT,
        incident: ManifestIncident {
            id: &incident.id,
            uid: &incident.uid,
        },
        created_at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        files: files
            .iter()
            .map(|(name, bytes)| (*name, hex::encode(Sha256::digest(bytes))))
            .collect(),
        head: ManifestHead {
            sequence: count,
            hash: head_hash,
        },
        public_key: signer.public_key_base64(),
    };
    let manifest = pretty(&manifest)?;
    let signature = signer.sign(&manifest);

    let mut zip = StoredZip::new(now);
    for (name, bytes) in &files {
        zip.add(name, bytes)?;
    }
    zip.add("manifest.json", &manifest)?;
    zip.add("manifest.sig", &signature)?;
    Ok(zip.finish()?)
}

fn pretty(value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn json_lines<T: Serialize>(items: &[T]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The incident's audit records as stored (`seq` is the chain position, `prev` and `hash`
/// link it), one JSON object per line, in chain order: those naming it, and the shared
/// `incident.updated` records that count it among others (whole, so their hash checks).
fn audit_lines(store: &Store, id: &str) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    for (_, bytes) in store.scan_raw(Space::Audit)? {
        // The chain verified just before: every record reads.
        let record: Record = serde_json::from_slice(&bytes)?;
        let counted = record.details["counts"].get(id).is_some();
        if record.incident.as_deref() == Some(id) || counted {
            serde_json::to_writer(&mut out, &record)?;
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditLog, Entry};
    use crate::incidents::sample_incident;
    use serde_json::json;

    /// The incident record without containments: none are stored here.
    fn plain(incident: &Incident) -> Result<serde_json::Value, StoreError> {
        Ok(serde_json::to_value(incident)?)
    }

    #[test]
    fn a_pack_holds_the_records_of_its_incident_and_refuses_a_broken_chain() {
        let store = Store::memory();
        let incident = sample_incident();
        let mut batch = crate::store::Batch::new();
        incident.put(&store, &mut batch).unwrap();
        let log = AuditLog::open(&store).unwrap();
        let id = incident.id.as_str();
        log.commit(
            &batch,
            &[
                Entry::new(AuditEvent::IncidentOpened, "logwarden", Some(id), json!({})),
                Entry::new(
                    AuditEvent::IncidentOpened,
                    "logwarden",
                    Some("INC-2"),
                    json!({}),
                ),
                Entry::new(
                    AuditEvent::IncidentUpdated,
                    "logwarden",
                    None,
                    json!({"counts": {id: 3, "INC-2": 9}}),
                ),
                Entry::new(
                    AuditEvent::IncidentNoted,
                    "oncall",
                    Some("INC-2"),
                    json!({}),
                ),
            ],
        )
        .unwrap();
        let signer = HeadSigner::from_secret([7; 32]);
        let zip = build(&store, &incident.uid, &signer, Utc::now(), plain).unwrap();
        let text = String::from_utf8_lossy(&zip);
        // Stored entries: the files' bytes are in the archive as they are.
        assert_eq!(text.matches("\"event\":\"incident.opened\"").count(), 1);
        assert_eq!(text.matches("\"event\":\"incident.updated\"").count(), 1);
        assert!(!text.contains("incident.noted"));
        assert!(text.contains("\"sequence\": 4"), "the head");

        // A record altered after the fact: no pack vouches for that chain.
        let mut altered: Record = store.get(Space::Audit, &Record::key(1)).unwrap().unwrap();
        altered.actor = "someone".into();
        let mut b = crate::store::Batch::new();
        b.put(Space::Audit, &Record::key(1), &altered).unwrap();
        store.commit(b).unwrap();
        let refused = build(&store, id, &signer, Utc::now(), plain).unwrap_err();
        assert!(
            matches!(refused, PackError::BrokenChain { position: 1, .. }),
            "{refused}"
        );
        assert!(matches!(
            build(&store, "INC-9", &signer, Utc::now(), plain),
            Err(PackError::NoIncident(_))
        ));
    }
}
