//! `logwarden run`: wires sources, pipeline, notifier and HTTP together and shuts them down
//! in order on SIGTERM/SIGINT.

use crate::api::{self, AppState, Health};
use crate::config::Config;
use crate::detection::Detector;
use crate::metrics::Metrics;
use crate::notification::{Notifier, Router};
use crate::pipeline::Pipeline;
use crate::reload::Reloader;
use crate::rules::{RuleContext, RuleSet};
use crate::sources::file::FileTailer;
use crate::sources::{Checkpoint, stdin};
use crate::store::{Space, Store};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Batches queued between sources and the pipeline (backpressure beyond it).
const SOURCE_QUEUE: usize = 64;
/// Notifications queued for delivery.
const NOTIFY_QUEUE: usize = 1024;
/// Time deliveries in flight get at shutdown.
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

/// Runs the daemon until a termination signal.
pub fn run(config_path: &Path) -> Result<(), RunError> {
    let config = Config::load(config_path).map_err(RunError::Invalid)?;
    let rules =
        Arc::new(RuleSet::load(&config.rules, &rule_context(&config)).map_err(RunError::Invalid)?);
    let store = Store::open(&config.state_dir).map_err(|e| RunError::Io(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("logwarden")
        .build()
        .map_err(|e| RunError::Io(format!("cannot start runtime: {e}")))?;
    runtime.block_on(serve(config, rules, store))
}

async fn serve(config: Config, rules: Arc<RuleSet>, store: Store) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
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

    let (notify_tx, notify_rx) = mpsc::channel(NOTIFY_QUEUE);
    let notifier = Notifier::new(&config, metrics.clone()).map_err(RunError::Io)?;
    let notifier_task = tokio::spawn(notifier.run(notify_rx, NOTIFY_DRAIN));

    let (batch_tx, batch_rx) = mpsc::channel(SOURCE_QUEUE);
    let source_names: Vec<String> = config.sources.iter().map(|s| s.name.clone()).collect();
    let formats: HashMap<_, _> = config
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.timestamp.clone()))
        .collect();
    let watchdog = sd_notify::watchdog_enabled();
    let heartbeat: Box<dyn Fn() + Send> = match watchdog {
        Some(_) => Box::new(|| {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }),
        None => Box::new(|| {}),
    };
    let pipeline = Pipeline::new(
        store.clone(),
        Detector::new(rules.clone(), &source_names),
        formats,
        Router::new(&config),
        notify_tx,
        metrics.clone(),
        health.clone(),
        heartbeat,
    )
    .map_err(|e| RunError::Io(e.to_string()))?;
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let pipeline = pipeline.with_reloads(reload_rx);
    let reloader = Reloader {
        paths: config.rules.clone(),
        ctx: rule_context(&config),
        current: rules.clone(),
        pipeline: reload_tx,
        api_rules: api_rules.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    tokio::spawn(reloader.run(hangup));
    let (stop_pipeline, pipeline_stop_rx) = watch::channel(false);
    let pipeline_thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("pipeline runtime");
            rt.block_on(pipeline.run(batch_rx, pipeline_stop_rx));
        })
        .map_err(|e| RunError::Io(e.to_string()))?;

    let stop_sources = Arc::new(AtomicBool::new(false));
    let checkpoints: Vec<Checkpoint> = store
        .scan(Space::Checkpoints)
        .map_err(|e| RunError::Io(e.to_string()))?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let tailer = FileTailer::new(
        &config.sources,
        checkpoints,
        batch_tx.clone(),
        metrics.clone(),
        stop_sources.clone(),
    )
    .map_err(RunError::Io)?;
    let (wake_tx, wake_rx) = std::sync::mpsc::channel();
    let _watcher = watch_dirs(&tailer.watch_dirs(), wake_tx);
    let sources_ready = Arc::new(AtomicBool::new(false));
    let ready_flag = sources_ready.clone();
    let tailer_thread = std::thread::Builder::new()
        .name("tailer".into())
        .spawn(move || tailer.run(wake_rx, ready_flag))
        .map_err(|e| RunError::Io(e.to_string()))?;
    for source in &config.sources {
        if source.paths.iter().any(|p| p.as_os_str() == "-") {
            let (name, max, tx, m) = (
                source.name.clone(),
                source.max_line_bytes,
                batch_tx.clone(),
                metrics.clone(),
            );
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || stdin::read_stdin(&name, max, tx, m))
                .map_err(|e| RunError::Io(e.to_string()))?;
        }
    }
    drop(batch_tx);

    let state = Arc::new(AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        rules: api_rules,
        tokens: api::load_tokens(&config.api.tokens),
    });
    let (stop_http, mut stop_http_rx) = watch::channel(false);
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(async move {
        let _ = stop_http_rx.changed().await;
    });
    let http_task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(listen = %config.listen, "logwarden running");

    // READY once the first scan of every source is done (or after a bound, so a slow
    // file system cannot hold systemd's start job forever).
    for _ in 0..100 {
        if sources_ready.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    health
        .sources
        .store(sources_ready.load(Ordering::Relaxed), Ordering::Relaxed);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let health_for_ready = health.clone();
    tokio::spawn(async move {
        while !sources_ready.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        health_for_ready.sources.store(true, Ordering::Relaxed);
    });

    wait_for_termination().await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop_sources.store(true, Ordering::Relaxed);
    let _ = stop_http.send(true);
    // The tailer finishes its current round; the pipeline then stores everything queued.
    let _ = tokio::task::spawn_blocking(move || tailer_thread.join()).await;
    let _ = stop_pipeline.send(true);
    let _ = tokio::task::spawn_blocking(move || pipeline_thread.join()).await;
    let _ = tokio::time::timeout(NOTIFY_DRAIN + Duration::from_millis(500), notifier_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), http_task).await;
    store
        .flush()
        .await
        .map_err(|e| RunError::Io(e.to_string()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Watches the sources' directories; events only wake the tailer early. If watching is not
/// possible (limits, unsupported file system) the tailer still polls.
fn watch_dirs(
    dirs: &[std::path::PathBuf],
    wake: std::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher =
        match notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let _ = wake.send(());
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; polling only");
                return None;
            }
        };
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling it");
        }
    }
    Some(watcher)
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
