//! Waiting between two looks at the files: the file system is the source of truth and is
//! looked at every poll interval; a watcher event only cuts the wait short. Events are
//! coalesced, so a burst of writes costs one look, not one per event.

use crate::sources::watch::Wakeups;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::Duration;

/// Directory watches and the wake-ups they deliver to the tailer thread.
pub(super) struct Wake {
    watches: Wakeups,
    woken: Receiver<()>,
}

impl Wake {
    pub(super) fn new() -> Self {
        Self::observed(|| {})
    }

    /// [`Wake::new`], calling `on_event` for every event that wakes (tests count them).
    fn observed(on_event: impl Fn() + Send + 'static) -> Self {
        let (wake_tx, woken) = sync_channel(1);
        // A full channel already holds a wake-up: one is as good as many.
        let watches = Wakeups::new(move || {
            on_event();
            let _ = wake_tx.try_send(());
        });
        Wake { watches, woken }
    }

    /// Watches the directories not watched yet (retried now and then for ones missing).
    pub(super) fn watch(&mut self, dirs: &[PathBuf]) {
        self.watches.watch(dirs);
    }

    /// Returns after `timeout`, or earlier when a watched directory changed; every wake-up
    /// pending by then is consumed. Without a watcher it is a plain sleep.
    pub(super) fn wait(&self, timeout: Duration) {
        match self.woken.recv_timeout(timeout) {
            Ok(()) => while self.woken.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    #[test]
    fn without_a_change_the_wait_lasts_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut wake = Wake::new();
        wake.watch(&[dir.path().to_path_buf()]);
        let start = Instant::now();
        wake.wait(Duration::from_millis(200));
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_write_in_a_watched_directory_cuts_the_wait_short_and_a_burst_is_coalesced() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(AtomicUsize::new(0));
        let seen = events.clone();
        let mut wake = Wake::observed(move || {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        if !wake.watches.is_active() {
            eprintln!("SKIP: no file system watcher on this platform");
            return;
        }
        wake.watch(&[dir.path().to_path_buf()]);
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i}")), "x\n").unwrap();
        }
        let start = Instant::now();
        wake.wait(Duration::from_secs(60));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "woken by the writes"
        );
        // On a loaded host the watcher's thread hands the burst's events over one by one,
        // each as the tailer waits again; what is coalesced is what is pending at once. So
        // let the whole burst be delivered first: until no event came for 300 ms.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_since = (events.load(Ordering::Relaxed), Instant::now());
        while quiet_since.1.elapsed() < Duration::from_millis(300) {
            assert!(Instant::now() < deadline, "the watcher never went quiet");
            std::thread::sleep(Duration::from_millis(20));
            let now = events.load(Ordering::Relaxed);
            if now != quiet_since.0 {
                quiet_since = (now, Instant::now());
            }
        }
        let delivered = events.load(Ordering::Relaxed);
        assert!(delivered >= 3, "a burst of events: {delivered}");
        // However many were delivered, at most one wake-up is left pending.
        let mut early = 0;
        for _ in 0..5 {
            let before = Instant::now();
            wake.wait(Duration::from_millis(100));
            early += usize::from(before.elapsed() < Duration::from_millis(90));
        }
        assert!(
            early <= 1,
            "{early} wake-ups left pending by a burst of {delivered} events"
        );
    }
}
