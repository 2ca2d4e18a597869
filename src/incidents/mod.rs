//! Incidents: opening one when a rule fires, and folding every later match for the same rule
//! and key into it instead of opening a duplicate.
//!
//! The book keeps the open incidents in memory (they are few) and marks what changed; the
//! pipeline writes the changes in the same store batch as the windows and checkpoints that
//! produced them.

pub mod stored;
pub mod timeline;

pub use crate::config::EventKind;
use crate::detection::{Evidence, Fields, Hit, Key};
use crate::rules::{RuleSet, Severity};
use crate::store::evidence::EvidenceLog;
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Every state.
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
    /// Why it happened.
    pub root_cause: String,
    /// What was learned.
    pub lessons_learned: String,
    /// Follow-up actions.
    pub actions: Vec<String>,
    /// Who wrote it (token name).
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An approver's permission to notify external roles about this incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved (token name).
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, or any condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub event: TimelineKind,
    /// Who did it (`logwarden` for detection, else the API token's name).
    pub actor: String,
    /// Free text.
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
    /// Rule that opened it.
    pub rule: String,
    /// Current severity (only ever rises).
    pub severity: Severity,
    /// Rule category.
    pub category: String,
    /// Lifecycle state.
    pub state: State,
    /// group_by values.
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
    /// Rule labels.
    pub labels: BTreeMap<String, String>,
    /// Rendered summary.
    pub summary: String,
    /// Rule description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Rule runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// Absence rules: when matching lines came back after the gap (the line's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<DateTime<Utc>>,
    /// Escalation policy followed.
    pub escalation: String,
    /// Version of the rule set that opened it.
    pub ruleset_version: String,
    /// Bounded evidence lines.
    pub evidence: Vec<Evidence>,
    /// What happened to it, in order.
    pub timeline: Vec<TimelineEntry>,
    /// When it was acknowledged (response-time KPIs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When it was contained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contained_at: Option<DateTime<Utc>>,
    /// When it was closed or marked a false positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// The post-incident review.
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

    /// The number in an `INC-<n>` id; `None` for any other spelling (see [`crate::ids`]).
    pub fn number(id: &str) -> Option<u64> {
        crate::ids::incident_number(id)
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

    /// Appends a timeline entry.
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
    /// What happened.
    pub kind: EventKind,
    /// The incident after the change.
    pub incident: Incident,
}

/// The open incidents, by rule and key, and by id.
///
/// Keyed by rule first: most matches belong to a rule with no open incident and do not
/// cross, and those are dismissed with one lookup by rule id. Lifecycle commands and the
/// escalation clock find incidents by id, so that is an index too: with tens of thousands
/// of incidents open (a botnet's distributed brute force), nothing here walks them all.
pub struct IncidentBook {
    /// This host's name, the first part of every new incident's uid.
    host: String,
    open: HashMap<String, HashMap<Fields, Incident>>,
    /// Where each open incident is in `open`: its rule and key.
    by_id: HashMap<String, (String, Fields)>,
    next_number: u64,
    dirty: HashSet<(String, Fields)>,
    /// What is stored of each active incident, so a write adds only what changed.
    marks: HashMap<String, stored::Mark>,
    /// Per incident id: the captures its summary describes (of the match that opened it,
    /// or of a sequence's latest last step). Kept in memory only: after a restart an
    /// incident's summary is re-rendered from the next match that describes it.
    described: HashMap<String, Fields>,
    /// Open incidents by severity and state, kept up to date as changes are written
    /// (for the `incidents_open` gauge), with what each incident was counted as.
    counts: HashMap<(Severity, State), i64>,
    counted: HashMap<String, (Severity, State)>,
}

impl IncidentBook {
    /// Loads the open incidents and the next id from the store; new incidents get uids
    /// on `host`.
    pub fn load(store: &Store, host: &str) -> Result<Self, StoreError> {
        let mut book = IncidentBook::empty();
        book.host = host.to_string();
        book.next_number = stored::last_number(store)? + 1;
        for (_, incident, mark) in stored::scan(store, State::is_active)? {
            book.count(&incident.id, (incident.severity, incident.state));
            book.marks.insert(incident.id.clone(), mark);
            book.insert(incident);
        }
        Ok(book)
    }

    /// An empty book with no store behind it, for evaluations that must leave no state
    /// (`test`, `replay`); uids name the kernel's host name.
    pub fn empty() -> Self {
        IncidentBook {
            host: crate::host::kernel_host_name(),
            open: HashMap::new(),
            by_id: HashMap::new(),
            next_number: 1,
            dirty: HashSet::new(),
            marks: HashMap::new(),
            described: HashMap::new(),
            counts: HashMap::new(),
            counted: HashMap::new(),
        }
    }

    fn insert(&mut self, incident: Incident) {
        let key = Fields::from_map(&incident.key);
        self.by_id
            .insert(incident.id.clone(), (incident.rule.clone(), key.clone()));
        self.open
            .entry(incident.rule.clone())
            .or_default()
            .insert(key, incident);
    }

    /// Counts an incident under its severity and state now, instead of what it was
    /// counted as before (if anything).
    fn count(&mut self, id: &str, now: (Severity, State)) {
        if let Some(before) = self.counted.insert(id.to_string(), now) {
            *self.counts.entry(before).or_insert(0) -= 1;
        }
        *self.counts.entry(now).or_insert(0) += 1;
    }

    fn uncount(&mut self, id: &str) {
        if let Some(before) = self.counted.remove(id) {
            *self.counts.entry(before).or_insert(0) -= 1;
        }
    }

    /// Folds a counted match into incidents: updates the open incident for its rule and key,
    /// or opens one when the match completed the rule's condition. Returns what happened
    /// and a copy of the incident after it, for those who notify.
    pub fn apply(
        &mut self,
        hit: Hit,
        rules: &RuleSet,
        now: DateTime<Utc>,
    ) -> Option<IncidentEvent> {
        let kind = self.fold(&hit, rules, now)?;
        let incident = self.open.get(hit.rule.id())?.get(&hit.key)?.clone();
        Some(IncidentEvent { kind, incident })
    }

    /// Like [`IncidentBook::apply`] without the copy of the incident: what a replay, which
    /// notifies no one, needs (a copy per counted match, evidence and timeline included,
    /// was the largest allocation cost of a replay of a log under attack).
    pub fn fold(&mut self, hit: &Hit, rules: &RuleSet, now: DateTime<Utc>) -> Option<EventKind> {
        let rule = &hit.rule;
        let open = self.open.get_mut(rule.id());
        if hit.crossed.is_none() && open.as_ref().is_none_or(|o| !o.contains_key(&hit.key)) {
            return None;
        }
        let open = match open {
            Some(open) => open,
            None => self.open.entry(rule.id().to_string()).or_default(),
        };
        let kind = if let Some(incident) = open.get_mut(&hit.key) {
            incident.updated_at = now;
            if let Some(evidence) = &hit.evidence {
                incident.count += 1;
                incident.last_seen = incident.last_seen.max(evidence.time);
                incident.add_evidence(evidence.clone());
            }
            if let Some(at) = hit.resumed {
                incident.resumed_at = Some(at);
                incident.push_event(
                    now,
                    TimelineKind::Resumed,
                    format!("matching lines resumed at {at}"),
                );
            } else if hit.evidence.is_none() && hit.crossed.is_some() {
                // Only a clock-noticed condition (an absence) comes without a line.
                incident.push_event(
                    now,
                    TimelineKind::AbsentAgain,
                    format!("no matching lines as of {}", hit.time),
                );
            }
            let severity = rule.def.severity.for_count(incident.count);
            if severity > incident.severity {
                incident.timeline.push(TimelineEntry {
                    at: now,
                    event: TimelineKind::SeverityChanged,
                    actor: "logwarden".into(),
                    note: Some(format!(
                        "{} -> {} at count {}",
                        incident.severity, severity, incident.count
                    )),
                });
                incident.severity = severity;
                EventKind::SeverityChanged
            } else {
                EventKind::Updated
            }
        } else {
            let crossing = hit.crossed.clone()?;
            let number = self.next_number;
            self.next_number += 1;
            let (count, evidence) = (crossing.count, crossing.evidence);
            let first_seen = evidence.iter().map(|e| e.time).min().unwrap_or(hit.time);
            let last_seen = evidence.iter().map(|e| e.time).max().unwrap_or(hit.time);
            let id = crate::ids::incident_id(number);
            let mut incident = Incident {
                uid: Incident::fleet_uid(&self.host, &id),
                id,
                rule: rule.id().to_string(),
                severity: rule.def.severity.for_count(count),
                category: rule.def.category.clone(),
                state: State::Open,
                key: hit.key.to_map(),
                count,
                first_seen,
                last_seen,
                opened_at: now,
                updated_at: now,
                controls: rule.def.controls.clone(),
                labels: rule.def.labels.clone(),
                summary: String::new(),
                description: rule.def.description.clone(),
                runbook: rule.def.runbook.clone(),
                resumed_at: None,
                escalation: rule.escalation().to_string(),
                ruleset_version: rules.version.clone(),
                evidence: Vec::new(),
                timeline: vec![TimelineEntry {
                    at: now,
                    event: TimelineKind::Opened,
                    actor: "logwarden".into(),
                    note: None,
                }],
                acknowledged_at: None,
                contained_at: None,
                closed_at: None,
                review: None,
                approval: None,
                silenced_by: None,
                drill: false,
            };
            for e in evidence {
                incident.add_evidence(e);
            }
            self.by_id.insert(
                incident.id.clone(),
                (rule.id().to_string(), hit.key.clone()),
            );
            open.insert(hit.key.clone(), incident);
            EventKind::Opened
        };
        let incident = open.get_mut(&hit.key).expect("inserted or present");
        // A sequence's earlier steps cannot complete it, so their captures do not describe
        // it (the failed user is not the one who logged in): the summary keeps the captures
        // of the match that did, with the count and severity of now.
        if kind == EventKind::Opened || hit.step + 1 >= rule.patterns.len() {
            // Replaced in place when present: no id copied per match.
            match self.described.get_mut(&incident.id) {
                Some(described) => described.clone_from(&hit.captures),
                None => {
                    self.described
                        .insert(incident.id.clone(), hit.captures.clone());
                }
            }
        }
        if let Some(captures) = self.described.get(&incident.id) {
            incident.summary = rules.summary(rule, &summary_context(captures, incident));
        }
        self.dirty.insert((rule.id().to_string(), hit.key.clone()));
        Some(kind)
    }

    /// The active incident with this id.
    pub fn active(&self, id: &str) -> Option<&Incident> {
        let (rule, key) = self.by_id.get(id)?;
        self.open.get(rule)?.get(key)
    }

    /// The active incident with this id, marked changed (written by the next
    /// [`IncidentBook::write_changes`]).
    pub fn active_mut(&mut self, id: &str) -> Option<&mut Incident> {
        let (rule, key) = self.by_id.get(id)?;
        let incident = self.open.get_mut(rule)?.get_mut(key)?;
        self.dirty.insert((rule.clone(), key.clone()));
        Some(incident)
    }

    /// Every active incident.
    pub fn all_active(&self) -> impl Iterator<Item = &Incident> {
        self.open.values().flat_map(HashMap::values)
    }

    /// Takes an incident that is over out of the book: the next match for its rule and key
    /// opens a new incident. The caller stores it.
    pub fn retire(&mut self, id: &str) -> Option<Incident> {
        let (rule, key) = self.by_id.remove(id)?;
        let open = self.open.get_mut(&rule)?;
        let incident = open.remove(&key);
        if open.is_empty() {
            self.open.remove(&rule);
        }
        self.dirty.remove(&(rule, key));
        self.marks.remove(id);
        self.described.remove(id);
        self.uncount(id);
        incident
    }

    /// Adds what changed of every changed incident to a store batch, with the evidence
    /// lines they reference that `log` has not stored yet. On an error nothing is marked
    /// written: the caller fails the commit and the next write starts from the same marks.
    pub fn write_changes(
        &mut self,
        store: &Store,
        batch: &mut store::Batch,
        log: &mut EvidenceLog,
    ) -> Result<(), StoreError> {
        let mut written = Vec::new();
        for (rule, key) in &self.dirty {
            let Some(incident) = self.open.get(rule).and_then(|o| o.get(key)) else {
                continue;
            };
            let mark = stored::write(
                store,
                batch,
                incident,
                self.marks.get(&incident.id).copied(),
                log,
            )?;
            written.push((
                incident.id.clone(),
                mark,
                (incident.severity, incident.state),
            ));
        }
        self.dirty.clear();
        for (id, mark, now) in written {
            self.marks.insert(id.clone(), mark);
            self.count(&id, now);
        }
        Ok(())
    }

    /// Open incidents counted by severity and state (for the `incidents_open` gauge), as of
    /// the last [`IncidentBook::write_changes`].
    pub fn open_counts(&self) -> &HashMap<(Severity, State), i64> {
        &self.counts
    }
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

fn summary_context(captures: &Fields, incident: &Incident) -> BTreeMap<String, serde_json::Value> {
    let mut ctx: BTreeMap<String, serde_json::Value> = captures
        .view()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    ctx.insert("count".into(), incident.count.into());
    ctx.insert("rule".into(), incident.rule.clone().into());
    ctx.insert("severity".into(), incident.severity.as_str().into());
    ctx.insert(
        "key".into(),
        serde_json::to_value(&incident.key).unwrap_or_default(),
    );
    ctx
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
