//! A task's first readiness, awaited rather than polled: a source sets it once it has looked
//! at its input for the first time, and the daemon waits for every source before it tells
//! systemd it is ready.

use tokio::sync::watch;

/// Set by a task once it is ready; moved into the task.
pub struct Ready(watch::Sender<bool>);

/// Awaited by whoever waits for the task.
pub struct Readiness(watch::Receiver<bool>);

/// A readiness not yet set, and its waiting side.
pub fn ready() -> (Ready, Readiness) {
    let (tx, rx) = watch::channel(false);
    (Ready(tx), Readiness(rx))
}

impl Ready {
    /// The task is ready (setting it again changes nothing).
    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

impl Readiness {
    /// Resolves once the task is ready: `true`; `false` if it ended without ever being
    /// ready (the supervisor reports that end).
    pub async fn wait(mut self) -> bool {
        self.0.wait_for(|r| *r).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_when_set_and_says_so_when_the_task_ended_unready() {
        let (set, wait) = ready();
        let waiting = tokio::spawn(wait.wait());
        std::thread::spawn(move || set.set()).join().unwrap();
        assert!(waiting.await.unwrap());
        let (set, wait) = ready();
        drop(set);
        assert!(!wait.wait().await);
    }
}
