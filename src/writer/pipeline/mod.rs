//! The pipeline step: evaluate a batch of lines, store what it caused (incident changes and
//! the notifications they call for) together with the window state, file checkpoints and
//! journal cursors (and the audit record of a journal gap) in one atomic commit, make it
//! durable, then wake the delivery worker. The commit half lives in [`commit`].
//!
//! Because the checkpoint of a batch is stored with the batch's effects, a crash anywhere
//! replays exactly the lines whose effects were not stored: none lost, none counted twice.

use crate::audit::{AuditEvent, Entry};
use crate::base::health::Health;
use crate::base::shutdown::{Listener, Notice};
use crate::detection::{Detector, Hit, Matchers, RuleChange, decode_window, window_key};
use crate::engine::{Engine, Stamp};
use crate::incidents::IncidentBook;
use crate::lifecycle::{Command, DAEMON, Desk};
use crate::metrics::Metrics;
use crate::notification::Outbox;
use crate::rules::RuleSet;
use crate::sources::line_time::LineTimeBounds;
use crate::sources::timestamp::TimestampFormat;
use crate::sources::{Batch, Progress, checkpoint_key};
use crate::store::evidence::{EvidenceLog, resolve};
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

mod commands;
mod commit;
mod matching;
use commit::{InFlight, count_store_writes};
use matching::{PIECE_LINES, evaluate_lines, judge_line_time};

/// Most source batches folded into one store commit.
const BATCHES_PER_COMMIT: usize = 64;
/// Fewest and most lines a step folds into one store commit while batches are queued. A
/// commit holds the store's write lock while it applies, and readers (the API) wait for
/// it; a step's incident events stay in memory until it is durable. A fixed 16,384 was
/// measured (docs/performance.md): less CPU, but a worst API answer of 1.3 s (0.1 s with
/// 2,048) and 2.5x the memory while 20,000 attackers' incidents opened. So a step starts
/// at the least and grows only while its commits stay small ([`next_step_lines`]).
const STEP_LINES: std::ops::RangeInclusive<usize> = 2048..=8192;
/// Records a step's commit should hold at most: about what a 2,048-line step writes when
/// every line opens an incident (window, incident, notification, timeline). The records
/// per line of one step set the next step's lines; an attack-heavy burst writes ~0.9.
const RECORDS_PER_COMMIT: usize = 8192;
/// Steps with fewer lines are matched on the pipeline thread alone (starting workers
/// would cost more than it saves).
const PARALLEL_LINES: usize = 2 * PIECE_LINES;
/// How often idle window state is expired and the watchdog is fed.
const TICK: Duration = Duration::from_secs(1);
/// How often evidence lines no record references any more are collected.
const EVIDENCE_GC: Duration = Duration::from_secs(120);
/// A validated rule set to swap in; the pipeline answers with what changed once the new
/// rules evaluate lines.
pub struct Reload {
    /// The new rules, already loaded and checked: the pipeline only swaps them in, between
    /// batches, so no batch is counted under two rule sets.
    pub rules: Arc<RuleSet>,
    /// Where the change goes once swapped.
    pub done: oneshot::Sender<RuleChange>,
}

/// Everything the pipeline thread owns.
pub struct Pipeline {
    /// The store, written only from this thread: every step's changes go in as one commit.
    pub store: Store,
    /// Detector, incident book and clock: the same engine `test` and `replay` run.
    pub engine: Engine,
    /// How each source's lines carry time.
    pub formats: HashMap<String, TimestampFormat>,
    /// Where the notifications events call for are written.
    pub outbox: Outbox,
    /// Metrics the pipeline updates (distrusted line times, bytes stored, store errors).
    pub metrics: Arc<Metrics>,
    /// Readiness flags: the pipeline clears `store` while commits fail, so `/readyz` says
    /// so.
    pub health: Arc<Health>,
    /// Called on every tick so a hung pipeline stops feeding the systemd watchdog.
    pub heartbeat: Box<dyn Fn() + Send>,
    /// Escalation, silences and the audit log.
    pub desk: Desk,
    /// The evidence lines stored, so each is written once.
    evidence: EvidenceLog,
    last_gc: std::time::Instant,
    watermark: Option<DateTime<Utc>>,
    line_time: LineTimeBounds,
    /// Threads that find a step's matches (default: the available cores).
    threads: usize,
    /// Their copies of the detector's matching stage, made at the first large step (and
    /// again after a reload).
    workers: Vec<Matchers>,
    reloads: Option<mpsc::Receiver<Reload>>,
    commands: Option<mpsc::Receiver<Command>>,
    terminating: Option<Notice>,
    /// Where decided containment effects go once durable.
    worker: Option<crate::response::containment::exec::Worker>,
    /// What the containment worker did, to record.
    outcomes: Option<mpsc::UnboundedReceiver<crate::response::containment::Outcome>>,
    /// The last step's commit while it is made durable and the next step is counted.
    in_flight: Option<InFlight>,
    /// Lines the next step gathers at most (within [`STEP_LINES`]).
    step_lines: usize,
}

/// A step's changes could not be stored and the daemon is stopping: what it holds is lost
/// (lines are read again from their checkpoints at the next start), so it must not exit as
/// if all were well.
#[derive(Debug, thiserror::Error)]
#[error("changes not stored at shutdown: {0}")]
pub struct NotStored(pub String);

/// What a pipeline is built from: the daemon's wiring assembles it, [`Pipeline::new`] loads
/// the stored state into it.
pub struct Parts {
    /// The store, written only from the pipeline thread; its stored state (windows,
    /// incidents, checkpoints) is loaded by [`Pipeline::new`].
    pub store: Store,
    /// The rules' detector, its windows not yet restored.
    pub detector: Detector,
    /// How each source's lines carry time.
    pub formats: HashMap<String, TimestampFormat>,
    /// Where the notifications events call for are written.
    pub outbox: Outbox,
    /// Metrics the pipeline updates (distrusted line times, bytes stored, store errors).
    pub metrics: Arc<Metrics>,
    /// Readiness flags: the pipeline clears `store` while commits fail, so `/readyz` says
    /// so.
    pub health: Arc<Health>,
    /// Called on every tick so a hung pipeline stops feeding the systemd watchdog.
    pub heartbeat: Box<dyn Fn() + Send>,
    /// Escalation, silences and the audit log.
    pub desk: Desk,
}

impl Pipeline {
    /// Loads the store's windows into the detector (dropping those of changed rules).
    pub fn new(parts: Parts) -> Result<Self, StoreError> {
        let Parts {
            store,
            mut detector,
            formats,
            outbox,
            metrics,
            health,
            heartbeat,
            mut desk,
        } = parts;
        let book = IncidentBook::load(&store, outbox.host())?;
        desk.track_active(&store, &book)?;
        let mut saved = Vec::new();
        let mut unreadable = Vec::new();
        let mut evidence = EvidenceLog::default();
        for (key, value) in store.scan_raw(Space::Windows)? {
            let mut read_line = |loc| {
                let line = resolve(&store, loc)?;
                evidence.remember(&line, loc);
                Ok(line)
            };
            match decode_window(&key, &value, &mut read_line) {
                Ok(window) => saved.push(window),
                Err(e) => {
                    // A window is a cache of counts: one that cannot be read starts again.
                    tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "dropping an unreadable window");
                    unreadable.push(key);
                }
            }
        }
        let stale = detector.restore(saved);
        if !stale.is_empty() || !unreadable.is_empty() {
            let mut batch = store::Batch::new();
            for id in &stale {
                batch.remove(Space::Windows, &window_key(id));
            }
            for key in &unreadable {
                batch.remove(Space::Windows, key);
            }
            store.commit(batch)?;
        }
        count_store_writes(&store, &metrics);
        let pipeline = Pipeline {
            store,
            engine: Engine::new(detector, book, Stamp::Wall),
            formats,
            outbox,
            metrics,
            health,
            heartbeat,
            desk,
            evidence,
            last_gc: std::time::Instant::now(),
            watermark: None,
            line_time: LineTimeBounds::default(),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            workers: Vec::new(),
            reloads: None,
            commands: None,
            terminating: None,
            worker: None,
            outcomes: None,
            in_flight: None,
            step_lines: *STEP_LINES.start(),
        };
        pipeline.update_open_gauge();
        Ok(pipeline)
    }

    /// Rule sets sent here are swapped in between batches (hot reload).
    pub fn with_reloads(mut self, reloads: mpsc::Receiver<Reload>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// Lines dated beyond these bounds are evaluated at their arrival (default: the
    /// defaults of `line_time:`).
    pub fn with_line_time(mut self, bounds: LineTimeBounds) -> Self {
        self.line_time = bounds;
        self
    }

    /// Matches are found on `threads` threads (at least one) while the pipeline thread
    /// counts them in input order: the outcome is the same with any number.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self.workers.clear();
        self
    }

    /// Signalled as soon as the daemon is told to stop (before the sources have finished):
    /// a store that keeps failing is then given up on instead of retried, so the daemon
    /// stops within its stop timeout.
    pub fn with_terminating(mut self, terminating: Notice) -> Self {
        self.terminating = Some(terminating);
        self
    }

    /// Containment effects go to `worker` once committed; its outcomes come back here.
    pub fn with_containment(
        mut self,
        worker: crate::response::containment::exec::Worker,
        outcomes: mpsc::UnboundedReceiver<crate::response::containment::Outcome>,
    ) -> Self {
        self.worker = Some(worker);
        self.outcomes = Some(outcomes);
        self
    }

    /// Lifecycle and silence changes sent here are carried out between batches.
    pub fn with_commands(mut self, commands: mpsc::Receiver<Command>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Processes batches until `shutdown` is signalled, then drains what is already queued;
    /// an error when a step's changes could not be stored before the daemon had to stop.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        mut shutdown: Listener,
    ) -> Result<(), NotStored> {
        let mut tick = tokio::time::interval(TICK);
        let mut reloads = self.reloads.take();
        let mut commands = self.commands.take();
        let mut outcomes = self.outcomes.take();
        self.resume_containments().await?;
        loop {
            // Unbiased: a long backlog of batches must not starve the tick, or systemd's
            // watchdog would kill a daemon that is busy, not hung.
            tokio::select! {
                _ = shutdown.recv() => break,
                batch = rx.recv() => {
                    let Some(first) = batch else { break };
                    let mut lines = first.lines.len();
                    let mut batches = vec![first];
                    while batches.len() < BATCHES_PER_COMMIT && lines < self.step_lines {
                        match rx.try_recv() {
                            Ok(b) => {
                                lines += b.lines.len();
                                batches.push(b);
                            }
                            Err(_) => break,
                        }
                    }
                    // Its commit is made durable while the next batches are counted.
                    self.count_and_launch(batches, None).await?;
                }
                attempt = first_attempt(&mut self.in_flight) => self.settle_with(attempt).await?,
                _ = tick.tick() => {
                    self.settle().await?;
                    (self.heartbeat)();
                    // Never past the wall clock: a line dated ahead (within the trusted
                    // skew) must not expire the windows of lines dated now.
                    if let Some(seen) = self.watermark {
                        self.engine.detector_mut().expire(seen.min(Utc::now()));
                    }
                    // Absence needs time to pass without lines: the wall clock drives it.
                    self.step_at(Vec::new(), Some(Utc::now())).await?;
                    if self.last_gc.elapsed() >= EVIDENCE_GC {
                        self.last_gc = std::time::Instant::now();
                        self.collect_evidence().await?;
                    }
                    // The engine moves what it holds in memory to disk on its own schedule,
                    // also when no commit comes; a failure there is a store failure like any.
                    if self.store.checkpoint_due() {
                        self.make_durable(store::Batch::new(), Vec::new()).await?;
                    }
                }
                reload = next_reload(&mut reloads) => {
                    self.settle().await?;
                    self.metrics.preset_rules(&reload.rules);
                    if let Err(e) = self.desk.containments.use_lists(&reload.rules.lists) {
                        tracing::error!(error = %e, "never_contain keeps its previous lists");
                    }
                    let change = self.engine.replace_rules(reload.rules);
                    // The workers' copies of the matching stage are of the old rules.
                    self.workers.clear();
                    self.desk.rules_reloaded(&change);
                    // Stores the deletion of dropped state (and the audit record) at once.
                    let stored = self.step(Vec::new()).await;
                    let _ = reload.done.send(change);
                    stored?;
                }
                command = next_command(&mut commands) => {
                    self.settle().await?;
                    self.command(command).await?
                }
                outcome = next_outcome(&mut outcomes) => {
                    self.settle().await?;
                    self.record_outcome(outcome).await?
                }
            }
        }
        let mut rest = Vec::new();
        while let Ok(b) = rx.try_recv() {
            rest.push(b);
        }
        self.step(rest).await
    }

    /// Evaluates batches and commits their effects with the notifications they call for;
    /// delivery starts only after the commit is durable, which it is when this returns.
    pub async fn step(&mut self, batches: Vec<Batch>) -> Result<(), NotStored> {
        self.step_at(batches, None).await
    }

    /// How many workers find the matches of `batches`: one for a small step, else all
    /// (their copies of the matching stage made first when there are none).
    fn threads_for(&mut self, batches: &[Batch]) -> usize {
        let lines: usize = batches.iter().map(|b| b.lines.len()).sum();
        if lines < PARALLEL_LINES {
            if self.workers.is_empty() {
                self.workers.push(self.engine.matchers());
            }
            return 1;
        }
        while self.workers.len() < self.threads {
            self.workers.push(self.engine.matchers());
        }
        self.threads
    }

    /// Puts how far a batch's source has been read (a file checkpoint, a finished file's
    /// removal, a journal cursor with the audit note of a gap) into the step's commit, so
    /// the position is stored with the effects of the lines before it.
    fn record_progress(
        &mut self,
        progress: Option<Progress>,
        commit: &mut store::Batch,
    ) -> Result<(), StoreError> {
        match progress {
            Some(Progress::At(c)) => commit.put(Space::Checkpoints, c.store_key().as_bytes(), &c),
            Some(Progress::Done(id)) => {
                commit.remove(Space::Checkpoints, checkpoint_key(id).as_bytes());
                Ok(())
            }
            Some(Progress::Journal { position, gap }) => {
                if let Some(gap) = gap {
                    self.desk.note(Entry::new(
                        AuditEvent::SourceJournalGap,
                        DAEMON,
                        None,
                        serde_json::json!({"source": position.source, "gap": gap}),
                    ));
                }
                commit.put(Space::JournalCursors, position.source.as_bytes(), &position)
            }
            None => Ok(()),
        }
    }

    /// [`Pipeline::step`], then lets the detector's clock run to `clock` (absence).
    pub async fn step_at(
        &mut self,
        batches: Vec<Batch>,
        clock: Option<DateTime<Utc>>,
    ) -> Result<(), NotStored> {
        self.count_and_launch(batches, clock).await?;
        self.settle().await
    }

    /// Counts the batches' lines (while the previous step's commit, if still in flight,
    /// is made durable), settles that commit, then builds this step's and launches it
    /// ([`Pipeline::launch`]): the pipeline thread never waits on the disk while it has
    /// lines to count.
    async fn count_and_launch(
        &mut self,
        batches: Vec<Batch>,
        clock: Option<DateTime<Utc>>,
    ) -> Result<(), NotStored> {
        let mut events = Vec::new();
        let mut commit = store::Batch::new();
        // A checkpoint or cursor that could not be put in the commit fails it.
        let mut unencoded: Option<StoreError> = None;
        // Matches per rule, added to the counter once per step rather than looked up by
        // label for every match.
        let mut matched: HashMap<String, u64> = HashMap::new();
        let mut count = |hit: &Hit| match matched.get_mut(hit.rule.id()) {
            Some(n) => *n += 1,
            None => {
                matched.insert(hit.rule.id().to_string(), 1);
            }
        };
        let lines_in_step: usize = batches.iter().map(|b| b.lines.len()).sum();
        let threads = self.threads_for(&batches);
        let latest = {
            let Pipeline {
                engine,
                workers,
                formats,
                metrics,
                line_time,
                watermark,
                ..
            } = self;
            evaluate_lines(
                &mut workers[..threads],
                engine,
                formats,
                &batches,
                |line, own| {
                    let time = judge_line_time(metrics, line_time, formats, line, own);
                    *watermark = Some(watermark.map_or(time, |w| w.max(time)));
                    time
                },
                &mut events,
                &mut count,
            )
        };
        for (batch, latest) in batches.into_iter().zip(latest) {
            if let (Some(latest), Some(line)) = (latest, batch.lines.last()) {
                // Once per batch: how far behind its log's clock a source is evaluated.
                let lag = (Utc::now() - latest).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics
                    .source_lag
                    .with_label_values(&[&line.source])
                    .set(lag);
            }
            if let Err(e) = self.record_progress(batch.progress, &mut commit) {
                unencoded.get_or_insert(e);
            }
        }
        for (rule, n) in matched {
            self.metrics
                .rule_matches
                .with_label_values(&[&rule])
                .inc_by(n);
        }
        // What follows reads the store and builds on what the previous commit stored.
        self.settle().await?;
        if let Some(now) = clock {
            self.engine.advance(now, &mut events);
        }
        for (rule, n) in self.engine.detector_mut().take_evictions() {
            self.metrics
                .rule_keys_evicted
                .with_label_values(&[&rule])
                .inc_by(n);
        }
        if let Some(e) = unencoded {
            return self.cannot_build(e);
        }
        let mut notified = match self.build_commit(&events, clock, &mut commit) {
            Ok(wrote) => wrote,
            Err(e) => return self.cannot_build(e),
        };
        let audit = match self.write_effects(&mut commit) {
            Ok(written) => {
                notified |= written.notified;
                written.audit
            }
            Err(e) => return self.cannot_build(e),
        };
        if commit.is_empty() && events.is_empty() && audit.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            lines = lines_in_step,
            records = commit.records(),
            bytes = commit.bytes(),
            events = events.len(),
            "step"
        );
        self.step_lines = next_step_lines(self.step_lines, lines_in_step, commit.records());
        self.launch(commit, audit, events, notified);
        Ok(())
    }
}

/// The first attempt of the commit in flight, once made; never when there is none.
async fn first_attempt(in_flight: &mut Option<InFlight>) -> commit::Attempt {
    match in_flight {
        Some(in_flight) => (&mut in_flight.task)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        None => std::future::pending().await,
    }
}

/// How many lines the step after one of `lines` lines that wrote `records` records may
/// gather, from `limit` now: as many as keep its commit near [`RECORDS_PER_COMMIT`] at
/// the same records per line, at most twice the limit now (a burst that turns from benign
/// to attack-heavy grows a commit at most that much before the limit follows), within
/// [`STEP_LINES`]. A step too small to tell (under the least limit: no queue to drain)
/// leaves it as it is.
fn next_step_lines(limit: usize, lines: usize, records: usize) -> usize {
    if lines < *STEP_LINES.start() {
        return limit;
    }
    let fits = RECORDS_PER_COMMIT.saturating_mul(lines) / records.max(1);
    fits.min(limit.saturating_mul(2))
        .clamp(*STEP_LINES.start(), *STEP_LINES.end())
}

/// The next reload, or never when there is no reload channel (or it closed).
async fn next_reload(reloads: &mut Option<mpsc::Receiver<Reload>>) -> Reload {
    if let Some(rx) = reloads
        && let Some(reload) = rx.recv().await
    {
        return reload;
    }
    *reloads = None;
    std::future::pending().await
}

/// The next lifecycle command, or never when there is no command channel (or it closed).
async fn next_command(commands: &mut Option<mpsc::Receiver<Command>>) -> Command {
    if let Some(rx) = commands
        && let Some(command) = rx.recv().await
    {
        return command;
    }
    *commands = None;
    std::future::pending().await
}

/// The next containment outcome, or never when there is no worker (or it stopped).
async fn next_outcome(
    outcomes: &mut Option<mpsc::UnboundedReceiver<crate::response::containment::Outcome>>,
) -> crate::response::containment::Outcome {
    if let Some(rx) = outcomes
        && let Some(outcome) = rx.recv().await
    {
        return outcome;
    }
    *outcomes = None;
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_while_their_commits_stay_small_and_shrink_at_once_when_they_do_not() {
        let (least, most) = (*STEP_LINES.start(), *STEP_LINES.end());
        // A benign burst (few records a line): the limit doubles a step, up to the most.
        let mut limit = least;
        let mut seen = vec![limit];
        while limit < most {
            limit = next_step_lines(limit, limit, limit / 20);
            seen.push(limit);
        }
        assert_eq!(seen, [2048, 4096, 8192]);
        assert_eq!(next_step_lines(most, most, 0), most, "never above the most");
        // The burst turns into attackers opening incidents (4 records a line): the next
        // step's commit is back near the budget, never below the least lines.
        let shrunk = next_step_lines(most, most, 4 * most);
        assert_eq!(shrunk, RECORDS_PER_COMMIT / 4);
        assert!(shrunk * 4 <= RECORDS_PER_COMMIT);
        assert_eq!(next_step_lines(most, most, 100 * most), least);
        // An attack-heavy burst (~0.9 records a line) fits the budget at the most lines.
        let mut limit = least;
        for _ in 0..5 {
            limit = next_step_lines(limit, limit, limit * 9 / 10);
        }
        assert_eq!(limit, most);
        // Small steps (no queue) and clock steps tell nothing: the limit stays.
        assert_eq!(next_step_lines(4096, 10, 40), 4096);
        assert_eq!(next_step_lines(4096, 0, 3), 4096);
    }
}
