//! The [`Desk`]: escalation, silences, containments and the audit queue, as the pipeline
//! thread uses them on detection events and on the clock. What it decides is queued as
//! [`Effects`] for the single writer to commit with the step that caused it; API requests
//! and containment outcomes go through it too (see [`super::commands`]).

use super::DAEMON;
use super::effects::{Effects, Record};
use crate::audit::{AuditEvent, AuditLog, Entry};
use crate::base::due::DueQueue;
use crate::config::Config;
use crate::detection::RuleChange;
use crate::incidents::timeline::TimelineKind;
use crate::incidents::{EventKind, Incident, IncidentBook, IncidentEvent};
use crate::notification::Outbox;
use crate::response::containment;
use crate::response::escalation::{Policies, Tracker, tracker_key};
use crate::response::silences::Silences;
use crate::store::{Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Escalation, silences and the audit log, as the pipeline thread uses them.
pub struct Desk {
    pub(super) policies: Policies,
    /// Escalation progress of the active incidents, by incident id.
    pub(super) trackers: HashMap<String, Tracker>,
    /// When each active incident's next escalation step is due: the clock looks at these
    /// only, not at every open incident.
    pub(super) due: DueQueue<String>,
    /// Silences not yet expired: every event that could notify is checked against them.
    pub silences: Silences,
    /// The audit log, so the desk's decisions are recorded with the change they cause.
    pub audit: AuditLog,
    /// Containments (bans) and the decisions about them.
    pub containments: containment::Book,
    /// Whether a containment in force moves its incident to `contained`.
    pub(super) contain_moves_state: bool,
    /// Decisions since the last commit, for the pipeline to commit.
    pub(super) effects: Effects,
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
    pub(super) fn schedule(&mut self, id: &str, incident: Option<&Incident>) {
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
            let details = match event.kind {
                EventKind::Opened => self.open(book, event, outbox, silence, now),
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
                        json!({"severity": incident.severity, "count": incident.count, "silenced_by": silence})
                    } else {
                        let entry = updated.entry(incident.id.clone()).or_default();
                        entry.0 = incident.count;
                        entry.1.extend(notified);
                        continue;
                    }
                }
            };
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

    /// An opening: starts escalation (steps due at once go out now), asks for the
    /// containments those steps name, marks a silenced incident; returns the audit details.
    fn open(
        &mut self,
        book: &mut IncidentBook,
        event: &IncidentEvent,
        outbox: &Outbox,
        silence: Option<String>,
        now: DateTime<Utc>,
    ) -> serde_json::Value {
        let incident = &event.incident;
        let muted = silence.is_some();
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
                TimelineKind::Silenced,
                DAEMON,
                Some(format!("notifications muted by {id}")),
            );
        }
        json!({
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
        })
    }

    /// Decides the notifications of an event; returns the receivers that hear it.
    pub(super) fn enqueue(
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
                    TimelineKind::Escalated,
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
        firings: &[crate::response::escalation::Firing],
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
}

/// The audit entry of a scheduled silence's window opening or closing: which silence, the
/// window, and the approval it rests on (author, reason).
pub(super) fn window_entry(
    event: AuditEvent,
    actor: &str,
    silence: &crate::response::silences::Silence,
    window: crate::response::silences::Window,
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

#[cfg(test)]
mod tests;
