//! File-system events as wake-ups: which ones can mean new data, and directory watches that
//! survive directories appearing late.
//!
//! inotify reports what *anyone* does in a watched directory, including what logwarden does
//! itself: listing it, opening a file, closing a file it only read. A reader that treated
//! every event as "look now" would wake itself with its own look, forever (a whole core at
//! idle on a real `/var/log`). So only events that can mean changed data wake anything:
//! creation, writes, a close after writing, removal, renames, attribute changes (a
//! truncation or a `touch`), and a queue overflow, after which nothing can be assumed.

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{Event, EventKind};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often directories that could not be watched yet are tried again.
const WATCH_RETRY: Duration = Duration::from_secs(2);

/// Whether an event can mean that a file's content or a directory's entries changed.
/// Access, open and close-without-write events never do: they are what reading produces.
pub fn means_change(event: &Event) -> bool {
    if event.need_rescan() {
        // The kernel dropped events: anything may have happened.
        return true;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Other => true,
    }
}

/// Whether a watcher callback's result should wake its reader: a change, or an error from
/// the watcher (after which only a look at the file system can tell what happened).
pub fn wakes(result: &notify::Result<Event>) -> bool {
    result.as_ref().map_or(true, means_change)
}

/// Directory watches whose change events wake a reader early. Directories that cannot be
/// watched (not there yet, inotify limits) are retried now and then; the reader's own
/// periodic look covers them meanwhile.
pub struct Wakeups {
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    warned: HashSet<PathBuf>,
    last_try: Option<Instant>,
}

impl Wakeups {
    /// A watcher that calls `wake` for every event that [`wakes`]; `None` inside when the
    /// platform cannot watch (the reader then polls only).
    pub fn new(wake: impl Fn() + Send + 'static) -> Self {
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if wakes(&event) {
                wake();
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "file watching unavailable; polling only"))
        .ok();
        Wakeups {
            watcher,
            watched: HashSet::new(),
            warned: HashSet::new(),
            last_try: None,
        }
    }

    /// Whether events can arrive at all.
    pub fn is_active(&self) -> bool {
        self.watcher.is_some()
    }

    /// Watches every directory of `dirs` not watched yet (at most every [`WATCH_RETRY`]).
    pub fn watch(&mut self, dirs: &[PathBuf]) {
        use notify::{RecursiveMode, Watcher};
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        if self.last_try.is_some_and(|t| t.elapsed() < WATCH_RETRY) {
            return;
        }
        self.last_try = Some(Instant::now());
        for dir in dirs {
            if self.watched.contains(dir) {
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) => {
                    if self.warned.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory yet; looking at it periodically");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind, RenameMode};

    fn event(kind: EventKind) -> Event {
        Event::new(kind)
    }

    #[test]
    fn reading_is_not_a_change_and_writing_is() {
        let reads = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Any),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ];
        for kind in reads {
            assert!(!means_change(&event(kind)), "{kind:?}");
        }
        let changes = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ];
        for kind in changes {
            assert!(means_change(&event(kind)), "{kind:?}");
        }
    }

    #[test]
    fn an_overflow_or_an_error_wakes() {
        let overflow =
            Event::new(EventKind::Access(AccessKind::Open(AccessMode::Any))).set_flag(Flag::Rescan);
        assert!(means_change(&overflow));
        assert!(wakes(&Err(notify::Error::generic("queue"))));
        assert!(!wakes(&Ok(event(EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))))));
    }

    /// A real inotify watch: opening, reading and listing a directory's files wakes
    /// nothing; appending to one does.
    #[test]
    fn own_reads_do_not_wake_and_a_write_does() {
        use std::io::{Read, Write};
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.log");
        std::fs::write(&file, "one\n").unwrap();
        let (tx, rx) = mpsc::channel();
        let mut wakeups = Wakeups::new(move || {
            let _ = tx.send(());
        });
        if !wakeups.is_active() {
            eprintln!("SKIP: inotify is not available here");
            return;
        }
        wakeups.watch(&[dir.path().to_path_buf()]);
        for _ in 0..20 {
            let mut text = String::new();
            std::fs::File::open(&file)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            let _ = std::fs::read_dir(dir.path()).unwrap().count();
            let _ = std::fs::metadata(&file).unwrap();
        }
        // The watcher thread has seen the reads once a write made after them arrives: any
        // wake-up before the write's would have come from a read.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"two\n").unwrap();
        drop(f);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a write wakes the reader");
        // The append produced a modify and a close-after-write: at most those two.
        let mut extra = 0;
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            extra += 1;
        }
        assert!(extra <= 2, "{extra} more wake-ups after one append");
    }
}
