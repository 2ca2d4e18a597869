//! What API requests and the containment worker's outcomes do through the [`Desk`]: the
//! state machine decides the incident's change, the desk adds escalation, silences,
//! containments, notifications and the audit record, all committed as one batch.

use super::desk::window_entry;
use super::effects::Record;
use super::{Action, DAEMON, Desk, Done, Kpi, Measure, Refusal, Request, apply};
use crate::audit::{AuditEvent, Entry};
use crate::incidents::timeline::TimelineKind;
use crate::incidents::{EventKind, Incident, IncidentBook, IncidentEvent, State};
use crate::notification::Outbox;
use crate::response::containment;
use crate::response::escalation::{Tracker, tracker_key};
use crate::store::{Space, Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::json;

/// One API request to act on an incident: who asks, which incident (by id or uid), what,
/// and when.
struct Asked<'a> {
    actor: &'a str,
    id: &'a str,
    action: &'a Action,
    now: DateTime<Utc>,
}

impl Desk {
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
            incident.record(
                now,
                TimelineKind::Moved(State::Contained),
                DAEMON,
                Some(note.clone()),
            );
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
                let asked = Asked {
                    actor,
                    id: &id,
                    action: &action,
                    now,
                };
                let result = self.act(book, store, outbox, asked);
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
                    .map_err(|e| Refusal::Invalid(e.to_string()))?;
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

    fn act(
        &mut self,
        book: &mut IncidentBook,
        store: &Store,
        outbox: &Outbox,
        asked: Asked<'_>,
    ) -> Result<Done, Refusal> {
        let Asked {
            actor,
            id,
            action,
            now,
        } = asked;
        // `id` is what the caller named the incident by: its id or its uid.
        let missing = || Refusal::NotFound(format!("no incident {id}"));
        let number = Incident::handle_number(id).ok_or_else(missing)?;
        // Book, trackers, audit and notifications all see the one canonical spelling.
        let local = crate::base::ids::incident_id(number);
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
        self.contain_after(&mut incident, action, actor, now);
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

    /// What an action does to the incident's containments: a release or a false positive
    /// lifts them, an approval puts the waiting ones in force; the firewall changes go to
    /// the effects, the audit entries to the queue.
    fn contain_after(
        &mut self,
        incident: &mut Incident,
        action: &Action,
        actor: &str,
        now: DateTime<Utc>,
    ) {
        let mut changed = Vec::new();
        let lifted = match action {
            Action::Release { .. } => {
                self.containments
                    .release(incident, actor, "released", now, &mut changed)
            }
            _ if incident.state == State::FalsePositive => {
                self.containments
                    .release(incident, actor, "false_positive", now, &mut changed)
            }
            Action::Approve { .. } => {
                Some(
                    self.containments
                        .approve(incident, actor, now, &mut changed),
                )
            }
            _ => None,
        };
        self.effects.containments(changed);
        for entry in lifted.into_iter().flatten() {
            self.note(entry);
        }
    }
}
