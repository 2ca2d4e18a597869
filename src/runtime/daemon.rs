//! `logwarden run`: wires sources (files, stdin, syslog, journal), pipeline, notifier and
//! HTTP together and shuts them down in order on SIGTERM/SIGINT.

mod inputs;

use crate::api::{self, AppState};
use crate::audit::anchor::Anchor;
use crate::audit::{AuditEvent, AuditLog, Entry};
use crate::base::health::Health;
use crate::base::shutdown::{Listener, Shutdown};
use crate::base::supervise::{Failure, Failures, Vitals};
use crate::config::Config;
use crate::detection::Detector;
use crate::lifecycle::{Command, DAEMON, Desk};
use crate::metrics::Metrics;
use crate::notification::{Outbox, deliver};
use crate::rules::{RuleContext, RuleSet};
use crate::runtime::reload::Reloader;
use crate::sources::{Batch, SourceError};
use crate::store::{Store, StoreError};
use crate::writer::pipeline::{self, NotStored, Pipeline};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

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
    Invalid(Vec<crate::base::diag::Diagnostic>),
    /// A tokio runtime could not be built (exit 2, as every variant below).
    #[error("cannot start runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A signal handler (`signals` for SIGTERM/SIGINT, or `SIGHUP`) could not be installed.
    #[error("cannot handle {signal}: {source}")]
    Signals {
        signal: &'static str,
        source: std::io::Error,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error(transparent)]
    Thread(std::io::Error),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A source could not start (paths, bind).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A component refused its settings (it states its reason as text).
    #[error("{reason}")]
    Component {
        /// Which component: outbox, delivery, audit anchor, containment lists.
        component: &'static str,
        reason: String,
    },
    /// The pipeline stopped holding changes it could not store.
    #[error(transparent)]
    NotStored(#[from] NotStored),
    /// A vital task failed; the daemon stopped.
    #[error("stopped because {0}")]
    Failed(#[source] Failure),
}

impl RunError {
    /// A component's own textual reason, named.
    fn component<E: std::fmt::Display>(component: &'static str) -> impl FnOnce(E) -> RunError {
        move |reason| RunError::Component {
            component,
            reason: reason.to_string(),
        }
    }
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
        .map_err(RunError::Runtime)
}

/// Runs the daemon until a termination signal.
pub fn run(config_path: &Path) -> Result<(), RunError> {
    let config = Config::load(config_path).map_err(RunError::Invalid)?;
    let rules =
        Arc::new(RuleSet::load(&config.rules, &rule_context(&config)).map_err(RunError::Invalid)?);
    let store = Store::open(&config.state_dir)?;
    let runtime = new_runtime("logwarden", 2)?;
    // Delivery writes to the store (outbox and audit) after every attempt; its own thread
    // keeps that blocking work off the workers that answer /healthz, /metrics and the API,
    // which must answer promptly while thousands of notifications go out.
    let delivery = new_runtime("delivery", 1)?;
    // Containment actions run apart too: a hung firewall command never holds up the API.
    let actions = new_runtime("actions", 1)?;
    let runtimes = Runtimes {
        delivery: delivery.handle().clone(),
        actions: actions.handle().clone(),
    };
    let result = runtime.block_on(serve(config, rules, store, runtimes));
    delivery.shutdown_timeout(NOTIFY_DRAIN);
    actions.shutdown_timeout(NOTIFY_DRAIN);
    result
}

/// The runtimes kept apart from the one serving the API.
struct Runtimes {
    delivery: tokio::runtime::Handle,
    actions: tokio::runtime::Handle,
}

/// The daemon's groups of tasks, stopped one after the other in the order data flows: what
/// each group still holds has somewhere to go when it stops.
struct Stages {
    /// Signalled on SIGTERM/SIGINT or a vital task's failure: the supervisor takes later
    /// ends as planned, the pipeline gives up store retries, and the rule reload, audit
    /// anchor clock and refusal recorder stop.
    stopping: Shutdown,
    /// The readers of files, journals and syslog: stopped once `/readyz` has shown why.
    sources: Shutdown,
    /// Stopped once the sources have ended; it stores everything queued first.
    pipeline: Shutdown,
    /// Stopped once the pipeline stored its last changes and a head was signed.
    delivery: Shutdown,
    /// Stopped last: `/readyz` answers 503 with the reason until then.
    http: Shutdown,
}

/// What every component of the daemon is built from, the same way for each: the config,
/// the store, metrics and health, the supervisor, the stage it stops with, and (for
/// sources) where their lines go.
struct Context {
    config: Config,
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The hash-chained audit log every component records to.
    audit: AuditLog,
    /// The durable outbox the pipeline writes notifications to and delivery sends from.
    outbox: Outbox,
    vitals: Vitals,
    stages: Stages,
    /// The sources' output: the pipeline's queue.
    lines: mpsc::Sender<Batch>,
}

impl Context {
    /// The shared services every component is built from, and the stages it stops with;
    /// also the supervisor's failures and the pipeline's end of the sources' queue.
    fn new(
        config: Config,
        rules: &RuleSet,
        store: Store,
    ) -> Result<(Context, Failures, mpsc::Receiver<Batch>), RunError> {
        let stages = Stages {
            stopping: Shutdown::new(),
            sources: Shutdown::new(),
            pipeline: Shutdown::new(),
            delivery: Shutdown::new(),
            http: Shutdown::new(),
        };
        let metrics = Arc::new(Metrics::new());
        metrics.preset(&config, rules);
        metrics.rules_loaded.set(rules.rules.len() as i64);
        let health = Arc::new(Health::default());
        health.rules.store(true, Ordering::Relaxed);
        health.store.store(true, Ordering::Relaxed);
        let (vitals, failures) = Vitals::new(stages.stopping.notice());
        tracing::info!(rules = rules.rules.len(), files = rules.files.len(), version = %rules.version, "rules loaded");
        for w in &rules.warnings {
            tracing::warn!("warning: {w}");
        }
        let audit = AuditLog::open(&store)?;
        let assigned = crate::incidents::assign_missing_uids(&store, &config.host)?;
        if assigned > 0 {
            tracing::info!(incidents = assigned, host = %config.host, "stored incidents given fleet-unique uids");
        }
        let outbox = Outbox::new(store.clone(), &config)
            .map_err(RunError::component("outbox"))?
            .with_audit(audit.clone());
        let (lines, batches) = mpsc::channel(SOURCE_QUEUE);
        let ctx = Context {
            config,
            store,
            metrics,
            health,
            audit,
            outbox,
            vitals,
            stages,
            lines,
        };
        Ok((ctx, failures, batches))
    }

    /// Spawns a vital task of `stage` on the current runtime: `task` gets the stage's
    /// listener and must return when it is signalled.
    fn spawn<F>(&self, name: &str, stage: &Shutdown, task: impl FnOnce(Listener) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let guard = self.vitals.guard(name);
        let run = task(stage.listener());
        tokio::spawn(async move {
            let _guard = guard;
            run.await
        });
    }

    /// Starts the vital blocking thread `thread` (named `task` in failure reports) of
    /// `stage`; `body` gets the stage's listener (a blocking loop checks
    /// [`Listener::is_shutdown`]).
    fn thread<R: Send + 'static>(
        &self,
        thread: &str,
        task: &str,
        stage: &Shutdown,
        body: impl FnOnce(Listener) -> R + Send + 'static,
    ) -> Result<std::thread::JoinHandle<R>, RunError> {
        let guard = self.vitals.guard(task);
        let stop = stage.listener();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                let _guard = guard;
                body(stop)
            })
            .map_err(RunError::Thread)
    }
}

/// Starts everything, runs until SIGTERM/SIGINT or a vital task's failure, then stops.
async fn serve(
    config: Config,
    rules: Arc<RuleSet>,
    store: Store,
    runtimes: Runtimes,
) -> Result<(), RunError> {
    // Handlers first: a SIGTERM during start-up must still shut down cleanly.
    let termination = Termination::install().map_err(|source| RunError::Signals {
        signal: "signals",
        source,
    })?;
    let (running, mut failures) = Running::start(config, rules, store, runtimes).await?;
    let failure = tokio::select! {
        _ = termination.wait() => None,
        why = failures.next() => Some(why),
    };
    running.stop(failure).await
}

/// The daemon once started: what its shutdown drains, flushes and signs.
struct Running {
    ctx: Context,
    pipeline: PipelineThread,
    anchor: Option<Arc<Anchor>>,
    /// The API's state, whose refusals of the last minute are recorded at shutdown.
    api: Arc<AppState>,
}

impl Running {
    /// Builds every component from one [`Context`] and starts it; READY is told to systemd
    /// before this returns.
    async fn start(
        config: Config,
        rules: Arc<RuleSet>,
        store: Store,
        runtimes: Runtimes,
    ) -> Result<(Running, Failures), RunError> {
        // Before anything can take long: SIGHUP's default action would end the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|source| RunError::Signals {
                signal: "SIGHUP",
                source,
            })?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|source| RunError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
        let (ctx, failures, batches) = Context::new(config, &rules, store)?;
        let anchor = start_anchor(&ctx)?;
        {
            let _on = runtimes.delivery.enter();
            deliver::spawn(
                ctx.outbox.clone(),
                &ctx.config,
                ctx.metrics.clone(),
                NOTIFY_DRAIN,
                &ctx.vitals,
                &ctx.stages.delivery,
            )
            .map_err(RunError::component("delivery"))?;
        }
        let api_rules = Arc::new(RwLock::new(rules.clone()));
        let (commands, pipeline) =
            start_pipeline(&ctx, &rules, &runtimes, batches, hangup, &api_rules)?;
        let readiness = inputs::start_sources(&ctx).await?;
        let api = Arc::new(AppState {
            store: ctx.store.clone(),
            metrics: ctx.metrics.clone(),
            health: ctx.health.clone(),
            rules: api_rules,
            tokens: api::load_tokens(&ctx.config.api.tokens),
            outbox: ctx.outbox.clone(),
            commands,
            audit: ctx.audit.clone(),
            refusals: Default::default(),
            anchor: anchor.clone(),
            slas: ctx.config.slas.clone(),
        });
        start_clocks(&ctx, &api, &anchor);
        let (router, limits) = (api::router(api.clone()), ctx.config.http);
        ctx.spawn("HTTP server", &ctx.stages.http, |stop| {
            crate::api::http::serve(listener, router, limits, stop)
        });
        tracing::info!(listen = %ctx.config.listen, "logwarden running");
        inputs::announce_ready(&ctx.health, readiness).await;
        let running = Running {
            ctx,
            pipeline,
            anchor,
            api,
        };
        Ok((running, failures))
    }

    /// Stops the stages in the order data flows: the sources end, the pipeline stores
    /// everything queued, a head is signed, deliveries in flight get their drain time, the
    /// HTTP server closes, the last head covers everything and the store is flushed.
    async fn stop(self, failure: Option<Failure>) -> Result<(), RunError> {
        let Running {
            ctx,
            pipeline,
            anchor,
            api,
        } = self;
        // The supervisor takes ends as planned from now on; a pipeline stuck retrying a
        // failing store (a full disk) gives up now, so the sources it blocks can end and the
        // daemon stops within its stop timeout.
        ctx.stages.stopping.signal();
        match &failure {
            None => {
                tracing::info!("shutting down");
                ctx.health.set_down("shutting down");
            }
            Some(why) => {
                tracing::error!(reason = %why, "cannot go on; shutting down");
                ctx.health.set_down(&why.to_string());
                // A health check polling /readyz sees the reason before the port closes.
                tokio::time::sleep(FAILURE_LINGER).await;
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let Context {
            store,
            stages,
            lines,
            ..
        } = ctx;
        drop(lines);
        stages.stopping.complete().await;
        // The tailer finishes its current round; the pipeline then stores everything
        // queued. `/readyz` keeps answering 503 with the reason meanwhile.
        stages.sources.complete().await;
        stages.pipeline.complete().await;
        let not_stored = match tokio::task::spawn_blocking(move || pipeline.join()).await {
            Ok(Ok(Err(e))) => Some(e),
            _ => None,
        };
        // Once the pipeline has stored its last changes: a head the receivers still get
        // while the delivery lanes drain.
        publish_head(&anchor).await;
        stages
            .delivery
            .complete_within(NOTIFY_DRAIN + Duration::from_millis(500))
            .await;
        stages.http.complete_within(Duration::from_secs(1)).await;
        // The refusals of the last minute are recorded, not lost with the process.
        let last = api
            .refusals
            .due(chrono::Utc::now() + chrono::Duration::minutes(1));
        if !last.is_empty() {
            api.audit.record(&last);
        }
        // The last head covers everything recorded, deliveries and refusals too: the head
        // file and the store have it now, receivers on the next start (the lanes have
        // stopped).
        publish_head(&anchor).await;
        let flushed = store.flush().await;
        if let Some(e) = not_stored {
            tracing::error!(error = %e, "stopped with changes that could not be stored");
            return Err(e.into());
        }
        flushed?;
        match failure {
            None => {
                tracing::info!("stopped");
                Ok(())
            }
            Some(why) => Err(RunError::Failed(why)),
        }
    }
}

/// The audit anchor, when configured: checked against the last signed head before anything
/// (deliveries, the pipeline) appends to the chain.
fn start_anchor(ctx: &Context) -> Result<Option<Arc<Anchor>>, RunError> {
    let Some(settings) = &ctx.config.audit else {
        return Ok(None);
    };
    let anchor = Anchor::new(
        settings,
        &ctx.store,
        &ctx.audit,
        Arc::new(ctx.outbox.clone()),
        ctx.metrics.audit_head_sequence.clone(),
        ctx.health.clone(),
    )
    .map_err(RunError::component("audit anchor"))?;
    anchor.check_at_start()?;
    Ok(Some(Arc::new(anchor)))
}

/// Signs and publishes a head now, if an anchor is configured.
async fn publish_head(anchor: &Option<Arc<Anchor>>) {
    if let Some(anchor) = anchor
        && let Err(e) = anchor.publish().await
    {
        tracing::error!(error = %e, "no audit chain head signed at shutdown");
    }
}

/// Builds the pipeline (the single writer) with its containment worker and rule reloader,
/// and starts its thread; returns where lifecycle commands go, and the thread.
fn start_pipeline(
    ctx: &Context,
    rules: &Arc<RuleSet>,
    runtimes: &Runtimes,
    batches: mpsc::Receiver<Batch>,
    hangup: tokio::signal::unix::Signal,
    api_rules: &Arc<RwLock<Arc<RuleSet>>>,
) -> Result<(mpsc::Sender<Command>, PipelineThread), RunError> {
    let config = &ctx.config;
    let source_names: Vec<String> = config.sources.iter().map(|s| s.name.clone()).collect();
    let formats: HashMap<_, _> = config
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.time_format()))
        .collect();
    let mut desk = Desk::new(&ctx.store, config, ctx.audit.clone())?;
    desk.containments
        .use_lists(&rules.lists)
        .map_err(RunError::component("containment lists"))?;
    let (outcome_tx, outcome_rx) = mpsc::unbounded_channel();
    let worker = {
        let _on = runtimes.actions.enter();
        crate::response::containment::exec::spawn(config, outcome_tx, ctx.metrics.clone())
    };
    desk.note(Entry::new(
        AuditEvent::RulesLoaded,
        DAEMON,
        None,
        serde_json::json!({"version": rules.version, "rules": rules.rules.len(), "reason": "start"}),
    ));
    let pipeline = Pipeline::new(pipeline::Parts {
        store: ctx.store.clone(),
        detector: Detector::new(rules.clone(), &source_names),
        formats,
        outbox: ctx.outbox.clone(),
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
        heartbeat: heartbeat(&ctx.health),
        desk,
    })?;
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let pipeline = pipeline
        .with_reloads(reload_rx)
        .with_commands(command_rx)
        .with_containment(worker, outcome_rx)
        .with_line_time(config.line_time)
        .with_terminating(ctx.stages.stopping.notice());
    let reloader = Reloader {
        paths: config.rules.clone(),
        ctx: rule_context(config),
        current: rules.clone(),
        pipeline: reload_tx,
        api_rules: api_rules.clone(),
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
        audit: ctx.audit.clone(),
    };
    ctx.spawn("rule reload", &ctx.stages.stopping, |stop| {
        reloader.run(hangup, stop)
    });
    let thread = ctx.thread("pipeline", "pipeline", &ctx.stages.pipeline, move |stop| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("pipeline runtime");
        rt.block_on(pipeline.run(batches, stop))
    })?;
    Ok((command_tx, thread))
}

/// The pipeline thread: its result says whether changes were left unstored.
type PipelineThread = std::thread::JoinHandle<Result<(), NotStored>>;

/// Feeds the systemd watchdog on every pipeline tick while it is enabled; a daemon going
/// down (a vital task failed) stops feeding it at once.
fn heartbeat(health: &Arc<Health>) -> Box<dyn Fn() + Send> {
    if sd_notify::watchdog_enabled().is_none() {
        return Box::new(|| {});
    }
    let watched = health.clone();
    Box::new(move || {
        if watched.down_reason().is_none() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    })
}

/// The periodic tasks of the API state: the audit anchor's clock (when configured) and the
/// recording of refused calls.
fn start_clocks(ctx: &Context, state: &Arc<AppState>, anchor: &Option<Arc<Anchor>>) {
    if let Some(anchor) = anchor {
        let anchor = anchor.clone();
        ctx.spawn("audit anchor", &ctx.stages.stopping, |stop| {
            anchor.run(stop)
        });
    }
    let refusals = state.clone();
    ctx.spawn(
        "refusal recorder",
        &ctx.stages.stopping,
        |mut stop| async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = every.tick() => refusals.record_due_refusals(),
                    _ = stop.recv() => return,
                }
            }
        },
    );
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
