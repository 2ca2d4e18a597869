//! The pipeline step: evaluate a batch of lines, store what it caused (incident changes and
//! the notifications they call for) together with the window state, file checkpoints and
//! journal cursors (and the audit record of a journal gap) in one atomic commit, make it
//! durable, then wake the delivery worker. The commit half lives in [`commit`].
//!
//! Because the checkpoint of a batch is stored with the batch's effects, a crash anywhere
//! replays exactly the lines whose effects were not stored: none lost, none counted twice.

use crate::audit::{AuditEvent, Entry};
use crate::detection::in_order::in_order;
use crate::detection::{Detector, Found, Hit, Matchers, RuleChange, decode_window, window_key};
use crate::engine::{Engine, Stamp};
use crate::health::Health;
use crate::incidents::{IncidentBook, IncidentEvent};
use crate::lifecycle::{Command, DAEMON, Desk, Measure, Request};
use crate::metrics::Metrics;
use crate::notification::Outbox;
use crate::rules::RuleSet;
use crate::shutdown::{Listener, Notice};
use crate::sources::line_time::{Judged, LineTimeBounds};
use crate::sources::timestamp::TimestampFormat;
use crate::sources::{Batch, LogLine, Progress, checkpoint_key};
use crate::store::evidence::{EvidenceLog, resolve};
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

mod commit;
use commit::{count_store_writes, drill_label};

/// Most source batches folded into one store commit.
const BATCHES_PER_COMMIT: usize = 64;
/// Most lines folded into one store commit. A commit holds the store's write lock while it
/// applies, and readers (the API) wait for it: under a burst that opens thousands of
/// incidents, smaller commits keep every wait short, at the price of more flushes.
/// 16,384 was measured (docs/performance.md): a fifth less CPU on a benign burst, none on
/// an attack-heavy one, but a worst API answer of 1.3 s (0.1 s here) and 2.5x the memory
/// while 20,000 attackers' incidents opened.
const LINES_PER_COMMIT: usize = 2048;
/// Lines a matching worker takes at a time.
const PIECE_LINES: usize = 1024;
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
    /// The new rules.
    pub rules: Arc<RuleSet>,
    /// Where the change goes once swapped.
    pub done: oneshot::Sender<RuleChange>,
}

/// Everything the pipeline thread owns.
pub struct Pipeline {
    /// Durable state.
    pub store: Store,
    /// Detector, incident book and clock: the same engine `test` and `replay` run.
    pub engine: Engine,
    /// How each source's lines carry time.
    pub formats: HashMap<String, TimestampFormat>,
    /// Where the notifications events call for are written.
    pub outbox: Outbox,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
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
    worker: Option<crate::containment::exec::Worker>,
    /// What the containment worker did, to record.
    outcomes: Option<mpsc::UnboundedReceiver<crate::containment::Outcome>>,
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
    /// Durable state.
    pub store: Store,
    /// The rules' detector, its windows not yet restored.
    pub detector: Detector,
    /// How each source's lines carry time.
    pub formats: HashMap<String, TimestampFormat>,
    /// Where the notifications events call for are written.
    pub outbox: Outbox,
    /// Metrics the pipeline updates.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
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
        worker: crate::containment::exec::Worker,
        outcomes: mpsc::UnboundedReceiver<crate::containment::Outcome>,
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
                    while batches.len() < BATCHES_PER_COMMIT && lines < LINES_PER_COMMIT {
                        match rx.try_recv() {
                            Ok(b) => {
                                lines += b.lines.len();
                                batches.push(b);
                            }
                            Err(_) => break,
                        }
                    }
                    self.step(batches).await?;
                }
                _ = tick.tick() => {
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
                command = next_command(&mut commands) => self.command(command).await?,
                outcome = next_outcome(&mut outcomes) => self.record_outcome(outcome).await?,
            }
        }
        let mut rest = Vec::new();
        while let Ok(b) = rx.try_recv() {
            rest.push(b);
        }
        self.step(rest).await
    }

    /// Evaluates batches and commits their effects with the notifications they call for;
    /// delivery starts only after the commit is durable.
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

    /// [`Pipeline::step`], then lets the detector's clock run to `clock` (absence).
    pub async fn step_at(
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
            match batch.progress {
                Some(Progress::At(c)) => {
                    if let Err(e) = commit.put(Space::Checkpoints, c.store_key().as_bytes(), &c) {
                        unencoded.get_or_insert(e);
                    }
                }
                Some(Progress::Done(id)) => {
                    commit.remove(Space::Checkpoints, checkpoint_key(id).as_bytes())
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
                    if let Err(e) =
                        commit.put(Space::JournalCursors, position.source.as_bytes(), &position)
                    {
                        unencoded.get_or_insert(e);
                    }
                }
                None => {}
            }
        }
        for (rule, n) in matched {
            self.metrics
                .rule_matches
                .with_label_values(&[&rule])
                .inc_by(n);
        }
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
        self.make_durable(commit, audit).await?;
        self.evidence.committed();
        self.hand_over_effects();
        if notified {
            self.outbox.wake();
        }
        self.after_commit(events).await;
        Ok(())
    }

    /// Carries out a lifecycle or silence change: stored with its notifications and audit
    /// record in one batch, flushed, then answered.
    async fn command(&mut self, command: Command) -> Result<(), NotStored> {
        let mut batch = store::Batch::new();
        let mut opened = Vec::new();
        // Only the pipeline knows the rules a silence must be able to match.
        let refused = match &command.request {
            Request::CreateSilence(new) => {
                crate::silences::check_matchers(&new.matchers, self.engine.rules())
                    .err()
                    .map(|e| e.to_string())
            }
            _ => None,
        };
        let result = match command.request {
            _ if refused.is_some() => Err(crate::lifecycle::Refusal::Invalid(
                refused.unwrap_or_default(),
            )),
            Request::Drill { rule } => self.open_drill(&rule, &command.actor, &mut opened),
            request => self.desk.command(
                self.engine.book_mut(),
                &self.store,
                &self.outbox,
                &command.actor,
                request,
                Utc::now(),
            ),
        };
        let built = self.write_changes_and_effects(&mut batch);
        let audit = match built {
            Ok(written) => written.audit,
            Err(e) => {
                let _ = command.reply.send(Err(crate::lifecycle::Refusal::Internal(
                    "the change could not be stored".into(),
                )));
                return self.cannot_build(e);
            }
        };
        if result.is_ok() || !audit.is_empty() {
            if let Err(e) = self.make_durable(batch, audit).await {
                let _ = command.reply.send(Err(crate::lifecycle::Refusal::Internal(
                    "the change could not be stored".into(),
                )));
                return Err(e);
            }
            self.evidence.committed();
        } else {
            self.evidence.abandoned();
        }
        self.hand_over_effects();
        if let Ok(done) = &result {
            self.observe(&done.kpis);
            self.outbox.wake();
            self.update_open_gauge();
        }
        self.after_commit(opened).await;
        let _ = command.reply.send(result.map(|d| d.reply));
        Ok(())
    }

    /// After a start: containments left pending, active or being lifted are resumed (see
    /// [`crate::containment::Book::resume`]).
    async fn resume_containments(&mut self) -> Result<(), NotStored> {
        let mut changed = Vec::new();
        if let Err(e) = self
            .desk
            .containments
            .resume(&self.store, Utc::now(), &mut changed)
        {
            tracing::error!(error = %e, "cannot read containments; they resume at the next start");
            return Ok(());
        }
        let mut effects = crate::lifecycle::effects::Effects::default();
        effects.containments(changed);
        let mut batch = store::Batch::new();
        let audit = match effects.write(&self.store, &self.outbox, &mut batch) {
            Ok(written) => written.audit,
            Err(e) => return self.cannot_build(e),
        };
        self.make_durable(batch, audit).await?;
        self.hand_over_effects();
        Ok(())
    }

    /// Records a containment outcome with its timeline, audit and state change.
    async fn record_outcome(
        &mut self,
        outcome: crate::containment::Outcome,
    ) -> Result<(), NotStored> {
        let mut batch = store::Batch::new();
        let kpis = match self.desk.record_outcome(
            self.engine.book_mut(),
            &self.store,
            &self.outbox,
            &outcome,
        ) {
            Ok(kpis) => kpis,
            Err(e) => return self.cannot_build(e),
        };
        let built = self.write_changes_and_effects(&mut batch);
        let audit = match built {
            Ok(written) => written.audit,
            Err(e) => return self.cannot_build(e),
        };
        self.make_durable(batch, audit).await?;
        self.evidence.committed();
        self.observe(&kpis);
        self.hand_over_effects();
        self.outbox.wake();
        self.update_open_gauge();
        Ok(())
    }

    /// Committed containment effects go to the worker; their counts and the contained
    /// targets to the metrics.
    fn hand_over_effects(&mut self) {
        let effects = self.desk.containments.take_effects();
        if let Some(worker) = &self.worker {
            for effect in effects {
                worker.send(effect);
            }
        }
        let counts = self.desk.containments.take_counts();
        if counts.is_empty() {
            return;
        }
        for (action, outcome) in counts {
            self.metrics
                .actions
                .with_label_values(&[&action, outcome])
                .inc();
        }
        for (action, n) in self.desk.containments.active_per_action() {
            self.metrics
                .contained_targets
                .with_label_values(&[&action])
                .set(n);
        }
    }

    fn observe(&self, kpis: &[crate::lifecycle::Kpi]) {
        for kpi in kpis {
            let histogram = match kpi.measure {
                Measure::Acknowledge => &self.metrics.time_to_acknowledge,
                Measure::Contain => &self.metrics.time_to_contain,
                Measure::Resolve => &self.metrics.time_to_resolve,
            };
            histogram
                .with_label_values(&[kpi.severity.as_str(), drill_label(kpi.drill)])
                .observe(kpi.seconds);
            self.metrics
                .sla_outcome(kpi.severity, kpi.measure.into(), kpi.seconds, kpi.drill);
        }
    }

    /// Opens a drill incident for a rule: a synthetic match that crosses the rule at once,
    /// marked as a drill, then the same path as a detection (escalation, receivers, audit).
    fn open_drill(
        &mut self,
        rule_id: &str,
        actor: &str,
        opened: &mut Vec<IncidentEvent>,
    ) -> Result<crate::lifecycle::Done, crate::lifecycle::Refusal> {
        let rules = self.engine.rules().clone();
        let rule = rules
            .rule(rule_id)
            .ok_or_else(|| crate::lifecycle::Refusal::NotFound(format!("no rule {rule_id}")))?;
        let now = Utc::now();
        let hit = crate::drill::synthetic_hit(rule, actor, now);
        let mut event = self
            .engine
            .book_mut()
            .apply(hit, &rules, now)
            .ok_or_else(|| {
                crate::lifecycle::Refusal::Internal("the drill opened nothing".into())
            })?;
        let incident = self
            .engine
            .book_mut()
            .active_mut(&event.incident.id)
            .ok_or_else(|| {
                crate::lifecycle::Refusal::Internal("the drill incident vanished".into())
            })?;
        crate::drill::mark(incident, actor, now);
        event.incident = incident.clone();
        self.desk.dispatch(
            self.engine.book_mut(),
            std::slice::from_ref(&event),
            &self.outbox,
            now,
        );
        let reply = serde_json::to_value(&event.incident)
            .map_err(|e| crate::lifecycle::Refusal::Internal(e.to_string()))?;
        opened.push(event);
        Ok(crate::lifecycle::Done {
            reply,
            kpis: Vec::new(),
        })
    }
}

/// A line's own time as its source knows it: a journal entry's, else read by its source's
/// timestamp format (on a matching worker: it depends on nothing but the line).
fn own_time(formats: &HashMap<String, TimestampFormat>, line: &LogLine) -> Option<DateTime<Utc>> {
    line.time.or_else(|| {
        formats
            .get(line.source.as_ref())
            .and_then(|f| f.parse(&line.bytes, line.arrival))
    })
}

/// The time a line is evaluated at: its own time (`own`, see [`own_time`]; a line without
/// one counts and takes its arrival), judged against the wall clock: a time too far ahead
/// or behind is counted and replaced by the arrival.
fn judge_line_time(
    metrics: &Metrics,
    bounds: &LineTimeBounds,
    formats: &HashMap<String, TimestampFormat>,
    line: &LogLine,
    own: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let format = formats.get(line.source.as_ref());
    if own.is_none() && format.is_some_and(|f| *f != TimestampFormat::Arrival) {
        metrics
            .lines_without_time
            .with_label_values(&[&line.source])
            .inc();
    }
    let Some(judged) = own.map(|t| bounds.judge(t, line.arrival)) else {
        return line.arrival;
    };
    let distrusted = match judged {
        Judged::Trusted(_) => None,
        Judged::Future(_) => Some(&metrics.lines_future),
        Judged::Ancient(_) => Some(&metrics.lines_ancient),
    };
    if let Some(counter) = distrusted {
        counter.with_label_values(&[&line.source]).inc();
    }
    judged.time()
}

/// Lines of one batch, a piece of a step: a worker copies them into one text, reads their
/// own times and finds their matches; the pipeline thread then counts them in order.
#[derive(Default)]
struct Piece<'a> {
    /// Which batch of the step the lines belong to.
    batch: usize,
    lines: &'a [LogLine],
    text: Vec<u8>,
    ranges: Vec<Range<usize>>,
    own_times: Vec<Option<DateTime<Utc>>>,
    found: Found,
}

impl Piece<'_> {
    /// The worker's part: the lines' own times, then their matches, one literal pass over
    /// each run of lines of one source ([`Matchers::find_run`], as `replay` does).
    fn find(&mut self, matchers: &mut Matchers, formats: &HashMap<String, TimestampFormat>) {
        self.text.clear();
        self.ranges.clear();
        self.own_times.clear();
        self.found.clear();
        for line in self.lines {
            let start = self.text.len();
            self.text.extend_from_slice(&line.bytes);
            self.ranges.push(start..self.text.len());
            self.text.push(b'\n');
            self.own_times.push(own_time(formats, line));
        }
        let mut start = 0;
        while start < self.lines.len() {
            let source = &self.lines[start].source;
            let end = self.lines[start..]
                .iter()
                .position(|l| l.source != *source)
                .map_or(self.lines.len(), |n| start + n);
            matchers.find_run(
                source,
                &self.text,
                &self.ranges[start..end],
                &mut self.found,
            );
            start = end;
        }
    }
}

/// Evaluates every line of `batches` on `engine`, in order: matches are found on `workers`
/// (one thread each; one worker: on this thread) in pieces of [`PIECE_LINES`], and counted
/// here in input order, so the outcome is the same with any number of workers. `judge`
/// gives each line's evaluation time from its own time. Returns each batch's latest time.
fn evaluate_lines(
    workers: &mut [Matchers],
    engine: &mut Engine,
    formats: &HashMap<String, TimestampFormat>,
    batches: &[Batch],
    mut judge: impl FnMut(&LogLine, Option<DateTime<Utc>>) -> DateTime<Utc>,
    events: &mut Vec<IncidentEvent>,
    counted: &mut dyn FnMut(&Hit),
) -> Vec<Option<DateTime<Utc>>> {
    let mut latest = vec![None; batches.len()];
    in_order(
        workers,
        Piece::default,
        |matchers, piece: &mut Piece| piece.find(matchers, formats),
        |piece| {
            for (i, line) in piece.lines.iter().enumerate() {
                crate::supervise::test_panic_point("pipeline", &line.bytes);
                let time = judge(line, piece.own_times[i]);
                let at: &mut Option<DateTime<Utc>> = &mut latest[piece.batch];
                *at = Some(at.map_or(time, |l| l.max(time)));
                engine.observe_found(line, time, piece.found.line(i), events, counted);
            }
        },
        |feed| {
            for (batch, b) in batches.iter().enumerate() {
                for lines in b.lines.chunks(PIECE_LINES) {
                    let mut piece = feed.fresh();
                    piece.batch = batch;
                    piece.lines = lines;
                    feed.send(piece);
                }
            }
        },
    );
    latest
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
    outcomes: &mut Option<mpsc::UnboundedReceiver<crate::containment::Outcome>>,
) -> crate::containment::Outcome {
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
    use crate::engine::Stamp;
    use crate::rules::RuleContext;
    use std::collections::BTreeMap;

    /// An attack-heavy auth log of many sources' batches: failed and invalid logins from a
    /// pool of addresses, accepted ones, sudo failures, noise, lines without a time and
    /// lines dated far ahead.
    fn batches() -> Vec<Batch> {
        let arrival = DateTime::parse_from_rfc3339("2026-11-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut state = 7u64;
        let mut below = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut batches = Vec::new();
        let mut i = 0u64;
        for b in 0..10 {
            let source: Arc<str> = if b % 5 == 4 {
                "other".into()
            } else {
                "auth".into()
            };
            let mut lines = Vec::new();
            for _ in 0..(300 + below(900)) {
                i += 1;
                let sec = 30_000 + i / 10;
                let stamp = format!(
                    "Nov  3 {:02}:{:02}:{:02}",
                    sec / 3600 % 24,
                    sec / 60 % 60,
                    sec % 60
                );
                let ip = format!("203.0.{}.{}", below(4), below(40));
                let user = ["root", "admin", "oracle", "git"][below(4) as usize];
                let text = match below(20) {
                    0..=7 => format!(
                        "{stamp} web1 sshd[{i}]: Failed password for invalid user {user} from {ip} port {} ssh2",
                        30_000 + below(30_000)
                    ),
                    8..=10 => {
                        format!("{stamp} web1 sshd[{i}]: Invalid user {user} from {ip} port 22")
                    }
                    11 => format!(
                        "{stamp} web1 sshd[{i}]: Accepted password for {user} from {ip} port 22 ssh2"
                    ),
                    12 => format!(
                        "{stamp} web1 sudo:    {user} : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh"
                    ),
                    13 => format!("sshd[{i}]: Failed password for root from {ip} port 22 ssh2"),
                    14 => format!(
                        "Dec 24 10:00:00 web1 sshd[{i}]: Failed password for root from {ip} port 22 ssh2"
                    ),
                    _ => format!("{stamp} web1 CRON[{i}]: pam_unix(cron:session): session opened"),
                };
                lines.push(LogLine {
                    source: source.clone(),
                    path: "/var/log/auth.log".into(),
                    offset: i * 100,
                    bytes: text.into_bytes(),
                    arrival,
                    time: None,
                });
            }
            batches.push(Batch {
                lines,
                progress: None,
            });
        }
        batches
    }

    /// What an evaluation made: per incident event its kind, rule, key, count and times,
    /// the matches counted per rule, each batch's latest time and the lines judged.
    type Outcome = (
        Vec<String>,
        BTreeMap<String, u64>,
        Vec<Option<DateTime<Utc>>>,
        Vec<DateTime<Utc>>,
    );

    fn engine() -> Engine {
        static SHIPPED: std::sync::OnceLock<Arc<RuleSet>> = std::sync::OnceLock::new();
        let rules = SHIPPED
            .get_or_init(|| {
                Arc::new(
                    RuleSet::load(&["rules".into()], &RuleContext::default())
                        .unwrap_or_else(|e| panic!("{e:?}")),
                )
            })
            .clone();
        let sources = ["auth".to_string(), "other".to_string()];
        let store = Store::memory();
        let book = IncidentBook::load(&store, "test-host").unwrap();
        Engine::new(Detector::new(rules, &sources), book, Stamp::Match)
    }

    fn formats() -> HashMap<String, TimestampFormat> {
        [
            ("auth".to_string(), TimestampFormat::Syslog),
            ("other".to_string(), TimestampFormat::Syslog),
        ]
        .into_iter()
        .collect()
    }

    fn judge(line: &LogLine, own: Option<DateTime<Utc>>) -> DateTime<Utc> {
        judge_line_time(
            &Metrics::new(),
            &LineTimeBounds::default(),
            &formats(),
            line,
            own,
        )
    }

    fn outcome(
        events: Vec<IncidentEvent>,
        matched: BTreeMap<String, u64>,
        latest: Vec<Option<DateTime<Utc>>>,
        judged: Vec<DateTime<Utc>>,
    ) -> Outcome {
        let events = events
            .iter()
            .map(|e| {
                let i = &e.incident;
                format!(
                    "{:?} {} {:?} {} {} {}",
                    e.kind, i.rule, i.key, i.count, i.first_seen, i.last_seen
                )
            })
            .collect();
        (events, matched, latest, judged)
    }

    /// The daemon's step with `threads` matching workers.
    fn in_pieces(batches: &[Batch], threads: usize) -> Outcome {
        let mut engine = engine();
        let mut workers: Vec<Matchers> = (0..threads).map(|_| engine.matchers()).collect();
        let (mut events, mut matched, mut judged) = (Vec::new(), BTreeMap::new(), Vec::new());
        let latest = evaluate_lines(
            &mut workers,
            &mut engine,
            &formats(),
            batches,
            |line, own| {
                let time = judge(line, own);
                judged.push(time);
                time
            },
            &mut events,
            &mut |hit: &Hit| *matched.entry(hit.rule.id().to_string()).or_default() += 1,
        );
        outcome(events, matched, latest, judged)
    }

    /// The engine line by line, as the daemon evaluated before it matched in pieces.
    fn line_by_line(batches: &[Batch]) -> Outcome {
        let mut engine = engine();
        let (mut events, mut matched, mut judged) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut latest = Vec::new();
        for batch in batches {
            let mut last: Option<DateTime<Utc>> = None;
            for line in &batch.lines {
                let time = judge(line, own_time(&formats(), line));
                judged.push(time);
                last = Some(last.map_or(time, |l| l.max(time)));
                engine.observe(line, time, &mut events, &mut |hit: &Hit| {
                    *matched.entry(hit.rule.id().to_string()).or_default() += 1
                });
            }
            latest.push(last);
        }
        outcome(events, matched, latest, judged)
    }

    #[test]
    fn matching_on_several_workers_counts_exactly_what_one_thread_does() {
        let batches = batches();
        let lines: usize = batches.iter().map(|b| b.lines.len()).sum();
        assert!(lines > 8 * PIECE_LINES, "many pieces: {lines} lines");
        let one = line_by_line(&batches);
        assert!(
            one.0.len() > 50 && one.1.values().sum::<u64>() > 5_000,
            "the log opens incidents and counts matches: {} events, {:?}",
            one.0.len(),
            one.1
        );
        for threads in [1, 3] {
            let found = in_pieces(&batches, threads);
            assert_eq!(found.1, one.1, "matches per rule, {threads} workers");
            assert_eq!(found.2, one.2, "latest time per batch, {threads} workers");
            assert_eq!(found.3, one.3, "line times, {threads} workers");
            assert_eq!(found.0, one.0, "incident events, {threads} workers");
        }
    }
}
