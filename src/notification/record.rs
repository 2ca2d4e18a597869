//! The outbox record: one notification for one receiver, from its writing to its delivery
//! or dead letter.
//!
//! Its own file because the store, the API (dead letters), the CLI and the delivery worker
//! all read it, and none of them needs the outbox's routing.

use crate::incidents::EventKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One notification for one receiver, as stored in the outbox or the dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique id (also its store key); a re-sent dead letter gets a new one.
    pub id: u64,
    /// Name of the configured receiver it goes to; a re-send checks it is still configured.
    pub receiver: String,
    /// Id of the incident it is about (`INC-<n>`).
    pub incident: String,
    /// The incident's fleet-unique uid (empty in records stored before uids existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The cluster member (one of the receiver's `urls`) this copy is for; none for a
    /// receiver with one `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The lifecycle event it announces; with the receiver's choice of events, what was
    /// routed to it.
    pub event: EventKind,
    /// `<incident uid>-<event sequence>`: the same for every receiver, member and attempt
    /// of one event, so receivers can drop duplicates of at-least-once delivery.
    pub idempotency_key: String,
    /// When it was written (or re-sent); `retry.max_age` counts from here.
    pub created_at: DateTime<Utc>,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it became a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<DateTime<Utc>>,
    /// The rendered body, sent unchanged on every attempt.
    pub body: String,
}

impl Record {
    /// Store key: the id, zero-padded so keys sort by id (oldest first).
    pub fn key(id: u64) -> Vec<u8> {
        format!("{id:020}").into_bytes()
    }

    /// The incident's uid, or its id in a record stored before uids existed: what names
    /// the incident to the receiver.
    pub fn incident_uid(&self) -> &str {
        if self.uid.is_empty() {
            &self.incident
        } else {
            &self.uid
        }
    }

    /// The incident it concerns; none for a signed chain head (`audit_head`).
    pub fn incident_id(&self) -> Option<&str> {
        Some(self.incident.as_str()).filter(|id| !id.is_empty())
    }

    /// The record without its body, for listings.
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("records serialise");
        if let Some(o) = v.as_object_mut() {
            o.remove("body");
        }
        v
    }
}
