//! The book of open incidents: folds every hit into the incident of its rule and key
//! (opening one when none is open), retires incidents that close, and writes what changed.
//!
//! It stands apart from the incident record ([`super::Incident`]) because it is the only
//! part with state across hits: the record is a value every stage reads; the book is
//! owned by the pipeline alone and indexed for the hot path.

use super::{EventKind, Incident, IncidentEvent, State, TimelineEntry, TimelineKind, stored};
use crate::detection::{Fields, Hit};
use crate::rules::{RuleSet, Severity, SummaryValues};
use crate::store::evidence::EvidenceLog;
use crate::store::{self, Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};

/// Maps looked up per counted match: hashed with foldhash (seeded per process) rather than
/// SipHash, as the detector's are.
type FastMap<K, V> = foldhash::HashMap<K, V>;

/// The open incidents, by rule and key, and by id.
///
/// Keyed by rule first: most matches belong to a rule with no open incident and do not
/// cross, and those are dismissed with one lookup by rule id. Lifecycle commands and the
/// escalation clock find incidents by id, so that is an index too: with tens of thousands
/// of incidents open (a botnet's distributed brute force), nothing here walks them all.
pub struct IncidentBook {
    /// This host's name, the first part of every new incident's uid.
    host: String,
    open: FastMap<String, FastMap<Fields, Incident>>,
    /// Where each open incident is in `open`: its rule and key.
    by_id: FastMap<String, (String, Fields)>,
    next_number: u64,
    /// Incidents changed since the last write, by rule and key: by rule first, so marking
    /// one per match looks the rule up by `&str` and copies no rule id.
    dirty: FastMap<String, foldhash::HashSet<Fields>>,
    /// What is stored of each active incident, so a write adds only what changed.
    marks: HashMap<String, stored::Mark>,
    /// Per incident id: the captures its summary describes (of the match that opened it,
    /// or of a sequence's latest last step). Kept in memory only: after a restart an
    /// incident's summary is re-rendered from the next match that describes it.
    described: FastMap<String, Fields>,
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
            host: crate::base::host::kernel_host_name(),
            open: FastMap::default(),
            by_id: FastMap::default(),
            next_number: 1,
            dirty: FastMap::default(),
            marks: HashMap::new(),
            described: FastMap::default(),
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
            fold_into(incident, hit, now)
        } else {
            let incident = opened(&self.host, self.next_number, hit, rules, now)?;
            self.next_number += 1;
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
            match &rule.plain_summary {
                Some(plain) => {
                    // Rendered into the old summary's buffer.
                    let mut text = std::mem::take(&mut incident.summary);
                    plain.render_into(&mut text, &Described { captures, incident });
                    incident.summary = text;
                }
                None => {
                    incident.summary = rules.summary(rule, &summary_context(captures, incident))
                }
            }
        }
        mark_dirty(&mut self.dirty, rule.id(), &hit.key);
        Some(kind)
    }

    /// Whether `rule` has an incident open for `key` (encoded [`Fields`], looked up without
    /// copying it; a match for it folds in).
    pub fn is_open(&self, rule: &str, key: &str) -> bool {
        self.open.get(rule).is_some_and(|o| o.contains_key(key))
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
        mark_dirty(&mut self.dirty, rule, key);
        Some(incident)
    }

    /// Every active incident: what the escalation clock and the metrics walk.
    pub fn all_active(&self) -> impl Iterator<Item = &Incident> {
        self.open.values().flat_map(|keys| keys.values())
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
        if let Some(keys) = self.dirty.get_mut(&rule) {
            keys.remove(&key);
        }
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
        let dirty = self
            .dirty
            .iter()
            .flat_map(|(r, keys)| keys.iter().map(move |k| (r, k)));
        for (rule, key) in dirty {
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

/// Marks the incident of `rule` and `key` changed; copies the rule id only the first time
/// since the last write.
fn mark_dirty(dirty: &mut FastMap<String, foldhash::HashSet<Fields>>, rule: &str, key: &Fields) {
    match dirty.get_mut(rule) {
        Some(keys) => {
            if !keys.contains(key) {
                keys.insert(key.clone());
            }
        }
        None => {
            dirty.insert(rule.to_string(), std::iter::once(key.clone()).collect());
        }
    }
}

/// Folds a later hit into its open incident: count, evidence, a resumption or a repeated
/// absence on the timeline, and a severity that rises with the count.
fn fold_into(incident: &mut Incident, hit: &Hit, now: DateTime<Utc>) -> EventKind {
    let rule = &hit.rule;
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
}

/// The incident a crossing opens, numbered `number`, with a uid on `host`; none when the
/// hit crossed nothing (a match for no open incident).
fn opened(
    host: &str,
    number: u64,
    hit: &Hit,
    rules: &RuleSet,
    now: DateTime<Utc>,
) -> Option<Incident> {
    let rule = &hit.rule;
    let crossing = hit.crossed.clone()?;
    let (count, evidence) = (crossing.count, crossing.evidence);
    let first_seen = evidence.iter().map(|e| e.time).min().unwrap_or(hit.time);
    let last_seen = evidence.iter().map(|e| e.time).max().unwrap_or(hit.time);
    let id = crate::base::ids::incident_id(number);
    let mut incident = Incident {
        uid: Incident::fleet_uid(host, &id),
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
    Some(incident)
}

/// What a plain summary names ([`crate::rules::PlainSummary`]): the same values as
/// [`summary_context`], read in place.
struct Described<'a> {
    captures: &'a Fields,
    incident: &'a Incident,
}

impl SummaryValues for Described<'_> {
    fn count(&self) -> u64 {
        self.incident.count
    }
    fn rule(&self) -> &str {
        &self.incident.rule
    }
    fn severity(&self) -> &str {
        self.incident.severity.as_str()
    }
    fn capture(&self, name: &str) -> Option<&str> {
        self.captures.get(name)
    }
}

/// The names a rule's summary template may use: the hit's captures and the incident's
/// count, rule, severity and key.
fn summary_context(captures: &Fields, incident: &Incident) -> BTreeMap<String, serde_json::Value> {
    let mut ctx = crate::rules::minijinja_context(
        captures.view().iter(),
        incident.count,
        &incident.rule,
        incident.severity.as_str(),
    );
    ctx.insert(
        "key".into(),
        serde_json::to_value(&incident.key).unwrap_or_default(),
    );
    ctx
}
