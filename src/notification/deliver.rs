//! The delivery worker: sends outbox records, retries, gives up into dead letters.
//!
//! A dispatcher task reads the outbox (at start, whenever a commit wakes it, and every few
//! seconds as a safety net) and hands each new record to its receiver's lane. Each receiver
//! has its own lane task with its own HTTP client, concurrency limit, rate limit and
//! backoff, so a slow or dead receiver only ever delays itself. Within a lane, the events of
//! one incident go out in order (a resolve never overtakes its trigger).

use super::{Fate, Outbox, Record, Settled};
use crate::config::{Config, RateLimit, ReceiverConfig, RetryConfig, read_secret};
use crate::metrics::Metrics;
use crate::notification::format::{self, WebhookFormat};
use crate::shutdown::{Listener, Shutdown};
use chrono::Utc;
use hmac::{Hmac, Mac};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How often the dispatcher re-reads the outbox without being woken.
const RESCAN: Duration = Duration::from_secs(5);

/// Header carrying the Unix time (seconds) a signature was made at.
pub const TIMESTAMP_HEADER: &str = "X-Logwarden-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "X-Logwarden-Signature";

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp.body`: binding the time into the MAC lets
/// a receiver refuse replays of an old, validly signed request.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Wait before the next attempt after `failures` failed ones: doubling from `initial`,
/// capped at `max`, with "equal jitter" (a random point in the upper half) so receivers
/// coming back are not hit by every host at once; at least what the receiver asked for
/// with `Retry-After` (itself capped at `max`).
pub fn backoff(retry: &RetryConfig, failures: u32, asked: Option<Duration>) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = retry.initial.0.saturating_mul(1u32 << exp).min(retry.max.0);
    let half = full / 2;
    let jitter = Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64));
    let delay = half + jitter;
    match asked {
        Some(a) => delay.max(a.min(retry.max.0)),
        None => delay,
    }
}

/// Token bucket: `count` attempts per `per`, bursting up to `count`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_token: Duration,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            capacity: f64::from(limit.count),
            tokens: f64::from(limit.count),
            per_token: limit.per / limit.count,
            last: now,
        }
    }

    /// Takes a token, or says when the next one will be there.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let earned =
            now.saturating_duration_since(self.last).as_secs_f64() / self.per_token.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + self.per_token.mul_f64(1.0 - self.tokens))
        }
    }
}

/// Where a secret comes from; read at every attempt so a rotated secret is picked up and
/// a missing one delays delivery instead of stopping the daemon.
#[derive(Debug, Clone)]
struct SecretSource {
    file: Option<PathBuf>,
    env: Option<String>,
}

impl SecretSource {
    fn of(file: &Option<PathBuf>, env: &Option<String>) -> Option<Self> {
        (file.is_some() || env.is_some()).then(|| SecretSource {
            file: file.clone(),
            env: env.clone(),
        })
    }

    fn read(&self) -> Result<String, String> {
        read_secret(self.file.as_deref(), self.env.as_deref()).map_err(|e| e.to_string())
    }
}

enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        secret: Option<SecretSource>,
        routing_key: Option<SecretSource>,
    },
    File(Arc<Mutex<Box<dyn Write + Send>>>),
}

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// Worth trying again (connection failed, timeout, 408, 429, 5xx).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// The receiver refused the request itself (other 4xx): retrying cannot help.
    Refused(String),
}

/// Starts the dispatcher and one lane per receiver on the current runtime. Once `stop` is
/// signalled they start no more attempts, give attempts in flight up to `drain`, and end
/// (every task holds a copy of `stop`, so its group completes then); whatever is not
/// delivered stays in the outbox for the next start.
pub fn spawn(
    outbox: Outbox,
    config: &Config,
    metrics: Arc<Metrics>,
    drain: Duration,
    vitals: &crate::supervise::Vitals,
    stop: &Shutdown,
) -> Result<(), String> {
    let known = Arc::new(Mutex::new(HashSet::new()));
    let mut lanes = HashMap::new();
    let mut tasks = JoinSet::new();
    for receiver in &config.receivers {
        let name = receiver.name().to_string();
        metrics.outbox_pending.with_label_values(&[&name]).set(0);
        metrics.dead_letters.with_label_values(&[&name]).set(0);
        // A cluster receiver has one lane per member, so a member that is down only
        // delays its own copies.
        let members: Vec<Option<&str>> = match receiver {
            ReceiverConfig::Webhook(w) if w.per_member() => {
                w.members().into_iter().map(Some).collect()
            }
            _ => vec![None],
        };
        let pending: Arc<Vec<AtomicI64>> =
            Arc::new(members.iter().map(|_| AtomicI64::new(0)).collect());
        let mut receiver_lanes = Vec::new();
        for (slot, member) in members.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let share = PendingShare {
                all: pending.clone(),
                slot,
            };
            let lane = Lane::new(
                receiver,
                member,
                share,
                outbox.clone(),
                metrics.clone(),
                known.clone(),
            )?;
            let guard = vitals.guard(&format!("delivery lane {name}"));
            let run = lane.run(rx, stop.listener(), drain);
            tasks.spawn(async move {
                let _guard = guard;
                run.await
            });
            receiver_lanes.push((member.map(str::to_string), tx));
        }
        lanes.insert(name, receiver_lanes);
    }
    let dispatcher = Dispatcher {
        outbox,
        lanes,
        known,
        metrics,
    };
    let guard = vitals.guard("delivery");
    let stop = stop.listener();
    tokio::spawn(async move {
        let _guard = guard;
        dispatcher.run(stop).await;
        while tasks.join_next().await.is_some() {}
    });
    Ok(())
}

/// A receiver's lanes: one per member of a cluster (`urls`), else one (`None`).
type Lanes = Vec<(Option<String>, mpsc::UnboundedSender<Record>)>;

struct Dispatcher {
    outbox: Outbox,
    lanes: HashMap<String, Lanes>,
    /// Ids handed to a lane and not yet delivered or dead.
    known: Arc<Mutex<HashSet<u64>>>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    async fn run(mut self, mut stop: Listener) {
        loop {
            self.scan();
            tokio::select! {
                _ = self.outbox.notified() => {}
                _ = tokio::time::sleep(RESCAN) => {}
                _ = stop.recv() => break,
            }
        }
        // Closing the channels lets the lanes finish once they have drained.
        self.lanes.clear();
    }

    fn scan(&mut self) {
        // Only keys are read for the whole outbox; records are decoded once, when new.
        let ids = match self.outbox.pending_ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        for id in ids {
            if self.known.lock().expect("known lock").contains(&id) {
                continue;
            }
            let record = match self.outbox.pending_record(id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, id, "unreadable outbox record left in place");
                    continue;
                }
            };
            self.known.lock().expect("known lock").insert(id);
            match self.lane_for(&record) {
                Ok(lane) => {
                    let _ = lane.send(record);
                }
                Err(why) => {
                    tracing::warn!(receiver = %record.receiver, incident = %record.incident, reason = %why, "notification for an unconfigured receiver kept as a dead letter");
                    let mut out = Outcomes::default();
                    bury(&self.metrics, record, why, &mut out);
                    // Released either way: a bury the store refused is tried again by the
                    // next rescan.
                    if let Err(e) = out.store(&self.outbox) {
                        self.metrics.store_errors.inc();
                        tracing::error!(error = %e, "cannot store a dead letter; it stays in the outbox");
                    }
                    self.known.lock().expect("known lock").remove(&id);
                }
            }
        }
        if self.outbox.take_dead_letters_changed() {
            self.count_dead();
        }
    }

    /// The lane a record goes to: its member's, or the receiver's only (first) lane for a
    /// record without a member.
    fn lane_for(&self, record: &Record) -> Result<&mpsc::UnboundedSender<Record>, String> {
        let lanes = self
            .lanes
            .get(&record.receiver)
            .ok_or_else(|| format!("receiver {:?} is not configured", record.receiver))?;
        let found = match &record.member {
            None => lanes.first(),
            Some(member) => lanes.iter().find(|(m, _)| m.as_ref() == Some(member)),
        };
        found.map(|(_, tx)| tx).ok_or_else(|| {
            format!(
                "receiver {:?} no longer lists member {:?}",
                record.receiver,
                record.member.as_deref().unwrap_or_default()
            )
        })
    }

    fn count_dead(&self) {
        let dead = match self.outbox.dead_letters() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the dead letters");
                return;
            }
        };
        let mut counts: HashMap<String, i64> = self.lanes.keys().map(|k| (k.clone(), 0)).collect();
        for record in dead {
            *counts.entry(record.receiver).or_default() += 1;
        }
        for (receiver, n) in counts {
            self.metrics
                .dead_letters
                .with_label_values(&[&receiver])
                .set(n);
        }
    }
}

/// Delivery outcomes decided and not yet stored. A lane gathers the outcomes of every
/// attempt that finished together and stores them in one commit (one batch, one audit
/// record each), so a burst of deliveries is not a burst of commits.
#[derive(Default)]
struct Outcomes {
    decided: Vec<Settled>,
    /// Ids to hand back to the dispatcher once stored (delivered or dead).
    settled: Vec<u64>,
    dead: bool,
}

impl Outcomes {
    /// Stores the outcomes gathered so far in one commit; returns the ids they settled
    /// (delivered or dead). After an error nothing was stored and the same outcomes are
    /// tried again by the next call.
    fn store(&mut self, outbox: &Outbox) -> Result<Vec<u64>, crate::store::StoreError> {
        if self.decided.is_empty() {
            return Ok(Vec::new());
        }
        outbox.commit_outcomes(&self.decided)?;
        let Outcomes { settled, dead, .. } = std::mem::take(self);
        if dead {
            outbox.dead_letters_changed();
        }
        Ok(settled)
    }
}

/// Moves a record from the outbox to the dead letters (in `out`).
fn bury(metrics: &Metrics, mut record: Record, why: String, out: &mut Outcomes) {
    tracing::error!(receiver = %record.receiver, incident = %record.incident, key = %record.idempotency_key, attempts = record.attempts, reason = %why, "notification given up; kept as a dead letter");
    record.last_error = Some(why.clone());
    record.dead_at = Some(Utc::now());
    let details =
        serde_json::json!({"attempt": record.attempts, "error": why, "dead_letter": true});
    metrics
        .notifications
        .with_label_values(&[&record.receiver, "dead"])
        .inc();
    out.settled.push(record.id);
    out.decided.push(Settled {
        record,
        fate: Fate::Dead,
        details,
    });
    out.dead = true;
}

struct Waiting {
    record: Record,
    due: Instant,
}

/// One lane's part of its receiver's `outbox_pending` gauge, which shows the sum over the
/// receiver's lanes.
struct PendingShare {
    all: Arc<Vec<AtomicI64>>,
    slot: usize,
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

struct Lane {
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
    fn new(
        receiver: &ReceiverConfig,
        member: Option<&str>,
        pending: PendingShare,
        outbox: Outbox,
        metrics: Arc<Metrics>,
        known: Arc<Mutex<HashSet<u64>>>,
    ) -> Result<Self, String> {
        let mut resend = None;
        let (transport, concurrency, limiter) = match receiver {
            ReceiverConfig::Webhook(w) => {
                let client = reqwest::Client::builder()
                    .connect_timeout(w.connect_timeout.0)
                    .timeout(w.timeout.0)
                    .user_agent(concat!("logwarden/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("receiver {:?}: cannot build HTTP client: {e}", w.name))?;
                let url = member
                    .or_else(|| w.members().first().copied())
                    .ok_or_else(|| format!("receiver {:?} has no url", w.name))?;
                let url = if w.format == WebhookFormat::Alertmanager {
                    format::alertmanager_endpoint(url)
                } else {
                    url.to_string()
                };
                if let Some(every) = w.resend_interval() {
                    let firing = outbox.firing(&w.name).map_err(|e| {
                        format!("receiver {:?}: cannot read its firing alerts: {e}", w.name)
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

    async fn run(
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
                        crate::supervise::test_panic_point("delivery", record.body.as_bytes());
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

async fn attempt(transport: &Transport, record: &Record) -> Outcome {
    match transport {
        Transport::File(writer) => {
            let writer = writer.clone();
            let mut line = record.body.clone().into_bytes();
            line.push(b'\n');
            let written = tokio::task::spawn_blocking(move || {
                let mut w = writer.lock().expect("writer lock");
                w.write_all(&line).and_then(|_| w.flush())
            })
            .await;
            match written {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err(e)) => Outcome::Retry {
                    error: format!("write failed: {e}"),
                    after: None,
                },
                Err(e) => Outcome::Retry {
                    error: format!("write task failed: {e}"),
                    after: None,
                },
            }
        }
        Transport::Http {
            client,
            url,
            secret,
            routing_key,
        } => post(client, url, secret.as_ref(), routing_key.as_ref(), record).await,
    }
}

/// Sends a body that is no outbox record (a re-send) over an HTTP transport.
async fn attempt_body(transport: &Transport, body: String, headers: &[(&str, &str)]) -> Outcome {
    match transport {
        Transport::Http {
            client,
            url,
            secret,
            ..
        } => send(client, url, secret.as_ref(), body.into_bytes(), headers).await,
        Transport::File(_) => Outcome::Refused("re-sends go to HTTP receivers only".into()),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&SecretSource>,
    routing_key: Option<&SecretSource>,
    record: &Record,
) -> Outcome {
    let retry = |error: String| Outcome::Retry { error, after: None };
    let body = match routing_key {
        None => record.body.clone().into_bytes(),
        Some(source) => {
            let key = match source.read() {
                Ok(k) => k,
                Err(e) => return retry(format!("routing key unavailable: {e}")),
            };
            let mut value: serde_json::Value = match serde_json::from_str(&record.body) {
                Ok(v) => v,
                Err(e) => return Outcome::Refused(format!("stored body is not JSON: {e}")),
            };
            value["routing_key"] = serde_json::Value::String(key);
            value.to_string().into_bytes()
        }
    };
    let headers = [
        ("Idempotency-Key", record.idempotency_key.as_str()),
        ("X-Logwarden-Event", record.event.as_str()),
        ("X-Logwarden-Incident", record.incident_uid()),
    ];
    send(client, url, secret, body, &headers).await
}

/// One signed POST of a JSON body, judged by its answer.
async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&SecretSource>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Outcome {
    let retry = |error: String| Outcome::Retry { error, after: None };
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(source) = secret {
        let secret = match source.read() {
            Ok(s) => s,
            Err(e) => return retry(format!("signing secret unavailable: {e}")),
        };
        let timestamp = Utc::now().timestamp().to_string();
        request = request
            .header(
                SIGNATURE_HEADER,
                signature(secret.as_bytes(), &timestamp, &body),
            )
            .header(TIMESTAMP_HEADER, timestamp);
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Outcome::Delivered,
        Ok(response) => {
            let status = response.status();
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let error = format!("HTTP {status}");
            if status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
            {
                Outcome::Retry { error, after }
            } else {
                Outcome::Refused(format!("{error}: refused by the receiver"))
            }
        }
        Err(e) => retry(error_chain(&e.without_url())),
    }
}

/// An error and its causes ("error sending request: connection refused"), without URLs
/// (which may carry credentials).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}

fn open_file(path: &Path) -> Result<Arc<Mutex<Box<dyn Write + Send>>>, String> {
    let writer: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open receiver file {}: {e}", path.display()))?,
        )
    };
    Ok(Arc::new(Mutex::new(writer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Reference value from Python's hmac module.
        assert_eq!(
            signature(b"secret", "1700000000", br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert_ne!(signature(b"k", "1", b"2"), signature(b"k", "12", b""));
    }

    fn retry(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            initial: HumanDuration(Duration::from_millis(initial_ms)),
            max: HumanDuration(Duration::from_millis(max_ms)),
            max_age: HumanDuration(Duration::from_secs(60)),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let r = retry(100, 1000);
        for _ in 0..200 {
            for (failures, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1000),
                (40, 1000),
            ] {
                let d = backoff(&r, failures, None).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "{failures}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
        }
        assert_eq!(
            backoff(&r, 1, Some(Duration::from_secs(5))),
            Duration::from_secs(1)
        );
        assert!(backoff(&r, 1, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
    }

    #[test]
    fn token_bucket_allows_a_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                count: 3,
                per: Duration::from_secs(3),
            },
            start,
        );
        for _ in 0..3 {
            assert!(b.take(start).is_ok());
        }
        let next = b.take(start).unwrap_err();
        assert_eq!(next - start, Duration::from_secs(1));
        assert!(b.take(start + Duration::from_millis(999)).is_err());
        assert!(b.take(start + Duration::from_secs(1)).is_ok());
    }
}
