//! Hot reload of the rule files, on SIGHUP or when a rule file changes.
//!
//! A reload loads and validates every file into a whole new rule set before anything
//! changes; only then does the pipeline swap it in, between two batches. A broken file
//! changes nothing: the old rules keep running, every problem is logged as
//! `path:line:col: message`, the failure is counted and `/readyz` names the file until a
//! good reload.

use crate::base::diag::Diagnostic;
use crate::base::health::Health;
use crate::base::shutdown::Listener;
use crate::detection::RuleChange;
use crate::metrics::Metrics;
use crate::rules::{RuleContext, RuleSet};
use crate::writer::pipeline::Reload;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, oneshot};

/// Quiet time after the last file event before reloading: editors write files in steps.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// What reloads rules, and everything a reload updates.
pub struct Reloader {
    /// Configured rule files and directories.
    pub paths: Vec<PathBuf>,
    /// Names rules may refer to.
    pub ctx: RuleContext,
    /// The rules in force: what a reload compares the files with, and what stays when the
    /// files are broken.
    pub current: Arc<RuleSet>,
    /// The pipeline, which swaps rule sets between batches.
    pub pipeline: mpsc::Sender<Reload>,
    /// Rules shown by `GET /api/v1/rules`.
    pub api_rules: Arc<RwLock<Arc<RuleSet>>>,
    /// Gauges and the failure counter.
    pub metrics: Arc<Metrics>,
    /// The readiness flags: a failed reload makes `/readyz` name the broken rule file until a
    /// good load clears it.
    pub health: Arc<Health>,
    /// Where failed reloads are recorded (change-management evidence, CC8.1).
    pub audit: crate::audit::AuditLog,
}

/// What a successful reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The files define exactly the rules in force (a file was touched, read, rewritten
    /// with the same content, or only its comments or formatting changed): nothing swapped,
    /// nothing recorded.
    Unchanged,
    /// The new rules run now.
    Swapped(RuleChange),
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// A rule file is broken; the old rules keep running.
    Invalid(Vec<Diagnostic>),
    /// The pipeline has stopped.
    Stopped,
}

impl Reloader {
    /// Reloads on every SIGHUP and (debounced) rule-file change until `stop` is signalled
    /// (only between reloads, so a reload is never left half done).
    ///
    /// The rule directories are watched from this call on, not from the returned task's
    /// first poll: the daemon reports ready after this call, and a file changed once it is
    /// ready must be seen even if the task has not run yet (on a loaded host it may not
    /// for a while).
    pub fn run(
        mut self,
        mut hangup: Signal,
        mut stop: Listener,
    ) -> impl std::future::Future<Output = ()> + Send {
        let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
        let watcher = watch_rule_paths(&self.paths, wake_tx);
        async move {
            loop {
                let why = tokio::select! {
                    _ = stop.recv() => return,
                    signal = hangup.recv() => match signal {
                        Some(()) => "SIGHUP",
                        None => return,
                    },
                    Some(()) = wake_rx.recv(), if watcher.is_some() => {
                        // Wait until the files have been quiet for a moment.
                        while tokio::time::timeout(DEBOUNCE, wake_rx.recv())
                            .await
                            .is_ok_and(|w| w.is_some())
                        {}
                        "rule file change"
                    }
                };
                if let Err(ReloadError::Stopped) = self.reload(why).await {
                    return;
                }
            }
        }
    }

    /// Loads and validates the rule files once, and swaps them in if they define other rules
    /// than those in force.
    pub async fn reload(&mut self, why: &str) -> Result<Reloaded, ReloadError> {
        let paths = self.paths.clone();
        let ctx = self.ctx.clone();
        let loaded = tokio::task::spawn_blocking(move || RuleSet::load(&paths, &ctx))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        let rules = match loaded {
            Ok(rules) => Arc::new(rules),
            Err(problems) => {
                for p in &problems {
                    tracing::error!("{p}");
                }
                tracing::error!(
                    reason = why,
                    problems = problems.len(),
                    version = %self.current.version,
                    "rule reload failed; the old rules keep running"
                );
                self.metrics.rule_reload_failures.inc();
                self.audit.record(&[crate::audit::Entry::new(
                    crate::audit::AuditEvent::RulesReloadFailed,
                    "logwarden",
                    None,
                    serde_json::json!({
                        "reason": why,
                        "version_kept": self.current.version,
                        "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                )]);
                let more = match problems.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                let first = problems
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                *self.health.rules_problem.lock().expect("health lock") = Some(format!(
                    "rule reload failed, old rules still running: {first}{more}"
                ));
                self.health.rules.store(false, Ordering::Relaxed);
                return Err(ReloadError::Invalid(problems));
            }
        };
        // A good load is also the end of an earlier failed one, changed or not.
        *self.health.rules_problem.lock().expect("health lock") = None;
        self.health.rules.store(true, Ordering::Relaxed);
        if same_rules(&self.current, &rules) {
            tracing::info!(reason = why, version = %rules.version, "rule files unchanged; nothing to reload");
            return Ok(Reloaded::Unchanged);
        }
        let (done, answer) = oneshot::channel();
        self.pipeline
            .send(Reload {
                rules: rules.clone(),
                done,
            })
            .await
            .map_err(|_| ReloadError::Stopped)?;
        let change = answer.await.map_err(|_| ReloadError::Stopped)?;
        for w in &rules.warnings {
            tracing::warn!("warning: {w}");
        }
        tracing::info!(
            reason = why,
            old_version = %change.old_version,
            new_version = %change.new_version,
            added = ?change.added,
            removed = ?change.removed,
            changed = ?change.changed,
            "rules reloaded"
        );
        *self.api_rules.write().expect("rules lock") = rules.clone();
        self.metrics.rules_loaded.set(rules.rules.len() as i64);
        self.current = rules;
        Ok(Reloaded::Swapped(change))
    }
}

/// Whether two rule sets evaluate, route and show the same: the same definitions (the
/// version hashes every normalised rule with the lists it uses), from the same files, with
/// the same lists.
fn same_rules(a: &RuleSet, b: &RuleSet) -> bool {
    a.version == b.version
        && a.files == b.files
        && a.lists == b.lists
        && a.rules
            .iter()
            .map(|r| (r.id(), &r.file))
            .eq(b.rules.iter().map(|r| (r.id(), &r.file)))
}

/// Watches the directories holding the rule files; events only wake the reloader. `None`
/// when watching is impossible (SIGHUP still works).
fn watch_rule_paths(
    paths: &[PathBuf],
    wake: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let targets: Vec<PathBuf> = paths.to_vec();
    let relevant = move |p: &Path| {
        targets
            .iter()
            .any(|t| p == t || p.parent() == Some(t.as_path()))
            && (p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                || targets.iter().any(|t| p == t))
    };
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading a rule file (by `check`, `cat`, or this reloader itself) is no change.
            let wanted = crate::sources::watch::wakes(&event)
                && event.as_ref().map_or(true, |e| {
                    e.need_rescan() || e.paths.iter().any(|p| relevant(p))
                });
            if wanted {
                let _ = wake.try_send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch rule files; reload them with SIGHUP");
                return None;
            }
        };
    for path in paths {
        let dir = if path.is_dir() {
            path.as_path()
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch rule directory; reload with SIGHUP");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::shutdown::Shutdown;
    use crate::store::Store;
    use tokio::signal::unix::{SignalKind, signal};

    const RULE: &str = "rules:\n  - id: keep\n    match: 'KEEP (?P<n>\\d+)'\n    threshold: {count: 3, within: 1m}\n    severity: low\n";

    /// The daemon reports ready once `run` has returned, before the reload task may have
    /// been polled at all (a loaded host); a file broken in that gap must still be noticed.
    #[tokio::test]
    async fn a_file_changed_before_the_reload_task_first_runs_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("test.yaml");
        std::fs::write(&file, RULE).unwrap();
        let ctx = RuleContext::default();
        let paths = vec![dir.path().to_path_buf()];
        let rules = Arc::new(RuleSet::load(&paths, &ctx).unwrap());
        let health = Arc::new(Health::default());
        health.rules.store(true, Ordering::Relaxed);
        let (pipeline, _reloads) = mpsc::channel(1);
        let reloader = Reloader {
            paths,
            ctx,
            current: rules.clone(),
            pipeline,
            api_rules: Arc::new(RwLock::new(rules)),
            metrics: Arc::new(Metrics::new()),
            health: health.clone(),
            audit: crate::audit::AuditLog::open(&Store::memory()).unwrap(),
        };
        let stop = Shutdown::new();
        let task = reloader.run(signal(SignalKind::hangup()).unwrap(), stop.listener());

        std::fs::write(&file, RULE.replace("(?P<n>", "((?P<n>")).unwrap();
        let running = tokio::spawn(task);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while health.rules.load(Ordering::Relaxed) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broken file was never reloaded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let problem = health.rules_problem.lock().unwrap().clone().unwrap();
        assert!(problem.contains("test.yaml:"), "{problem}");
        running.abort();
    }
}
