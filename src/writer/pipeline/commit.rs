//! The commit half of the pipeline: what a step caused (incident changes, windows with the
//! evidence lines they reference, the desk's effects) is put into one store batch, made
//! durable with its audit entries (retried until the store takes it), and only then
//! announced (metrics, delivery wake-up). Unreferenced evidence is collected here too.

use super::{NotStored, Pipeline};
use crate::detection::encode_window;
use crate::incidents::{EventKind, IncidentEvent};
use crate::metrics::Metrics;
use crate::rules::Severity;
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Wait before retrying a failed store commit.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A step's commit on its way to disk while the next step is counted (see
/// [`Pipeline::launch`]): what to announce once it is durable.
pub(super) struct InFlight {
    /// Its first attempt, on the blocking pool.
    pub(super) task: tokio::task::JoinHandle<Attempt>,
    /// The step's incident events, announced once durable.
    events: Vec<IncidentEvent>,
    /// Whether the step wrote notifications (delivery is woken once durable).
    notified: bool,
}

/// A commit after its first attempt: the sealed batch and audit entries (kept for
/// retries), the chain head the attempt left if it was applied, and how it went.
pub(super) struct Attempt {
    /// Bytes the batch wrote.
    bytes: usize,
    /// The batch and its audit entries, kept while a retry may need them (dropped on the
    /// blocking pool once the first attempt is durable: freeing a commit's thousands of
    /// records was ~3 % of the pipeline thread).
    retry: Option<(store::Batch, Vec<crate::audit::Entry>)>,
    sealed: Option<crate::audit::Head>,
    result: Result<(), StoreError>,
}

impl Attempt {
    /// Seals the batch (its evidence block is deflated once, so every retry commits the
    /// same bytes), commits it with the audit entries chained, and flushes the store.
    fn first(
        store: &Store,
        log: &crate::audit::AuditLog,
        mut commit: store::Batch,
        audit: Vec<crate::audit::Entry>,
    ) -> Attempt {
        commit.seal();
        let mut sealed = None;
        let result = log.commit(&commit, &audit).and_then(|()| {
            sealed = Some(log.current_head());
            store.flush_blocking()
        });
        // While the pipeline thread is still counting the next step.
        store.catch_up_windows();
        let bytes = commit.bytes();
        let retry = result.is_err().then_some((commit, audit));
        Attempt {
            bytes,
            retry,
            sealed,
            result,
        }
    }
}

/// Extra log time an unreferenced evidence line is kept past every rule's horizon (lines
/// arrive late, clocks disagree).
const EVIDENCE_GRACE_MS: i64 = 3_600_000;

/// Exports where the store's bytes went (engine, journals) as
/// `logwarden_store_part_written_bytes_total`, read at each scrape.
pub(super) fn count_store_writes(store: &Store, metrics: &Metrics) {
    let store = store.clone();
    let counter = metrics.store_part_written.clone();
    metrics.before_scrape(Box::new(move || {
        let written = store.written();
        for (part, bytes) in [
            ("engine", written.engine),
            ("evidence", written.evidence),
            ("window_changes", written.window_changes),
            ("window_snapshots", written.window_snapshots),
        ] {
            let c = counter.with_label_values(&[part]);
            c.inc_by(bytes.saturating_sub(c.get()));
        }
    }));
}

/// The `drill` label value of a KPI observation.
pub(super) fn drill_label(drill: bool) -> &'static str {
    if drill { "true" } else { "false" }
}

impl Pipeline {
    /// Adds what a step's events call for to `commit`: notifications, escalation progress
    /// and timers, changed incidents and windows with the evidence lines they reference.
    /// Returns whether the clock wrote notifications.
    pub(super) fn build_commit(
        &mut self,
        events: &[IncidentEvent],
        clock: Option<DateTime<Utc>>,
        commit: &mut store::Batch,
    ) -> Result<bool, StoreError> {
        self.desk
            .dispatch(self.engine.book_mut(), events, &self.outbox, Utc::now());
        // After the openings: a new incident's tracker exists before its timers are checked.
        let mut notified = false;
        if let Some(now) = clock {
            notified = self.desk.tick(self.engine.book_mut(), &self.outbox, now);
        }
        self.engine
            .book_mut()
            .write_changes(&self.store, commit, &mut self.evidence)?;
        let (evidence, store) = (&mut self.evidence, &self.store);
        let detector = self.engine.detector_mut();
        let mut scratch = Vec::new();
        let generation = evidence.generation();
        detector.each_dirty(|key, rule_hash, window| {
            let value = window.map(|w| {
                encode_window(
                    rule_hash,
                    w,
                    &mut scratch,
                    &mut |e| evidence.store(store, commit, e),
                    Some(generation),
                )
            });
            commit.set_window(key.into(), value);
        });
        Ok(notified)
    }

    /// Puts what the desk decided (notifications, escalation progress, silences,
    /// containments, audit entries) into `commit`; the audit entries are returned for
    /// [`Pipeline::make_durable`] to chain. An error means `commit` is incomplete.
    pub(super) fn write_effects(
        &mut self,
        commit: &mut store::Batch,
    ) -> Result<crate::lifecycle::effects::Written, StoreError> {
        self.desk
            .take_effects()
            .write(&self.store, &self.outbox, commit)
    }

    /// The book's changed incidents and the desk's decisions, into `batch` (a command's or
    /// a containment outcome's commit).
    pub(super) fn write_changes_and_effects(
        &mut self,
        batch: &mut store::Batch,
    ) -> Result<crate::lifecycle::effects::Written, StoreError> {
        self.engine
            .book_mut()
            .write_changes(&self.store, batch, &mut self.evidence)?;
        self.write_effects(batch)
    }

    /// A step's effects could not be put into a commit: nothing of the step is stored (its
    /// lines' checkpoints do not advance), and the in-memory state is ahead of the store,
    /// so the pipeline stops here rather than go on with a gap: `/readyz` answers 503, the
    /// daemon stops (a vital task ended) and exits non-zero naming what was not stored, and
    /// the restart re-reads the lines from the last stored checkpoint. Never a silent drop.
    pub(super) fn cannot_build(&mut self, e: StoreError) -> Result<(), NotStored> {
        self.evidence.abandoned();
        self.metrics.store_errors.inc();
        self.health.store.store(false, Ordering::Relaxed);
        tracing::error!(error = %e, "cannot build the store commit; the pipeline stops so a restart re-reads the lines from the last stored checkpoint");
        Err(NotStored(format!("a commit could not be built: {e}")))
    }

    /// Deletes the evidence lines that no window and no incident references and that are
    /// older (in log time) than every rule's horizon. Runs on the writer between commits,
    /// so what it reads is what is stored.
    pub(super) async fn collect_evidence(&mut self) -> Result<(), NotStored> {
        let Some(watermark) = self.watermark else {
            return Ok(());
        };
        let horizon = self
            .engine
            .rules()
            .rules
            .iter()
            .map(|r| r.kind.horizon_ms())
            .max()
            .unwrap_or(0);
        let before_ms = watermark
            .timestamp_millis()
            .saturating_sub(horizon)
            .saturating_sub(EVIDENCE_GRACE_MS);
        let mut batch = store::Batch::new();
        let result = (|| -> Result<usize, StoreError> {
            let mut referenced = std::collections::HashSet::new();
            for (key, value) in self.store.scan_raw(Space::Windows)? {
                referenced.extend(crate::detection::stored::window_refs(&key, &value)?);
            }
            for (_, head) in self.store.scan_raw(Space::Incidents)? {
                referenced.extend(crate::incidents::stored::head_refs(&head)?);
            }
            self.evidence
                .collect(&self.store, &referenced, before_ms, &mut batch)
        })();
        match result {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(blocks = deleted, "unreferenced evidence collected");
                self.make_durable(batch, Vec::new()).await?;
            }
            Err(e) => tracing::warn!(error = %e, "evidence collection skipped"),
        }
        Ok(())
    }

    /// Commits and flushes a step's changes with its audit entries, retrying until the
    /// store takes them (detection pauses meanwhile, nothing is lost, `/readyz` says why),
    /// or until the daemon must stop. A step's commit still in flight is settled first, so
    /// commits are made durable in the order they were built.
    pub(super) async fn make_durable(
        &mut self,
        commit: store::Batch,
        audit: Vec<crate::audit::Entry>,
    ) -> Result<(), NotStored> {
        self.settle().await?;
        let (store, log) = (self.store.clone(), self.desk.audit.clone());
        let attempt =
            tokio::task::spawn_blocking(move || Attempt::first(&store, &log, commit, audit))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.until_durable(attempt).await
    }

    /// Starts making a step's commit durable on the blocking pool and returns at once: the
    /// next step's lines are counted meanwhile. Nothing of the step is announced (metrics,
    /// delivery, containment, evidence taken as stored) before [`Pipeline::settle`] saw it
    /// durable, and the next commit is built only after that, so what a crash keeps, and
    /// the order commits reach the store in, are as when each step waited for its own.
    pub(super) fn launch(
        &mut self,
        commit: store::Batch,
        audit: Vec<crate::audit::Entry>,
        events: Vec<IncidentEvent>,
        notified: bool,
    ) {
        debug_assert!(self.in_flight.is_none(), "one commit in flight at a time");
        let (store, log) = (self.store.clone(), self.desk.audit.clone());
        let task = tokio::task::spawn_blocking(move || Attempt::first(&store, &log, commit, audit));
        self.in_flight = Some(InFlight {
            task,
            events,
            notified,
        });
    }

    /// Waits until the commit in flight (if any) is durable, retrying it as
    /// [`Pipeline::make_durable`] does, then announces what it stored.
    pub(super) async fn settle(&mut self) -> Result<(), NotStored> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        let waited = std::time::Instant::now();
        let attempt = super::first_attempt(&mut self.in_flight).await;
        tracing::debug!(
            waited_us = waited.elapsed().as_micros() as u64,
            "commit settled"
        );
        self.settle_with(attempt).await
    }

    /// [`Pipeline::settle`] once the commit in flight has made its first attempt.
    pub(super) async fn settle_with(&mut self, attempt: Attempt) -> Result<(), NotStored> {
        let Some(InFlight {
            events, notified, ..
        }) = self.in_flight.take()
        else {
            return Ok(());
        };
        self.until_durable(attempt).await?;
        self.evidence.committed();
        self.hand_over_effects();
        if notified {
            self.outbox.wake();
        }
        self.after_commit(events).await;
        Ok(())
    }

    /// Retries a commit whose first attempt failed until the store takes it (or the
    /// daemon must stop).
    ///
    /// After an I/O error (a full disk) sled refuses every later write, so each retry
    /// reopens it; a commit that was applied but not flushed may be gone after the reopen
    /// and is committed again. The batch is the same every time (its notifications carry
    /// the ids they were given when it was built, its evidence block was sealed once), so a
    /// retry never adds a second copy.
    async fn until_durable(&self, attempt: Attempt) -> Result<(), NotStored> {
        let Attempt {
            bytes,
            retry,
            mut sealed,
            mut result,
        } = attempt;
        self.metrics.store_written.inc_by(bytes as u64);
        if result.is_ok() {
            self.health.store.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let (commit, audit) = retry.expect("a failed attempt keeps its batch");
        loop {
            let error = match result {
                Ok(()) => {
                    self.health.store.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => e,
            };
            self.health.store.store(false, Ordering::Relaxed);
            self.metrics.store_errors.inc();
            if self.wait_to_retry().await.is_err() {
                tracing::error!(error = %error, "store commit failed; stopping without it");
                return Err(NotStored(error.to_string()));
            }
            tracing::error!(error = %error, "store commit failed; retrying");
            // Busy, not hung: the watchdog keeps being fed while /readyz answers 503.
            (self.heartbeat)();
            if matches!(error, StoreError::Sled(_) | StoreError::Reopening) {
                let reopened = self
                    .store
                    .reopen()
                    .and_then(|()| self.desk.audit.reload_head());
                match reopened {
                    // Applied and kept only if the chain still ends where the commit left it.
                    Ok(())
                        if !audit.is_empty() && sealed == Some(self.desk.audit.current_head()) => {}
                    Ok(()) => sealed = None,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reopen the store; retrying");
                        sealed = None;
                    }
                }
            }
            result = match sealed {
                Some(_) => Ok(()),
                None => self.desk.audit.commit(&commit, &audit).map(|()| {
                    sealed = Some(self.desk.audit.current_head());
                }),
            };
            if result.is_ok() {
                result = self.store.flush().await;
            }
        }
    }

    /// Waits before a store retry; an error once the daemon is stopping.
    pub(super) async fn wait_to_retry(&self) -> Result<(), ()> {
        let Some(terminating) = &self.terminating else {
            tokio::time::sleep(STORE_RETRY).await;
            return Ok(());
        };
        let mut terminating = terminating.clone();
        if terminating.is_shutdown() {
            return Err(());
        }
        tokio::select! {
            _ = tokio::time::sleep(STORE_RETRY) => Ok(()),
            _ = terminating.recv() => Err(()),
        }
    }

    pub(super) async fn after_commit(&self, events: Vec<IncidentEvent>) {
        for event in &events {
            if event.kind == EventKind::Opened {
                let i = &event.incident;
                tracing::info!(incident = %i.id, rule = %i.rule, severity = %i.severity, count = i.count, drill = i.drill, "incident opened");
                if !i.drill {
                    // A drill is an exercise, not a detection.
                    self.metrics
                        .incidents_opened
                        .with_label_values(&[&i.rule, i.severity.as_str()])
                        .inc();
                }
                let detect = (i.opened_at - i.first_seen).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics
                    .time_to_detect
                    .with_label_values(&[i.severity.as_str(), drill_label(i.drill)])
                    .observe(detect);
            }
        }
        if !events.is_empty() {
            self.outbox.wake();
            self.update_open_gauge();
            // Freed on the blocking pool: a busy step's events hold a copy of each incident
            // they announce, and freeing them was ~3 % of the pipeline thread.
            tokio::task::spawn_blocking(move || drop(events));
        }
    }

    pub(super) fn update_open_gauge(&self) {
        let counts = self.engine.book().open_counts();
        for severity in Severity::ALL {
            for state in crate::incidents::State::ACTIVE {
                let n = counts.get(&(severity, state)).copied().unwrap_or(0);
                self.metrics
                    .incidents_open
                    .with_label_values(&[severity.as_str(), state.as_str()])
                    .set(n);
            }
        }
    }
}
