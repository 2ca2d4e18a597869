//! Stopping a journal source from outside its thread: ending its running journalctl and
//! cutting its waits short.
//!
//! Apart from the source because it is the one piece shared between the source's thread
//! and whoever stops it, and its locking is easier to check alone.

use std::process::Child;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Stops a source's thread: ends its running journalctl and cuts its waits short.
#[derive(Default)]
pub struct Control {
    state: Mutex<ControlState>,
    wake: Condvar,
}

/// Whether stopping was asked, and the child to end when it is.
#[derive(Default)]
struct ControlState {
    stopped: bool,
    child: Option<Child>,
}

impl Control {
    /// Asks the source to stop; its thread returns once the child has ended.
    pub fn stop(&self) {
        let mut state = self.state.lock().expect("journal control");
        state.stopped = true;
        if let Some(child) = state.child.as_mut() {
            let _ = child.kill();
        }
        self.wake.notify_all();
    }

    pub(super) fn stopped(&self) -> bool {
        self.state.lock().expect("journal control").stopped
    }

    /// Hands over the running child so [`Control::stop`] can end it; `false` (child killed)
    /// when stopping already.
    pub(super) fn adopt(&self, mut child: Child) -> bool {
        let mut state = self.state.lock().expect("journal control");
        if state.stopped {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        state.child = Some(child);
        true
    }

    /// Takes back the child once reading has ended, ends it if it still runs (reading can
    /// stop on unreadable output or a closed pipeline), and reaps it.
    pub(super) fn reap(&self) -> Option<std::process::ExitStatus> {
        let child = self.state.lock().expect("journal control").child.take();
        child.and_then(|mut c| match c.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => {
                let _ = c.kill();
                c.wait().ok()
            }
        })
    }

    /// Waits `wait` unless stopped first; `false` when stopped.
    pub(super) fn sleep(&self, wait: Duration) -> bool {
        let state = self.state.lock().expect("journal control");
        let (state, _) = self
            .wake
            .wait_timeout_while(state, wait, |s| !s.stopped)
            .expect("journal control");
        !state.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn stopping_cuts_a_wait_short_and_ends_the_adopted_child() {
        let control = Arc::new(Control::default());
        assert!(control.sleep(Duration::from_millis(1)));
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        assert!(control.adopt(child));
        let stopper = control.clone();
        let waiting = std::thread::spawn(move || {
            let started = Instant::now();
            (stopper.sleep(Duration::from_secs(600)), started.elapsed())
        });
        control.stop();
        let (slept, took) = waiting.join().unwrap();
        assert!(!slept);
        assert!(took < Duration::from_secs(60), "{took:?}");
        assert!(control.stopped());
        let status = control.reap().expect("the child was reaped");
        assert!(!status.success(), "killed, not finished: {status}");
    }

    #[test]
    fn a_child_started_while_stopping_is_ended_at_once() {
        let control = Control::default();
        control.stop();
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        assert!(!control.adopt(child));
        assert!(control.reap().is_none());
    }
}
