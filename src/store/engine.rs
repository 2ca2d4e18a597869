//! The storage engine under the store: ordered bytes to bytes, atomic multi-key writes,
//! durability on request. [`super::Store`] owns the layout on top of it; the engine knows
//! nothing of tables, so it can be swapped (sled today, [`super::memory`] for tools and
//! tests; redb or fjall would implement the same five calls).

use super::StoreError;

/// One key and value, undecoded.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A write: a value to put, or `None` to remove the key.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// Ordered key-value storage with atomic batches.
pub trait Engine: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies every write, in order, atomically: after a crash all of them are there
    /// or none (once made durable by [`Engine::flush`]).
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// Pairs with `from <= key`, and `key < to` when given, in key order.
    fn range<'a>(
        &'a self,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = Result<Pair, StoreError>> + 'a>;

    /// The last pair whose key starts with `prefix`.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Pair>, StoreError>;

    /// Makes every applied write durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Whether the engine holds applied writes that [`Engine::flush`] would now move to
    /// their final place (a writer calls flush then even without a commit, so the move, and
    /// a failure of it, does not wait for the next commit).
    fn checkpoint_due(&self) -> bool {
        false
    }

    /// Whether the engine holds nothing.
    fn is_empty(&self) -> Result<bool, StoreError>;

    /// Closes and opens the engine again (after an I/O error); what was applied but not
    /// flushed may be gone afterwards.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A number above every id the engine itself may have handed out before (stores of
    /// format 1 took ids from sled), 0 when it never did.
    fn ids_above(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
