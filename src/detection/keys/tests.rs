//! Unit tests of the key table: eviction order under a flood, the expiry queue's
//! never-later rule and its compaction. Apart from `keys.rs` because they are as long as
//! the table itself, and the table reads better without them in the way.

use super::*;
use std::collections::BTreeMap;

/// Test states: a number is its own progress; `()` has none (plain recency).
impl Progress for u32 {
    fn progress(&self) -> usize {
        *self as usize
    }
}

impl Progress for () {
    fn progress(&self) -> usize {
        0
    }
}

/// A state without progress: eviction by recency alone.
#[derive(Debug, PartialEq)]
struct Plain(u32);

impl Progress for Plain {
    fn progress(&self) -> usize {
        0
    }
}

/// Key `n`: an address, held inline by the table; every third key also has a value too
/// long to be, so each test runs over keys held both ways.
fn key(n: u32) -> Fields {
    let mut text = String::new();
    crate::detection::fields::push(&mut text, "ip", &format!("10.0.0.{n}"));
    if n.is_multiple_of(3) {
        crate::detection::fields::push(&mut text, "zone", "a-zone-name-past-the-inline-room");
    }
    assert_eq!(
        text.len() > super::KEY_INLINE,
        n.is_multiple_of(3),
        "key {n} held as intended"
    );
    Fields::from_encoded(&text)
}

fn touch<S: Progress>(t: &mut KeyTable<S>, n: u32, make: impl FnOnce() -> S) -> Touched<'_, S> {
    let k = key(n);
    t.touch(std::borrow::Borrow::borrow(&k), make)
}

#[test]
fn at_equal_progress_the_least_recently_used_key_is_evicted_at_the_bound() {
    let mut t = KeyTable::new(3);
    for n in 1..=3 {
        assert!(touch(&mut t, n, || Plain(n)).evicted.is_empty());
    }
    // Touching 1 makes 2 the oldest.
    touch(&mut t, 1, || Plain(0)).state.0 += 10;
    assert_eq!(touch(&mut t, 4, || Plain(4)).evicted, vec![key(2)]);
    assert_eq!(t.len(), 3);
    assert_eq!(t.get(&key(1)), Some(&Plain(11)));
    assert_eq!(t.get(&key(2)), None);
    let touched = touch(&mut t, 5, || Plain(5));
    assert_eq!(touched.evicted, vec![key(3)]);
    let mut touched = touched;
    assert_eq!(touched.key(), key(5), "the table hands out its own key");
}

#[test]
fn keys_with_one_match_go_before_keys_close_to_firing_however_old() {
    let mut t = KeyTable::new(EVICT_FRACTION * 4);
    // The attacker's key: four matches, then never touched again.
    touch(&mut t, 0, || 4u32);
    // A flood of one-time keys, ten times the bound.
    for n in 1..(EVICT_FRACTION as u32 * 40) {
        touch(&mut t, n, || 1u32);
    }
    assert_eq!(
        t.get(&key(0)),
        Some(&4),
        "the oldest key survived the flood"
    );
    assert_eq!(t.len(), EVICT_FRACTION * 4);
}

#[test]
fn a_key_is_newly_dirty_once_until_marked_clean() {
    let mut t = KeyTable::new(3);
    assert!(touch(&mut t, 1, || 0).newly_dirty);
    assert!(!touch(&mut t, 1, || 0).newly_dirty);
    t.mark_clean(&key(1));
    assert!(touch(&mut t, 1, || 0).newly_dirty);
}

#[test]
fn a_flood_never_grows_the_table_past_its_bound() {
    let mut t = KeyTable::new(100);
    let mut evicted = 0;
    for n in 0..10_000u32 {
        let batch = touch(&mut t, n, || ()).evicted;
        // The oldest sixteenth goes at once: keys 0..6 first.
        if n == 100 {
            assert_eq!(batch, (0..6).map(key).collect::<Vec<_>>());
        }
        evicted += batch.len();
        assert!(t.len() <= 100);
    }
    assert!(t.len() > 100 - 100 / EVICT_FRACTION);
    assert_eq!(
        t.len() + evicted,
        10_000,
        "every key is held or counted evicted"
    );
}

#[test]
fn retain_and_insert_keep_the_order_consistent() {
    let mut t = KeyTable::new(2);
    t.insert(key(1), 1, None);
    t.insert(key(2), 2, None);
    assert_eq!(t.retain(|_, s| *s != 1), vec![key(1)]);
    assert!(t.insert(key(3), 3, None).is_empty());
    assert_eq!(t.insert(key(4), 4, None), vec![key(2)]);
    assert_eq!(t.len(), 2);
}

/// A state for the expiry tests: it forgets everything at `at`, and says so.
#[derive(Debug)]
struct Until(i64);

impl Progress for Until {
    fn progress(&self) -> usize {
        1
    }
}

fn expire_until(now: i64, visits: &mut usize) -> impl FnMut(&mut Until) -> Expired + '_ {
    move |state: &mut Until| {
        *visits += 1;
        if now >= state.0 {
            Expired::Gone
        } else {
            Expired::Kept(Some(state.0))
        }
    }
}

#[test]
fn a_tick_with_many_live_keys_and_none_due_visits_no_key() {
    let mut t = KeyTable::new(200_000);
    for n in 0..100_000u32 {
        let k = key(n);
        let mut touched = t.touch(std::borrow::Borrow::borrow(&k), || Until(0));
        touched.state.0 = 1_000 + i64::from(n % 7);
        let at = touched.state.0;
        touched.expires_at(Some(at));
    }
    let mut visits = 0;
    for now in 0..1_000 {
        assert!(t.expire(now, expire_until(now, &mut visits)).is_empty());
    }
    assert_eq!(visits, 0, "no key visited while none is due");
    assert_eq!(t.next_expiry(), Some(1_000));
    // At their times, exactly the due keys are visited, each once.
    let gone = t.expire(1_000, expire_until(1_000, &mut visits));
    assert_eq!(gone.len(), visits);
    assert_eq!(visits, (0..100_000).filter(|n| n % 7 == 0).count());
    let gone = t.expire(1_006, expire_until(1_006, &mut visits));
    assert_eq!(t.len(), 0);
    assert_eq!(visits, 100_000, "every key visited once: {}", gone.len());
    assert_eq!(t.next_expiry(), None);
}

#[test]
fn an_earlier_expiry_moves_a_key_up_and_a_later_one_waits_for_its_tick() {
    let mut t = KeyTable::new(10);
    let set = |t: &mut KeyTable<Until>, n: u32, at: i64| {
        let k = key(n);
        let mut touched = t.touch(std::borrow::Borrow::borrow(&k), || Until(0));
        touched.state.0 = at;
        touched.expires_at(Some(at));
    };
    set(&mut t, 1, 100);
    set(&mut t, 1, 50);
    assert_eq!(t.next_expiry(), Some(50));
    set(&mut t, 1, 200);
    // Still queued at 50: looked at then, found not due, queued at 200.
    let mut visits = 0;
    assert!(t.expire(60, expire_until(60, &mut visits)).is_empty());
    assert_eq!((visits, t.next_expiry()), (1, Some(200)));
    assert_eq!(t.expire(200, expire_until(200, &mut visits)), vec![key(1)]);
    // Evicted and re-inserted keys leave nothing behind in the queue.
    t.insert(key(2), Until(300), Some(300));
    t.insert(key(2), Until(400), Some(400));
    assert_eq!(t.next_expiry(), Some(400));
    t.retain(|_, _| false);
    assert_eq!(t.next_expiry(), None);
}

/// Keys moved up again and again, and keys evicted, leave places behind in the heap:
/// the queue stays within twice the live keys (plus its slack), and the live keys still
/// expire exactly at their times.
#[test]
fn places_left_behind_stay_bounded_and_never_expire_a_key_early() {
    let mut t = KeyTable::new(100);
    for round in 0..200i64 {
        for n in 0..300u32 {
            let k = key(n);
            let mut touched = t.touch(std::borrow::Borrow::borrow(&k), || Until(0));
            // Each round moves every live key's time earlier: a new place per touch.
            touched.state.0 = 1_000_000 - round * 1_000 - i64::from(n);
            let at = touched.state.0;
            touched.expires_at(Some(at));
        }
        assert!(
            t.expiries.len() <= 2 * t.len() + QUEUE_SLACK + 1,
            "round {round}: {} places for {} keys",
            t.expiries.len(),
            t.len()
        );
    }
    let live = t.len();
    let earliest = t.states().map(|s| s.0).min().unwrap();
    let mut visits = 0;
    assert!(
        t.expire(earliest - 1, expire_until(earliest - 1, &mut visits))
            .is_empty()
    );
    assert_eq!(visits, 0, "no key is looked at before its time");
    assert_eq!(t.next_expiry(), Some(earliest));
    let gone = t.expire(i64::MAX - 1, expire_until(i64::MAX - 1, &mut visits));
    assert_eq!((gone.len(), visits, t.len()), (live, live, 0));
    assert_eq!(t.next_expiry(), None);
}

/// A window of event times for the model test: it holds the times no more than `WINDOW`
/// older than its newest, forgets the older ones as the clock passes, and its progress is
/// how many it holds.
#[derive(Debug, Clone, PartialEq, Default)]
struct Times(Vec<i64>);

const WINDOW: i64 = 50;

impl Progress for Times {
    fn progress(&self) -> usize {
        self.0.len()
    }
}

impl Times {
    fn add(&mut self, at: i64) {
        let at_place = self.0.partition_point(|t| *t <= at);
        self.0.insert(at_place, at);
        let newest = *self.0.last().expect("just added");
        self.0.retain(|t| *t >= newest - WINDOW);
    }

    /// Forgets what is older than the window at `now`; empty means gone.
    fn expire(&mut self, now: i64) -> bool {
        self.0.retain(|t| *t >= now - WINDOW);
        self.0.is_empty()
    }

    /// Exactly when `expire` would next forget something.
    fn expiry(&self) -> i64 {
        self.0.first().map_or(i64::MIN, |t| t + WINDOW + 1)
    }
}

/// The table's contract written the slow, obvious way: every key in a sorted map with its
/// last touch, a full pass over every key per tick, eviction by sorting every key.
#[derive(Default)]
struct Model {
    keys: BTreeMap<u32, (Times, u64)>,
    clock: u64,
}

impl Model {
    fn touch(&mut self, n: u32, at: i64, max_keys: usize) -> Vec<u32> {
        self.clock += 1;
        let mut evicted = Vec::new();
        if !self.keys.contains_key(&n) && self.keys.len() >= max_keys {
            let count = (max_keys / EVICT_FRACTION).max(1);
            let mut ranks: Vec<((usize, u64), u32)> = self
                .keys
                .iter()
                .map(|(k, (s, touched))| ((s.progress(), *touched), *k))
                .collect();
            ranks.sort();
            evicted = ranks[..count].iter().map(|(_, k)| *k).collect();
            for k in &evicted {
                self.keys.remove(k);
            }
        }
        let entry = self.keys.entry(n).or_default();
        entry.0.add(at);
        entry.1 = self.clock;
        evicted
    }

    fn expire(&mut self, now: i64) -> Vec<u32> {
        let mut gone: Vec<u32> = Vec::new();
        self.keys.retain(|k, (s, _)| {
            let empty = s.expire(now);
            if empty {
                gone.push(*k);
            }
            !empty
        });
        gone
    }
}

/// Random touches (some late, some of keys past the bound) and clock ticks, applied to the
/// table and to the model: after every step both hold the same keys with the same states,
/// evict the same keys in the same order, and drop the same keys at the same tick. A key
/// expired a tick early or late, or evicted out of rank order, fails it.
#[test]
fn the_table_evicts_and_expires_exactly_as_a_full_scan_would() {
    let number = |k: &str| -> u32 {
        crate::detection::FieldsView::new(k)
            .get("ip")
            .and_then(|ip| ip.strip_prefix("10.0.0."))
            .and_then(|n| n.parse().ok())
            .expect("a test key")
    };
    for (seed, max_keys, key_space) in [(1u64, 32usize, 40u32), (2, 64, 200), (3, 1000, 300)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut table: KeyTable<Times> = KeyTable::new(max_keys);
        let mut model = Model::default();
        let mut now = 0i64;
        let mut dropped = 0;
        for step in 0..20_000 {
            if rng.u8(..) < 12 {
                now += rng.i64(0..40);
                let mut gone: Vec<u32> = table
                    .expire(now, |s| {
                        if s.expire(now) {
                            Expired::Gone
                        } else {
                            Expired::Kept(Some(s.expiry()))
                        }
                    })
                    .iter()
                    .map(|k| number(std::borrow::Borrow::borrow(k)))
                    .collect();
                gone.sort();
                dropped += gone.len();
                assert_eq!(gone, model.expire(now), "seed {seed} step {step}: expired");
            } else {
                now += rng.i64(0..3);
                // One touch in eight is late, up to a little more than the window.
                let at = if rng.u8(..8) == 0 {
                    now - rng.i64(0..WINDOW + 10)
                } else {
                    now
                };
                let n = rng.u32(0..key_space);
                let k = key(n);
                let mut touched = table.touch(std::borrow::Borrow::borrow(&k), Times::default);
                touched.state.add(at);
                let expiry = touched.state.expiry();
                touched.expires_at(Some(expiry));
                let evicted: Vec<u32> =
                    touched.evicted.iter().map(|k| number(k.as_str())).collect();
                assert_eq!(
                    evicted,
                    model.touch(n, at, max_keys),
                    "seed {seed} step {step}: evicted"
                );
            }
            assert_eq!(table.len(), model.keys.len(), "seed {seed} step {step}");
        }
        let mut held: Vec<(u32, Times)> = table
            .keys()
            .map(|k| {
                (
                    number(std::borrow::Borrow::borrow(&k)),
                    table.get(&k).expect("held").clone(),
                )
            })
            .collect();
        held.sort_by_key(|(n, _)| *n);
        let expected: Vec<(u32, Times)> = model
            .keys
            .iter()
            .map(|(n, (s, _))| (*n, s.clone()))
            .collect();
        assert_eq!(held, expected, "seed {seed}: the same states at the end");
        assert!(dropped > 0, "seed {seed}: the clock dropped keys");
    }
}

/// The queue's run and heap together give places out in time order, whatever order they
/// came in: as a single heap would.
#[test]
fn the_queue_gives_places_out_in_time_order_from_its_run_and_its_heap() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut queue = Expiries::default();
    let mut heap = BinaryHeap::new();
    let mut now = 0i64;
    let mut used_both = false;
    for step in 0..50_000u32 {
        if rng.u8(..) < 100 {
            now += rng.i64(0..5);
            // Mostly in order, sometimes earlier (a late line), sometimes much later.
            let at = match rng.u8(..10) {
                0 => now - rng.i64(0..100),
                1 => now + rng.i64(0..10_000),
                _ => now,
            };
            queue.push(Due { at, place: step });
            heap.push(Reverse(at));
        } else {
            let popped = queue.pop().map(|d| d.at);
            assert_eq!(popped, heap.pop().map(|Reverse(at)| at), "step {step}");
        }
        assert_eq!(queue.len(), heap.len());
        assert_eq!(queue.peek().map(|d| d.at), heap.peek().map(|r| r.0));
        used_both |= !queue.run.is_empty() && !queue.rest.is_empty();
    }
    assert!(used_both, "both parts held places at once");
}

/// A key held inline is handed out as shared `Fields` on demand; whether it is held inline,
/// shared after being handed out, or too long to be inline, it is the same key: found
/// again, not added twice, and equal to its text.
#[test]
fn a_key_is_the_same_key_inline_shared_or_long() {
    let mut t = KeyTable::new(10);
    for n in [1, 2, 3] {
        // `3` is long (see `key`); `2` also has a multi-byte value inline.
        let k = if n == 2 {
            let mut text = String::new();
            crate::detection::fields::push(&mut text, "user", "jürgen");
            Fields::from_encoded(&text)
        } else {
            key(n)
        };
        let text: &str = std::borrow::Borrow::borrow(&k);
        let mut first = t.touch(text, || Plain(1));
        assert!(first.newly_dirty);
        assert_eq!(first.key(), k, "handed out equal to its text");
        let mut again = t.touch(text, || Plain(100));
        again.state.0 += 1;
        assert!(!again.newly_dirty, "found again after being handed out");
        assert_eq!(again.key(), k);
        assert_eq!(t.get(&k), Some(&Plain(2)));
    }
    assert_eq!(t.len(), 3);
    let mut held: Vec<Fields> = t.keys().collect();
    held.sort();
    let mut want = vec![key(1), key(3)];
    let mut text = String::new();
    crate::detection::fields::push(&mut text, "user", "jürgen");
    want.push(Fields::from_encoded(&text));
    want.sort();
    assert_eq!(held, want);
}
