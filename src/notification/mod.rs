//! Telling people, without losing anything.
//!
//! An incident event is routed (rule → escalation policy → roles → receivers, filtered by
//! each receiver's `events:`), rendered into each receiver's body, and written to the
//! outbox **in the same store batch** as the incident change that caused it: after a crash
//! either both are there or neither, and the replayed lines redo both. The delivery worker
//! ([`deliver`]) sends outbox records, removes them on success, retries with backoff until
//! `retry.max_age`, then keeps them as dead letters that the API and CLI list and re-send.

pub mod cli;
pub mod deliver;
pub mod format;
pub mod http;

use crate::config::{Config, ReceiverConfig};
use crate::incidents::{EventKind, IncidentEvent};
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use format::{EventContext, Formatter, Origin};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// One notification for one receiver, as stored in the outbox or the dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique id (also its store key); a re-sent dead letter gets a new one.
    pub id: u64,
    /// Receiver name.
    pub receiver: String,
    /// Incident id.
    pub incident: String,
    /// What happened.
    pub event: EventKind,
    /// `<incident>-<event sequence>`: the same for every receiver and attempt of one event,
    /// so receivers can drop duplicates of at-least-once delivery.
    pub idempotency_key: String,
    /// When it was written (or re-sent); `retry.max_age` counts from here.
    pub created_at: DateTime<Utc>,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it became a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<DateTime<Utc>>,
    /// The rendered body, sent unchanged on every attempt.
    pub body: String,
}

impl Record {
    /// Store key: the id, zero-padded so keys sort by id (oldest first).
    pub fn key(id: u64) -> Vec<u8> {
        format!("{id:020}").into_bytes()
    }

    /// The record without its body, for listings.
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("records serialise");
        if let Some(o) = v.as_object_mut() {
            o.remove("body");
        }
        v
    }
}

struct Target {
    config: ReceiverConfig,
    formatter: Formatter,
}

/// Decides who hears of an event and renders what they get.
pub struct Router {
    /// Per policy, the receivers of each step.
    policies: HashMap<String, Vec<BTreeSet<String>>>,
    targets: HashMap<String, Target>,
    origin: Origin,
}

impl Router {
    /// Resolves policies to receivers and compiles templates once, at start.
    pub fn new(config: &Config) -> Result<Self, String> {
        let policies = config
            .escalation_policies
            .iter()
            .map(|(name, steps)| {
                let steps = steps
                    .iter()
                    .map(|step| {
                        step.notify
                            .iter()
                            .filter_map(|role| config.roles.get(role))
                            .flat_map(|role| role.receivers.iter().cloned())
                            .collect()
                    })
                    .collect();
                (name.clone(), steps)
            })
            .collect();
        let mut targets = HashMap::new();
        for receiver in &config.receivers {
            let formatter = match receiver {
                ReceiverConfig::Webhook(w) => Formatter::new(w.format, w.template.as_deref())
                    .map_err(|e| format!("receiver {:?}: template: {e}", w.name))?,
                ReceiverConfig::File(_) => {
                    Formatter::new(crate::config::WebhookFormat::Json, None)?
                }
            };
            targets.insert(
                receiver.name().to_string(),
                Target {
                    config: receiver.clone(),
                    formatter,
                },
            );
        }
        Ok(Router {
            policies,
            targets,
            origin: Origin::local(&config.listen),
        })
    }

    /// Receivers that must hear of an event. An opening (and a severity rise) goes to the
    /// policy's first step; every later event goes to the receivers of all steps, since any
    /// of them may have been paged. A receiver hears the events it chose; a receiver that
    /// can resolve (PagerDuty, Alertmanager) always hears `closed`, also when `muted` (a
    /// silence) kept everything else from it, so no page is left open.
    pub fn receivers_for(&self, event: &IncidentEvent, muted: bool) -> Vec<&str> {
        let Some(steps) = self.policies.get(&event.incident.escalation) else {
            return Vec::new();
        };
        let reached: BTreeSet<&str> = match event.kind {
            EventKind::Opened | EventKind::SeverityChanged => steps
                .first()
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect(),
            _ => steps.iter().flatten().map(String::as_str).collect(),
        };
        reached
            .into_iter()
            .filter(|name| {
                let Some(target) = self.targets.get(*name) else {
                    return false;
                };
                let resolve = event.kind == EventKind::Closed && target.config.resolves();
                resolve || (!muted && target.config.events().contains(&event.kind))
            })
            .collect()
    }

    /// Whether a receiver of this name is configured.
    pub fn knows(&self, receiver: &str) -> bool {
        self.targets.contains_key(receiver)
    }
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

impl Outbox {
    /// An outbox over `store` routing by `config`.
    pub fn new(store: Store, config: &Config) -> Result<Self, String> {
        Ok(Outbox {
            store,
            router: Arc::new(Router::new(config)?),
            wake: Arc::new(Notify::new()),
            dead_changed: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Adds the notifications an event causes to `batch`, the batch that also stores the
    /// event's incident change. `muted` (a silence) leaves only resolves. Returns how many
    /// were added; call [`Outbox::wake`] once the batch is committed.
    pub fn enqueue(
        &self,
        batch: &mut store::Batch,
        event: &IncidentEvent,
        muted: bool,
    ) -> Result<usize, StoreError> {
        let receivers = self.router.receivers_for(event, muted);
        if receivers.is_empty() {
            return Ok(0);
        }
        let sequence = self.store.next_id()?;
        let idempotency_key = format!("{}-{sequence}", event.incident.id);
        let now = Utc::now();
        let ctx = EventContext {
            event: event.kind,
            incident: &event.incident,
            idempotency_key: &idempotency_key,
            at: now,
            origin: &self.router.origin,
        };
        let mut added = 0;
        for name in receivers {
            let target = &self.router.targets[name];
            let Some(body) = target.formatter.render(&ctx) else {
                continue;
            };
            let id = self.store.next_id()?;
            let record = Record {
                id,
                receiver: name.to_string(),
                incident: event.incident.id.clone(),
                event: event.kind,
                idempotency_key: idempotency_key.clone(),
                created_at: now,
                attempts: 0,
                last_error: None,
                dead_at: None,
                body,
            };
            batch.put(Space::Outbox, &Record::key(id), &record)?;
            added += 1;
        }
        Ok(added)
    }

    /// Tells the delivery worker that committed records are waiting.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Notifications not yet delivered, oldest first.
    pub fn pending(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .store
            .scan(Space::Outbox)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .store
            .scan(Space::DeadLetters)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Moves a dead letter back to the outbox (new id, same idempotency key and body, age
    /// and attempts reset), durably, and wakes the worker.
    pub async fn resend(&self, id: u64) -> Result<Resent, StoreError> {
        let Some(mut record) = self
            .store
            .get::<Record>(Space::DeadLetters, &Record::key(id))?
        else {
            return Ok(Resent::NotFound);
        };
        if !self.router.knows(&record.receiver) {
            return Ok(Resent::UnknownReceiver(record.receiver));
        }
        record.id = self.store.next_id()?;
        record.created_at = Utc::now();
        record.attempts = 0;
        record.last_error = None;
        record.dead_at = None;
        let mut batch = store::Batch::new();
        batch.remove(Space::DeadLetters, &Record::key(id));
        batch.put(Space::Outbox, &Record::key(record.id), &record)?;
        self.store.commit(batch)?;
        self.store.flush().await?;
        self.dead_letters_changed();
        Ok(Resent::Queued(record))
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

    /// One outbox record.
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

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    #[cfg(test)]
    fn router(&self) -> &Router {
        &self.router
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::Incident;

    const CONFIG: &str = r#"state_dir: s
receivers:
  - {name: hook, type: webhook, url: 'http://127.0.0.1:1/'}
  - {name: all, type: file, path: '-', events: [opened, severity_changed, acknowledged, closed]}
  - {name: pd, type: webhook, url: 'http://127.0.0.1:1/', format: pagerduty, routing_key_env: K, events: [opened]}
  - {name: lead, type: webhook, url: 'http://127.0.0.1:1/'}
roles:
  analysts: {receivers: [hook, all, pd]}
  boss: {receivers: [lead]}
escalation_policies:
  default:
    - notify: [analysts]
    - notify: [boss]
"#;

    fn outbox() -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&dir.path().join("c.yaml"), CONFIG).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outbox = Outbox::new(store, &config).unwrap();
        (dir, outbox)
    }

    fn event(kind: EventKind) -> IncidentEvent {
        let mut incident: Incident = format::sample_incident();
        incident.escalation = "default".into();
        IncidentEvent { kind, incident }
    }

    #[test]
    fn receivers_hear_what_they_chose_and_resolvers_always_hear_the_close() {
        let (_dir, o) = outbox();
        let r = o.router();
        let names = |kind, muted| r.receivers_for(&event(kind), muted);
        assert_eq!(names(EventKind::Opened, false), ["all", "hook", "pd"]);
        assert_eq!(names(EventKind::SeverityChanged, false), ["all"]);
        assert_eq!(names(EventKind::Escalated, false), ["hook", "lead"]);
        assert_eq!(names(EventKind::Acknowledged, false), ["all"]);
        assert!(names(EventKind::Updated, false).is_empty());
        // pd did not choose `closed`, but it resolves: it hears it anyway.
        assert_eq!(
            names(EventKind::Closed, false),
            ["all", "hook", "lead", "pd"]
        );
        // A silence mutes everything except the resolve.
        assert!(names(EventKind::Opened, true).is_empty());
        assert_eq!(names(EventKind::Closed, true), ["pd"]);
    }

    #[tokio::test]
    async fn one_event_shares_its_idempotency_key_and_dead_letters_can_be_resent() {
        let (_dir, o) = outbox();
        let mut batch = store::Batch::new();
        assert_eq!(
            o.enqueue(&mut batch, &event(EventKind::Opened), false)
                .unwrap(),
            3
        );
        assert_eq!(
            o.enqueue(&mut batch, &event(EventKind::Closed), false)
                .unwrap(),
            4
        );
        o.store().commit(batch).unwrap();
        let pending = o.pending().unwrap();
        assert_eq!(pending.len(), 7);
        let keys: BTreeSet<&str> = pending.iter().map(|r| r.idempotency_key.as_str()).collect();
        assert_eq!(keys.len(), 2, "one key per event: {keys:?}");
        assert!(keys.iter().all(|k| k.starts_with("INC-1-")));

        let first = pending[0].clone();
        let mut batch = store::Batch::new();
        batch.remove(Space::Outbox, &Record::key(first.id));
        batch
            .put(Space::DeadLetters, &Record::key(first.id), &first)
            .unwrap();
        o.store().commit(batch).unwrap();
        assert!(matches!(
            o.resend(u64::MAX).await.unwrap(),
            Resent::NotFound
        ));
        let Resent::Queued(again) = o.resend(first.id).await.unwrap() else {
            panic!("not re-sent");
        };
        assert_ne!(again.id, first.id);
        assert_eq!(again.idempotency_key, first.idempotency_key);
        assert_eq!(again.body, first.body);
        assert!(o.dead_letters().unwrap().is_empty());
        assert_eq!(o.pending().unwrap().len(), 7);
    }
}
