//! Starting the inputs: every source the config names (file tailer, journals, stdin,
//! syslog listeners) built from the daemon's [`Context`], and READY told to systemd once
//! each has taken its first look.
//!
//! It stands apart from the rest of the wiring because it is the one part that changes
//! with every kind of source added, and because readiness (first look, a bound for slow
//! file systems) is a concern of the inputs alone.

use super::{Context, RunError};
use crate::base::health::Health;
use crate::base::ready::{Readiness, ready};
use crate::sources::file::FileTailer;
use crate::sources::syslog::SyslogSource;
use crate::sources::{Checkpoint, JournalPosition, journal, stdin};
use crate::store::Space;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest wait for the sources' first look before telling systemd READY anyway.
const READY_BOUND: Duration = Duration::from_secs(5);

/// Starts every source (file tailer, journals, stdin, syslog listeners); returns the
/// first-look readiness of those that report one.
pub(super) async fn start_sources(ctx: &Context) -> Result<Vec<Readiness>, RunError> {
    let mut readiness = Vec::new();
    let checkpoints: Vec<Checkpoint> = crate::sources::stored_checkpoints(&ctx.store)?;
    let tailer = FileTailer::new(
        &ctx.config.sources,
        checkpoints,
        ctx.lines.clone(),
        ctx.metrics.clone(),
        ctx.stages.sources.listener(),
    )?;
    let (ready, looked) = ready();
    readiness.push(looked);
    ctx.thread("tailer", "tailer", &ctx.stages.sources, move |_stop| {
        tailer.run(ready)
    })?;
    readiness.extend(start_journals(ctx)?);
    for source in &ctx.config.sources {
        if source.paths.iter().any(|p| p.as_os_str() == "-") {
            let (name, max, tx, m) = (
                source.name.clone(),
                source.max_line_bytes,
                ctx.lines.clone(),
                ctx.metrics.clone(),
            );
            // Stdin may end on its own, and a read from it cannot be interrupted: it holds
            // no listener (the pipeline is stopped without waiting for it).
            let guard = ctx.vitals.panic_guard("stdin");
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    let _guard = guard;
                    stdin::read_stdin(&name, max, tx, m)
                })
                .map_err(RunError::Thread)?;
        }
    }
    for source in &ctx.config.sources {
        if let Some(listen) = &source.syslog {
            let syslog = SyslogSource::bind(&source.name, listen, source.max_line_bytes).await?;
            let run = syslog.run(ctx.lines.clone(), ctx.metrics.clone());
            let name = format!("syslog source {}", source.name);
            ctx.spawn(&name, &ctx.stages.sources, |mut stop| async move {
                // Dropping the listener's future ends its connections too.
                tokio::select! {
                    _ = run => {}
                    _ = stop.recv() => {}
                }
            });
        }
    }
    Ok(readiness)
}

/// Starts a thread for each journal source, resuming from its stored position; returns
/// their first-look readiness.
fn start_journals(ctx: &Context) -> Result<Vec<Readiness>, RunError> {
    let mut positions: HashMap<String, JournalPosition> = ctx
        .store
        .scan(Space::JournalCursors)?
        .into_iter()
        .map(|(_, p): (_, JournalPosition)| (p.source.clone(), p))
        .collect();
    let mut readiness = Vec::new();
    for source in &ctx.config.sources {
        let Some(settings) = &source.journal else {
            continue;
        };
        // The reader blocks on journalctl's output: the signal ends its child and cuts its
        // waits short through `control`.
        let control = Arc::new(journal::Control::default());
        let reader = journal::JournalSource::new(
            source,
            settings,
            positions.remove(&source.name),
            ctx.lines.clone(),
            ctx.metrics.clone(),
            ctx.health.clone(),
            control.clone(),
        );
        let mut signal = ctx.stages.sources.notice();
        tokio::spawn(async move {
            signal.recv().await;
            control.stop();
        });
        let (ready, looked) = ready();
        readiness.push(looked);
        let name = format!("journal source {}", source.name);
        ctx.thread("journal", &name, &ctx.stages.sources, move |_stop| {
            reader.run(ready)
        })?;
    }
    Ok(readiness)
}

/// Tells systemd READY once the first look of every source is done, or after a bound so a
/// slow file system cannot hold systemd's start job forever; `/readyz` counts the sources
/// ready only once they all are.
pub(super) async fn announce_ready(health: &Arc<Health>, readiness: Vec<Readiness>) {
    let watched = health.clone();
    let mut all = Box::pin(async move {
        for source in readiness {
            if !source.wait().await {
                // It ended before its first look; the supervisor reports why.
                return;
            }
        }
        watched.sources.store(true, Ordering::Relaxed);
    });
    if tokio::time::timeout(READY_BOUND, &mut all).await.is_err() {
        tokio::spawn(all);
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}
