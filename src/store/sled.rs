//! The sled engine: one tree in a database in the state directory, reopened after an I/O
//! error (sled's errors are sticky: after one, it refuses every later write).

use super::StoreError;
use super::engine::{Engine, Pair, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

/// Page cache for sled; its default (1 GiB) is far too much for a host agent.
const CACHE_BYTES: u64 = 64 << 20;

/// sled's own periodic flush is off: the store flushes after every commit
/// ([`Engine::flush`]), and the background flush on top (every 500 ms by default) cut
/// sled's log into more, smaller writes and fed its segment cleaning. Measured with
/// `bench/live.sh 3000 60`: the daemon's writes fell from 3.9× to 1.8× the log's bytes.
const BACKGROUND_FLUSH: Option<u64> = None;

/// How long [`SledEngine::reopen`] waits for the old database's file lock to be let go
/// (sled's flusher thread and any operation still in flight hold it a moment after it is
/// dropped).
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// sled, with everything in one tree so any set of records commits as one batch.
pub struct SledEngine {
    dir: PathBuf,
    /// `None` only while the database is being reopened.
    open: RwLock<Option<Handles>>,
}

/// The open database and its one tree.
#[derive(Clone)]
struct Handles {
    db: sled::Db,
    tree: sled::Tree,
}

impl Handles {
    fn open(dir: &Path) -> Result<Handles, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(BACKGROUND_FLUSH)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(dir.display().to_string())
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Sled(other),
            })?;
        let tree = db.open_tree("logwarden")?;
        Ok(Handles { db, tree })
    }
}

impl SledEngine {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(SledEngine {
            dir: dir.to_path_buf(),
            open: RwLock::new(Some(Handles::open(dir)?)),
        })
    }

    /// The open database (cheap clones of sled's handles, so no lock is held while sled
    /// works).
    fn handles(&self) -> Result<Handles, StoreError> {
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.handles()?.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.handles()?.tree.apply_batch(batch)?;
        Ok(())
    }

    fn range<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<Pair, StoreError>> + 'a> {
        let tree = match self.handles() {
            Ok(h) => h.tree,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let iter = match to {
            Some(to) => tree.range(from.to_vec()..to.to_vec()),
            None => tree.range(from.to_vec()..),
        };
        Box::new(iter.map(|item| {
            let (k, v) = item?;
            Ok((k.to_vec(), v.to_vec()))
        }))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        match self.handles()?.tree.scan_prefix(prefix).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.handles()?.db.flush()?;
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.handles()?.tree.is_empty())
    }

    fn ids_above(&self) -> Result<u64, StoreError> {
        // sled reserves id ranges durably and skips ahead after a crash.
        Ok(self.handles()?.db.generate_id()? + 1)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.open.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        let handles = loop {
            match Handles::open(&self.dir) {
                Ok(handles) => break handles,
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        *self.open.write().unwrap_or_else(|e| e.into_inner()) = Some(handles);
        Ok(())
    }
}
