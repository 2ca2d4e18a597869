//! Signed chain heads: what the daemon publishes so that a cut or rewritten chain is caught
//! from outside the state directory.
//!
//! A signed head is `{"sequence", "hash", "at", "signature"}`: the chain's last sequence
//! number and record hash at time `at`, and the Ed25519 signature (base64 of the raw 64
//! bytes) over its canonical text, exactly these four lines, each ending in `\n`:
//!
//! ```text
//! logwarden audit head v1
//! sequence: 81
//! hash: 3f0c…(64 lowercase hex digits)
//! at: 2026-12-02T01:00:00.000Z
//! ```
//!
//! (`at` in RFC 3339 UTC with milliseconds, as the JSON carries it.) The text names what
//! it is, so a signature over a head can never be taken for one over a manifest.
//!
//! Only what is durable is signed: the head is read, the store flushed, then the head
//! signed, so a crash never leaves a signed head longer than the chain it comes back with.

use super::signing::{self, HeadSigner};
use super::{GENESIS, Head, Record};
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Meta key of the last head the daemon signed (beside the unsigned chain head).
const SIGNED_KEY: &[u8] = b"audit_signed_head";

/// First line of the canonical text.
const CANONICAL_TAG: &str = "logwarden audit head v1";

/// A chain head signed with the audit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// Sequence number of the chain's last record (0: the empty chain).
    pub sequence: u64,
    /// That record's hash (64 lowercase hex digits; [`GENESIS`] for the empty chain).
    pub hash: String,
    /// When it was signed (milliseconds).
    pub at: DateTime<Utc>,
    /// Base64 of the raw 64-byte Ed25519 signature over [`SignedHead::canonical_text`].
    pub signature: String,
}

impl SignedHead {
    /// The text the signature covers (see the module documentation).
    pub fn canonical_text(sequence: u64, hash: &str, at: &DateTime<Utc>) -> String {
        format!(
            "{CANONICAL_TAG}\nsequence: {sequence}\nhash: {hash}\nat: {}\n",
            at.to_rfc3339_opts(SecondsFormat::Millis, true)
        )
    }

    /// Signs `head` as of `at` (kept to the millisecond, as the text carries it).
    pub fn sign(signer: &HeadSigner, head: &Head, at: DateTime<Utc>) -> Self {
        let at = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
        let text = Self::canonical_text(head.seq, &head.hash, &at);
        SignedHead {
            sequence: head.seq,
            hash: head.hash.clone(),
            at,
            signature: signing::to_base64(&signer.sign(text.as_bytes())),
        }
    }

    /// The head it vouches for.
    pub fn head(&self) -> Head {
        Head {
            seq: self.sequence,
            hash: self.hash.clone(),
        }
    }

    /// Whether `public` signed exactly this head.
    pub fn check_signature(&self, public: &[u8; 32]) -> Result<(), HeadError> {
        let signature = signing::from_base64(&self.signature)
            .filter(|s| s.len() == 64)
            .ok_or(HeadError::SignatureShape)?;
        let text = Self::canonical_text(self.sequence, &self.hash, &self.at);
        if signing::verify(public, text.as_bytes(), &signature) {
            Ok(())
        } else {
            Err(HeadError::Signature {
                public_key: signing::to_base64(public),
            })
        }
    }

    /// Parses a saved head (the JSON of `GET /api/v1/audit/head`, or the `head` object of an
    /// `audit_head` notification); every field is range-checked.
    pub fn parse(text: &str) -> Result<Self, HeadError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| HeadError::NotJson(e.to_string()))?;
        // A receiver's notification carries the head inside it.
        let value = match value.get("head") {
            Some(head) if value.get("event").is_some() => head.clone(),
            _ => value,
        };
        let head: SignedHead =
            serde_json::from_value(value).map_err(|e| HeadError::NotAHead(e.to_string()))?;
        let hex =
            |h: &str| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex(&head.hash) {
            return Err(HeadError::Hash);
        }
        if head.sequence > i64::MAX as u64 {
            return Err(HeadError::Sequence(head.sequence));
        }
        if (head.sequence == 0) != (head.hash == GENESIS) {
            return Err(HeadError::Genesis);
        }
        Ok(head)
    }

    /// Pretty JSON, as saved to files and answered by the API.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("heads serialise")
    }

    /// Adds it to `batch` as the last head signed.
    pub fn put(&self, batch: &mut store::Batch) -> Result<(), StoreError> {
        batch.put(Space::Meta, SIGNED_KEY, self)
    }
}

/// The last head the daemon stored as signed, if any (`Err` when unreadable).
pub fn stored(store: &Store) -> Result<Option<Result<SignedHead, HeadError>>, StoreError> {
    Ok(store
        .get_raw(Space::Meta, SIGNED_KEY)?
        .map(|bytes| SignedHead::parse(&String::from_utf8_lossy(&bytes))))
}

/// Reads a saved head file: `None` when there is none.
pub fn read_file(path: &Path) -> Result<Option<SignedHead>, HeadFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => SignedHead::parse(&text)
            .map(Some)
            .map_err(|source| HeadFileError::Invalid {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HeadFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Why a saved head cannot be trusted: the text the admin or a receiver kept is not a
/// well-formed head, or the key did not sign it. Each says what to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The text is not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not the four fields of a head.
    #[error("not a signed head {{sequence, hash, at, signature}}: {0}")]
    NotAHead(String),
    /// The hash is not a SHA-256 in the spelling the chain uses.
    #[error("hash must be 64 lowercase hex digits")]
    Hash,
    /// A sequence number no chain can reach (the store counts in `i64` for the gauge).
    #[error("sequence {0} is out of range")]
    Sequence(u64),
    /// An empty chain and the genesis hash go together, or the head is forged.
    #[error("only the empty chain (sequence 0) has the all-zero hash")]
    Genesis,
    /// The signature is not an Ed25519 signature at all.
    #[error("its signature is not 64 bytes of base64")]
    SignatureShape,
    /// Well formed, but this key did not sign this head.
    #[error(
        "its signature does not verify with public key {public_key} (a different key, or the head was edited)"
    )]
    Signature {
        /// The key tried, in base64, so the admin can compare it with theirs.
        public_key: String,
    },
}

/// Why a head file could not be used; a missing file is not an error (no head yet).
#[derive(Debug, thiserror::Error)]
pub enum HeadFileError {
    /// The file holds something that is not a valid head.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with its content.
        source: HeadError,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Replaces the head file atomically (a temporary file beside it, synced, then renamed),
/// so a crash leaves the old head or the new one, never half of one.
pub fn write_file(path: &Path, head: &SignedHead) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(head.to_json().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Why the chain does not reach `head`, if it does not: cheap (the last record and the one
/// at `head`'s sequence only), for the daemon's start. `audit verify --against` adds the
/// whole-chain check of [`super::verify`].
pub fn shortfall(store: &Store, head: &Head) -> Result<Option<String>, StoreError> {
    let last = super::read_head(store)?;
    if last.seq < head.seq {
        let what = if last.seq == 0 {
            "holds no records at all (every record was deleted)".to_string()
        } else {
            format!("ends at record {}", last.seq)
        };
        return Ok(Some(format!(
            "the chain {what} but a signed head says it reached record {}: records were cut from the end",
            head.seq
        )));
    }
    if head.seq == 0 {
        return Ok(None);
    }
    let found = match store.get_raw(Space::Audit, &Record::key(head.seq))? {
        None => return Ok(Some(format!("record {} is missing", head.seq))),
        Some(bytes) => match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) => record.hash,
            Err(e) => return Ok(Some(format!("record {} is unreadable: {e}", head.seq))),
        },
    };
    if found != head.hash {
        return Ok(Some(format!(
            "record {} has hash {found} but the signed head says {}: the chain was rewritten",
            head.seq, head.hash
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn signer() -> HeadSigner {
        HeadSigner::from_secret([7; 32])
    }

    #[test]
    fn a_head_round_trips_and_any_edit_breaks_its_signature() {
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 1, 0, 0).unwrap();
        let head = Head {
            seq: 81,
            hash: "ab".repeat(32),
        };
        let signed = SignedHead::sign(&signer(), &head, at);
        assert_eq!(
            SignedHead::canonical_text(81, &head.hash, &at),
            format!(
                "logwarden audit head v1\nsequence: 81\nhash: {}\nat: 2026-12-02T01:00:00.000Z\n",
                head.hash
            )
        );
        let parsed = SignedHead::parse(&signed.to_json()).unwrap();
        assert_eq!(parsed, signed);
        parsed.check_signature(&signer().public_key()).unwrap();
        let other = HeadSigner::from_secret([8; 32]).public_key();
        assert!(parsed.check_signature(&other).is_err());
        for edit in [
            SignedHead {
                sequence: 80,
                ..signed.clone()
            },
            SignedHead {
                hash: "cd".repeat(32),
                ..signed.clone()
            },
            SignedHead {
                at: at + chrono::Duration::milliseconds(1),
                ..signed.clone()
            },
        ] {
            assert!(edit.check_signature(&signer().public_key()).is_err());
        }
    }

    #[test]
    fn malformed_heads_are_refused_with_the_reason() {
        let signed = SignedHead::sign(
            &signer(),
            &Head {
                seq: 3,
                hash: "ab".repeat(32),
            },
            Utc::now(),
        );
        let mut value = serde_json::to_value(&signed).unwrap();
        value["hash"] = "XYZ".into();
        assert!(
            SignedHead::parse(&value.to_string())
                .unwrap_err()
                .to_string()
                .contains("hex")
        );
        let mut value = serde_json::to_value(&signed).unwrap();
        value["extra"] = 1.into();
        assert!(SignedHead::parse(&value.to_string()).is_err());
        assert!(SignedHead::parse("[]").is_err());
        let wrapped = serde_json::json!({"event": "audit_head", "head": signed});
        assert_eq!(SignedHead::parse(&wrapped.to_string()).unwrap(), signed);
    }
}
