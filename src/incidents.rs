//! Incidents: opening one when a rule fires, and folding every later match for the same rule
//! and key into it instead of opening a duplicate.
//!
//! The book keeps the open incidents in memory (they are few) and marks what changed; the
//! pipeline writes the changes in the same store batch as the windows and checkpoints that
//! produced them.

use crate::detection::{Evidence, Hit, Key};
use crate::rules::{RuleSet, Severity};
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Most evidence lines kept on one incident: the first half that opened it, then the latest.
pub const MAX_EVIDENCE: usize = 20;

/// Where an incident is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Detected, nobody has acknowledged it yet.
    Open,
}

impl State {
    /// Every state (for metrics that must show zeroes).
    pub const ALL: [State; 1] = [State::Open];

    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
        }
    }

    /// Whether further matches still fold into the incident.
    pub fn is_active(self) -> bool {
        matches!(self, State::Open)
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened (`opened`, `severity_changed`, ...).
    pub event: String,
    /// Who did it (`logwarden` for detection, else the API token's name).
    pub actor: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An incident as stored and served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `INC-<n>`.
    pub id: String,
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
}

impl Incident {
    /// The incident's store key: zero-padded so keys sort like ids.
    pub fn store_key(number: u64) -> Vec<u8> {
        format!("{number:020}").into_bytes()
    }

    /// The number in an `INC-<n>` id.
    pub fn number(id: &str) -> Option<u64> {
        id.strip_prefix("INC-")?.parse().ok()
    }

    fn push_event(&mut self, at: DateTime<Utc>, event: &str, note: String) {
        self.timeline.push(TimelineEntry {
            at,
            event: event.into(),
            actor: "logwarden".into(),
            note: Some(note),
        });
    }

    fn add_evidence(&mut self, evidence: Evidence) {
        if self.evidence.len() >= MAX_EVIDENCE {
            self.evidence.remove(MAX_EVIDENCE / 2);
        }
        self.evidence.push(evidence);
    }
}

/// Something that happened to an incident that people may need to hear about.
///
/// Receivers choose among these by name (`events:` in the config), so the names are part of
/// the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new incident.
    Opened,
    /// The severity tier rose.
    SeverityChanged,
    /// More matches were counted.
    Updated,
    /// The escalation policy moved on to its next step.
    Escalated,
    /// Someone took the incident on.
    Acknowledged,
    /// The lifecycle state changed (contained, eradicated, recovered, ...).
    StateChanged,
    /// The incident is over; pagers must be resolved.
    Closed,
}

impl EventKind {
    /// The event name in notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::SeverityChanged => "severity_changed",
            EventKind::Updated => "updated",
            EventKind::Escalated => "escalated",
            EventKind::Acknowledged => "acknowledged",
            EventKind::StateChanged => "state_changed",
            EventKind::Closed => "closed",
        }
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

/// The open incidents, by rule and key.
pub struct IncidentBook {
    open: HashMap<(String, Key), Incident>,
    next_number: u64,
    dirty: HashSet<(String, Key)>,
}

impl IncidentBook {
    /// Loads the open incidents and the next id from the store.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let mut open = HashMap::new();
        let mut next_number = 1;
        for (_, incident) in store.scan::<Incident>(Space::Incidents)? {
            if let Some(n) = Incident::number(&incident.id) {
                next_number = next_number.max(n + 1);
            }
            if incident.state.is_active() {
                open.insert((incident.rule.clone(), incident.key.clone()), incident);
            }
        }
        Ok(IncidentBook {
            open,
            next_number,
            dirty: HashSet::new(),
        })
    }

    /// An empty book with no store behind it, for evaluations that must leave no state
    /// (`test`, `replay`).
    pub fn empty() -> Self {
        IncidentBook {
            open: HashMap::new(),
            next_number: 1,
            dirty: HashSet::new(),
        }
    }

    /// Folds a counted match into incidents: updates the open incident for its rule and key,
    /// or opens one when the match completed the rule's condition.
    pub fn apply(
        &mut self,
        hit: Hit,
        rules: &RuleSet,
        now: DateTime<Utc>,
    ) -> Option<IncidentEvent> {
        let slot = (hit.rule.id().to_string(), hit.key.clone());
        let rule = &hit.rule;
        let kind = if let Some(incident) = self.open.get_mut(&slot) {
            incident.updated_at = now;
            if let Some(evidence) = &hit.evidence {
                incident.count += 1;
                incident.last_seen = incident.last_seen.max(evidence.time);
                incident.add_evidence(evidence.clone());
            }
            if let Some(at) = hit.resumed {
                incident.resumed_at = Some(at);
                incident.push_event(now, "resumed", format!("matching lines resumed at {at}"));
            } else if hit.evidence.is_none() && hit.crossed.is_some() {
                // Only a clock-noticed condition (an absence) comes without a line.
                incident.push_event(
                    now,
                    "absent_again",
                    format!("no matching lines as of {}", hit.time),
                );
            }
            let severity = rule.def.severity.for_count(incident.count);
            if severity > incident.severity {
                incident.timeline.push(TimelineEntry {
                    at: now,
                    event: EventKind::SeverityChanged.as_str().into(),
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
            let mut incident = Incident {
                id: format!("INC-{number}"),
                rule: rule.id().to_string(),
                severity: rule.def.severity.for_count(count),
                category: rule.def.category.clone(),
                state: State::Open,
                key: hit.key.clone(),
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
                    event: EventKind::Opened.as_str().into(),
                    actor: "logwarden".into(),
                    note: None,
                }],
            };
            for e in evidence {
                incident.add_evidence(e);
            }
            self.open.insert(slot.clone(), incident);
            EventKind::Opened
        };
        let incident = self.open.get_mut(&slot).expect("inserted or present");
        incident.summary = rules.summary(rule, &summary_context(&hit, incident));
        self.dirty.insert(slot.clone());
        Some(IncidentEvent {
            kind,
            incident: incident.clone(),
        })
    }

    /// Adds every changed incident to a store batch.
    pub fn write_changes(&mut self, batch: &mut store::Batch) -> Result<(), StoreError> {
        for slot in self.dirty.drain() {
            if let Some(incident) = self.open.get(&slot) {
                let number = Incident::number(&incident.id).expect("ids are INC-<n>");
                batch.put(Space::Incidents, &Incident::store_key(number), incident)?;
            }
        }
        Ok(())
    }

    /// Open incidents counted by severity and state (for the `incidents_open` gauge).
    pub fn open_counts(&self) -> HashMap<(Severity, State), i64> {
        let mut counts = HashMap::new();
        for incident in self.open.values() {
            *counts
                .entry((incident.severity, incident.state))
                .or_insert(0) += 1;
        }
        counts
    }
}

fn summary_context(hit: &Hit, incident: &Incident) -> BTreeMap<String, serde_json::Value> {
    let mut ctx: BTreeMap<String, serde_json::Value> = hit
        .captures
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
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
