//! One way to stop a group of tasks, async or blocking: the daemon signals, every task sees
//! the signal (at once, if it starts after it), and the daemon awaits the moment the last
//! task of the group has ended — the tokio mini-redis pattern of a broadcast plus a
//! completion channel.
//!
//! A task holds a [`Listener`]: it tells the task to stop and, while the task holds it, keeps
//! [`Shutdown::complete`] waiting. Something that must only *see* the signal without being
//! waited for (the supervisor deciding whether an end was planned, the pipeline giving up
//! store retries early) holds a [`Notice`]. The daemon stops its groups one after the other
//! (sources, then the pipeline, then delivery, then HTTP), one `Shutdown` per group, so the
//! order in which work drains is the order of the data flow.

use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The owner's side of a group of tasks: signals them and awaits their end.
pub struct Shutdown {
    signal: watch::Sender<bool>,
    /// Cloned into every listener; the channel closes once every clone is gone.
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// Sees the signal of a [`Shutdown`] without being waited for.
#[derive(Clone)]
pub struct Notice(watch::Receiver<bool>);

/// A task's side: sees the signal, and keeps [`Shutdown::complete`] waiting until dropped.
#[derive(Clone)]
pub struct Listener {
    notice: Notice,
    _done: mpsc::Sender<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A group with no tasks yet, not signalled.
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Shutdown {
            signal,
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    /// A listener to move into a task of this group.
    pub fn listener(&self) -> Listener {
        Listener {
            notice: self.notice(),
            _done: self
                .done_tx
                .clone()
                .expect("listeners are handed out before the group completes"),
        }
    }

    /// A view of the signal that nothing waits for.
    pub fn notice(&self) -> Notice {
        Notice(self.signal.subscribe())
    }

    /// Tells every task of the group to stop (idempotent).
    pub fn signal(&self) {
        self.signal.send_replace(true);
    }

    /// Whether [`Shutdown::signal`] was called yet (it cannot be taken back).
    pub fn is_signalled(&self) -> bool {
        *self.signal.borrow()
    }

    /// Signals, then waits until every listener has been dropped (every task has ended).
    pub async fn complete(mut self) {
        self.signal();
        self.done_tx = None;
        let _ = self.done_rx.recv().await;
    }

    /// [`Shutdown::complete`] for at most `bound`; `false` when tasks were still running
    /// then (they are left to end on their own, or with the process).
    pub async fn complete_within(self, bound: Duration) -> bool {
        tokio::time::timeout(bound, self.complete()).await.is_ok()
    }
}

impl Drop for Shutdown {
    /// A group whose owner is gone is stopped: no task waits for a signal that cannot come.
    fn drop(&mut self) {
        self.signal();
    }
}

impl Notice {
    /// Whether the group was signalled: a cheap check for blocking loops.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the group is signalled (at once if it already was).
    pub async fn recv(&mut self) {
        // An error means the owner is gone, which stops the group as well.
        let _ = self.0.wait_for(|s| *s).await;
    }
}

impl Listener {
    /// Whether the group was signalled: a cheap check for blocking loops.
    pub fn is_shutdown(&self) -> bool {
        self.notice.is_shutdown()
    }

    /// Resolves once the group is signalled (at once if it already was).
    pub async fn recv(&mut self) {
        self.notice.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn completes_once_every_listener_is_dropped_and_not_before() {
        let group = Shutdown::new();
        let mut running = group.listener();
        let copy = running.clone();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            running.recv().await;
            ended_tx.send("task").unwrap();
        });
        let notice = group.notice();
        let mut completion = Box::pin(group.complete());
        // The task ends on the signal, but the copy still holds the group open.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut completion)
                .await
                .is_err(),
            "completed while a listener was alive"
        );
        assert_eq!(ended_rx.recv().await, Some("task"));
        task.await.unwrap();
        assert!(notice.is_shutdown());
        drop(copy);
        tokio::time::timeout(Duration::from_secs(10), completion)
            .await
            .expect("completes once the last listener is gone");
    }

    #[tokio::test]
    async fn a_listener_taken_after_the_signal_sees_it_at_once() {
        let group = Shutdown::new();
        group.signal();
        let mut late = group.listener();
        assert!(late.is_shutdown());
        tokio::time::timeout(Duration::from_secs(10), late.recv())
            .await
            .expect("recv resolves at once after the signal");
        let mut notice = group.notice();
        tokio::time::timeout(Duration::from_secs(10), notice.recv())
            .await
            .expect("so does a notice's");
        drop(late);
        assert!(group.complete_within(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_blocking_thread_sees_the_signal_and_is_waited_for() {
        let group = Shutdown::new();
        let listener = group.listener();
        let thread = std::thread::spawn(move || {
            while !listener.is_shutdown() {
                std::thread::yield_now();
            }
            // Dropping the listener here is the thread's end as far as the group knows.
        });
        assert!(group.complete_within(Duration::from_secs(10)).await);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_group_without_listeners_completes_and_a_dropped_owner_stops_its_tasks() {
        assert!(
            Shutdown::new()
                .complete_within(Duration::from_secs(10))
                .await
        );
        let group = Shutdown::new();
        let mut orphan = group.listener();
        drop(group);
        assert!(orphan.is_shutdown());
        orphan.recv().await;
    }
}
