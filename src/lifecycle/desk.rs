//! The [`Desk`]: escalation, silences, containments and the audit queue, as the pipeline
//! thread uses them on detection events and on the clock. What it decides is queued as
//! [`Effects`] for the single writer to commit with the step that caused it; API requests
//! and containment outcomes go through it too (see [`super::commands`]).

use super::DAEMON;
use super::effects::{Effects, Record};
use crate::audit::{AuditEvent, AuditLog, Entry};
use crate::config::Config;
use crate::containment;
use crate::detection::RuleChange;
use crate::due::DueQueue;
use crate::escalation::{Policies, Tracker, tracker_key};
use crate::incidents::timeline::TimelineKind;
use crate::incidents::{EventKind, Incident, IncidentBook, IncidentEvent};
use crate::notification::Outbox;
use crate::silences::Silences;
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
}

/// The audit entry of a scheduled silence's window opening or closing: which silence, the
/// window, and the approval it rests on (author, reason).
pub(super) fn window_entry(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;
    use crate::lifecycle::{Action, Request};
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
}
