//! The daemon's side of signed heads: on start, compare the chain with the last head it
//! signed; then sign and publish the head every `anchor_every` and at shutdown.
//!
//! The last signed head is kept twice: in the store's meta space, and in `audit.head_file`
//! outside the state directory (default: beside the key). Whoever can edit the state
//! directory can cut the chain *and* put back an older head in meta; the copy outside it,
//! and the heads receivers hold, are what such an edit cannot reach. On start the newer of
//! the two copies (each checked with the key) is the expected head.
//!
//! A chain that falls short of the expected head is not carried on silently: the daemon
//! logs an error, `/readyz` answers 503 naming the discrepancy, and no head is signed over
//! it (that would launder the cut) until an admin accepts it with a reason
//! (`logwarden audit accept-discrepancy`, `POST /api/v1/audit/accept-discrepancy`), which
//! is itself an audit record. Detection keeps running meanwhile: an intruder who cuts the
//! chain must not also switch off detection.

use super::head::{self, SignedHead};
use super::signing::HeadSigner;
use super::{AuditEvent, AuditLog, Entry, Head};
use crate::base::health::Health;
use crate::config::AuditConfig;
use crate::store::{self, Store, StoreError};
use chrono::Utc;
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest reason accepted for a discrepancy.
const MAX_REASON_CHARS: usize = 2000;

/// The chain falls short of the last head the daemon signed.
#[derive(Debug, Clone)]
pub struct Discrepancy {
    /// The head the chain should reach (none when no copy could be trusted).
    pub expected: Option<SignedHead>,
    /// The chain's head as found on start.
    pub found: Head,
    /// What is wrong, in words an admin can act on (shown by `/readyz`, logged, recorded).
    pub reason: String,
}

/// Why an acceptance was refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Nothing to accept.
    #[error("the audit chain has no discrepancy to accept")]
    NothingToAccept,
    /// The reason is missing or too long.
    #[error("{0}")]
    Invalid(String),
    /// The acceptance could not be recorded.
    #[error("cannot record the acceptance: {0}")]
    Store(#[from] StoreError),
    /// The acceptance is recorded, but signing the new head failed: the next clock tick
    /// tries again.
    #[error("accepted, but no head was signed: {0}")]
    Unsigned(PublishError),
}

/// Why no head was signed this time; the clock tries again, so none of these is fatal.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Signing now would vouch for a chain cut or rewritten since the last head: an admin
    /// must accept the discrepancy first.
    #[error("not signing over an unaccepted audit chain discrepancy: {0}")]
    Unaccepted(String),
    /// The store could not make the head durable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The receivers a signed head is sent to (those subscribed to `audit_head`). A trait
/// because they belong to the notification stage, which stands above the audit log (every
/// delivery is an audit record): the wiring hands the outbox in, and the anchor never
/// imports upward.
pub trait HeadReceivers: Send + Sync {
    /// Adds a notification of `head` to `batch` for every subscribed receiver, so the head
    /// and its notifications become durable together; returns the receivers' names.
    fn enqueue_head(
        &self,
        batch: &mut store::Batch,
        head: &SignedHead,
    ) -> Result<Vec<String>, StoreError>;
    /// Tells the delivery worker that the committed notifications are waiting.
    fn wake(&self);
}

/// Signs and publishes chain heads; one per daemon.
pub struct Anchor {
    signer: HeadSigner,
    store: Store,
    audit: AuditLog,
    receivers: Arc<dyn HeadReceivers>,
    head_file: PathBuf,
    every: Duration,
    gauge: prometheus::IntGauge,
    health: Arc<Health>,
    latest: Mutex<Option<SignedHead>>,
    discrepancy: Mutex<Option<Discrepancy>>,
    /// One publication at a time (the clock, an acceptance, the shutdown).
    publishing: tokio::sync::Mutex<()>,
}

impl Anchor {
    /// Loads the key (already checked with the config).
    pub fn new(
        config: &AuditConfig,
        store: &Store,
        audit: &AuditLog,
        receivers: Arc<dyn HeadReceivers>,
        gauge: prometheus::IntGauge,
        health: Arc<Health>,
    ) -> Result<Self, super::signing::SigningError> {
        let signer = HeadSigner::load(&config.signing_key_file)?;
        Ok(Anchor {
            signer,
            store: store.clone(),
            audit: audit.clone(),
            receivers,
            head_file: config.head_path(),
            every: config.anchor_every.0,
            gauge,
            health,
            latest: Mutex::new(None),
            discrepancy: Mutex::new(None),
            publishing: tokio::sync::Mutex::new(()),
        })
    }

    /// Compares the chain with the newer of the two copies of the last signed head, before
    /// anything is written to it. A discrepancy is logged, shown by `/readyz`, and stops
    /// signing until accepted.
    pub fn check_at_start(&self) -> Result<(), StoreError> {
        let public = self.signer.public_key();
        let mut problems = Vec::new();
        let mut copies = Vec::new();
        match head::stored(&self.store)? {
            Some(Ok(h)) => copies.push(("the store".to_string(), h)),
            Some(Err(e)) => {
                problems.push(format!("the signed head in the store is unreadable: {e}"))
            }
            None => {}
        }
        match head::read_file(&self.head_file) {
            Ok(Some(h)) => copies.push((self.head_file.display().to_string(), h)),
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
        copies.retain(|(place, h)| match h.check_signature(&public) {
            Ok(()) => true,
            Err(e) => {
                problems.push(format!(
                    "the signed head in {place} is not trustworthy: {e}"
                ));
                false
            }
        });
        if let [(_, a), (_, b)] = copies.as_slice()
            && a.sequence == b.sequence
            && a.hash != b.hash
        {
            problems.push(format!(
                "the signed heads in {} and {} name different hashes for record {}",
                copies[0].0, copies[1].0, a.sequence
            ));
        }
        let expected = copies
            .into_iter()
            .map(|(_, h)| h)
            .max_by_key(|h| (h.sequence, h.at));
        if let Some(expected) = &expected
            && let Some(why) = head::shortfall(&self.store, &expected.head())?
        {
            problems.push(why);
        }
        let found = self.audit.current_head();
        if problems.is_empty() {
            match &expected {
                Some(h) => {
                    tracing::info!(
                        sequence = h.sequence,
                        chain = found.seq,
                        "audit chain reaches the last signed head"
                    );
                    self.gauge.set(h.sequence as i64);
                }
                None => tracing::info!(
                    chain = found.seq,
                    "no signed audit head yet: the first is signed now"
                ),
            }
            *self.latest.lock().expect("anchor lock") = expected;
            return Ok(());
        }
        let reason = problems.join("; ");
        tracing::error!(
            expected = expected.as_ref().map(|h| h.sequence),
            found = found.seq,
            %reason,
            "AUDIT CHAIN DISCREPANCY: the audit log does not reach the last head this daemon signed; no head is signed until an admin runs `logwarden audit accept-discrepancy --reason ...`"
        );
        *self.health.audit_problem.lock().expect("health lock") = Some(format!(
            "audit chain discrepancy: {reason} (an admin must accept it: logwarden audit accept-discrepancy --reason TEXT)"
        ));
        *self.discrepancy.lock().expect("anchor lock") = Some(Discrepancy {
            expected,
            found,
            reason,
        });
        Ok(())
    }

    /// The discrepancy found on start and not yet accepted.
    pub fn discrepancy(&self) -> Option<Discrepancy> {
        self.discrepancy.lock().expect("anchor lock").clone()
    }

    /// The last head signed (or found valid on start).
    pub fn latest(&self) -> Option<SignedHead> {
        self.latest.lock().expect("anchor lock").clone()
    }

    /// The public key heads are signed with.
    pub fn public_key_base64(&self) -> String {
        self.signer.public_key_base64()
    }

    /// Signs the chain's durable head and publishes it: the store's meta, the head file,
    /// the gauge, and an outbox record for every receiver subscribed to `audit_head`.
    pub async fn publish(&self) -> Result<SignedHead, PublishError> {
        let _one = self.publishing.lock().await;
        if let Some(d) = self.discrepancy() {
            return Err(PublishError::Unaccepted(d.reason));
        }
        // Read first, then flush: what the head names is durable before it is signed.
        let chain = self.audit.current_head();
        self.store.flush().await?;
        let signed = SignedHead::sign(&self.signer, &chain, Utc::now());
        let mut batch = store::Batch::new();
        signed.put(&mut batch)?;
        let receivers = self.receivers.enqueue_head(&mut batch, &signed)?;
        self.store.commit(batch)?;
        self.store.flush().await?;
        self.receivers.wake();
        if let Err(e) = head::write_file(&self.head_file, &signed) {
            tracing::error!(file = %self.head_file.display(), error = %e, "cannot write the signed audit head outside the state directory");
        }
        self.gauge.set(signed.sequence as i64);
        let mut latest = self.latest.lock().expect("anchor lock");
        // An idle host signs the same head again and again: only a longer chain is news.
        if latest.as_ref().map(|h| h.sequence) == Some(signed.sequence) {
            tracing::debug!(sequence = signed.sequence, receivers = ?receivers, "audit chain head signed again");
        } else {
            tracing::info!(sequence = signed.sequence, receivers = ?receivers, "audit chain head signed");
        }
        *latest = Some(signed.clone());
        drop(latest);
        Ok(signed)
    }

    /// Publishes a head now and then every `anchor_every`, until `stop` is signalled (only
    /// between publications: the daemon signs the shutdown's heads itself).
    pub async fn run(self: Arc<Self>, mut stop: crate::base::shutdown::Listener) {
        let mut every = tokio::time::interval(self.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.recv() => return,
            }
            if let Err(e) = self.publish().await {
                tracing::error!(error = %e, "audit chain head not signed");
            }
        }
    }

    /// Accepts the discrepancy found on start: records who accepted what and why (an
    /// `audit.discrepancy_accepted` record), clears `/readyz`, and signs a new head.
    pub async fn accept(&self, actor: &str, reason: &str) -> Result<SignedHead, AcceptError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(AcceptError::Invalid(format!(
                "reason must be 1 to {MAX_REASON_CHARS} characters"
            )));
        }
        let Some(d) = self.discrepancy() else {
            return Err(AcceptError::NothingToAccept);
        };
        let entry = Entry::new(
            AuditEvent::AuditDiscrepancyAccepted,
            actor,
            None,
            json!({
                "reason": reason,
                "problem": d.reason,
                "expected": d.expected,
                "found": {"sequence": d.found.seq, "hash": d.found.hash},
            }),
        );
        self.audit.commit(&store::Batch::new(), &[entry])?;
        self.store.flush().await?;
        *self.discrepancy.lock().expect("anchor lock") = None;
        *self.health.audit_problem.lock().expect("health lock") = None;
        tracing::warn!(actor, reason, problem = %d.reason, "audit chain discrepancy accepted");
        self.publish().await.map_err(AcceptError::Unsigned)
    }
}
