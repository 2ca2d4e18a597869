//! The incident lifecycle and everything that happens to incidents after detection.
//!
//! States move `open → acknowledged → contained → eradicated → recovered → closed`, one
//! step at a time, or to `false_positive` from any active state; a high or critical
//! incident closes only after a post-incident review. Every change records its actor
//! (the API token's name), time and note in the timeline and the audit log.
//!
//! All changes are made on the pipeline thread, the only writer of incidents: the API sends
//! a [`Command`] and gets the answer once the incident, its notifications, its escalation
//! progress and its audit record are stored in one atomic batch and flushed. The [`Desk`]
//! holds what the pipeline needs for that besides the incident book: escalation policies
//! and progress, silences and the audit log.

pub mod cli;
pub mod effects;

use crate::audit::{AuditEvent, AuditLog, Entry};
use crate::config::Config;
use crate::containment;
use crate::detection::RuleChange;
use crate::due::DueQueue;
use crate::escalation::{Policies, Tracker, tracker_key};
use crate::incidents::{Approval, EventKind, Incident, IncidentBook, IncidentEvent, Review, State};
use crate::notification::Outbox;
use crate::rules::Severity;
use crate::silences::{NewSilence, Silences};
use crate::store::{Space, Store, StoreError};
use chrono::{DateTime, Utc};
use effects::{Effects, Record};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio::sync::oneshot;

pub use crate::audit::DAEMON;

/// Why a command changed nothing; the API answers with the matching status.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No such incident or silence (404).
    NotFound(String),
    /// Not allowed in the current state (409).
    Conflict(String),
    /// A malformed request (400).
    Invalid(String),
    /// The store failed (500).
    Internal(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Internal(e.to_string())
    }
}

/// What to do to an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Take it on (`open → acknowledged`).
    Ack {
        /// Free text.
        note: Option<String>,
    },
    /// Move it to another state.
    Transition {
        /// Target state.
        to: State,
        /// Free text.
        note: Option<String>,
    },
    /// Add a note to the timeline.
    Note {
        /// The note.
        text: String,
    },
    /// Record the post-incident review.
    Review {
        /// Why it happened.
        root_cause: String,
        /// What was learned.
        lessons_learned: String,
        /// Follow-up actions.
        actions: Vec<String>,
    },
    /// Allow notifying external roles.
    Approve {
        /// Free text.
        note: Option<String>,
    },
    /// Close it in one recorded step, through the states not yet passed (where closing is
    /// allowed: low and moderate incidents, or high and critical ones with a review).
    Resolve {
        /// Free text.
        note: Option<String>,
    },
    /// Lift its containments (bans) now.
    Release {
        /// Free text.
        note: Option<String>,
    },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Ack { .. } => "ack",
            Action::Transition { .. } => "transition",
            Action::Note { .. } => "note",
            Action::Review { .. } => "review",
            Action::Approve { .. } => "approve",
            Action::Resolve { .. } => "resolve",
            Action::Release { .. } => "release",
        }
    }
}

/// A change requested through the API.
#[derive(Debug)]
pub enum Request {
    /// Act on an incident.
    Incident {
        /// `INC-<n>`.
        id: String,
        /// What to do.
        action: Action,
    },
    /// Create a silence.
    CreateSilence(NewSilence),
    /// Expire a silence now.
    ExpireSilence(String),
    /// Open a drill incident for a rule (handled by the pipeline, which owns the rules).
    Drill {
        /// Rule id.
        rule: String,
    },
}

/// A request with its actor and where the answer goes.
#[derive(Debug)]
pub struct Command {
    /// API token name.
    pub actor: String,
    /// What to do.
    pub request: Request,
    /// The changed incident or silence as JSON, once durable; or why nothing changed.
    pub reply: oneshot::Sender<Result<Value, Refusal>>,
}

/// Which response time a KPI observation measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Opened → acknowledged.
    Acknowledge,
    /// Opened → contained.
    Contain,
    /// Opened → closed.
    Resolve,
}

/// A response-time observation for the KPI histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kpi {
    /// What is measured.
    pub measure: Measure,
    /// The incident's severity.
    pub severity: Severity,
    /// Seconds since the incident opened.
    pub seconds: f64,
    /// A drill: observed under `drill="true"` so exercises do not move real figures.
    pub drill: bool,
}

impl Kpi {
    /// `measure` taken now for this incident: seconds since it opened.
    fn since_open(incident: &Incident, measure: Measure, now: DateTime<Utc>) -> Kpi {
        Kpi {
            measure,
            severity: incident.severity,
            seconds: (now - incident.opened_at).num_milliseconds().max(0) as f64 / 1000.0,
            drill: incident.drill,
        }
    }
}

/// What a command did, for the pipeline to finish once the batch is durable.
#[derive(Debug)]
pub struct Done {
    /// The answer.
    pub reply: Value,
    /// KPIs to observe.
    pub kpis: Vec<Kpi>,
}

/// The next states allowed from `from`.
pub fn allowed_next(from: State) -> &'static [State] {
    match from {
        State::Open => &[State::Acknowledged, State::FalsePositive],
        State::Acknowledged => &[State::Contained, State::FalsePositive],
        State::Contained => &[State::Eradicated, State::FalsePositive],
        State::Eradicated => &[State::Recovered, State::FalsePositive],
        State::Recovered => &[State::Closed, State::FalsePositive],
        State::Closed | State::FalsePositive => &[],
    }
}

/// What [`apply`] did to an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The event receivers may hear about.
    pub event: Option<EventKind>,
    /// Audit event name.
    pub audit: AuditEvent,
    /// Audit details.
    pub details: Value,
    /// KPIs observed (a one-step resolve measures acknowledge, contain and resolve at once).
    pub kpis: Vec<Kpi>,
}

fn non_empty(what: &str, text: &str) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        Err(Refusal::Invalid(format!("{what} must not be empty")))
    } else {
        Ok(())
    }
}

/// Applies an action to an incident, or refuses it with the reason; the incident is
/// unchanged when refused.
pub fn apply(
    incident: &mut Incident,
    action: &Action,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let applied = match action {
        Action::Ack { note } => transition(incident, State::Acknowledged, note, actor, now)?,
        Action::Transition { to, note } => transition(incident, *to, note, actor, now)?,
        Action::Note { text } => {
            non_empty("text", text)?;
            incident.record(now, "note", actor, Some(text.clone()));
            Applied {
                event: None,
                audit: AuditEvent::IncidentNoted,
                details: json!({ "text": text }),
                kpis: Vec::new(),
            }
        }
        Action::Review {
            root_cause,
            lessons_learned,
            actions,
        } => {
            non_empty("root_cause", root_cause)?;
            non_empty("lessons_learned", lessons_learned)?;
            review_allowed(incident, actions)?;
            incident.review = Some(Review {
                root_cause: root_cause.clone(),
                lessons_learned: lessons_learned.clone(),
                actions: actions.clone(),
                by: actor.to_string(),
                at: now,
            });
            incident.record(
                now,
                "reviewed",
                actor,
                Some(format!(
                    "root cause: {root_cause}; lessons learned: {lessons_learned}; {} follow-up action(s)",
                    actions.len()
                )),
            );
            Applied {
                event: None,
                audit: AuditEvent::IncidentReviewed,
                details: json!({"root_cause": root_cause, "lessons_learned": lessons_learned, "actions": actions}),
                kpis: Vec::new(),
            }
        }
        Action::Approve { note } => {
            if let Some(a) = &incident.approval {
                return Err(Refusal::Conflict(format!(
                    "{} was already approved by {} at {}",
                    incident.id,
                    a.by,
                    a.at.to_rfc3339()
                )));
            }
            incident.approval = Some(Approval {
                by: actor.to_string(),
                at: now,
                note: note.clone(),
            });
            incident.record(now, "approved", actor, note.clone());
            Applied {
                event: None,
                audit: AuditEvent::IncidentApproved,
                details: json!({ "note": note }),
                kpis: Vec::new(),
            }
        }
        Action::Resolve { note } => resolve(incident, note, actor, now)?,
        Action::Release { note } => {
            incident.record(now, "release", actor, note.clone());
            Applied {
                event: None,
                audit: AuditEvent::ContainmentReleaseRequested,
                details: json!({ "note": note }),
                kpis: Vec::new(),
            }
        }
    };
    incident.updated_at = now;
    Ok(applied)
}

fn transition(
    incident: &mut Incident,
    to: State,
    note: &Option<String>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let from = incident.state;
    let allowed = allowed_next(from);
    if !allowed.contains(&to) {
        let why = if allowed.is_empty() {
            format!(
                "{} is {from}: it is over and cannot change state",
                incident.id
            )
        } else {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            format!(
                "{} is {from}: it can move to {}, not {to}",
                incident.id,
                names.join(" or ")
            )
        };
        return Err(Refusal::Conflict(why));
    }
    if to == State::Closed {
        close_allowed(incident)?;
    }
    incident.state = to;
    incident.record(now, to.as_str(), actor, note.clone());
    let now_kpi = Kpi::since_open(incident, Measure::Resolve, now);
    let kpi = |measure| Kpi { measure, ..now_kpi };
    let (event, kpi) = match to {
        State::Acknowledged => {
            incident.acknowledged_at = Some(now);
            (EventKind::Acknowledged, Some(kpi(Measure::Acknowledge)))
        }
        State::Contained => {
            incident.contained_at = Some(now);
            (EventKind::StateChanged, Some(kpi(Measure::Contain)))
        }
        State::Closed => {
            incident.closed_at = Some(now);
            (EventKind::Closed, Some(kpi(Measure::Resolve)))
        }
        State::FalsePositive => {
            incident.closed_at = Some(now);
            (EventKind::Closed, None)
        }
        _ => (EventKind::StateChanged, None),
    };
    Ok(Applied {
        event: Some(event),
        audit: AuditEvent::IncidentTransitioned,
        details: json!({"from": from.as_str(), "to": to.as_str(), "note": note}),
        kpis: kpi.into_iter().collect(),
    })
}

/// The close gate: high and critical incidents close only after a post-incident review.
fn close_allowed(incident: &Incident) -> Result<(), Refusal> {
    if incident.severity >= Severity::High && incident.review.is_none() {
        return Err(Refusal::Conflict(format!(
            "{} is {}: closing it requires a post-incident review first (root cause, lessons \
             learned, actions): `logwarden incidents review {}` or POST /api/v1/incidents/{}/review",
            incident.id, incident.severity, incident.id, incident.id
        )));
    }
    Ok(())
}

/// A review looks back at a response: only once the incident is contained (or found a false
/// positive), and for high and critical incidents with at least one follow-up action — an
/// empty review must not satisfy the close gate.
fn review_allowed(incident: &Incident, actions: &[String]) -> Result<(), Refusal> {
    if matches!(incident.state, State::Open | State::Acknowledged) {
        return Err(Refusal::Conflict(format!(
            "{} is {}: a post-incident review comes after containment (transition it to \
             contained first, or to false_positive)",
            incident.id, incident.state
        )));
    }
    if incident.severity >= Severity::High && actions.iter().all(|a| a.trim().is_empty()) {
        return Err(Refusal::Invalid(format!(
            "{} is {}: its review needs at least one follow-up action (--action TEXT)",
            incident.id, incident.severity
        )));
    }
    Ok(())
}

/// `resolve`: to `closed` in one recorded step from any active state, filling in the times of
/// the steps passed over (acknowledged, contained) so the KPIs stay complete.
fn resolve(
    incident: &mut Incident,
    note: &Option<String>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let from = incident.state;
    if !from.is_active() {
        return Err(Refusal::Conflict(format!(
            "{} is {from}: it is over and cannot change state",
            incident.id
        )));
    }
    close_allowed(incident)?;
    let now_kpi = Kpi::since_open(incident, Measure::Resolve, now);
    let kpi = |measure| Kpi { measure, ..now_kpi };
    let mut kpis = Vec::new();
    if incident.acknowledged_at.is_none() {
        incident.acknowledged_at = Some(now);
        kpis.push(kpi(Measure::Acknowledge));
    }
    if incident.contained_at.is_none() {
        incident.contained_at = Some(now);
        kpis.push(kpi(Measure::Contain));
    }
    kpis.push(kpi(Measure::Resolve));
    let passed: Vec<&str> = State::ACTIVE
        .iter()
        .skip_while(|s| **s != from)
        .skip(1)
        .map(|s| s.as_str())
        .collect();
    incident.state = State::Closed;
    incident.closed_at = Some(now);
    let summary = format!("resolved: {from} → closed in one step");
    let text = match note {
        Some(n) => format!("{summary}: {n}"),
        None => summary,
    };
    incident.record(now, "resolved", actor, Some(text));
    Ok(Applied {
        event: Some(EventKind::Closed),
        audit: AuditEvent::IncidentResolved,
        details: json!({"from": from.as_str(), "to": "closed", "through": passed, "note": note}),
        kpis,
    })
}

/// Escalation, silences and the audit log, as the pipeline thread uses them.
pub struct Desk {
    policies: Policies,
    /// Escalation progress of the active incidents, by incident id.
    trackers: HashMap<String, Tracker>,
    /// When each active incident's next escalation step is due: the clock looks at these
    /// only, not at every open incident.
    due: DueQueue<String>,
    /// Silences not yet expired.
    pub silences: Silences,
    /// The audit log.
    pub audit: AuditLog,
    /// Containments (bans) and the decisions about them.
    pub containments: containment::Book,
    /// Whether a containment in force moves its incident to `contained`.
    contain_moves_state: bool,
    /// Decisions since the last commit, for the pipeline to commit.
    effects: Effects,
}

impl Desk {
    /// Policies from the config and the live silences from the store.
    pub fn new(store: &Store, config: &Config, audit: AuditLog) -> Result<Self, StoreError> {
        Ok(Desk {
            policies: Policies::new(config),
            trackers: HashMap::new(),
            due: DueQueue::default(),
            silences: Silences::load(store)?,
            audit,
            containments: containment::Book::new(config),
            contain_moves_state: config.contain_moves_state,
            effects: Effects::default(),
        })
    }

    /// Loads the escalation progress of the book's active incidents (adopting incidents
    /// stored without any), so timers resume where they were.
    pub fn track_active(&mut self, store: &Store, book: &IncidentBook) -> Result<(), StoreError> {
        for incident in book.all_active() {
            let tracker = store
                .get::<Tracker>(Space::Escalations, &tracker_key(&incident.id))?
                .unwrap_or_else(|| self.policies.adopt(incident));
            self.trackers.insert(incident.id.clone(), tracker);
            self.schedule(&incident.id, Some(incident));
        }
        Ok(())
    }

    /// Puts the next escalation step of an incident in the due-time queue, or takes the
    /// incident out when nothing more will fire (or it is no longer active). Called whenever
    /// its tracker, state or severity changed.
    fn schedule(&mut self, id: &str, incident: Option<&Incident>) {
        let due = incident
            .zip(self.trackers.get(id))
            .and_then(|(incident, tracker)| self.policies.next_due(tracker, incident));
        self.due.schedule(id.to_string(), due);
    }

    /// How many incidents have an escalation step ahead of them.
    pub fn scheduled(&self) -> usize {
        self.due.len()
    }

    /// Adds an audit entry to the next commit.
    pub fn note(&mut self, entry: Entry) {
        self.effects.audit(entry);
    }

    /// Everything decided since the last call (notifications, records, audit entries), for
    /// the single writer to commit with the step that caused it.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    /// Records a rule reload (CC8.1 change evidence).
    pub fn rules_reloaded(&mut self, change: &RuleChange) {
        self.note(Entry::new(
            AuditEvent::RulesReloaded,
            DAEMON,
            None,
            json!({
                "old_version": change.old_version,
                "new_version": change.new_version,
                "added": change.added,
                "removed": change.removed,
                "changed": change.changed,
            }),
        ));
    }

    /// Decides what detection events call for (see [`Desk::take_effects`]): an opening
    /// starts escalation (steps due at once go out with it), later events go to the
    /// receivers reached so far; silences mute; audit entries are queued (one `updated` per
    /// commit, with every incident whose count rose and its new count).
    pub fn dispatch(
        &mut self,
        book: &mut IncidentBook,
        events: &[IncidentEvent],
        outbox: &Outbox,
        now: DateTime<Utc>,
    ) {
        let mut updated: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
        for event in events {
            let incident = &event.incident;
            let silence = self.silences.covering(incident, now).map(|s| s.id.clone());
            let muted = silence.is_some();
            let (notified, details) = match event.kind {
                EventKind::Opened => {
                    let mut tracker = self.policies.track(incident);
                    let firings = self.policies.fire_due(&mut tracker, incident, now);
                    let receivers: BTreeSet<String> = firings
                        .iter()
                        .flat_map(|f| f.receivers.iter().cloned())
                        .collect();
                    let held: BTreeSet<&String> = firings.iter().flat_map(|f| &f.held).collect();
                    let notified = self.enqueue(outbox, event, &receivers, muted);
                    self.contain(book, &incident.id, &tracker.policy, &firings, now);
                    self.effects.store(Record::Tracker(tracker.clone()));
                    self.trackers.insert(incident.id.clone(), tracker);
                    self.schedule(&incident.id, Some(incident));
                    if let Some(id) = &silence
                        && let Some(i) = book.active_mut(&incident.id)
                    {
                        i.silenced_by = Some(id.clone());
                        i.record(
                            now,
                            "silenced",
                            DAEMON,
                            Some(format!("notifications muted by {id}")),
                        );
                    }
                    let details = json!({
                        "drill": incident.drill,
                        "rule": incident.rule,
                        "key": incident.key,
                        "severity": incident.severity,
                        "category": incident.category,
                        "count": incident.count,
                        "ruleset_version": incident.ruleset_version,
                        "steps": firings.iter().map(|f| f.step).collect::<Vec<_>>(),
                        "notified": notified,
                        "held_for_approval": held,
                        "silenced_by": silence,
                    });
                    (notified, details)
                }
                kind => {
                    let reached = self
                        .trackers
                        .get(&incident.id)
                        .map(|t| t.reached.clone())
                        .unwrap_or_default();
                    let notified = self.enqueue(outbox, event, &reached, muted);
                    if kind == EventKind::SeverityChanged {
                        // A step with `if_severity` may be due now.
                        self.schedule(&incident.id, Some(incident));
                        (
                            notified,
                            json!({"severity": incident.severity, "count": incident.count, "silenced_by": silence}),
                        )
                    } else {
                        let entry = updated.entry(incident.id.clone()).or_default();
                        entry.0 = incident.count;
                        entry.1.extend(notified);
                        continue;
                    }
                }
            };
            let _ = notified;
            let name = match event.kind {
                EventKind::Opened => AuditEvent::IncidentOpened,
                _ => AuditEvent::IncidentSeverityChanged,
            };
            self.note(Entry::new(name, DAEMON, Some(&incident.id), details));
        }
        // One record for every incident whose count rose in this commit, whatever their
        // number: a botnet updating thousands of incidents adds one record, not thousands.
        if !updated.is_empty() {
            let only = (updated.len() == 1)
                .then(|| updated.keys().next().cloned())
                .flatten();
            let counts: BTreeMap<&String, u64> = updated
                .iter()
                .map(|(id, (count, _))| (id, *count))
                .collect();
            let notified: BTreeMap<&String, &Vec<String>> = updated
                .iter()
                .filter(|(_, (_, n))| !n.is_empty())
                .map(|(id, (_, n))| (id, n))
                .collect();
            self.note(Entry::new(
                AuditEvent::IncidentUpdated,
                DAEMON,
                only.as_deref(),
                json!({"counts": counts, "notified": notified}),
            ));
        }
    }

    /// Decides the notifications of an event; returns the receivers that hear it.
    fn enqueue(
        &mut self,
        outbox: &Outbox,
        event: &IncidentEvent,
        receivers: &BTreeSet<String>,
        muted: bool,
    ) -> Vec<String> {
        let routed = outbox.route(event, receivers, muted);
        self.effects.notify(event, routed)
    }

    /// The clock: records silences that ended and fires the escalation steps now due.
    /// Returns whether it decided notifications.
    pub fn tick(&mut self, book: &mut IncidentBook, outbox: &Outbox, now: DateTime<Utc>) -> bool {
        // Windows first: a window cut by its silence's end closes before the silence ends.
        for change in self.silences.windows_due(now) {
            let (event, verb) = if change.opened {
                (AuditEvent::SilenceWindowOpened, "opened")
            } else {
                (AuditEvent::SilenceWindowClosed, "closed")
            };
            tracing::info!(silence = %change.silence.id, starts_at = %change.window.starts_at, ends_at = %change.window.ends_at, "silence window {verb}");
            self.note(window_entry(event, DAEMON, &change.silence, change.window));
            self.effects.store(Record::Silence(change.silence));
        }
        for s in self.silences.expire_due(now) {
            tracing::info!(silence = %s.id, "silence ended");
            self.note(Entry::new(
                AuditEvent::SilenceExpired,
                DAEMON,
                None,
                json!({"id": s.id, "ends_at": s.ends_at, "by": DAEMON}),
            ));
            self.effects.store(Record::Silence(s));
        }
        let mut changed = Vec::new();
        self.containments.expire_due(now, &mut changed);
        self.effects.containments(changed);
        let mut wrote = false;
        for id in self.due.take_due(now) {
            let (Some(incident), Some(tracker)) = (book.active(&id), self.trackers.get_mut(&id))
            else {
                // Retired since it was scheduled.
                continue;
            };
            let firings = self.policies.fire_due(tracker, incident, now);
            let tracker = tracker.clone();
            self.schedule(&id, book.active(&id));
            if firings.is_empty() {
                continue;
            }
            self.effects.store(Record::Tracker(tracker.clone()));
            let silence = self.silences.covering(incident, now).map(|s| s.id.clone());
            self.contain(book, &id, &tracker.policy, &firings, now);
            for firing in firings {
                let Some(incident) = book.active_mut(&id) else {
                    break;
                };
                incident.updated_at = now;
                incident.record(
                    now,
                    EventKind::Escalated.as_str(),
                    DAEMON,
                    Some(format!(
                        "step {} ({}){}",
                        firing.step + 1,
                        firing.roles,
                        if firing.held.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; external receivers wait for approval: {}",
                                join(&firing.held)
                            )
                        }
                    )),
                );
                let event = IncidentEvent {
                    kind: EventKind::Escalated,
                    incident: incident.clone(),
                };
                let notified = self.enqueue(outbox, &event, &firing.receivers, silence.is_some());
                wrote |= !notified.is_empty();
                tracing::info!(incident = %id, step = firing.step + 1, roles = %firing.roles, "escalated");
                let external = notified.iter().any(|r| self.policies.is_external(r));
                self.note(Entry::new(
                    AuditEvent::IncidentEscalated,
                    DAEMON,
                    Some(&id),
                    json!({
                        "step": firing.step + 1,
                        "roles": firing.roles,
                        "notified": notified,
                        "held_for_approval": firing.held,
                        "silenced_by": silence,
                        "external": external,
                    }),
                ));
            }
        }
        wrote
    }

    /// Decides the containments the fired steps call for (see [`containment::Book::request`]).
    fn contain(
        &mut self,
        book: &mut IncidentBook,
        id: &str,
        policy: &str,
        firings: &[crate::escalation::Firing],
        now: DateTime<Utc>,
    ) {
        let actions: Vec<String> = firings.iter().flat_map(|f| f.contain.clone()).collect();
        if actions.is_empty() {
            return;
        }
        let Some(incident) = book.active_mut(id) else {
            return;
        };
        let allowed_by = format!("{DAEMON} (escalation policy {policy})");
        let mut changed = Vec::new();
        let entries = self
            .containments
            .request(incident, &actions, &allowed_by, now, &mut changed);
        self.effects.containments(changed);
        for entry in entries {
            self.note(entry);
        }
    }

    /// Records what the containment worker did (see [`containment::Book::record`]); a
    /// containment now in force moves an open or acknowledged incident to `contained`
    /// (actor `logwarden`, unless `contain_moves_state: false`), and the receivers reached
    /// so far hear of it. Returns the KPIs to observe.
    pub fn record_outcome(
        &mut self,
        book: &mut IncidentBook,
        store: &Store,
        outbox: &Outbox,
        outcome: &containment::Outcome,
    ) -> Result<Vec<Kpi>, StoreError> {
        let Some(id) = self.containments.incident_of(outcome) else {
            return Ok(Vec::new());
        };
        let mut incident = match book.active(&id) {
            Some(i) => i.clone(),
            None => match Incident::number(&id)
                .map(|n| crate::incidents::stored::read(store, n))
                .transpose()?
                .flatten()
            {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
        };
        let now = outcome.at;
        let mut changed = Vec::new();
        let recorded = self
            .containments
            .record(outcome, &mut incident, &mut changed);
        self.effects.containments(changed);
        for entry in recorded.audit {
            self.note(entry);
        }
        let mut kpis = Vec::new();
        if recorded.contained
            && self.contain_moves_state
            && matches!(incident.state, State::Open | State::Acknowledged)
        {
            let from = incident.state;
            incident.state = State::Contained;
            incident.contained_at = Some(now);
            let note = "an automatic containment is in force".to_string();
            incident.record(now, State::Contained.as_str(), DAEMON, Some(note.clone()));
            kpis.push(Kpi::since_open(&incident, Measure::Contain, now));
            let reached = self
                .trackers
                .get(&id)
                .map(|t| t.reached.clone())
                .unwrap_or_default();
            let silenced = self.silences.covering(&incident, now).is_some();
            let event = IncidentEvent {
                kind: EventKind::StateChanged,
                incident: incident.clone(),
            };
            let notified = self.enqueue(outbox, &event, &reached, silenced);
            self.note(Entry::new(
                AuditEvent::IncidentTransitioned,
                DAEMON,
                Some(&id),
                json!({"from": from.as_str(), "to": "contained", "note": note, "notified": notified}),
            ));
        }
        incident.updated_at = now;
        match book.active_mut(&id) {
            Some(slot) => {
                *slot = incident.clone();
                self.schedule(&id, Some(&incident));
            }
            None => self.effects.store(Record::Incident(Box::new(incident))),
        }
        Ok(kpis)
    }

    /// Carries out an API request: the incident book marks what it changed, the rest is
    /// decided as effects (see [`Desk::take_effects`]); the caller writes both. A refusal
    /// changes nothing but is queued for the audit log.
    pub fn command(
        &mut self,
        book: &mut IncidentBook,
        store: &Store,
        outbox: &Outbox,
        actor: &str,
        request: Request,
        now: DateTime<Utc>,
    ) -> Result<Done, Refusal> {
        match request {
            Request::Incident { id, action } => {
                let result = self.act(book, store, outbox, actor, &id, &action, now);
                if let Err(Refusal::Conflict(reason)) = &result {
                    self.note(Entry::new(
                        AuditEvent::IncidentRefused,
                        actor,
                        Some(&id),
                        json!({"action": action.name(), "reason": reason}),
                    ));
                }
                result
            }
            Request::CreateSilence(new) => {
                let silence = self
                    .silences
                    .create(new, actor, now)
                    .map_err(Refusal::Invalid)?;
                self.effects.store(Record::Silence(silence.clone()));
                tracing::info!(silence = %silence.id, author = actor, "silence created");
                self.note(Entry::new(
                    AuditEvent::SilenceCreated,
                    actor,
                    None,
                    json!({
                        "id": silence.id,
                        "matchers": silence.matchers,
                        "starts_at": silence.starts_at,
                        "ends_at": silence.ends_at,
                        "reason": silence.reason,
                        "schedule": silence.schedule,
                    }),
                ));
                Ok(Done {
                    reply: silence.to_json(now),
                    kpis: Vec::new(),
                })
            }
            Request::ExpireSilence(id) => {
                let open = self.silences.open_window(&id);
                let silence = self
                    .silences
                    .expire(&id, actor, now)
                    .ok_or_else(|| Refusal::NotFound(format!("no active silence {id}")))?;
                self.effects.store(Record::Silence(silence.clone()));
                tracing::info!(silence = %silence.id, by = actor, "silence expired");
                self.note(Entry::new(
                    AuditEvent::SilenceExpired,
                    actor,
                    None,
                    json!({"id": silence.id, "ends_at": silence.ends_at, "by": actor}),
                ));
                if let Some(window) = open {
                    self.note(window_entry(
                        AuditEvent::SilenceWindowClosed,
                        actor,
                        &silence,
                        window,
                    ));
                }
                Ok(Done {
                    reply: silence.to_json(now),
                    kpis: Vec::new(),
                })
            }
            // Opened by the pipeline, which owns the rules; never routed here.
            Request::Drill { .. } => Err(Refusal::Internal(
                "drills are opened by the pipeline".into(),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        book: &mut IncidentBook,
        store: &Store,
        outbox: &Outbox,
        actor: &str,
        id: &str,
        action: &Action,
        now: DateTime<Utc>,
    ) -> Result<Done, Refusal> {
        // `id` is what the caller named the incident by: its id or its uid.
        let missing = || Refusal::NotFound(format!("no incident {id}"));
        let number = Incident::handle_number(id).ok_or_else(missing)?;
        // Book, trackers, audit and notifications all see the one canonical spelling.
        let local = crate::ids::incident_id(number);
        let was_active = book.active(&local).is_some();
        let mut incident = match book.active(&local) {
            Some(i) => i.clone(),
            None => crate::incidents::stored::read(store, number)?.ok_or_else(missing)?,
        };
        if !incident.is_named_by(id) {
            return Err(missing());
        }
        let id = local.as_str();
        let mut tracker = match self.trackers.get(id) {
            Some(t) => t.clone(),
            None => store
                .get::<Tracker>(Space::Escalations, &tracker_key(id))?
                .unwrap_or_else(|| self.policies.adopt(&incident)),
        };
        if matches!(action, Action::Release { .. }) && !self.containments.has_live(id) {
            return Err(Refusal::Conflict(format!(
                "{id} has no containment in force or waiting to release"
            )));
        }
        let applied = apply(&mut incident, action, actor, now)?;
        let mut changed = Vec::new();
        let lifted = match action {
            Action::Release { .. } => {
                self.containments
                    .release(&mut incident, actor, "released", now, &mut changed)
            }
            _ if incident.state == State::FalsePositive => {
                self.containments
                    .release(&mut incident, actor, "false_positive", now, &mut changed)
            }
            Action::Approve { .. } => {
                Some(
                    self.containments
                        .approve(&mut incident, actor, now, &mut changed),
                )
            }
            _ => None,
        };
        self.effects.containments(changed);
        for entry in lifted.into_iter().flatten() {
            self.note(entry);
        }
        let silence = self.silences.covering(&incident, now).map(|s| s.id.clone());
        let mut notified = Vec::new();
        if let Some(kind) = applied.event {
            let event = IncidentEvent {
                kind,
                incident: incident.clone(),
            };
            notified = self.enqueue(outbox, &event, &tracker.reached, silence.is_some());
        }
        let mut details = applied.details;
        if matches!(action, Action::Approve { .. }) {
            // The approval is the decision to tell them: a silence does not hold it back.
            let released = self.policies.approve(&mut tracker);
            let kind = if incident.state.is_active() {
                EventKind::Escalated
            } else {
                EventKind::Closed
            };
            let event = IncidentEvent {
                kind,
                incident: incident.clone(),
            };
            let external = self.enqueue(outbox, &event, &released, false);
            details["released"] = json!(external);
            details["external"] = json!(!external.is_empty());
        }
        details["notified"] = json!(notified);
        details["silenced_by"] = json!(silence);
        let event_name = applied.audit;
        self.note(Entry::new(event_name, actor, Some(id), details));
        tracing::info!(incident = %id, actor, action = action.name(), state = %incident.state, "incident changed");
        self.effects.store(Record::Tracker(tracker.clone()));
        if incident.state.is_active() {
            if let Some(slot) = book.active_mut(id) {
                *slot = incident.clone();
            }
            self.trackers.insert(id.to_string(), tracker);
            self.schedule(id, Some(&incident));
        } else {
            if was_active {
                book.retire(id);
                self.trackers.remove(id);
            }
            self.schedule(id, None);
            self.effects
                .store(Record::Incident(Box::new(incident.clone())));
        }
        Ok(Done {
            reply: serde_json::to_value(&incident).expect("incidents serialise"),
            kpis: applied.kpis,
        })
    }
}

/// The audit entry of a scheduled silence's window opening or closing: which silence, the
/// window, and the approval it rests on (author, reason).
fn window_entry(
    event: AuditEvent,
    actor: &str,
    silence: &crate::silences::Silence,
    window: crate::silences::Window,
) -> Entry {
    Entry::new(
        event,
        actor,
        None,
        json!({
            "id": silence.id,
            "window": window,
            "matchers": silence.matchers,
            "schedule": silence.schedule,
            "author": silence.author,
            "reason": silence.reason,
        }),
    )
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// `transition` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// Target state.
    pub to: State,
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
}

/// `ack` and `approve` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteOnlyBody {
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
}

/// `note` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// The note.
    pub text: String,
}

/// `review` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// Why it happened.
    pub root_cause: String,
    /// What was learned.
    pub lessons_learned: String,
    /// Follow-up actions.
    pub actions: Vec<String>,
}

impl From<Measure> for crate::sla::Stage {
    // Here, beside the measures, so the SLA judge needs nothing from the lifecycle.
    /// The stage a response-time KPI measures.
    fn from(measure: Measure) -> crate::sla::Stage {
        use crate::sla::Stage;
        match measure {
            Measure::Acknowledge => Stage::Acknowledge,
            Measure::Contain => Stage::Contain,
            Measure::Resolve => Stage::Resolve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::format::sample_incident;
    use crate::store;

    const CONFIG: &str = r#"state_dir: s
receivers:
  - {name: first, type: file, path: '-', events: [opened, severity_changed, acknowledged]}
  - {name: later, type: file, path: '-', events: [escalated, severity_changed]}
roles:
  analysts: {receivers: [first]}
  lead: {receivers: [later]}
escalation_policies:
  default:
    - notify: [analysts]
    - {after: 1h, notify: [lead]}
"#;

    /// A store, the config above and its outbox, in a directory removed at the end.
    struct Fixture {
        _dir: tempfile::TempDir,
        config: Config,
        store: Store,
        outbox: Outbox,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap();
            let store = Store::open(dir.path()).unwrap();
            let outbox = Outbox::new(store.clone(), &config).unwrap();
            Fixture {
                _dir: dir,
                config,
                store,
                outbox,
            }
        }

        fn desk(&self) -> Desk {
            Desk::new(
                &self.store,
                &self.config,
                AuditLog::open(&self.store).unwrap(),
            )
            .unwrap()
        }

        fn book(&self) -> IncidentBook {
            IncidentBook::load(&self.store, "web1").unwrap()
        }

        /// Commits what the desk decided, as the pipeline does; returns its audit entries.
        fn commit(&self, desk: &mut Desk) -> Vec<Entry> {
            let mut batch = store::Batch::new();
            let written = desk
                .take_effects()
                .write(&self.store, &self.outbox, &mut batch)
                .unwrap();
            self.store.commit(batch).unwrap();
            written.audit
        }
    }

    #[test]
    fn later_events_go_to_the_receivers_reached_so_far_and_updates_are_audited_once() {
        let f = Fixture::new();
        let outbox = f.outbox.clone();
        let (mut desk, mut book) = (f.desk(), f.book());
        let incident = sample_incident();
        let now = incident.opened_at;
        let event = |kind| IncidentEvent {
            kind,
            incident: incident.clone(),
        };
        desk.dispatch(
            &mut book,
            &[
                event(EventKind::Opened),
                event(EventKind::Updated),
                event(EventKind::Updated),
                event(EventKind::SeverityChanged),
            ],
            &outbox,
            now,
        );
        let audit = f.commit(&mut desk);
        let sent: Vec<(String, EventKind)> = outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|r| (r.receiver, r.event))
            .collect();
        // `later` chose severity_changed but its step has not fired: it hears nothing yet.
        assert_eq!(
            sent,
            [
                ("first".to_string(), EventKind::Opened),
                ("first".to_string(), EventKind::SeverityChanged),
            ]
        );
        let audit: Vec<&str> = audit.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            audit,
            [
                "incident.opened",
                "incident.severity_changed",
                "incident.updated"
            ]
        );
        let tracker = &desk.trackers[&incident.id];
        assert_eq!(tracker.reached, BTreeSet::from(["first".to_string()]));
    }

    #[test]
    fn count_bumps_of_many_incidents_make_one_audit_record_per_commit() {
        let f = Fixture::new();
        let outbox = f.outbox.clone();
        let (mut desk, mut book) = (f.desk(), f.book());
        let events: Vec<IncidentEvent> = (1..=300)
            .map(|n| {
                let mut incident = sample_incident();
                incident.id = format!("INC-{n}");
                incident.count = n;
                IncidentEvent {
                    kind: EventKind::Updated,
                    incident,
                }
            })
            .collect();
        desk.dispatch(&mut book, &events, &outbox, sample_incident().opened_at);
        let audit = desk.take_effects().audit_entries().to_vec();
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(audit[0].event, "incident.updated");
        assert_eq!(audit[0].incident, None);
        let counts = audit[0].details["counts"].as_object().unwrap();
        assert_eq!(counts.len(), 300);
        assert_eq!(counts["INC-7"], 7);
    }

    /// Five thousand open incidents: a tick with nothing due does no work per incident
    /// (a walk over all of them, as a clock without a due-time queue makes, takes seconds
    /// here), each incident's next step fires exactly at its time, and an acknowledged
    /// incident leaves the queue.
    #[test]
    fn the_clock_looks_only_at_what_is_due_however_many_incidents_are_open() {
        const OPEN: usize = 5_000;
        let f = Fixture::new();
        let (store, outbox) = (f.store.clone(), f.outbox.clone());
        let mut batch = store::Batch::new();
        let opened = sample_incident().opened_at;
        for n in 1..=OPEN {
            let mut incident = sample_incident();
            incident.id = format!("INC-{n}");
            incident.key =
                BTreeMap::from([("ip".to_string(), format!("10.0.{}.{}", n / 250, n % 250))]);
            // Opened a second apart: the one-hour step falls due one incident per second.
            incident.opened_at = opened + chrono::Duration::seconds(n as i64);
            incident.put(&store, &mut batch).unwrap();
        }
        store.commit(batch).unwrap();
        let (mut desk, mut book) = (f.desk(), f.book());
        desk.track_active(&store, &book).unwrap();
        assert_eq!(desk.scheduled(), OPEN);

        let hour = chrono::Duration::hours(1);
        let started = std::time::Instant::now();
        for second in 0..50 {
            let now = opened + chrono::Duration::seconds(second) + chrono::Duration::minutes(30);
            assert!(!desk.tick(&mut book, &outbox, now));
        }
        let idle = started.elapsed();
        assert!(
            idle < std::time::Duration::from_secs(1),
            "50 idle ticks took {idle:?}"
        );

        // INC-1's step is due at its opening + 1 h, INC-2's a second later.
        let due = opened + chrono::Duration::seconds(1) + hour;
        assert!(!desk.tick(&mut book, &outbox, due - chrono::Duration::milliseconds(1)));
        assert!(desk.tick(&mut book, &outbox, due));
        let audit = f.commit(&mut desk);
        let sent: Vec<(String, String)> = outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|r| (r.incident, r.receiver))
            .collect();
        assert_eq!(sent, [("INC-1".to_string(), "later".to_string())]);
        assert_eq!(audit.len(), 1);
        // Fired and not repeating: out of the queue.
        assert_eq!(desk.scheduled(), OPEN - 1);

        // Acknowledged before its time: INC-2 leaves the queue and never fires.
        desk.command(
            &mut book,
            &store,
            &outbox,
            "oncall",
            Request::Incident {
                id: "INC-2".into(),
                action: Action::Ack { note: None },
            },
            due,
        )
        .unwrap();
        assert_eq!(desk.scheduled(), OPEN - 2);
        assert!(!desk.tick(&mut book, &outbox, due + chrono::Duration::seconds(1)));
        // INC-3 is due a second after INC-2 would have been.
        assert!(desk.tick(&mut book, &outbox, due + chrono::Duration::seconds(2)));
    }

    fn t(to: State) -> Action {
        Action::Transition { to, note: None }
    }

    /// The sample incident with this severity, opened at `opened`.
    fn incident(severity: Severity, opened: DateTime<Utc>) -> Incident {
        let mut i = sample_incident();
        i.severity = severity;
        i.opened_at = opened;
        i
    }

    #[test]
    fn only_the_next_state_or_false_positive_is_allowed() {
        let mut i = sample_incident();
        let now = i.opened_at + chrono::Duration::seconds(90);
        let err = apply(&mut i, &t(State::Contained), "a", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("acknowledged or false_positive")),
            "{err:?}"
        );
        assert_eq!(i.state, State::Open);
        let ack = apply(
            &mut i,
            &Action::Ack {
                note: Some("mine".into()),
            },
            "oncall",
            now,
        )
        .unwrap();
        assert_eq!(ack.event, Some(EventKind::Acknowledged));
        assert_eq!(
            ack.kpis,
            [Kpi {
                measure: Measure::Acknowledge,
                severity: Severity::High,
                seconds: 90.0,
                drill: false
            }]
        );
        assert_eq!(i.timeline.last().unwrap().actor, "oncall");
        for s in [State::Contained, State::Eradicated, State::Recovered] {
            apply(&mut i, &t(s), "oncall", now).unwrap();
        }
        // High: no close without a review.
        let err = apply(&mut i, &t(State::Closed), "oncall", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("review")),
            "{err:?}"
        );
        let review = Action::Review {
            root_cause: "weak password".into(),
            lessons_learned: "enforce keys".into(),
            actions: vec!["disable passwords".into()],
        };
        apply(&mut i, &review, "lead", now).unwrap();
        let closed = apply(&mut i, &t(State::Closed), "oncall", now).unwrap();
        assert_eq!(closed.event, Some(EventKind::Closed));
        assert!(matches!(
            closed.kpis[..],
            [Kpi {
                measure: Measure::Resolve,
                severity: Severity::High,
                ..
            }]
        ));
        let err = apply(&mut i, &t(State::FalsePositive), "oncall", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("over")),
            "{err:?}"
        );
    }

    #[test]
    fn resolve_closes_in_one_step_where_closing_is_allowed() {
        let now = Utc::now();
        let mut low = incident(Severity::Moderate, now - chrono::Duration::seconds(60));
        let resolve = Action::Resolve {
            note: Some("fixed the cron job".into()),
        };
        let done = apply(&mut low, &resolve, "oncall", now).unwrap();
        assert_eq!(low.state, State::Closed);
        assert_eq!(done.audit, "incident.resolved");
        assert_eq!(done.event, Some(EventKind::Closed));
        assert_eq!(
            done.details["through"],
            json!(["acknowledged", "contained", "eradicated", "recovered"])
        );
        let measured: Vec<Measure> = done.kpis.iter().map(|k| k.measure).collect();
        assert_eq!(
            measured,
            [Measure::Acknowledge, Measure::Contain, Measure::Resolve]
        );
        assert!(low.acknowledged_at.is_some() && low.contained_at.is_some());
        assert_eq!(low.timeline.last().unwrap().event, "resolved");
        assert!(apply(&mut low, &resolve, "oncall", now).is_err(), "over");

        // High: a review first, and a review only after containment, with an action.
        let mut high = incident(Severity::High, now);
        let err = apply(&mut high, &resolve, "oncall", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("review")),
            "{err:?}"
        );
        let review = |actions: Vec<String>| Action::Review {
            root_cause: "weak password".into(),
            lessons_learned: "enforce keys".into(),
            actions,
        };
        let err = apply(&mut high, &review(vec!["keys".into()]), "lead", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Conflict(r) if r.contains("after containment")),
            "{err:?}"
        );
        apply(&mut high, &t(State::Acknowledged), "oncall", now).unwrap();
        apply(&mut high, &t(State::Contained), "oncall", now).unwrap();
        let err = apply(&mut high, &review(vec![]), "lead", now).unwrap_err();
        assert!(
            matches!(&err, Refusal::Invalid(r) if r.contains("follow-up action")),
            "{err:?}"
        );
        apply(
            &mut high,
            &review(vec!["disable passwords".into()]),
            "lead",
            now,
        )
        .unwrap();
        let done = apply(&mut high, &resolve, "oncall", now).unwrap();
        assert_eq!(high.state, State::Closed);
        // Acknowledged and contained were measured when they happened.
        assert_eq!(done.kpis.len(), 1);
    }

    #[test]
    fn false_positive_from_any_active_state_and_one_approval() {
        for steps in 0..5 {
            let mut i = sample_incident();
            let now = i.opened_at;
            for s in &State::ACTIVE[1..=steps] {
                apply(&mut i, &t(*s), "x", now).unwrap();
            }
            apply(&mut i, &t(State::FalsePositive), "x", now).unwrap();
            assert_eq!(i.state, State::FalsePositive);
            assert!(i.closed_at.is_some());
        }
        let mut i = sample_incident();
        let now = i.opened_at;
        apply(&mut i, &Action::Approve { note: None }, "boss", now).unwrap();
        assert_eq!(i.approval.as_ref().unwrap().by, "boss");
        assert!(apply(&mut i, &Action::Approve { note: None }, "boss", now).is_err());
        assert!(matches!(
            apply(&mut i, &Action::Note { text: " ".into() }, "x", now),
            Err(Refusal::Invalid(_))
        ));
    }
}
