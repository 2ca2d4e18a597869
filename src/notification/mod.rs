//! Telling people, without losing anything.
//!
//! An incident event is routed (rule → escalation policy → roles → receivers, filtered by
//! each receiver's `events:`), rendered into each receiver's body, and written to the
//! outbox **in the same store batch** as the incident change that caused it: after a crash
//! either both are there or neither, and the replayed lines redo both. The delivery worker
//! ([`deliver`]) sends outbox records, removes them on success, retries with backoff until
//! `retry.max_age`, then keeps them as dead letters that the API and CLI list and re-send.

pub mod deliver;
pub mod format;
mod record;
mod route;

pub use record::Record;
use route::Target;
pub use route::{Router, RouterError};

use crate::audit::{AuditEvent, AuditLog, Entry};
use crate::config::{Config, ReceiverConfig};
use crate::incidents::{EventKind, IncidentEvent};
use crate::store::{self, Space, Store, StoreError};
use chrono::Utc;
use format::EventContext;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Keys of [`Space::Firing`]: receiver, NUL, incident uid (a NUL is in neither).
fn firing_prefix(receiver: &str) -> Vec<u8> {
    let mut key = receiver.as_bytes().to_vec();
    key.push(0);
    key
}

/// Keeps the alert `body` raises as the one to re-send for the incident, in the batch that
/// stores the event; a close forgets it.
fn remember_firing(
    batch: &mut store::Batch,
    receiver: &str,
    event: &IncidentEvent,
    body: &str,
) -> Result<(), StoreError> {
    let mut key = firing_prefix(receiver);
    key.extend_from_slice(event.incident.uid.as_bytes());
    match format::firing_alert(body) {
        Some(alert) if event.kind != EventKind::Closed => batch.put(Space::Firing, &key, &alert),
        _ => {
            batch.remove(Space::Firing, &key);
            Ok(())
        }
    }
}

/// The notifications in a store's outbox (not yet delivered), oldest first.
pub fn stored_outbox(store: &Store) -> Result<Vec<Record>, StoreError> {
    Ok(store
        .scan(Space::Outbox)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// What a delivery attempt's outcome does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Delivered: it leaves the outbox.
    Delivered,
    /// Failed, to be tried again: its attempt count and last error are stored.
    Retrying,
    /// Given up: it moves to the dead letters.
    Dead,
}

impl Fate {
    /// The audit event of the outcome.
    fn audit_event(self) -> AuditEvent {
        match self {
            Fate::Delivered => AuditEvent::NotificationDelivered,
            Fate::Retrying => AuditEvent::NotificationAttemptFailed,
            Fate::Dead => AuditEvent::NotificationFailed,
        }
    }
}

/// A delivery outcome decided by the worker, as a value for [`Outbox::commit_outcomes`].
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    /// The record as it is after the attempt.
    pub record: Record,
    /// Delivered (leaves the outbox), retrying (stays with its new attempt count) or dead
    /// (moves to the dead letters).
    pub fate: Fate,
    /// Audit details of the attempt (its number, the error); receiver, event and ids are
    /// added when the outcome is committed.
    pub details: Value,
}

/// Notifications decided for one event: who hears it. A value until [`Outbox::write`]
/// stores it, so deciding and storing are separate steps (the single writer stores).
#[derive(Debug, Clone)]
pub struct Notice {
    /// The event, with the incident as it is after it.
    pub event: IncidentEvent,
    /// Receivers that hear it, sorted.
    pub receivers: Vec<String>,
}

/// Writes notifications into store batches and hands out dead letters; cheap to clone, so
/// the pipeline, the API and the delivery worker share one.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    router: Arc<Router>,
    wake: Arc<Notify>,
    /// Set when dead letters were added or removed, so their gauge is recounted.
    dead_changed: Arc<AtomicBool>,
    /// Where delivery outcomes are recorded (the daemon's one audit log).
    audit: Option<AuditLog>,
    /// Receivers of external roles (their deliveries are CC2.3 evidence).
    external: Arc<BTreeSet<String>>,
}

/// What [`Outbox::resend`] did.
#[derive(Debug)]
pub enum Resent {
    /// Back in the outbox under a new id.
    Queued(Record),
    /// No dead letter has this id.
    NotFound,
    /// Its receiver is no longer configured.
    UnknownReceiver(String),
}

/// The anchor sends each signed head through the outbox like any other notification.
impl crate::audit::anchor::HeadReceivers for Outbox {
    fn enqueue_head(
        &self,
        batch: &mut store::Batch,
        head: &crate::audit::head::SignedHead,
    ) -> Result<Vec<String>, StoreError> {
        Outbox::enqueue_head(self, batch, head)
    }

    fn wake(&self) {
        Outbox::wake(self)
    }
}

impl Outbox {
    /// An outbox over `store` routing by `config`.
    pub fn new(store: Store, config: &Config) -> Result<Self, RouterError> {
        Ok(Outbox {
            store,
            router: Arc::new(Router::new(config)?),
            wake: Arc::new(Notify::new()),
            dead_changed: Arc::new(AtomicBool::new(true)),
            audit: None,
            external: Arc::new(config.external_receivers()),
        })
    }

    /// Records delivery outcomes in `audit` (the one audit log every writer of the store
    /// shares). Without it deliveries are not audited.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Decides who hears an event: those of `candidates` that hear it (see
    /// [`Router::deliverable`]), sorted. Nothing is written: [`Outbox::write`] stores the
    /// [`Notice`] in the commit that also stores the event's incident change.
    pub fn route<'a>(
        &self,
        event: &IncidentEvent,
        candidates: impl IntoIterator<Item = &'a String>,
        muted: bool,
    ) -> Vec<String> {
        self.router
            .deliverable(
                event.kind,
                candidates.into_iter().map(String::as_str),
                muted,
            )
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// [`Outbox::route`] and [`Outbox::write`] at once, for callers that own a batch.
    /// Returns the receivers written for; call [`Outbox::wake`] once the batch is
    /// committed.
    pub fn enqueue_to<'a>(
        &self,
        batch: &mut store::Batch,
        event: &IncidentEvent,
        candidates: impl IntoIterator<Item = &'a String>,
        muted: bool,
    ) -> Result<Vec<String>, StoreError> {
        let notice = Notice {
            event: event.clone(),
            receivers: self.route(event, candidates, muted),
        };
        self.write(batch, &notice)?;
        Ok(notice.receivers)
    }

    /// Writes a notice's notifications (one outbox record per receiver, and per cluster
    /// member where a receiver sends to each) into `batch`, with ids taken in the batch.
    /// An error means the batch is incomplete and must not be committed.
    pub fn write(&self, batch: &mut store::Batch, notice: &Notice) -> Result<(), StoreError> {
        let (event, receivers) = (&notice.event, &notice.receivers);
        if receivers.is_empty() {
            return Ok(());
        }
        let sequence = batch.take_id(&self.store);
        let idempotency_key = format!("{}-{sequence}", event.incident.uid);
        let now = Utc::now();
        let ctx = EventContext {
            event: event.kind,
            incident: &event.incident,
            idempotency_key: &idempotency_key,
            at: now,
            origin: &self.router.origin,
        };
        for name in receivers {
            let target = &self.router.targets[name.as_str()];
            let Some(body) = target.formatter.render(&ctx) else {
                // Routing left out receivers whose format has nothing for this event; only
                // a failed template over such a format gets here.
                tracing::warn!(receiver = %name, event = event.kind.as_str(), "nothing to send for this event");
                continue;
            };
            if target.resends {
                remember_firing(batch, name, event, &body)?;
            }
            let record = Record {
                id: 0,
                receiver: name.to_string(),
                incident: event.incident.id.clone(),
                uid: event.incident.uid.clone(),
                member: None,
                event: event.kind,
                idempotency_key: idempotency_key.clone(),
                created_at: now,
                attempts: 0,
                last_error: None,
                dead_at: None,
                body,
            };
            self.put_copies(batch, target, record)?;
        }
        Ok(())
    }

    /// Puts `record` in the outbox under a fresh id: one copy per cluster member, each
    /// delivered (and retried) on its own, or one copy for a receiver with one `url`.
    fn put_copies(
        &self,
        batch: &mut store::Batch,
        target: &Target,
        record: Record,
    ) -> Result<(), StoreError> {
        let members: Vec<Option<String>> = match &target.config {
            ReceiverConfig::Webhook(w) if w.per_member() => {
                w.urls.iter().cloned().map(Some).collect()
            }
            _ => vec![None],
        };
        for member in members {
            let id = batch.take_id(&self.store);
            let copy = Record {
                id,
                member,
                ..record.clone()
            };
            batch.put(Space::Outbox, &Record::key(id), &copy)?;
        }
        Ok(())
    }

    /// Adds a signed audit chain head for every receiver subscribed to `audit_head` to
    /// `batch`; it goes out like any notification (signed, retried, kept as a dead letter).
    /// Returns the receivers written for; call [`Outbox::wake`] once committed.
    pub fn enqueue_head(
        &self,
        batch: &mut store::Batch,
        head: &crate::audit::head::SignedHead,
    ) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<&String> = self
            .router
            .targets
            .iter()
            .filter(|(_, t)| t.config.events().contains(&EventKind::AuditHead))
            .map(|(name, _)| name)
            .collect();
        names.sort_unstable();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let host = &self.router.origin.host;
        let idempotency_key = format!(
            "{host}/audit-head-{}-{}",
            head.sequence,
            batch.take_id(&self.store)
        );
        let body = serde_json::json!({
            "event": EventKind::AuditHead.as_str(),
            "idempotency_key": idempotency_key,
            "host": host,
            "head": head,
        })
        .to_string();
        for name in &names {
            let record = Record {
                id: 0,
                receiver: name.to_string(),
                incident: String::new(),
                uid: format!("{host}/audit-head"),
                member: None,
                event: EventKind::AuditHead,
                idempotency_key: idempotency_key.clone(),
                created_at: Utc::now(),
                attempts: 0,
                last_error: None,
                dead_at: None,
                body: body.clone(),
            };
            self.put_copies(batch, &self.router.targets[name.as_str()], record)?;
        }
        Ok(names.into_iter().cloned().collect())
    }

    /// The alerts an Alertmanager receiver was last sent for open incidents, by incident
    /// uid (read once, when its delivery lanes start).
    pub(crate) fn firing(&self, receiver: &str) -> Result<HashMap<String, Value>, StoreError> {
        let prefix = firing_prefix(receiver);
        Ok(self
            .store
            .scan::<Value>(Space::Firing)?
            .into_iter()
            .filter_map(|(key, alert)| {
                let uid = key.strip_prefix(prefix.as_slice())?;
                Some((String::from_utf8_lossy(uid).into_owned(), alert))
            })
            .collect())
    }

    /// This host's name, as every notification carries it.
    pub fn host(&self) -> &str {
        &self.router.origin.host
    }

    /// Tells the delivery worker that committed records are waiting.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Notifications not yet delivered, oldest first.
    pub fn pending(&self) -> Result<Vec<Record>, StoreError> {
        stored_outbox(&self.store)
    }

    /// Dead letters, oldest first: notifications the worker gave up on, kept until an operator
    /// re-sends them through the API.
    pub fn dead_letters(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .store
            .scan(Space::DeadLetters)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Moves a dead letter back to the outbox (new id, same idempotency key and body, age
    /// and attempts reset), durably, with the audit record of `actor` re-sending it, and
    /// wakes the worker.
    pub async fn resend(&self, id: u64, actor: &str) -> Result<Resent, StoreError> {
        let Some(mut record) = self
            .store
            .get::<Record>(Space::DeadLetters, &Record::key(id))?
        else {
            return Ok(Resent::NotFound);
        };
        if !self.router.knows(&record.receiver) {
            return Ok(Resent::UnknownReceiver(record.receiver));
        }
        let mut batch = store::Batch::new();
        record.id = batch.take_id(&self.store);
        record.created_at = Utc::now();
        record.attempts = 0;
        record.last_error = None;
        record.dead_at = None;
        batch.remove(Space::DeadLetters, &Record::key(id));
        batch.put(Space::Outbox, &Record::key(record.id), &record)?;
        let entry = Entry::new(
            AuditEvent::NotificationResent,
            actor,
            record.incident_id(),
            serde_json::json!({
                "dead_letter": id,
                "notification": record.id,
                "receiver": record.receiver,
                "idempotency_key": record.idempotency_key,
            }),
        );
        match &self.audit {
            Some(audit) => audit.commit(&batch, &[entry])?,
            None => self.store.commit(batch)?,
        }
        self.store.flush().await?;
        self.dead_letters_changed();
        Ok(Resent::Queued(record))
    }

    /// Makes everything committed so far durable.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// Ids of the records in the outbox, oldest first (values are not read).
    pub(crate) fn pending_ids(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .store
            .keys(Space::Outbox)?
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok()?.parse().ok())
            .collect())
    }

    /// One outbox record, decoded only when the worker first sees its id; `None` when it was
    /// delivered since the ids were listed.
    pub(crate) fn pending_record(&self, id: u64) -> Result<Option<Record>, StoreError> {
        self.store.get(Space::Outbox, &Record::key(id))
    }

    /// Notes that dead letters were added or removed and wakes the worker to recount them.
    pub(crate) fn dead_letters_changed(&self) {
        self.dead_changed.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether dead letters changed since the last call.
    pub(crate) fn take_dead_letters_changed(&self) -> bool {
        self.dead_changed.swap(false, Ordering::SeqCst)
    }

    #[cfg(test)]
    fn store(&self) -> &Store {
        &self.store
    }

    /// Commits delivery outcomes, decided by the delivery worker as values, in one batch
    /// with the audit entry of each (plain commit when no audit log is attached): a
    /// delivered record leaves the outbox, a failed attempt stores its new attempt count, a
    /// dead letter moves out of the outbox. A record that cannot be encoded fails the whole
    /// commit (the worker keeps the outcomes and tries again), never only its part.
    pub(crate) fn commit_outcomes(&self, outcomes: &[Settled]) -> Result<(), StoreError> {
        let mut batch = store::Batch::new();
        for settled in outcomes {
            let (record, key) = (&settled.record, Record::key(settled.record.id));
            match settled.fate {
                Fate::Delivered => batch.remove(Space::Outbox, &key),
                Fate::Retrying => batch.put(Space::Outbox, &key, record)?,
                Fate::Dead => {
                    batch.put(Space::DeadLetters, &key, record)?;
                    batch.remove(Space::Outbox, &key);
                }
            }
        }
        let Some(audit) = &self.audit else {
            return self.store.commit(batch);
        };
        let entries: Vec<Entry> = outcomes
            .iter()
            .map(
                |Settled {
                     record,
                     fate,
                     details,
                 }| {
                    let mut details = details.clone();
                    details["receiver"] = record.receiver.clone().into();
                    details["event"] = record.event.as_str().into();
                    details["idempotency_key"] = record.idempotency_key.clone().into();
                    details["notification"] = record.id.into();
                    if self.external.contains(&record.receiver) {
                        details["external"] = true.into();
                    }
                    Entry::new(
                        fate.audit_event(),
                        "logwarden",
                        record.incident_id(),
                        details,
                    )
                },
            )
            .collect();
        audit.commit(&batch, &entries)
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

#[cfg(test)]
mod tests;
