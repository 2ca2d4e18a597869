//! Containment: banning an incident's address (or running a command) as its containment,
//! and lifting it again, with the evidence an auditor asks for.
//!
//! The decisions are made on the pipeline thread, the single writer, and returned as data:
//! a step that calls for an action creates a [`Containment`] record in the same commit as
//! the escalation, and an [`Effect`] that the [`exec`] worker carries out once the commit
//! is durable. The worker reports an [`Outcome`], which the pipeline records (timeline,
//! audit, the incident's move to `contained`). The record is the intent: a daemon killed
//! between acting and recording finds it `pending` (or `releasing`) at start and acts
//! again; the firewall operations are idempotent, so the result is the same and the
//! outcome is recorded once.
//!
//! This file holds the records and their storage; `book` decides, `outcome` records what
//! the worker did, `exec` is the worker, `protect` the addresses never contained.

mod book;
pub mod exec;
mod outcome;
mod protect;

pub use book::Book;
pub use protect::{NeverContainError, Protected};

use crate::audit::Entry;
use crate::incidents::Incident;
use crate::store::{Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a containment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for an approver to approve the incident.
    Held,
    /// Decided and stored; the worker is applying it.
    Pending,
    /// In force until `until`.
    Active,
    /// Being lifted.
    Releasing,
    /// Lifted (or never applied: released while held).
    Released,
    /// The target is protected (`never_contain`) or not containable.
    Refused,
    /// Applying failed after every retry.
    Failed,
    /// `dry_run`: recorded, nothing done.
    DryRun,
}

impl Status {
    /// Whether the record still has something ahead of it (kept in memory, resumed at start).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Status::Held | Status::Pending | Status::Active | Status::Releasing
        )
    }
}

/// One containment of one target by one action for one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Containment {
    /// Id of the incident that asked for it; its number leads the store key, so one
    /// incident's containments are one range.
    pub incident: String,
    /// Its rule.
    #[serde(default)]
    pub rule: String,
    /// Its key (group_by values): what command templates render from.
    #[serde(default)]
    pub key_fields: BTreeMap<String, String>,
    /// The configured containment action that runs it (e.g. `ban-ip`).
    pub action: String,
    /// What is contained (an address for nftables).
    pub target: String,
    /// Ban time in seconds from when it takes effect (at least 1: nftables counts whole
    /// seconds); `until` is set from it when the ban is applied.
    pub duration_secs: u64,
    /// Where it stands in its lifecycle; only live states hold the target contained.
    pub status: Status,
    /// Who allowed it: `logwarden` (policy and step), or the approver.
    pub allowed_by: String,
    /// When a step called for it.
    pub requested_at: DateTime<Utc>,
    /// When it took effect.
    #[serde(default)]
    pub applied_at: Option<DateTime<Utc>>,
    /// When it ends.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// When it was lifted.
    #[serde(default)]
    pub released_at: Option<DateTime<Utc>>,
    /// Who lifted it (`logwarden` at its end or on a false positive, else the responder).
    #[serde(default)]
    pub released_by: Option<String>,
    /// Why it was lifted, refused or failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Exit status of the last command run for it (0 for nft).
    #[serde(default)]
    pub exit_status: Option<i32>,
}

impl Containment {
    /// Store key: the incident's number, then action and target, so an incident's
    /// containments are one range.
    pub fn key(&self) -> String {
        key(&self.incident, &self.action, &self.target)
    }

    /// Seconds left of its ban at `now` (at least 1: nftables counts whole seconds).
    pub fn remaining_secs(&self, now: DateTime<Utc>) -> u64 {
        match self.until {
            Some(until) => ((until - now).num_milliseconds().max(0) as u64).div_ceil(1000),
            None => self.duration_secs,
        }
        .max(1)
    }
}

/// The store key of one containment (see [`Containment::key`]).
fn key(incident: &str, action: &str, target: &str) -> String {
    format!(
        "{}/{action}/{target}",
        String::from_utf8_lossy(&incident_prefix(incident))
    )
}

/// Key prefix of an incident's containments.
fn incident_prefix(incident: &str) -> Vec<u8> {
    let mut k = Incident::store_key(Incident::number(incident).unwrap_or(0));
    k.push(b'/');
    k
}

/// Every containment of an incident, as stored.
pub fn of_incident(store: &Store, incident: &str) -> Result<Vec<Containment>, StoreError> {
    Ok(store
        .scan_under(Space::Containments, &incident_prefix(incident))?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// An incident as `GET /api/v1/incidents/ID` serves it and an evidence pack holds it: the
/// stored record with its containments (bans) beside it — what was done, allowed by whom,
/// until when.
pub fn incident_record(
    store: &Store,
    incident: &Incident,
) -> Result<serde_json::Value, StoreError> {
    let mut record = serde_json::to_value(incident)?;
    record["containments"] = serde_json::to_value(of_incident(store, &incident.id)?)?;
    Ok(record)
}

/// Every stored containment, oldest incident first.
pub fn all(store: &Store) -> Result<Vec<Containment>, StoreError> {
    Ok(store
        .scan(Space::Containments)?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// What the worker is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Put the containment in force (for its remaining time).
    Apply,
    /// Lift it.
    Undo,
}

/// A decided firewall change, carried out outside the pipeline once its record is durable.
#[derive(Debug, Clone)]
pub struct Effect {
    /// Whether the worker applies or lifts the containment.
    pub op: Op,
    /// The record as committed: the effect runs only once it is durable, so a restart finds
    /// what was being done.
    pub containment: Containment,
    /// A lift whose target another incident still holds contained: nothing is run.
    pub still_held_by: Option<String>,
}

impl Effect {
    /// Puts a containment in force.
    fn apply(containment: Containment) -> Effect {
        Effect {
            op: Op::Apply,
            containment,
            still_held_by: None,
        }
    }
}

/// What the worker did with an effect.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// [`Containment::key`] of the record it concerns: how the book finds the live record.
    pub key: String,
    /// Whether it was an apply or a lift, which with the record's status decides what the
    /// outcome means.
    pub op: Op,
    /// The exit status (0 for nft), or why it failed after every retry.
    pub result: Result<i32, exec::ActionError>,
    /// When it finished: an applied ban runs its `duration_secs` from here.
    pub at: DateTime<Utc>,
}

/// What the [`Book`] asks of the incident once an outcome is recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    /// What the outcome did to the record, as audit entries: applied, re-applied, failed,
    /// released, or a lift that failed.
    pub audit: Vec<Entry>,
    /// Whether the incident is now contained and should move to `contained`.
    pub contained: bool,
}

/// (action, outcome) pairs recorded since the last [`Book::take_counts`], added to
/// `logwarden_actions_total{action,outcome}` by the caller.
pub type Counts = Vec<(String, &'static str)>;
