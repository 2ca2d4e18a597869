//! Incidents: opening one when a rule fires, and folding every later match for the same rule
//! and key into it instead of opening a duplicate.
//!
//! The book keeps the open incidents in memory (they are few) and marks what changed; the
//! pipeline writes the changes in the same store batch as the windows and checkpoints that
//! produced them.

mod book;
pub mod sla;
pub mod stored;
pub mod timeline;

pub use book::IncidentBook;

pub use crate::config::EventKind;
use crate::detection::{Evidence, Key};
use crate::rules::Severity;
use crate::store::evidence::EvidenceLog;
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub use timeline::TimelineKind;

/// Most evidence lines kept on one incident: the first half that opened it, then the latest.
pub const MAX_EVIDENCE: usize = 20;

/// Where an incident is in its lifecycle: `open → acknowledged → contained → eradicated →
/// recovered → closed`, or `false_positive` from any active state (see [`crate::lifecycle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Detected, nobody has acknowledged it yet.
    Open,
    /// Someone took it on.
    Acknowledged,
    /// The damage can no longer spread.
    Contained,
    /// The cause is removed.
    Eradicated,
    /// Service is back to normal.
    Recovered,
    /// Over (high and critical incidents only after a post-incident review).
    Closed,
    /// Over: it was not an incident.
    FalsePositive,
}

impl State {
    /// Every state, for metrics that preset a series per state (a gauge that is absent
    /// cannot be alerted on).
    pub const ALL: [State; 7] = [
        State::Open,
        State::Acknowledged,
        State::Contained,
        State::Eradicated,
        State::Recovered,
        State::Closed,
        State::FalsePositive,
    ];

    /// States of incidents still being worked (for the `incidents_open` gauge, which must
    /// show zeroes).
    pub const ACTIVE: [State; 5] = [
        State::Open,
        State::Acknowledged,
        State::Contained,
        State::Eradicated,
        State::Recovered,
    ];

    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Contained => "contained",
            State::Eradicated => "eradicated",
            State::Recovered => "recovered",
            State::Closed => "closed",
            State::FalsePositive => "false_positive",
        }
    }

    /// Whether further matches still fold into the incident (it is not over).
    pub fn is_active(self) -> bool {
        !matches!(self, State::Closed | State::FalsePositive)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A post-incident review, required before a high or critical incident may close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Why it happened: the finding an auditor looks for first (CC7.4/CC7.5).
    pub root_cause: String,
    /// What was learned, so the review changes something beyond this incident.
    pub lessons_learned: String,
    /// Follow-up actions: what the review commits the team to, each tracked on its own.
    pub actions: Vec<String>,
    /// Who wrote it (token name).
    pub by: String,
    /// When it was filed: an incident closes only after its review.
    pub at: DateTime<Utc>,
}

/// An approver's permission to notify external roles about this incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's token name: who an auditor holds answerable for the external notices.
    pub by: String,
    /// When it was given: notifications held for approval go out from then.
    pub at: DateTime<Utc>,
    /// Why, or any condition the approver set: the record an auditor reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened (wall clock): the order of the response, for KPIs and auditors.
    pub at: DateTime<Utc>,
    /// What happened, as a kind rather than text, so KPIs and exports can count it.
    pub event: TimelineKind,
    /// Who did it (`logwarden` for detection, else the API token's name).
    pub actor: String,
    /// Free text from the actor or the daemon: the why behind the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An incident as stored and served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `INC-<n>`: the short local handle.
    pub id: String,
    /// `HOST/INC-<n>`: unique across a fleet, so it names the incident in everything that
    /// leaves this host (Alertmanager labels, PagerDuty `dedup_key`, idempotency keys).
    /// Records stored before it existed get theirs from [`assign_missing_uids`].
    #[serde(default)]
    pub uid: String,
    /// Rule that opened it: with `key`, what later matches are folded into it by.
    pub rule: String,
    /// Current severity (only ever rises).
    pub severity: Severity,
    /// Rule category, copied so receivers can route without the rule set.
    pub category: String,
    /// Lifecycle state: what commands may do next and whether it still counts as open.
    pub state: State,
    /// group_by values: which attacker, user or host this incident is about.
    pub key: Key,
    /// Matches counted into the incident.
    pub count: u64,
    /// Time of the first evidence line.
    pub first_seen: DateTime<Utc>,
    /// Time of the latest counted line.
    pub last_seen: DateTime<Utc>,
    /// When the incident was opened (wall clock).
    pub opened_at: DateTime<Utc>,
    /// When it last changed (wall clock).
    pub updated_at: DateTime<Utc>,
    /// SOC 2 controls of the rule.
    pub controls: Vec<String>,
    /// Rule labels, copied so silences and receivers can match without the rule set.
    pub labels: BTreeMap<String, String>,
    /// Rendered summary: the one line a person reads first in every notification.
    pub summary: String,
    /// Rule description, copied: it stays true to the rule that opened it after a reload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Rule runbook: where the responder is sent, copied as of the opening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// Absence rules: when matching lines came back after the gap (the line's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<DateTime<Utc>>,
    /// Escalation policy followed, fixed at opening so a reload does not re-route it.
    pub escalation: String,
    /// Version of the rule set that opened it.
    pub ruleset_version: String,
    /// Evidence lines, at most [`MAX_EVIDENCE`]: enough to show what matched, bounded so a
    /// flood cannot grow the record.
    pub evidence: Vec<Evidence>,
    /// What happened to it, in order.
    pub timeline: Vec<TimelineEntry>,
    /// When it was acknowledged (response-time KPIs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When it was contained (time-to-contain KPI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contained_at: Option<DateTime<Utc>>,
    /// When it was closed or marked a false positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// The post-incident review, which a high or critical incident needs before it closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// Approval to notify external roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Silence that muted its notifications when it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
    /// A synthetic incident opened by `logwarden drill` to exercise the response path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

impl Incident {
    /// The incident's store key: zero-padded so keys sort like ids.
    pub fn store_key(number: u64) -> Vec<u8> {
        stored::key(number)
    }

    /// The number in an `INC-<n>` id; `None` for any other spelling (see [`crate::base::ids`]).
    pub fn number(id: &str) -> Option<u64> {
        crate::base::ids::incident_number(id)
    }

    /// The fleet-unique id of local incident `id` on `host`.
    pub fn fleet_uid(host: &str, id: &str) -> String {
        format!("{host}/{id}")
    }

    /// The number of the incident an API handle may name: the handle is its id (`INC-7`)
    /// or its uid (`web1/INC-7`). Only a candidate: [`Incident::is_named_by`] decides.
    pub fn handle_number(handle: &str) -> Option<u64> {
        let id = handle.rsplit_once('/').map_or(handle, |(_, id)| id);
        Incident::number(id)
    }

    /// Whether `handle` is exactly this incident's id or uid (no other spelling).
    pub fn is_named_by(&self, handle: &str) -> bool {
        handle == self.id || handle == self.uid
    }

    fn push_event(&mut self, at: DateTime<Utc>, event: TimelineKind, note: String) {
        self.record(at, event, "logwarden", Some(note));
    }

    /// Appends a timeline entry: every change an actor makes leaves a trace in order.
    pub fn record(
        &mut self,
        at: DateTime<Utc>,
        event: TimelineKind,
        actor: &str,
        note: Option<String>,
    ) {
        self.timeline.push(TimelineEntry {
            at,
            event,
            actor: actor.into(),
            note,
        });
    }

    /// Adds the whole incident (head, body, every timeline entry and evidence line) to a
    /// store batch; the book writes only what changed.
    pub fn put(&self, store: &Store, batch: &mut store::Batch) -> Result<(), StoreError> {
        stored::write(store, batch, self, None, &mut EvidenceLog::default()).map(|_| ())
    }

    fn add_evidence(&mut self, evidence: Evidence) {
        if self.evidence.len() >= MAX_EVIDENCE {
            self.evidence.remove(MAX_EVIDENCE / 2);
        }
        self.evidence.push(evidence);
    }
}

/// An incident change with the incident as it is after it.
#[derive(Debug, Clone)]
pub struct IncidentEvent {
    /// What happened: receivers and the audit log act on the kind, not on a diff.
    pub kind: EventKind,
    /// The incident after the change.
    pub incident: Incident,
}

/// Meta key set once every stored incident has a uid.
const UIDS_ASSIGNED: &[u8] = b"incident-uids";

/// Gives every stored incident without a uid (stored before uids existed) `host/id`, once:
/// afterwards a marker spares later starts the scan. Returns how many were given one.
pub fn assign_missing_uids(store: &Store, host: &str) -> Result<usize, StoreError> {
    if store.get::<bool>(Space::Meta, UIDS_ASSIGNED)?.is_some() {
        return Ok(0);
    }
    let mut batch = store::Batch::new();
    let mut assigned = 0;
    for (_, mut incident, mark) in stored::scan(store, |_| true)? {
        if incident.uid.is_empty() {
            incident.uid = Incident::fleet_uid(host, &incident.id);
            stored::write(
                store,
                &mut batch,
                &incident,
                Some(mark),
                &mut EvidenceLog::default(),
            )?;
            assigned += 1;
        }
    }
    batch.put(Space::Meta, UIDS_ASSIGNED, &true)?;
    store.commit(batch)?;
    Ok(assigned)
}

/// A complete incident for unit tests across the crate: the one of the config's template
/// check (`config::template::sample_context`), so tests exercise what `check` exercises.
#[cfg(test)]
pub fn sample_incident() -> Incident {
    serde_json::from_value(crate::config::template::sample_context()["incident"].clone())
        .expect("the template check's sample is a complete incident")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;

    #[test]
    fn an_incident_is_named_by_its_id_or_uid_and_no_other_spelling() {
        let i = sample_incident();
        assert_eq!(Incident::handle_number("web1/INC-1"), Some(1));
        assert_eq!(Incident::handle_number("INC-1"), Some(1));
        assert!(i.is_named_by("INC-1") && i.is_named_by("web1/INC-1"));
        for other in [
            "web2/INC-1",
            "INC-01",
            "inc-1",
            "web1/INC-01",
            "/INC-1",
            "web1/",
        ] {
            assert!(!i.is_named_by(other), "{other}");
        }
    }

    #[test]
    fn incidents_stored_without_uid_get_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = sample_incident();
        old.uid = String::new();
        let mut batch = store::Batch::new();
        old.put(&store, &mut batch).unwrap();
        store.commit(batch).unwrap();
        assert_eq!(assign_missing_uids(&store, "gw1").unwrap(), 1);
        let stored: Incident = stored::read(&store, 1).unwrap().unwrap();
        assert_eq!(stored.uid, "gw1/INC-1");
        // A later start (even under another name) leaves stored uids alone.
        assert_eq!(assign_missing_uids(&store, "gw2").unwrap(), 0);
        let book = IncidentBook::load(&store, "gw2").unwrap();
        assert_eq!(book.active("INC-1").unwrap().uid, "gw1/INC-1");
    }
}
