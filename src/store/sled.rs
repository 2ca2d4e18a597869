//! The sled engine: one tree in a database in the state directory.

use super::StoreError;
use super::engine::{Engine, Pair, Write};
use std::path::Path;

/// Page cache for sled; its default (1 GiB) is far too much for a host agent.
const CACHE_BYTES: u64 = 64 << 20;

/// sled, with everything in one tree so any set of records commits as one batch.
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledEngine {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
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
        Ok(SledEngine { db, tree })
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn range<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<Pair, StoreError>> + 'a> {
        let iter = match to {
            Some(to) => self.tree.range(from.to_vec()..to.to_vec()),
            None => self.tree.range(from.to_vec()..),
        };
        Box::new(iter.map(|item| {
            let (k, v) = item?;
            Ok((k.to_vec(), v.to_vec()))
        }))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        match self.tree.scan_prefix(prefix).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.tree.is_empty())
    }

    fn ids_above(&self) -> Result<u64, StoreError> {
        // sled reserves id ranges durably and skips ahead after a crash.
        Ok(self.db.generate_id()? + 1)
    }
}
