//! What the desk decided, as values: notifications to enqueue, records to store
//! (escalation progress, silences, containments, finished incidents) and audit entries.
//!
//! Escalation, silences, containment and drills decide and return these; nothing of theirs
//! touches a store batch. The single writer (the pipeline) turns them into its commit with
//! the incident changes, windows and checkpoints of the same step, so a crash keeps all of
//! a decision or none of it. Turning them into a commit can fail (a record that does not
//! encode): then the commit is not made and the caller handles it like any store failure —
//! counted in `logwarden_store_errors_total`, `/readyz` 503 — never a silent drop.

use crate::audit::Entry;
use crate::incidents::{Incident, IncidentEvent};
use crate::notification::{Notice, Outbox};
use crate::response::containment::Containment;
use crate::response::escalation::{Tracker, tracker_key};
use crate::response::silences::Silence;
use crate::store::{self, Space, Store, StoreError};

/// A record a decision wants stored.
#[derive(Debug, Clone)]
pub enum Record {
    /// An incident's escalation progress.
    Tracker(Tracker),
    /// A silence created, expired, or whose window opened or closed.
    Silence(Silence),
    /// A containment decided or recorded.
    Containment(Containment),
    /// An incident no longer in the book (closed by a command, or changed while closed);
    /// boxed, being much larger than the others.
    Incident(Box<Incident>),
}

/// Decisions not yet committed: nothing leaves the desk before its records are durable.
#[derive(Debug, Default)]
pub struct Effects {
    notices: Vec<Notice>,
    records: Vec<Record>,
    audit: Vec<Entry>,
}

/// What [`Effects::write`] put into a batch besides records.
#[derive(Debug, Default)]
pub struct Written {
    /// Audit entries to commit with the batch (the audit log chains them at commit).
    pub audit: Vec<Entry>,
    /// Whether notifications were written (the delivery worker is woken after the commit).
    pub notified: bool,
}

impl Effects {
    /// Notifications of an event to `receivers` (as routed by [`Outbox::route`]) to
    /// enqueue; returns the receivers, for the audit record. The event is copied only when
    /// someone hears it (most count updates notify nobody).
    pub fn notify(&mut self, event: &IncidentEvent, receivers: Vec<String>) -> Vec<String> {
        if !receivers.is_empty() {
            self.notices.push(Notice {
                event: event.clone(),
                receivers: receivers.clone(),
            });
        }
        receivers
    }

    /// A record to store in the next commit, with the change that caused it.
    pub fn store(&mut self, record: Record) {
        self.records.push(record);
    }

    /// An audit entry, committed in the same batch as the change it describes.
    pub fn audit(&mut self, entry: Entry) {
        self.audit.push(entry);
    }

    /// Containment records decided (see [`crate::response::containment::Book`]).
    pub fn containments(&mut self, changed: Vec<Containment>) {
        self.records
            .extend(changed.into_iter().map(Record::Containment));
    }

    /// The audit entries decided so far (in order).
    pub fn audit_entries(&self) -> &[Entry] {
        &self.audit
    }

    /// Whether nothing was decided: an idle tick then writes nothing.
    pub fn is_empty(&self) -> bool {
        self.notices.is_empty() && self.records.is_empty() && self.audit.is_empty()
    }

    /// Puts every decision into `batch`, in the order decided (a later record of the same
    /// key wins). An error means the batch is incomplete: it must not be committed.
    pub fn write(
        self,
        store: &Store,
        outbox: &Outbox,
        batch: &mut store::Batch,
    ) -> Result<Written, StoreError> {
        for record in &self.records {
            match record {
                Record::Tracker(t) => {
                    batch.put(Space::Escalations, &tracker_key(&t.incident), t)?
                }
                Record::Silence(s) if crate::base::supervise::test_unwritable(&s.reason) => {
                    return Err(StoreError::Record(serde::ser::Error::custom(
                        "LOGWARDEN_TEST_UNWRITABLE: injected write failure",
                    )));
                }
                Record::Silence(s) => s.put(batch)?,
                Record::Containment(c) => batch.put(Space::Containments, c.key().as_bytes(), c)?,
                Record::Incident(i) => i.put(store, batch)?,
            }
        }
        for notice in &self.notices {
            outbox.write(batch, notice)?;
        }
        Ok(Written {
            notified: !self.notices.is_empty(),
            audit: self.audit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::incidents::sample_incident;
    use crate::response::silences::Matchers;

    /// Effects become records in the batch; one that cannot be written fails the whole
    /// write, so the caller builds no partial commit (the pipeline then counts a store
    /// error and stops rather than commit without it).
    #[test]
    fn effects_are_written_whole_or_the_write_fails() {
        let store = Store::memory();
        let config = Config::parse(std::path::Path::new("/c.yaml"), "state_dir: s\n").unwrap();
        let outbox = Outbox::new(store.clone(), &config).unwrap();
        let now = sample_incident().opened_at;
        let silence = |id: &str| Silence {
            id: id.into(),
            matchers: Matchers {
                rule: Some("r".into()),
                ..Matchers::default()
            },
            starts_at: now,
            ends_at: now + chrono::Duration::hours(1),
            reason: "maintenance".into(),
            author: "boss".into(),
            created_at: now,
            expired_at: None,
            expired_by: None,
            schedule: None,
            open_window: None,
        };
        let mut effects = Effects::default();
        effects.store(Record::Silence(silence("SIL-1")));
        effects.store(Record::Incident(Box::new(sample_incident())));
        effects.audit(Entry::new(
            crate::audit::AuditEvent::SilenceCreated,
            "boss",
            None,
            serde_json::json!({}),
        ));
        let mut batch = store::Batch::new();
        let written = effects.write(&store, &outbox, &mut batch).unwrap();
        assert_eq!(written.audit.len(), 1);
        assert!(!written.notified);
        store.commit(batch).unwrap();
        assert_eq!(store.keys(Space::Silences).unwrap().len(), 1);

        let mut effects = Effects::default();
        effects.store(Record::Silence(silence("SIL-2")));
        effects.store(Record::Silence(silence("not-a-silence")));
        let mut batch = store::Batch::new();
        assert!(effects.write(&store, &outbox, &mut batch).is_err());
    }
}
