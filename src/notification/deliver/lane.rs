//! One receiver's (or one cluster member's) lane: records waiting, attempts in flight,
//! retries with backoff, and the periodic re-send of firing alerts to Alertmanager.
//!
//! Apart from the dispatcher because a lane is where a slow or dead receiver is contained:
//! it has its own client, concurrency, rate limit and order per incident.

use super::pacing::{TokenBucket, backoff};
use super::transport::{Outcome, SecretSource, Transport, attempt, attempt_body, open_file};
use super::{DeliveryError, Outcomes, RESCAN, bury};
use crate::base::shutdown::Listener;
use crate::config::{ReceiverConfig, RetryConfig};
use crate::metrics::Metrics;
use crate::notification::format::{self, WebhookFormat};
use crate::notification::{Fate, Outbox, Record, Settled};
use chrono::Utc;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A record waiting for its next attempt.
struct Waiting {
    record: Record,
    due: Instant,
}

/// One lane's part of its receiver's `outbox_pending` gauge, which shows the sum over the
/// receiver's lanes.
pub(super) struct PendingShare {
    pub(super) all: Arc<Vec<AtomicI64>>,
    pub(super) slot: usize,
}

impl PendingShare {
    /// Sets this lane's count; returns the receiver's total.
    fn set(&self, count: i64) -> i64 {
        self.all[self.slot].store(count, Ordering::Relaxed);
        self.all.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Most alerts in one re-send request (Prometheus batches its alerts the same way).
const RESEND_BATCH: usize = 256;

/// Re-sending the alerts of open incidents to one Alertmanager member.
///
/// Alertmanager keeps no alerts across a restart and expects clients to repeat firing
/// ones. The lane keeps the latest alert it was handed for each open incident (loaded
/// from the store at start, then updated by every record passing through, forgotten on
/// a close) and every `every` posts them all: the cost per interval is the open alerts
/// themselves, never a scan of the store. A re-send never overtakes or contradicts a
/// record: incidents with a record waiting or in flight are left out (that record says
/// it), and records of incidents in a re-send in flight wait for it, so a resolve cannot
/// be followed by a stale firing alert. A failed re-send is not retried: the next one
/// repeats it.
struct Resend {
    every: Duration,
    next: Instant,
    /// The alert to repeat, by incident uid.
    firing: HashMap<String, serde_json::Value>,
    /// The re-send in flight: its task and the incidents it carries.
    inflight: Option<(tokio::task::Id, HashSet<String>)>,
}

impl Resend {
    /// Keeps what a record says about its incident's alert.
    fn note(&mut self, record: &Record) {
        let uid = record.incident_uid();
        match format::firing_alert(&record.body) {
            Some(alert) if record.event != crate::incidents::EventKind::Closed => {
                self.firing.insert(uid.to_string(), alert);
            }
            _ => {
                self.firing.remove(uid);
            }
        }
    }
}

/// One lane: its transport and pacing, and the records it holds.
pub(super) struct Lane {
    name: String,
    transport: Arc<Transport>,
    retry: RetryConfig,
    concurrency: usize,
    limiter: Option<TokenBucket>,
    outbox: Outbox,
    metrics: Arc<Metrics>,
    known: Arc<Mutex<HashSet<u64>>>,
    waiting: BTreeMap<u64, Waiting>,
    /// Records being attempted, by the id of the task attempting them.
    inflight: HashMap<tokio::task::Id, Record>,
    /// Ids whose outcome is stored, not yet flushed: forgotten only once durable.
    unflushed: Vec<u64>,
    pending: PendingShare,
    resend: Option<Resend>,
    /// Outcomes of finished attempts, stored together.
    outcomes: Outcomes,
}

impl Lane {
    /// The lane of `receiver`, or of one `member` of a cluster receiver.
    pub(super) fn new(
        receiver: &ReceiverConfig,
        member: Option<&str>,
        pending: PendingShare,
        outbox: Outbox,
        metrics: Arc<Metrics>,
        known: Arc<Mutex<HashSet<u64>>>,
    ) -> Result<Self, DeliveryError> {
        let mut resend = None;
        let (transport, concurrency, limiter) = match receiver {
            ReceiverConfig::Webhook(w) => {
                let client = reqwest::Client::builder()
                    .connect_timeout(w.connect_timeout.0)
                    .timeout(w.timeout.0)
                    .user_agent(concat!("logwarden/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|cause| DeliveryError::Client {
                        receiver: w.name.clone(),
                        cause,
                    })?;
                let url = member
                    .or_else(|| w.members().first().copied())
                    .ok_or_else(|| DeliveryError::NoUrl(w.name.clone()))?;
                let url = if w.format == WebhookFormat::Alertmanager {
                    format::alertmanager_endpoint(url)
                } else {
                    url.to_string()
                };
                if let Some(every) = w.resend_interval() {
                    let firing = outbox
                        .firing(&w.name)
                        .map_err(|cause| DeliveryError::Firing {
                            receiver: w.name.clone(),
                            cause,
                        })?;
                    resend = Some(Resend {
                        every,
                        next: Instant::now() + every,
                        firing,
                        inflight: None,
                    });
                }
                let transport = Transport::Http {
                    client,
                    url,
                    secret: SecretSource::of(&w.secret_file, &w.secret_env),
                    routing_key: SecretSource::of(&w.routing_key_file, &w.routing_key_env),
                };
                let limiter = w.rate_limit.map(|l| TokenBucket::new(l, Instant::now()));
                (transport, w.concurrency, limiter)
            }
            ReceiverConfig::File(f) => (Transport::File(open_file(&f.path)?), 1, None),
        };
        Ok(Lane {
            name: receiver.name().to_string(),
            transport: Arc::new(transport),
            retry: receiver.retry(),
            concurrency,
            limiter,
            outbox,
            metrics,
            known,
            waiting: BTreeMap::new(),
            inflight: HashMap::new(),
            unflushed: Vec::new(),
            pending,
            resend,
            outcomes: Outcomes::default(),
        })
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Record>,
        mut stop: Listener,
        drain: Duration,
    ) {
        let mut attempts: JoinSet<Outcome> = JoinSet::new();
        let mut open = true;
        while open {
            self.settle_deliveries().await;
            let next = self.start_due(&mut attempts);
            self.update_gauge();
            let sleep = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + RESCAN));
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => {
                        if let Some(resend) = &mut self.resend {
                            resend.note(&record);
                        }
                        crate::base::supervise::test_panic_point("delivery", record.body.as_bytes());
                        self.waiting.insert(record.id, Waiting { record, due: Instant::now() });
                    }
                    None => open = false,
                },
                Some(done) = attempts.join_next_with_id(), if !attempts.is_empty() => {
                    self.finish(done);
                    // Every other attempt that finished meanwhile: their outcomes are
                    // stored in one commit at the top of the next round.
                    while let Some(done) = attempts.try_join_next_with_id() {
                        self.finish(done);
                    }
                }
                _ = sleep => {}
                _ = stop.recv() => open = false,
            }
        }
        // Stopping: no new attempts; those in flight get `drain` to finish.
        let deadline = Instant::now() + drain;
        while !attempts.is_empty() {
            match tokio::time::timeout_at(deadline, attempts.join_next_with_id()).await {
                Ok(Some(done)) => self.finish(done),
                Ok(None) | Err(_) => break,
            }
        }
        attempts.abort_all();
        self.settle_deliveries().await;
    }

    /// Starts every attempt that is due and allowed; returns when to look again.
    fn start_due(&mut self, attempts: &mut JoinSet<Outcome>) -> Option<Instant> {
        let now = Instant::now();
        let mut busy: HashSet<String> = self
            .inflight
            .values()
            .map(|r| r.incident_uid().to_string())
            .collect();
        if let Some((_, carried)) = self.resend.as_ref().and_then(|r| r.inflight.as_ref()) {
            busy.extend(carried.iter().cloned());
        }
        let mut start = Vec::new();
        let mut next: Option<Instant> = self.start_resend(attempts, now);
        for (id, w) in &self.waiting {
            // One incident's events go out in order: an earlier one still waiting or in
            // flight (or a re-send carrying it) holds the later ones back.
            if !busy.insert(w.record.incident_uid().to_string()) {
                continue;
            }
            if self.inflight.len() + start.len() >= self.concurrency {
                break;
            }
            if w.due > now {
                next = Some(next.map_or(w.due, |n| n.min(w.due)));
                continue;
            }
            if let Some(limiter) = &mut self.limiter
                && let Err(at) = limiter.take(now)
            {
                next = Some(next.map_or(at, |n| n.min(at)));
                break;
            }
            start.push(*id);
        }
        for id in start {
            let record = self.waiting.remove(&id).expect("listed").record;
            let transport = self.transport.clone();
            let sent = record.clone();
            let handle = attempts.spawn(async move { attempt(&transport, &sent).await });
            self.inflight.insert(handle.id(), record);
        }
        next
    }

    /// Starts the re-send when it is due; returns when the next one is.
    fn start_resend(&mut self, attempts: &mut JoinSet<Outcome>, now: Instant) -> Option<Instant> {
        let resend = self.resend.as_mut()?;
        if resend.inflight.is_some() {
            return None;
        }
        if resend.next > now {
            return Some(resend.next);
        }
        resend.next = now + resend.every;
        let held: HashSet<&str> = self
            .waiting
            .values()
            .map(|w| &w.record)
            .chain(self.inflight.values())
            .map(Record::incident_uid)
            .collect();
        let carried: Vec<(&String, &serde_json::Value)> = resend
            .firing
            .iter()
            .filter(|(uid, _)| !held.contains(uid.as_str()))
            .collect();
        if carried.is_empty() {
            return Some(resend.next);
        }
        let at = Utc::now();
        let bodies: Vec<String> = carried
            .chunks(RESEND_BATCH)
            .map(|chunk| format::resend_body(chunk.iter().map(|(_, a)| *a), at))
            .collect();
        let uids = carried.iter().map(|(uid, _)| (*uid).clone()).collect();
        let transport = self.transport.clone();
        let handle = attempts.spawn(async move {
            for body in bodies {
                match attempt_body(&transport, body, &[("X-Logwarden-Event", "resend")]).await {
                    Outcome::Delivered => {}
                    failed => return failed,
                }
            }
            Outcome::Delivered
        });
        resend.inflight = Some((handle.id(), uids));
        Some(resend.next)
    }

    /// Counts a finished re-send; a failed one is left to the next.
    fn finish_resend(&mut self, outcome: Outcome) {
        let Some((_, carried)) = self.resend.as_mut().and_then(|r| r.inflight.take()) else {
            return;
        };
        let (label, error) = match outcome {
            Outcome::Delivered => ("resent", None),
            Outcome::Retry { error, .. } | Outcome::Refused(error) => {
                ("resend_failed", Some(error))
            }
        };
        self.metrics
            .notifications
            .with_label_values(&[&self.name, label])
            .inc_by(carried.len() as u64);
        if let Some(error) = error {
            tracing::warn!(receiver = %self.name, alerts = carried.len(), %error, "re-sending open incidents' alerts failed; the next re-send repeats them");
        }
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let resending = self
            .resend
            .as_ref()
            .and_then(|r| r.inflight.as_ref())
            .map(|(id, _)| *id);
        let task = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if resending == Some(task) {
            let outcome = match done {
                Ok((_, outcome)) => outcome,
                Err(e) => Outcome::Retry {
                    error: format!("re-send task failed: {e}"),
                    after: None,
                },
            };
            self.finish_resend(outcome);
            return;
        }
        let (task, outcome) = match done {
            Ok(pair) => pair,
            Err(e) => (
                e.id(),
                Outcome::Retry {
                    error: format!("delivery task failed: {e}"),
                    after: None,
                },
            ),
        };
        let Some(mut record) = self.inflight.remove(&task) else {
            return;
        };
        let counter = |outcome: &str| {
            self.metrics
                .notifications
                .with_label_values(&[&self.name, outcome])
                .inc()
        };
        match outcome {
            Outcome::Delivered => {
                let details = serde_json::json!({"attempt": record.attempts + 1});
                counter("delivered");
                let latency = (Utc::now() - record.created_at).num_milliseconds().max(0);
                self.metrics
                    .notification_latency
                    .with_label_values(&[&self.name])
                    .observe(latency as f64 / 1000.0);
                self.outcomes.settled.push(record.id);
                self.outcomes.decided.push(Settled {
                    record,
                    fate: Fate::Delivered,
                    details,
                });
            }
            Outcome::Retry { error, after } => {
                record.attempts += 1;
                let age = (Utc::now() - record.created_at)
                    .to_std()
                    .unwrap_or_default();
                if age >= self.retry.max_age.0 {
                    let why = format!(
                        "undelivered after {} attempts over {} (max_age); last error: {error}",
                        record.attempts, self.retry.max_age
                    );
                    bury(&self.metrics, record, why, &mut self.outcomes);
                    return;
                }
                counter("retried");
                let delay = backoff(&self.retry, record.attempts, after);
                tracing::warn!(receiver = %self.name, incident = %record.incident, key = %record.idempotency_key, attempt = record.attempts, retry_in_ms = delay.as_millis() as u64, %error, "notification delivery failed; will retry");
                let details = serde_json::json!({"attempt": record.attempts, "error": error, "retry_in_ms": delay.as_millis() as u64});
                record.last_error = Some(error);
                self.outcomes.decided.push(Settled {
                    record: record.clone(),
                    fate: Fate::Retrying,
                    details,
                });
                self.waiting.insert(
                    record.id,
                    Waiting {
                        record,
                        due: Instant::now() + delay,
                    },
                );
            }
            Outcome::Refused(error) => {
                record.attempts += 1;
                bury(&self.metrics, record, error, &mut self.outcomes);
            }
        }
    }

    /// Stores the outcomes gathered so far (kept for the next round if the store refuses
    /// them) and makes stored deliveries durable; only then are their ids forgotten, since
    /// a store reopened after an I/O error may have lost an unflushed removal (and a rescan
    /// would send the notification again).
    async fn settle_deliveries(&mut self) {
        match self.outcomes.store(&self.outbox) {
            Ok(settled) => self.unflushed.extend(settled),
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::error!(error = %e, "cannot store delivery outcomes; will retry");
            }
        }
        if self.unflushed.is_empty() {
            return;
        }
        match self.outbox.flush().await {
            Ok(()) => {
                let mut known = self.known.lock().expect("known lock");
                for id in self.unflushed.drain(..) {
                    known.remove(&id);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot make delivered notifications durable; will retry");
            }
        }
    }

    fn update_gauge(&self) {
        let total = self
            .pending
            .set((self.waiting.len() + self.inflight.len()) as i64);
        self.metrics
            .outbox_pending
            .with_label_values(&[&self.name])
            .set(total);
    }
}
