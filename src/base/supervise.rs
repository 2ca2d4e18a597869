//! Vital tasks: a task the daemon cannot work without (pipeline, tailer, syslog listeners,
//! delivery, rule reload, HTTP) carries a [`Guard`]; when it panics or ends before shutdown
//! was asked for, the guard reports it. The daemon then answers `/readyz` with 503 and the
//! reason, stops feeding the systemd watchdog, shuts down what still runs and exits
//! non-zero, so systemd restarts it — instead of a process that looks healthy and detects
//! nothing.

use crate::base::shutdown::Notice;
use tokio::sync::mpsc;

/// How a vital task failed; its text is what `/readyz` and the exit message say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The task panicked.
    #[error("the {0} task panicked")]
    Panicked(String),
    /// The task ended before shutdown was asked for.
    #[error("the {0} task ended unexpectedly")]
    EndedEarly(String),
}

/// Where guards report; cloned into every vital task.
#[derive(Clone)]
pub struct Vitals {
    failures: mpsc::UnboundedSender<Failure>,
    /// The daemon's shutdown: a task that ends after it ends as planned.
    stopping: Notice,
}

/// Receives the first failure of any vital task.
pub struct Failures(mpsc::UnboundedReceiver<Failure>);

impl Failures {
    /// Waits for a vital task's failure: what failed and how.
    pub async fn next(&mut self) -> Failure {
        match self.0.recv().await {
            Some(why) => why,
            // Every sender is gone only when nothing is guarded any more.
            None => std::future::pending().await,
        }
    }
}

impl Vitals {
    /// A new set of vital tasks and the receiver of their failures; tasks that end once
    /// `stopping` is signalled end as planned.
    pub fn new(stopping: Notice) -> (Vitals, Failures) {
        let (failures, rx) = mpsc::unbounded_channel();
        (Vitals { failures, stopping }, Failures(rx))
    }

    /// A guard for a task that must run until shutdown; move it into the task.
    pub fn guard(&self, task: &str) -> Guard {
        Guard {
            vitals: self.clone(),
            task: task.to_string(),
            may_end: false,
        }
    }

    /// A guard for a task that may finish on its own (stdin at end of input) but must not
    /// panic.
    pub fn panic_guard(&self, task: &str) -> Guard {
        Guard {
            vitals: self.clone(),
            task: task.to_string(),
            may_end: true,
        }
    }
}

/// Reports its task's failure when dropped by a panic, or by an end before shutdown.
pub struct Guard {
    vitals: Vitals,
    task: String,
    may_end: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let task = std::mem::take(&mut self.task);
        let why = if std::thread::panicking() {
            Failure::Panicked(task)
        } else if !self.may_end && !self.vitals.stopping.is_shutdown() {
            Failure::EndedEarly(task)
        } else {
            return;
        };
        let _ = self.vitals.failures.send(why);
    }
}

/// Test-only fault injection: with `LOGWARDEN_TEST_PANIC=TASK:MARKER` in the environment
/// of a debug build, the task named `TASK` panics when it handles text containing
/// `MARKER`. Release builds compile it to nothing; it exists so the suite can prove a
/// panic is never silent.
#[cfg(debug_assertions)]
pub fn test_panic_point(task: &str, text: &[u8]) {
    static SPEC: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let value = std::env::var("LOGWARDEN_TEST_PANIC").ok()?;
        let (task, marker) = value.split_once(':')?;
        Some((task.to_string(), marker.to_string()))
    });
    if let Some((t, marker)) = spec
        && t == task
        && memchr::memmem::find(text, marker.as_bytes()).is_some()
    {
        panic!("LOGWARDEN_TEST_PANIC: injected panic in the {task} task");
    }
}

/// Release builds: no fault injection.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn test_panic_point(_task: &str, _text: &[u8]) {}

/// Test-only fault injection: with `LOGWARDEN_TEST_UNWRITABLE=MARKER` in the environment
/// of a debug build, a decided record whose text contains `MARKER` cannot be written, so
/// the suite can prove such a commit fails whole and loudly. Release builds: never.
#[cfg(debug_assertions)]
pub fn test_unwritable(text: &str) -> bool {
    static MARKER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MARKER
        .get_or_init(|| std::env::var("LOGWARDEN_TEST_UNWRITABLE").ok())
        .as_deref()
        .is_some_and(|m| text.contains(m))
}

/// Release builds: no fault injection.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn test_unwritable(_text: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_reported_a_planned_end_is_not() {
        let daemon = crate::base::shutdown::Shutdown::new();
        let (vitals, mut failures) = Vitals::new(daemon.notice());
        let guard = vitals.guard("worker");
        let _ = tokio::spawn(async move {
            let _guard = guard;
            panic!("boom");
        })
        .await;
        let panicked = failures.next().await;
        assert_eq!(panicked, Failure::Panicked("worker".into()));
        assert_eq!(panicked.to_string(), "the worker task panicked");
        drop(vitals.guard("early"));
        assert_eq!(
            failures.next().await.to_string(),
            "the early task ended unexpectedly"
        );
        drop(vitals.panic_guard("stdin"));
        daemon.signal();
        drop(vitals.guard("late"));
        drop(vitals);
        assert!(failures.0.try_recv().is_err(), "nothing else reported");
    }
}
