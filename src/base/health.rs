//! What `/readyz` reports, set by every part of the daemon (pipeline, sources, reload, the
//! audit anchor) and read by the HTTP layer. It sits below all of them so a part reports
//! its state without importing the layer that serves it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports: each part sets its flag when it is up.
#[derive(Default)]
pub struct Health {
    /// Every source has been scanned once.
    pub sources: AtomicBool,
    /// The store is open and the last commit succeeded.
    pub store: AtomicBool,
    /// Rules are loaded; `rules_problem` says why not.
    pub rules: AtomicBool,
    /// The latest rule problem, shown by `/readyz`.
    pub rules_problem: Mutex<Option<String>>,
    /// Why the daemon is going down (a vital task failed, or shutdown was asked for).
    pub down: Mutex<Option<String>>,
    /// Sources that cannot be read right now (a journal without files or permission), by
    /// name, with the reason; `/readyz` names them.
    pub source_problems: Mutex<std::collections::BTreeMap<String, String>>,
    /// The audit chain disagrees with the last head the daemon signed, until an admin
    /// accepts the discrepancy; `/readyz` names it.
    pub audit_problem: Mutex<Option<String>>,
}

impl Health {
    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(why) = self.down_reason() {
            return Some(why);
        }
        if let Some(problem) = self.audit_problem.lock().expect("health lock").clone() {
            return Some(problem);
        }
        if !self.rules.load(Ordering::Relaxed) {
            let problem = self.rules_problem.lock().expect("health lock").clone();
            return Some(problem.unwrap_or_else(|| "rules not loaded".into()));
        }
        if !self.store.load(Ordering::Relaxed) {
            return Some("store not writable".into());
        }
        if !self.sources.load(Ordering::Relaxed) {
            return Some("sources not scanned yet".into());
        }
        let problems = self.source_problems.lock().expect("health lock");
        if !problems.is_empty() {
            let named: Vec<String> = problems
                .iter()
                .map(|(source, reason)| format!("source {source:?} cannot be read: {reason}"))
                .collect();
            return Some(named.join("; "));
        }
        None
    }

    /// Records that a source cannot be read (`Some(reason)`) or can again (`None`).
    pub fn source_problem(&self, source: &str, problem: Option<String>) {
        let mut problems = self.source_problems.lock().expect("health lock");
        match problem {
            Some(reason) => problems.insert(source.to_string(), reason),
            None => problems.remove(source),
        };
    }
}

impl Health {
    /// Marks the daemon as going down, for this reason (the first reason stays).
    pub fn set_down(&self, why: &str) {
        self.down
            .lock()
            .expect("health lock")
            .get_or_insert_with(|| why.to_string());
    }

    /// Why the daemon is going down, if it is.
    pub fn down_reason(&self) -> Option<String> {
        self.down.lock().expect("health lock").clone()
    }
}
