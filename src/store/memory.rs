//! An engine in memory: the store's layout and codecs without a disk, for evaluations that
//! must leave no state and for tests.

use super::StoreError;
use super::engine::{Engine, Pair, Write};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// Ordered pairs in a map behind a lock; a batch is applied under one write lock.
#[derive(Default)]
pub struct MemoryEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.read().expect("store lock").get(key).cloned())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut map = self.map.write().expect("store lock");
        for (key, value) in writes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn range<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<Pair, StoreError>> + 'a> {
        // A snapshot of the range: the lock is not held while the caller iterates.
        let map = self.map.read().expect("store lock");
        let pairs: Vec<Pair> = match to {
            Some(to) => map
                .range(from.to_vec()..to.to_vec())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => map
                .range(from.to_vec()..)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        Box::new(pairs.into_iter().map(Ok))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
        let map = self.map.read().expect("store lock");
        let last = match super::engine::prefix_end(prefix) {
            Some(end) => map.range(prefix.to_vec()..end).next_back(),
            None => map.range(prefix.to_vec()..).next_back(),
        };
        Ok(last.map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.map.read().expect("store lock").is_empty())
    }
}
