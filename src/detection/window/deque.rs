//! A double-ended queue that holds its first element inline.
//!
//! Under a flood nearly every key's window holds one or two matches and is dropped a window
//! later. A `VecDeque` allocated a buffer for each of those keys and freed it at expiry;
//! that allocator traffic was a tenth of replay's time. This queue keeps one element in
//! place and moves to a `VecDeque` only when a second arrives, so a key seen once costs no
//! allocation for its window.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::slice;

/// A deque whose first element lives inline; a second moves it to a `VecDeque`.
#[derive(Debug, Clone, Default)]
pub enum SmallDeque<T> {
    /// Nothing held and nothing allocated.
    #[default]
    Empty,
    /// One element, held inline.
    One(T),
    /// Any number of elements, held on the heap (kept once spilled: a key that counted
    /// two matches is likely to count more).
    Spilled(VecDeque<T>),
}

impl<T> SmallDeque<T> {
    /// An empty queue (no allocation).
    pub const fn new() -> Self {
        SmallDeque::Empty
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            SmallDeque::Empty => 0,
            SmallDeque::One(_) => 1,
            SmallDeque::Spilled(q) => q.len(),
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as two slices, front first (as [`VecDeque::as_slices`]).
    pub fn as_slices(&self) -> (&[T], &[T]) {
        match self {
            SmallDeque::Empty => (&[], &[]),
            SmallDeque::One(x) => (slice::from_ref(x), &[]),
            SmallDeque::Spilled(q) => q.as_slices(),
        }
    }

    /// The first element.
    pub fn front(&self) -> Option<&T> {
        match self {
            SmallDeque::Empty => None,
            SmallDeque::One(x) => Some(x),
            SmallDeque::Spilled(q) => q.front(),
        }
    }

    /// The last element.
    pub fn back(&self) -> Option<&T> {
        match self {
            SmallDeque::Empty => None,
            SmallDeque::One(x) => Some(x),
            SmallDeque::Spilled(q) => q.back(),
        }
    }

    /// The elements, front first.
    pub fn iter(&self) -> Iter<'_, T> {
        let (a, b) = self.as_slices();
        Iter {
            first: a.iter(),
            second: b.iter(),
        }
    }

    /// The elements, front first, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        let (a, b): (&mut [T], &mut [T]) = match self {
            SmallDeque::Empty => (&mut [], &mut []),
            SmallDeque::One(x) => (slice::from_mut(x), &mut []),
            SmallDeque::Spilled(q) => q.as_mut_slices(),
        };
        a.iter_mut().chain(b.iter_mut())
    }

    /// Keeps the elements for which `keep` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            SmallDeque::Empty => {}
            SmallDeque::One(x) => {
                if !keep(x) {
                    *self = SmallDeque::Empty;
                }
            }
            SmallDeque::Spilled(q) => q.retain(keep),
        }
    }

    /// Inserts `item` at `index` (`index <= len`), moving later elements back.
    pub fn insert(&mut self, index: usize, item: T) {
        assert!(index <= self.len(), "insert past the end of a SmallDeque");
        match self {
            SmallDeque::Empty => *self = SmallDeque::One(item),
            SmallDeque::Spilled(q) => q.insert(index, item),
            SmallDeque::One(_) => {
                let SmallDeque::One(held) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                // Room for a few: a key with a second match is being attacked.
                let mut q = VecDeque::with_capacity(4);
                q.push_back(held);
                q.insert(index, item);
                *self = SmallDeque::Spilled(q);
            }
        }
    }

    /// Appends `item` at the back.
    pub fn push_back(&mut self, item: T) {
        self.insert(self.len(), item);
    }

    /// Removes and returns the first element.
    pub fn pop_front(&mut self) -> Option<T> {
        match self {
            SmallDeque::Empty => None,
            SmallDeque::Spilled(q) => q.pop_front(),
            SmallDeque::One(_) => match std::mem::take(self) {
                SmallDeque::One(x) => Some(x),
                _ => unreachable!("matched One"),
            },
        }
    }

    /// The index of the first element for which `pred` is false, all before it being
    /// true (as [`slice::partition_point`]).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (a, b) = self.as_slices();
        let in_a = a.partition_point(&mut pred);
        if in_a < a.len() {
            in_a
        } else {
            a.len() + b.partition_point(pred)
        }
    }

    /// Removes every element, returning them front first; a spilled queue keeps its buffer.
    pub fn drain(&mut self) -> Vec<T> {
        match self {
            SmallDeque::Spilled(q) => q.drain(..).collect(),
            _ => std::mem::take(self).into_iter().collect(),
        }
    }
}

/// The elements, front first (an inline one without allocating).
impl<T> IntoIterator for SmallDeque<T> {
    type Item = T;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<T>, std::collections::vec_deque::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, rest) = match self {
            SmallDeque::Empty => (None, VecDeque::new()),
            SmallDeque::One(x) => (Some(x), VecDeque::new()),
            SmallDeque::Spilled(q) => (None, q),
        };
        one.into_iter().chain(rest)
    }
}

impl<'a, T> IntoIterator for &'a SmallDeque<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> From<Vec<T>> for SmallDeque<T> {
    fn from(mut items: Vec<T>) -> Self {
        match items.len() {
            0 => SmallDeque::Empty,
            1 => SmallDeque::One(items.pop().expect("one element")),
            _ => SmallDeque::Spilled(items.into()),
        }
    }
}

/// Equal when the elements are, however they are held.
impl<T: PartialEq> PartialEq for SmallDeque<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// Serialised as a sequence, exactly as a `VecDeque` is.
impl<T: Serialize> Serialize for SmallDeque<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SmallDeque<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into())
    }
}

/// The elements of a [`SmallDeque`], front first.
pub struct Iter<'a, T> {
    first: slice::Iter<'a, T>,
    second: slice::Iter<'a, T>,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        self.first.next().or_else(|| self.second.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.first.len() + self.second.len();
        (n, Some(n))
    }
}

impl<T> DoubleEndedIterator for Iter<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.second.next_back().or_else(|| self.first.next_back())
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the same operations to a `SmallDeque` and a `VecDeque`: they must agree at
    /// every step, whether the small one holds its element inline or has spilled.
    #[test]
    fn agrees_with_vecdeque_inline_and_spilled() {
        let mut small = SmallDeque::new();
        let mut big = VecDeque::new();
        // A fixed pseudo-random walk of inserts, pushes, pops and drains.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..5_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 10 {
                0..=3 => {
                    small.push_back(i);
                    big.push_back(i);
                }
                4..=5 => {
                    // Kept in order, as a window keeps its events: a late one goes where
                    // `partition_point` says.
                    let v = i.saturating_sub((seed >> 8) as u32 % 8);
                    let at = small.partition_point(|x| *x <= v);
                    assert_eq!(at, big.partition_point(|x| *x <= v));
                    small.insert(at, v);
                    big.insert(at, v);
                }
                6..=7 => assert_eq!(small.pop_front(), big.pop_front()),
                8 => {
                    let cut = i.saturating_sub((seed >> 8) as u32 % 16);
                    small.retain(|x| *x >= cut);
                    big.retain(|x| *x >= cut);
                    for x in small.iter_mut() {
                        *x += 1;
                    }
                    for x in big.iter_mut() {
                        *x += 1;
                    }
                }
                _ => {
                    if seed.is_multiple_of(7) {
                        assert_eq!(small.drain(), big.drain(..).collect::<Vec<_>>());
                    }
                }
            }
            assert_eq!(small.len(), big.len());
            assert_eq!(small.front(), big.front());
            assert_eq!(small.back(), big.back());
            assert!(small.iter().eq(big.iter()));
            assert!(small.iter().rev().eq(big.iter().rev()));
            assert_eq!(small.iter().len(), big.len());
            let v = i.saturating_sub(3);
            assert_eq!(
                small.partition_point(|x| *x <= v),
                big.partition_point(|x| *x <= v)
            );
        }
    }

    #[test]
    fn one_element_is_inline_and_a_second_spills() {
        let mut q = SmallDeque::new();
        q.push_back(1);
        assert!(matches!(q, SmallDeque::One(1)));
        q.insert(0, 0);
        assert!(matches!(&q, SmallDeque::Spilled(v) if v.iter().eq([0, 1].iter())));
        assert_eq!(q.pop_front(), Some(0));
        assert_eq!(q.pop_front(), Some(1));
        assert_eq!(q.pop_front(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn serialises_like_a_vecdeque_and_equality_ignores_the_holding() {
        let small: SmallDeque<u32> = vec![7].into();
        let big: VecDeque<u32> = [7].into();
        assert_eq!(
            serde_json::to_string(&small).unwrap(),
            serde_json::to_string(&big).unwrap()
        );
        let mut spilled = SmallDeque::Spilled(VecDeque::from([6, 7]));
        spilled.pop_front();
        assert_eq!(spilled, small);
        let back: SmallDeque<u32> = serde_json::from_str("[1,2,3]").unwrap();
        assert!(back.iter().eq([1, 2, 3].iter()));
    }
}
