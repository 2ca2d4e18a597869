//! Per-rule key tables with a size bound, evicting the keys least likely to fire first.
//!
//! A flood of spoofed source addresses creates a key per address; without a bound the
//! detector's memory would follow the attacker instead of the live keys. Each rule keeps at
//! most its `max_keys` keys. Plain least-recently-used eviction lets an attacker flush its
//! own key with enough one-time addresses between its attempts, so a full table evicts by
//! [`Progress`] first (keys with a single match before keys closer to their threshold),
//! and among equals the keys touched longest ago.
//!
//! Recency is a touch counter in each entry, not a linked list. The entries live in a
//! vector of places; a hash table of place numbers finds a key's place. A hit hashes its
//! key once and compares it with the one entry of that hash: an existing key costs one
//! probe and no allocation, a new key one more insert with the hash already known. (A map
//! from key to entry cost a lookup, then an insert or a second lookup, each hashing the key
//! again.) Eviction takes a sixteenth of the table at once, found in one pass, so its cost
//! per new key stays constant.
//!
//! States forget what falls out of their windows as event time passes, and a state left
//! empty is dropped. The clock does this every second; with twenty thousand attackers'
//! keys live, a pass over every key per tick was most of the daemon's CPU at rest. So each
//! key is queued by the time its state next has something to forget, and a tick visits
//! only the keys whose time has come. The queue may hold a key earlier than its state
//! needs (a key touched since is looked at, finds nothing to forget and is queued again
//! later), never later: a match that makes the time earlier (a late line) queues the key
//! again at once.
//!
//! The queue holds (time, place) and is only pushed to and popped from: a
//! key moved up or removed leaves its old place behind, and a popped place counts only if
//! the entry now in that place is queued at that time. (An entry queued at that time is
//! due then, whichever key it holds: a place reused by a new key is never visited early.)
//! Queue entries name places, not keys: no key is copied into the queue, and a popped
//! one is found by its number, without hashing. Left-behind places are dropped when they
//! come up, and all at once when they outnumber the keys.
//!
//! Under a flood most keys are seen once and dropped a window later. An entry holds a
//! short key's text inline ([`KeyText`]), so such a key costs no allocation of its own;
//! the key becomes shared [`Fields`] only when someone keeps it (a hit, the store's set of
//! changed keys).

use super::fields::Fields;
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;

/// Longest encoded key an entry holds inline: an IPv4 address under any short name
/// (`2:ip15:255.255.255.255` is 22 bytes), and the entry's key stays 32 bytes.
const KEY_INLINE: usize = 30;

/// Text of at most `N` bytes held in place: what a key or a counted value of a flood
/// holds without an allocation (and without a free when it goes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineText<const N: usize> {
    /// Bytes used of `bytes`.
    len: u8,
    /// The text, valid UTF-8 up to `len`.
    bytes: [u8; N],
}

impl<const N: usize> InlineText<N> {
    /// `text` in place, if it fits.
    pub fn new(text: &str) -> Option<Self> {
        if text.len() > N {
            return None;
        }
        let mut bytes = [0; N];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(InlineText {
            len: u8::try_from(text.len()).ok()?,
            bytes,
        })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("made from a str")
    }

    /// The text's bytes, without checking them again (for comparisons).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A key's encoded text as a table holds it and hands it out: inline when it is short and
/// nobody else holds it, else shared.
#[derive(Clone)]
pub enum KeyText {
    /// Short text, in place (no allocation).
    Inline(InlineText<KEY_INLINE>),
    /// Text shared with hits, incidents or the store's changed keys.
    Shared(Fields),
}

impl KeyText {
    /// The key `key` (encoded [`Fields`]), inline if it fits.
    fn new(key: &str) -> Self {
        InlineText::new(key).map_or_else(
            || KeyText::Shared(Fields::from_encoded(key)),
            KeyText::Inline,
        )
    }

    /// The encoded text.
    pub fn as_str(&self) -> &str {
        match self {
            KeyText::Inline(text) => text.as_str(),
            KeyText::Shared(f) => std::borrow::Borrow::borrow(f),
        }
    }

    /// The encoded text's bytes, without checking them again (for comparisons).
    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyText::Inline(text) => text.as_bytes(),
            KeyText::Shared(f) => {
                let text: &str = std::borrow::Borrow::borrow(f);
                text.as_bytes()
            }
        }
    }

    /// The key as [`Fields`], held shared from now on: a key handed out once is likely
    /// handed out again (every later match of a key with an open incident is a hit).
    pub fn share(&mut self) -> Fields {
        if let KeyText::Inline(_) = self {
            *self = KeyText::Shared(Fields::from_encoded(self.as_str()));
        }
        match self {
            KeyText::Shared(f) => f.clone(),
            KeyText::Inline(_) => unreachable!("shared above"),
        }
    }

    /// The key as [`Fields`] (copied out if held inline).
    pub fn into_fields(self) -> Fields {
        match self {
            KeyText::Shared(f) => f,
            KeyText::Inline(text) => Fields::from_encoded(text.as_str()),
        }
    }
}

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::fields::FieldsView::new(self.as_str()).fmt(f)
    }
}

/// A key handed out by the table equals the [`Fields`] of the same text.
impl PartialEq<Fields> for KeyText {
    fn eq(&self, other: &Fields) -> bool {
        let text: &str = std::borrow::Borrow::borrow(other);
        self.as_bytes() == text.as_bytes()
    }
}

/// Keys evicted together when a full table needs room: this fraction of `max_keys` (at
/// least one), so a flood pays one pass over the table per that many new keys.
const EVICT_FRACTION: usize = 16;

/// How close a key's state is to firing (matches held); the lowest is evicted first.
pub trait Progress {
    /// Matches the state holds towards its condition.
    fn progress(&self) -> usize;
}

/// The `queued` time of a key that is not in the expiry queue.
const NOT_QUEUED: i64 = i64::MAX;

/// Places by the time their entry is due for expiry, earliest first; places left behind
/// by keys moved up or removed included (see the module doc).
///
/// Two parts: a run in time order, which takes every place due no earlier than the last
/// one it took, and a heap for the others. A new key is due a window after its line, and
/// lines come in time order, so nearly every place joins the run at its end and leaves it
/// at its front, in order, without the heap's sifting through scattered memory; late
/// lines, states that fired (due at once) and keys queued again by the tick go to the
/// heap. Popping takes the earlier of the two fronts.
#[derive(Debug, Default)]
struct Expiries {
    run: VecDeque<Due>,
    rest: BinaryHeap<Reverse<Due>>,
}

impl Expiries {
    fn push(&mut self, due: Due) {
        if self.run.back().is_none_or(|last| due.at >= last.at) {
            self.run.push_back(due);
        } else {
            self.rest.push(Reverse(due));
        }
    }

    /// Whether the next place comes from the heap rather than the run.
    fn next_from_rest(&self) -> bool {
        match (self.run.front(), self.rest.peek()) {
            (Some(run), Some(Reverse(rest))) => rest.at < run.at,
            (None, rest) => rest.is_some(),
            (Some(_), None) => false,
        }
    }

    fn peek(&self) -> Option<Due> {
        if self.next_from_rest() {
            self.rest.peek().map(|Reverse(due)| *due)
        } else {
            self.run.front().copied()
        }
    }

    fn pop(&mut self) -> Option<Due> {
        if self.next_from_rest() {
            self.rest.pop().map(|Reverse(due)| due)
        } else {
            self.run.pop_front()
        }
    }

    /// Places held, left-behind ones included.
    fn len(&self) -> usize {
        self.run.len() + self.rest.len()
    }

    /// A queue of these places, all in the run.
    fn of(mut places: Vec<Due>) -> Self {
        places.sort_unstable();
        Expiries {
            run: places.into(),
            rest: BinaryHeap::new(),
        }
    }
}

/// An entry's place in the expiry queue, ordered by time, then place: keys due at the same
/// time (a busy second of syslog) are expired in any order, each on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: i64,
    place: u32,
}

/// Left-behind places in the queue tolerated beyond twice the live keys before the queue
/// is rebuilt from the entries.
const QUEUE_SLACK: usize = 1024;

/// One key's state, whether it changed since it was last stored, when it was last touched,
/// and the time it is queued at for expiry ([`NOT_QUEUED`] if it is not); the key and its
/// hash are kept too, so a lookup by `&str` can hand the key out and the index can grow
/// without hashing keys again.
#[derive(Debug)]
struct Entry<S> {
    key: KeyText,
    hash: u64,
    state: S,
    dirty: bool,
    touched: u64,
    queued: i64,
}

/// State per key with recency: entries in places, an index of places by the keys' hashes
/// (hashed like the detector's other maps), and the places by when their state next has
/// something to forget.
#[derive(Debug)]
pub struct KeyTable<S> {
    /// Place numbers in `places`, by their key's hash.
    index: HashTable<u32>,
    /// The entries; `None` where a key was removed (listed in `free` for the next key).
    places: Vec<Option<Entry<S>>>,
    free: Vec<u32>,
    hasher: foldhash::fast::RandomState,
    expiries: Expiries,
    max_keys: usize,
    clock: u64,
}

/// What expiring a key's state left: nothing (the key goes), or a state that next has
/// something to forget at this time (`None`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Nothing is left; the key is dropped.
    Gone,
    /// The state stays, to be expired again at this event time.
    Kept(Option<i64>),
}

/// What [`KeyTable::touch`] found or made.
pub struct Touched<'a, S> {
    /// The key's state, now the most recently used.
    pub state: &'a mut S,
    /// True the first time the key is touched since it was last stored (marked clean).
    pub newly_dirty: bool,
    /// Keys evicted to make room (usually none).
    pub evicted: Vec<KeyText>,
    key: &'a mut KeyText,
    place: u32,
    queued: &'a mut i64,
    expiries: &'a mut Expiries,
}

impl<S> Touched<'_, S> {
    /// The key, shared with the table (which holds it shared from now on).
    pub fn key(&mut self) -> Fields {
        self.key.share()
    }

    /// Says when the state, as changed by the caller, next has something to forget
    /// (`None`: never). Call it after every change to the state: a key queued later than
    /// this would keep state that a tick should have forgotten.
    pub fn expires_at(&mut self, at: Option<i64>) {
        queue_by(self.expiries, self.queued, self.place, at);
    }
}

/// Queues the entry at `place` (queued at `*queued` now) at `at` if that is earlier. A
/// later time is left for the tick: the key comes up at its old time, finds nothing to
/// forget yet, and is queued again at its real time — one move per key and tick at most,
/// instead of one per match.
fn queue_by(expiries: &mut Expiries, queued: &mut i64, place: u32, at: Option<i64>) {
    let Some(at) = at else { return };
    if at >= *queued {
        return;
    }
    // The old place in the queue, if any, stays behind: it no longer matches `queued`.
    expiries.push(Due { at, place });
    *queued = at;
}

/// The entry at a place that holds one.
fn live<S>(places: &[Option<Entry<S>>], place: u32) -> &Entry<S> {
    places[place as usize]
        .as_ref()
        .expect("the index names only live places")
}

impl<S: Progress> KeyTable<S> {
    /// An empty table holding at most `max_keys` keys (at least one).
    pub fn new(max_keys: usize) -> Self {
        KeyTable {
            index: HashTable::new(),
            places: Vec::new(),
            free: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
            expiries: Expiries::default(),
            max_keys: max_keys.max(1),
            clock: 0,
        }
    }

    /// The place of `key` (encoded [`Fields`]) of hash `hash`, if it is held.
    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        let places = &self.places;
        self.index
            .find(hash, |&p| live(places, p).key.as_bytes() == key.as_bytes())
            .copied()
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Puts a new entry (whose key is not held) in a free place and indexes it.
    fn add(&mut self, entry: Entry<S>) -> u32 {
        let hash = entry.hash;
        let place = match self.free.pop() {
            Some(place) => {
                self.places[place as usize] = Some(entry);
                place
            }
            None => {
                let place = u32::try_from(self.places.len()).expect("fewer than 2^32 keys");
                self.places.push(Some(entry));
                place
            }
        };
        let places = &self.places;
        self.index
            .insert_unique(hash, place, |&p| live(places, p).hash);
        place
    }

    /// Removes the entry at a live place (its place in the expiry queue is left behind).
    fn remove_at(&mut self, place: u32) -> Entry<S> {
        let entry = self.places[place as usize]
            .take()
            .expect("removed from a live place");
        if let Ok(found) = self.index.find_entry(entry.hash, |&p| p == place) {
            found.remove();
        }
        self.free.push(place);
        entry
    }

    /// The state of `key` (encoded [`Fields`]), marked as the most recently used and as
    /// changed; created with `make` when missing. A key already present costs one hash,
    /// one probe and no allocation. The caller says when the changed state expires
    /// ([`Touched::expires_at`]).
    pub fn touch(&mut self, key: &str, make: impl FnOnce() -> S) -> Touched<'_, S> {
        self.clock += 1;
        let hash = self.hash(key);
        let mut evicted = Vec::new();
        let place = match self.find(hash, key) {
            Some(place) => place,
            None => {
                self.compact_queue();
                evicted = self.make_room();
                self.add(Entry {
                    key: KeyText::new(key),
                    hash,
                    state: make(),
                    dirty: false,
                    touched: 0,
                    queued: NOT_QUEUED,
                })
            }
        };
        let entry = self.places[place as usize]
            .as_mut()
            .expect("found or just added");
        entry.touched = self.clock;
        let newly_dirty = !entry.dirty;
        entry.dirty = true;
        Touched {
            key: &mut entry.key,
            state: &mut entry.state,
            newly_dirty,
            evicted,
            place,
            queued: &mut entry.queued,
            expiries: &mut self.expiries,
        }
    }

    /// Removes a key (its place in the expiry queue is left behind).
    fn remove(&mut self, key: &Fields) -> Option<Entry<S>> {
        let key: &str = std::borrow::Borrow::borrow(key);
        let place = self.find(self.hash(key), key)?;
        Some(self.remove_at(place))
    }

    /// The live entries with their places, in no particular order.
    fn entries(&self) -> impl Iterator<Item = (u32, &Entry<S>)> {
        self.places
            .iter()
            .enumerate()
            .filter_map(|(place, e)| Some((place as u32, e.as_ref()?)))
    }

    /// Rebuilds the expiry queue from the entries when left-behind places outnumber the
    /// keys: memory stays proportional to the live keys, at a cost per key that is
    /// constant over time.
    fn compact_queue(&mut self) {
        if self.expiries.len() <= 2 * self.len() + QUEUE_SLACK {
            return;
        }
        self.expiries = Expiries::of(
            self.entries()
                .filter(|(_, e)| e.queued != NOT_QUEUED)
                .map(|(place, e)| Due {
                    at: e.queued,
                    place,
                })
                .collect(),
        );
    }

    /// At the bound, removes a fraction of the table — the keys with the least progress,
    /// least recently touched among equals — and returns them.
    fn make_room(&mut self) -> Vec<KeyText> {
        if self.len() < self.max_keys {
            return Vec::new();
        }
        let count = (self.max_keys / EVICT_FRACTION).max(1);
        let mut ranks: Vec<((usize, u64), u32)> = self
            .entries()
            .map(|(place, e)| ((e.state.progress(), e.touched), place))
            .collect();
        ranks.select_nth_unstable_by_key(count - 1, |(rank, _)| *rank);
        ranks[..count].sort_unstable_by_key(|(rank, _)| *rank);
        ranks[..count]
            .iter()
            .map(|&(_, place)| self.remove_at(place).key)
            .collect()
    }

    /// Marks a key's state as stored (after [`Self::touch`] marked it changed).
    pub fn mark_clean(&mut self, key: &Fields) {
        if let Some(entry) = self.get_entry_mut(key) {
            entry.dirty = false;
        }
    }

    /// [`Self::mark_clean`] and the key's state, in one probe (a commit stores what it
    /// marks).
    pub fn clean(&mut self, key: &Fields) -> Option<&mut S> {
        let entry = self.get_entry_mut(key)?;
        entry.dirty = false;
        Some(&mut entry.state)
    }

    fn get_entry_mut(&mut self, key: &Fields) -> Option<&mut Entry<S>> {
        let key: &str = std::borrow::Borrow::borrow(key);
        let place = self.find(self.hash(key), key)?;
        self.places[place as usize].as_mut()
    }

    /// Puts a key's state (as restored from the store), most recently used, queued for
    /// expiry at `expires` (as [`Touched::expires_at`]); returns the keys evicted to make
    /// room.
    pub fn insert(&mut self, key: Fields, state: S, expires: Option<i64>) -> Vec<Fields> {
        self.clock += 1;
        self.remove(&key);
        self.compact_queue();
        let evicted = self.make_room();
        let hash = self.hash(std::borrow::Borrow::borrow(&key));
        let place = self.add(Entry {
            key: KeyText::Shared(key),
            hash,
            state,
            dirty: false,
            touched: self.clock,
            queued: NOT_QUEUED,
        });
        let entry = self.places[place as usize].as_mut().expect("just added");
        queue_by(&mut self.expiries, &mut entry.queued, place, expires);
        evicted.into_iter().map(KeyText::into_fields).collect()
    }

    /// Expires the keys queued at or before event time `now_ms`, and only those: `expire`
    /// forgets what the state no longer needs and says what is left; `gone` is handed each
    /// key dropped. The cost is the number of keys due, however many are live, and a tick
    /// allocates nothing (unless a state wrongly asks to be looked at again at once).
    pub fn expire_each(
        &mut self,
        now_ms: i64,
        mut expire: impl FnMut(&mut S) -> Expired,
        mut gone: impl FnMut(KeyText),
    ) {
        let mut again = Vec::new();
        while let Some(next) = self.expiries.peek()
            && next.at <= now_ms
        {
            let Some(Due { at, place }) = self.expiries.pop() else {
                break;
            };
            let Some(entry) = self.places[place as usize].as_mut() else {
                continue;
            };
            if entry.queued != at {
                // Left behind by a move or a second place at the same time.
                continue;
            }
            entry.queued = NOT_QUEUED;
            match expire(&mut entry.state) {
                Expired::Gone => gone(self.remove_at(place).key),
                // A time that is (wrongly) not later than now is queued after this loop,
                // so it is looked at on the next tick rather than again in this one.
                Expired::Kept(Some(next)) if next <= now_ms => again.push((place, next)),
                Expired::Kept(next) => queue_by(&mut self.expiries, &mut entry.queued, place, next),
            }
        }
        for (place, next) in again {
            if let Some(entry) = self.places[place as usize].as_mut() {
                queue_by(&mut self.expiries, &mut entry.queued, place, Some(next));
            }
        }
    }

    /// [`KeyTable::expire_each`], returning the keys dropped.
    #[cfg(test)]
    pub fn expire(&mut self, now_ms: i64, expire: impl FnMut(&mut S) -> Expired) -> Vec<Fields> {
        let mut removed = Vec::new();
        self.expire_each(now_ms, expire, |key| removed.push(key.into_fields()));
        removed
    }

    /// When the earliest queued key is due for expiry (places left behind before it are
    /// dropped).
    pub fn next_expiry(&mut self) -> Option<i64> {
        while let Some(Due { at, place }) = self.expiries.peek() {
            if self.places[place as usize]
                .as_ref()
                .is_some_and(|e| e.queued == at)
            {
                return Some(at);
            }
            self.expiries.pop();
        }
        None
    }

    /// A key's state without changing its recency.
    pub fn get(&self, key: &Fields) -> Option<&S> {
        let key: &str = std::borrow::Borrow::borrow(key);
        let place = self.find(self.hash(key), key)?;
        Some(&live(&self.places, place).state)
    }

    /// Every key and state, in no particular order. A change that makes a state expire
    /// earlier is not seen by the expiry queue: only for states that never expire (absence).
    /// A key is handed out with [`KeyText::share`]'s effect when it is asked for as
    /// [`Fields`].
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&mut KeyText, &mut S)> {
        self.places
            .iter_mut()
            .filter_map(|e| e.as_mut().map(|e| (&mut e.key, &mut e.state)))
    }

    /// Every state, in no particular order.
    pub fn states(&self) -> impl Iterator<Item = &S> {
        self.entries().map(|(_, e)| &e.state)
    }

    /// Every key held, in no particular order (counting itself goes by lookup); keys held
    /// inline are copied out.
    pub fn keys(&self) -> impl Iterator<Item = Fields> {
        self.entries().map(|(_, e)| e.key.clone().into_fields())
    }

    /// Keeps the keys for which `keep` is true, visiting every key; returns the removed
    /// keys. `keep` may make a state expire later, never earlier.
    pub fn retain(&mut self, mut keep: impl FnMut(&Fields, &mut S) -> bool) -> Vec<Fields> {
        let mut gone = Vec::new();
        for (place, slot) in self.places.iter_mut().enumerate() {
            if let Some(entry) = slot
                && !keep(&entry.key.share(), &mut entry.state)
            {
                gone.push(place as u32);
            }
        }
        let removed = gone
            .into_iter()
            .map(|place| self.remove_at(place).key.into_fields())
            .collect();
        self.compact_queue();
        removed
    }

    /// Number of keys held: never more than `max_keys`, since a new key past it evicts the
    /// keys least far towards firing.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests;
