//! `logwarden run`: wires sources (files, stdin, syslog, journal), pipeline, notifier and
//! HTTP together and shuts them down in order on SIGTERM/SIGINT.

use crate::api::{self, AppState};
use crate::audit::{AuditLog, Entry};
use crate::config::Config;
use crate::detection::Detector;
use crate::health::Health;
use crate::lifecycle::{DAEMON, Desk};
use crate::metrics::Metrics;
use crate::notification::{Outbox, deliver};
use crate::pipeline::Pipeline;
use crate::reload::Reloader;
use crate::rules::{RuleContext, RuleSet};
use crate::sources::file::FileTailer;
use crate::sources::syslog::SyslogSource;
use crate::sources::{Batch, Checkpoint, JournalPosition, journal, stdin};
use crate::store::{Space, Store};
use crate::supervise::Vitals;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Batches queued between sources and the pipeline (backpressure beyond it).
const SOURCE_QUEUE: usize = 64;
/// Lifecycle commands queued for the pipeline (API callers wait beyond it).
const COMMAND_QUEUE: usize = 64;
/// How long `/readyz` keeps answering 503 with the reason after a vital task failed.
const FAILURE_LINGER: Duration = Duration::from_secs(2);
/// Time deliveries in flight get at shutdown (the rest stay in the outbox).
const NOTIFY_DRAIN: Duration = Duration::from_secs(2);

/// Why the daemon could not run; the CLI turns it into an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Config or rules are invalid (exit 1).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<crate::diag::Diagnostic>),
    /// Anything else (exit 2).
    #[error("{0}")]
    Io(String),
}

/// Rule-loading context from a config: the names rules may refer to.
pub fn rule_context(config: &Config) -> RuleContext {
    RuleContext {
        sources: Some(config.sources.iter().map(|s| s.name.clone()).collect()),
        escalation_policies: Some(config.escalation_policies.keys().cloned().collect()),
    }
}

/// A multi-threaded runtime with `threads` workers named `name`.
fn new_runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name(name)
        .build()
        .map_err(|e| RunError::Io(format!("cannot start runtime: {e}")))
}

/// Runs the daemon until a termination signal.
pub fn run(config_path: &Path) -> Result<(), RunError> {
    let config = Config::load(config_path).map_err(RunError::Invalid)?;
    let rules =
        Arc::new(RuleSet::load(&config.rules, &rule_context(&config)).map_err(RunError::Invalid)?);
    let store = Store::open(&config.state_dir).map_err(|e| RunError::Io(e.to_string()))?;
    let runtime = new_runtime("logwarden", 2)?;
    // Delivery writes to the store (outbox and audit) after every attempt; its own thread
    // keeps that blocking work off the workers that answer /healthz, /metrics and the API,
    // which must answer promptly while thousands of notifications go out.
    let delivery = new_runtime("delivery", 1)?;
    // Containment actions run apart too: a hung firewall command never holds up the API.
    let actions = new_runtime("actions", 1)?;
    let result = runtime.block_on(serve(
        config,
        rules,
        store,
        delivery.handle().clone(),
        actions.handle().clone(),
    ));
    delivery.shutdown_timeout(NOTIFY_DRAIN);
    actions.shutdown_timeout(NOTIFY_DRAIN);
    result
}

async fn serve(
    config: Config,
    rules: Arc<RuleSet>,
    store: Store,
    delivery_runtime: tokio::runtime::Handle,
    actions_runtime: tokio::runtime::Handle,
) -> Result<(), RunError> {
    // Handlers first: a SIGTERM during start-up must still shut down cleanly.
    let termination =
        Termination::install().map_err(|e| RunError::Io(format!("cannot handle signals: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    metrics.preset(&config, &rules);
    let health = Arc::new(Health::default());
    let (vitals, mut failures) = Vitals::new();
    metrics.rules_loaded.set(rules.rules.len() as i64);
    health.rules.store(true, Ordering::Relaxed);
    health.store.store(true, Ordering::Relaxed);
    tracing::info!(rules = rules.rules.len(), files = rules.files.len(), version = %rules.version, "rules loaded");
    for w in &rules.warnings {
        tracing::warn!("warning: {w}");
    }

    // Before anything can take long: SIGHUP's default action would end the process.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| RunError::Io(format!("cannot handle SIGHUP: {e}")))?;
    let api_rules = Arc::new(RwLock::new(rules.clone()));

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| RunError::Io(format!("cannot listen on {}: {e}", config.listen)))?;

    let audit = AuditLog::open(&store).map_err(|e| RunError::Io(e.to_string()))?;
    let assigned = crate::incidents::assign_missing_uids(&store, &config.host)
        .map_err(|e| RunError::Io(e.to_string()))?;
    if assigned > 0 {
        tracing::info!(incidents = assigned, host = %config.host, "stored incidents given fleet-unique uids");
    }
    let outbox = Outbox::new(store.clone(), &config)
        .map_err(|e| RunError::Io(e.to_string()))?
        .with_audit(audit.clone());
    // Before anything (deliveries, the pipeline) appends to the chain: does it still reach
    // the last head this daemon signed?
    let anchor = match &config.audit {
        Some(settings) => {
            let anchor = crate::audit::anchor::Anchor::new(
                settings,
                &store,
                &audit,
                &outbox,
                metrics.audit_head_sequence.clone(),
                health.clone(),
            )
            .map_err(RunError::Io)?;
            anchor
                .check_at_start()
                .map_err(|e| RunError::Io(e.to_string()))?;
            Some(Arc::new(anchor))
        }
        None => None,
    };
    let delivery = {
        let _on = delivery_runtime.enter();
        deliver::spawn(
            outbox.clone(),
            &config,
            metrics.clone(),
            NOTIFY_DRAIN,
            &vitals,
        )
        .map_err(|e| RunError::Io(e.to_string()))?
    };

    let (batch_tx, batch_rx) = mpsc::channel(SOURCE_QUEUE);
    let source_names: Vec<String> = config.sources.iter().map(|s| s.name.clone()).collect();
    let formats: HashMap<_, _> = config
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.time_format()))
        .collect();
    let watchdog = sd_notify::watchdog_enabled();
    // A daemon going down (a vital task failed) stops feeding the watchdog at once.
    let watched = health.clone();
    let heartbeat: Box<dyn Fn() + Send> = match watchdog {
        Some(_) => Box::new(move || {
            if watched.down_reason().is_none() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }),
        None => Box::new(|| {}),
    };
    let mut desk =
        Desk::new(&store, &config, audit.clone()).map_err(|e| RunError::Io(e.to_string()))?;
    desk.containments
        .use_lists(&rules.lists)
        .map_err(|e| RunError::Io(e.to_string()))?;
    let (outcome_tx, outcome_rx) = mpsc::unbounded_channel();
    let worker = {
        let _on = actions_runtime.enter();
        crate::containment::exec::spawn(&config, outcome_tx, metrics.clone())
    };
    desk.note(Entry::new(
        "rules.loaded",
        DAEMON,
        None,
        serde_json::json!({"version": rules.version, "rules": rules.rules.len(), "reason": "start"}),
    ));
    let pipeline = Pipeline::new(
        store.clone(),
        Detector::new(rules.clone(), &source_names),
        formats,
        outbox.clone(),
        metrics.clone(),
        health.clone(),
        heartbeat,
        desk,
    )
    .map_err(|e| RunError::Io(e.to_string()))?;
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (terminating, terminating_rx) = watch::channel(false);
    let pipeline = pipeline
        .with_reloads(reload_rx)
        .with_commands(command_rx)
        .with_containment(worker, outcome_rx)
        .with_line_time(config.line_time)
        .with_terminating(terminating_rx);
    let reloader = Reloader {
        paths: config.rules.clone(),
        ctx: rule_context(&config),
        current: rules.clone(),
        pipeline: reload_tx,
        api_rules: api_rules.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        audit: audit.clone(),
    };
    let guard = vitals.guard("rule reload");
    tokio::spawn(async move {
        let _guard = guard;
        reloader.run(hangup).await
    });
    let (stop_pipeline, pipeline_stop_rx) = watch::channel(false);
    let guard = vitals.guard("pipeline");
    let pipeline_thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let _guard = guard;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("pipeline runtime");
            rt.block_on(pipeline.run(batch_rx, pipeline_stop_rx))
        })
        .map_err(|e| RunError::Io(e.to_string()))?;

    let stop_sources = Arc::new(AtomicBool::new(false));
    let checkpoints: Vec<Checkpoint> =
        crate::sources::stored_checkpoints(&store).map_err(|e| RunError::Io(e.to_string()))?;
    let tailer = FileTailer::new(
        &config.sources,
        checkpoints,
        batch_tx.clone(),
        metrics.clone(),
        stop_sources.clone(),
    )
    .map_err(|e| RunError::Io(e.to_string()))?;
    let tailer_ready = Arc::new(AtomicBool::new(false));
    let ready_flag = tailer_ready.clone();
    let guard = vitals.guard("tailer");
    let tailer_thread = std::thread::Builder::new()
        .name("tailer".into())
        .spawn(move || {
            let _guard = guard;
            tailer.run(ready_flag)
        })
        .map_err(|e| RunError::Io(e.to_string()))?;
    let journals = start_journals(&config, &store, &batch_tx, &metrics, &health, &vitals)?;
    let sources_ready = SourcesReady(
        std::iter::once(tailer_ready)
            .chain(journals.iter().map(|j| j.ready.clone()))
            .collect(),
    );
    for source in &config.sources {
        if source.paths.iter().any(|p| p.as_os_str() == "-") {
            let (name, max, tx, m) = (
                source.name.clone(),
                source.max_line_bytes,
                batch_tx.clone(),
                metrics.clone(),
            );
            let guard = vitals.panic_guard("stdin");
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    let _guard = guard;
                    stdin::read_stdin(&name, max, tx, m)
                })
                .map_err(|e| RunError::Io(e.to_string()))?;
        }
    }
    let mut network = tokio::task::JoinSet::new();
    for source in &config.sources {
        if let Some(listen) = &source.syslog {
            let syslog = SyslogSource::bind(&source.name, listen, source.max_line_bytes)
                .await
                .map_err(|e| RunError::Io(e.to_string()))?;
            let guard = vitals.guard(&format!("syslog source {}", source.name));
            let run = syslog.run(batch_tx.clone(), metrics.clone());
            network.spawn(async move {
                let _guard = guard;
                run.await
            });
        }
    }
    drop(batch_tx);

    let state = Arc::new(AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        rules: api_rules,
        tokens: api::load_tokens(&config.api.tokens),
        outbox,
        commands: command_tx,
        audit,
        refusals: Default::default(),
        anchor: anchor.clone(),
        slas: config.slas.clone(),
    });
    if let Some(anchor) = &anchor {
        tokio::spawn(anchor.clone().run());
    }
    let refusals = state.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            refusals.record_due_refusals();
        }
    });
    let (stop_http, stop_http_rx) = watch::channel(false);
    let server = crate::http::serve(
        listener,
        api::router(state.clone()),
        config.http,
        stop_http_rx,
    );
    let guard = vitals.guard("HTTP server");
    let http_task = tokio::spawn(async move {
        let _guard = guard;
        server.await
    });
    tracing::info!(listen = %config.listen, "logwarden running");

    // READY once the first scan of every source is done (or after a bound, so a slow
    // file system cannot hold systemd's start job forever).
    for _ in 0..100 {
        if sources_ready.all() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    health.sources.store(sources_ready.all(), Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let health_for_ready = health.clone();
    tokio::spawn(async move {
        while !sources_ready.all() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        health_for_ready.sources.store(true, Ordering::Relaxed);
    });

    let failure = tokio::select! {
        _ = termination.wait() => None,
        why = failures.next() => Some(why),
    };
    vitals.stopping();
    // A pipeline stuck retrying a failing store (a full disk) gives up now, so the sources
    // it blocks can end and the daemon stops within its stop timeout.
    let _ = terminating.send(true);
    match &failure {
        None => {
            tracing::info!("shutting down");
            health.set_down("shutting down");
        }
        Some(why) => {
            tracing::error!(reason = %why, "cannot go on; shutting down");
            health.set_down(why);
            // A health check polling /readyz sees the reason before the port closes.
            tokio::time::sleep(FAILURE_LINGER).await;
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop_sources.store(true, Ordering::Relaxed);
    network.abort_all();
    // The tailer finishes its current round; the pipeline then stores everything queued.
    // `/readyz` keeps answering 503 with the reason meanwhile.
    let _ = tokio::task::spawn_blocking(move || tailer_thread.join()).await;
    for journal in journals {
        journal.control.stop();
        let _ = tokio::task::spawn_blocking(move || journal.thread.join()).await;
    }
    let _ = stop_pipeline.send(true);
    let not_stored = match tokio::task::spawn_blocking(move || pipeline_thread.join()).await {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    // Once the pipeline has stored its last changes: a head the receivers still get while
    // the delivery lanes drain.
    if let Some(anchor) = &anchor
        && let Err(e) = anchor.publish().await
    {
        tracing::error!(error = %e, "no audit chain head signed at shutdown");
    }
    delivery.stop(NOTIFY_DRAIN).await;
    let _ = stop_http.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), http_task).await;
    // The refusals of the last minute are recorded, not lost with the process.
    let last = state
        .refusals
        .due(chrono::Utc::now() + chrono::Duration::minutes(1));
    if !last.is_empty() {
        state.audit.record(&last);
    }
    // The last head covers everything recorded, deliveries and refusals too: the head
    // file and the store have it now, receivers on the next start (the lanes have stopped).
    if let Some(anchor) = &anchor
        && let Err(e) = anchor.publish().await
    {
        tracing::error!(error = %e, "no audit chain head signed at shutdown");
    }
    let flushed = store.flush().await;
    if let Some(e) = not_stored {
        tracing::error!(error = %e, "stopped with changes that could not be stored");
        return Err(RunError::Io(e.to_string()));
    }
    flushed.map_err(|e| RunError::Io(e.to_string()))?;
    match failure {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(why) => Err(RunError::Io(format!("stopped because {why}"))),
    }
}

/// The first-look flags of every reading thread.
struct SourcesReady(Vec<Arc<AtomicBool>>);

impl SourcesReady {
    fn all(&self) -> bool {
        self.0.iter().all(|r| r.load(Ordering::Relaxed))
    }
}

/// A running journal source: its thread, how to stop it, and whether it has looked yet.
struct RunningJournal {
    thread: std::thread::JoinHandle<()>,
    control: Arc<journal::Control>,
    ready: Arc<AtomicBool>,
}

/// Starts a thread for each journal source, resuming from its stored position.
fn start_journals(
    config: &Config,
    store: &Store,
    tx: &mpsc::Sender<Batch>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    vitals: &Vitals,
) -> Result<Vec<RunningJournal>, RunError> {
    let mut positions: HashMap<String, JournalPosition> = store
        .scan(Space::JournalCursors)
        .map_err(|e| RunError::Io(e.to_string()))?
        .into_iter()
        .map(|(_, p): (_, JournalPosition)| (p.source.clone(), p))
        .collect();
    let mut running = Vec::new();
    for source in &config.sources {
        let Some(settings) = &source.journal else {
            continue;
        };
        let control = Arc::new(journal::Control::default());
        let ready = Arc::new(AtomicBool::new(false));
        let reader = journal::JournalSource::new(
            source,
            settings,
            positions.remove(&source.name),
            tx.clone(),
            metrics.clone(),
            health.clone(),
            control.clone(),
        );
        let flag = ready.clone();
        let guard = vitals.guard(&format!("journal source {}", source.name));
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let _guard = guard;
                reader.run(flag)
            })
            .map_err(|e| RunError::Io(e.to_string()))?;
        running.push(RunningJournal {
            thread,
            control,
            ready,
        });
    }
    Ok(running)
}

/// SIGTERM and SIGINT, listened for from the start.
struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Termination {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
