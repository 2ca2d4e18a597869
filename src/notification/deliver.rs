//! The delivery worker: sends outbox records, retries, gives up into dead letters.
//!
//! A dispatcher task reads the outbox (at start, whenever a commit wakes it, and every few
//! seconds as a safety net) and hands each new record to its receiver's lane. Each receiver
//! has its own lane task with its own HTTP client, concurrency limit, rate limit and
//! backoff, so a slow or dead receiver only ever delays itself. Within a lane, the events of
//! one incident go out in order (a resolve never overtakes its trigger).

mod lane;
mod pacing;
mod transport;

pub use pacing::{TokenBucket, backoff};
pub use transport::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};

use super::{Fate, Outbox, Record, Settled};
use crate::base::shutdown::{Listener, Shutdown};
use crate::config::{Config, ReceiverConfig};
use crate::metrics::Metrics;
use crate::store::StoreError;
use chrono::Utc;
use lane::{Lane, PendingShare};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// How often the dispatcher re-reads the outbox without being woken.
const RESCAN: Duration = Duration::from_secs(5);

/// Why the delivery worker could not start: a receiver that cannot be set up. Each names
/// the receiver or file, so the operator knows which entry of the config to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("receiver {receiver:?}: cannot build HTTP client: {cause}")]
    Client {
        receiver: String,
        cause: reqwest::Error,
    },
    #[error("receiver {0:?} has no url")]
    NoUrl(String),
    #[error("receiver {receiver:?}: cannot read its firing alerts: {cause}")]
    Firing { receiver: String, cause: StoreError },
    #[error("cannot create {}: {cause}", dir.display())]
    CreateDir { dir: PathBuf, cause: std::io::Error },
    #[error("cannot open receiver file {}: {cause}", path.display())]
    OpenFile {
        path: PathBuf,
        cause: std::io::Error,
    },
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
    vitals: &crate::base::supervise::Vitals,
    stop: &Shutdown,
) -> Result<(), DeliveryError> {
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
