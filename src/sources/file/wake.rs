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
        let (wake_tx, woken) = sync_channel(1);
        // A full channel already holds a wake-up: one is as good as many.
        let watches = Wakeups::new(move || {
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
        let mut wake = Wake::new();
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
        // Events still in flight may wake once more; the burst as a whole does not wake
        // once per write.
        let start = Instant::now();
        let mut early = 0;
        while start.elapsed() < Duration::from_millis(500) {
            let before = Instant::now();
            wake.wait(Duration::from_millis(100));
            early += usize::from(before.elapsed() < Duration::from_millis(90));
        }
        assert!(early < 20, "{early} wake-ups after one burst");
    }
}
