//! Matching on every core with results taken in input order. Whichever thread is free
//! takes the next piece of input (the [`Source`] fills it under a lock, which numbers the
//! pieces in input order), finds its matches with its own copy of the matching stage, and
//! hands it back; the calling thread applies the pieces strictly in that order. Windows see
//! the lines in exactly the order one thread would, so what they count is the same with any
//! number of threads. `replay` ([`crate::cli::tools`]) and the daemon's pipeline both run
//! their matching through [`in_order`].
//!
//! `N` threads means `N` busy threads in total: the calling thread is one of them. Its
//! first job is the in-order stage; reading is no one thread's job, so the calling thread
//! reads only when it takes a piece itself. It takes one when the piece due next has not
//! been taken by any thread yet, and, while the piece due is with a worker, a later one only
//! once it has waited for workers about as long as finding a piece takes ([`Pace`]): when
//! applying is the longer stage it hardly waits, and every piece it found itself would be
//! time the in-order stage stood still; when finding is, the waiting it saves balances the
//! two. With one thread no thread is started: each piece is taken, found and applied on
//! the calling thread.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where pieces of input come from, in input order.
pub trait Source<P> {
    /// Fills `piece` (empty, with the buffers of a piece applied before) with the next
    /// piece of input; false when there is none left.
    fn fill(&mut self, piece: &mut P) -> bool;
}

impl<P, F: FnMut(&mut P) -> bool> Source<P> for F {
    fn fill(&mut self, piece: &mut P) -> bool {
        self(piece)
    }
}

/// Takes every piece `source` gives and applies it with `apply` on this thread, in the
/// order `source` gave them, after `find` has been at it with one of `workers`: one thread
/// per worker, the first worker being this thread's. `apply` leaves the piece ready to be
/// refilled; at most twice as many pieces as workers are ever made (`new_piece`), so the
/// input in flight is bounded and no piece is allocated per piece of input. A panic in
/// another thread's `fill` or `find` is raised again here. `workers` must not be empty.
pub fn in_order<P, W, S>(
    workers: &mut [W],
    new_piece: impl Fn() -> P,
    source: &mut S,
    find: impl Fn(&mut W, &mut P) + Sync,
    mut apply: impl FnMut(&mut P),
) where
    P: Send,
    W: Send,
    S: Source<P> + Send + ?Sized,
{
    let (mine, others) = workers.split_first_mut().expect("at least one worker");
    let pool = Pool::new((0..2 * (others.len() + 1)).map(|_| new_piece()).collect());
    let taking = Taking::new(source);
    std::thread::scope(|scope| {
        let (done, finished) = channel::<Returned<P>>();
        let find = &find;
        for worker in others.iter_mut() {
            let (pool, taking, done) = (&pool, &taking, done.clone());
            scope.spawn(move || work(worker, pool, taking, find, done));
        }
        drop(done);
        // However this thread leaves the scope (its `fill`, `find` or `apply` may panic),
        // workers waiting for a piece stop, so the scope can end.
        let _close = CloseOnDrop(&pool);
        let mut arrived: BTreeMap<u64, P> = BTreeMap::new();
        let mut next = 0u64;
        let mut end: Option<u64> = None;
        let mut stopped = false;
        let mut pace = Pace::default();
        loop {
            if let Some(mut piece) = arrived.remove(&next) {
                apply(&mut piece);
                next += 1;
                pool.put(piece);
                continue;
            }
            if end == Some(next) {
                break;
            }
            // The piece due is not back. If no thread has taken it yet, take it and find it
            // here. If a worker has it, take a later one only when this thread has waited
            // for workers long enough to have found it meanwhile; otherwise wait: this
            // thread is the in-order stage's only one, and with applying the longer stage
            // every piece it found itself stood that stage still (with two threads and a
            // later piece taken at every wait it found every other piece, 1.1x one thread
            // instead of ~1.5x; with finding the longer stage, 0.63 s instead of 0.55).
            if end.is_none()
                && (taking.taken() <= next || pace.may_find())
                && let Some(piece) = pool.try_get()
            {
                match taking.take(piece) {
                    Ok((seq, mut piece)) => {
                        let started = Instant::now();
                        find(mine, &mut piece);
                        pace.found_here(started.elapsed());
                        arrived.insert(seq, piece);
                    }
                    Err((piece, taken)) => {
                        pool.put(piece);
                        end = Some(taken);
                    }
                }
                continue;
            }
            // Every piece is out: the one due is with a worker (it sends it, or its panic).
            let waiting = Instant::now();
            let returned = finished.recv();
            pace.waited(waiting.elapsed());
            match returned {
                Ok(Ok((seq, piece, took))) => {
                    pace.found(took);
                    arrived.insert(seq, piece);
                }
                Ok(Err(panic)) => resume_unwind(panic),
                // They stop at the end of the input, which this thread learns by taking.
                Err(_) if end.is_none() && !stopped => stopped = true,
                Err(_) => panic!("matching workers stopped before piece {next}"),
            }
        }
        // A worker whose `fill` panicked numbered no piece: its panic is still to come.
        pool.close();
        for returned in finished {
            if let Err(panic) = returned {
                resume_unwind(panic);
            }
        }
    });
}

/// A piece found by another thread, with its number and how long finding it took, or the
/// panic that stopped it.
type Returned<P> = Result<(u64, P, Duration), Box<dyn Any + Send>>;

/// When the calling thread may find a later piece while the one due is with a worker:
/// once it has waited for workers about as long as finding a piece takes. It then finds
/// pieces in proportion to the time it would otherwise stand idle, so the two stages
/// balance whichever is longer, and a thread that hardly waits (applying is the longer
/// stage) leaves finding to the workers.
#[derive(Default)]
struct Pace {
    /// Finding a piece, on average over the recent ones (pieces vary: some hold attacks).
    find: Duration,
    /// Time waited for workers and not yet spent finding a piece instead.
    idle: Duration,
}

impl Pace {
    /// Weight of the newest piece in the average.
    const NEWEST: u32 = 8;

    fn found(&mut self, took: Duration) {
        self.find = if self.find.is_zero() {
            took
        } else {
            (self.find * (Self::NEWEST - 1) + took) / Self::NEWEST
        };
    }

    /// Waiting `took` for a worker: credit for a piece this thread may find instead,
    /// never more than two pieces' worth, so a long stall does not turn into a burst.
    fn waited(&mut self, took: Duration) {
        self.idle = (self.idle + took).min(self.find * 2);
    }

    /// Whether this thread has waited long enough to find a piece.
    fn may_find(&self) -> bool {
        !self.find.is_zero() && self.idle >= self.find
    }

    /// This thread found a piece in `took`, spending that much of its waiting credit.
    fn found_here(&mut self, took: Duration) {
        self.found(took);
        self.idle = self.idle.saturating_sub(took);
    }
}

/// Another thread's loop: an empty piece, the next piece of input into it, its matches,
/// back to the calling thread; until the input ends or the calling thread stops.
fn work<P, W, S: Source<P> + ?Sized>(
    worker: &mut W,
    pool: &Pool<P>,
    taking: &Taking<'_, S>,
    find: &(impl Fn(&mut W, &mut P) + Sync),
    done: Sender<Returned<P>>,
) {
    while let Some(piece) = pool.get() {
        let found = catch_unwind(AssertUnwindSafe(|| match taking.take(piece) {
            Ok((seq, mut piece)) => {
                let started = Instant::now();
                find(worker, &mut piece);
                Some((seq, piece, started.elapsed()))
            }
            // The pool keeps every piece: the calling thread may still want one.
            Err((piece, _)) => {
                pool.put(piece);
                None
            }
        }));
        match found {
            Ok(Some(found)) => {
                if done.send(Ok(found)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(panic) => {
                let _ = done.send(Err(panic));
                return;
            }
        }
    }
}

/// The input, shared by every thread: whoever takes a piece fills it under the lock, so
/// the pieces are numbered in input order and reading is spread over the threads.
struct Taking<'s, S: ?Sized> {
    next: Mutex<Next<'s, S>>,
}

struct Next<'s, S: ?Sized> {
    source: &'s mut S,
    /// Pieces taken so far: the number of the next one.
    taken: u64,
    /// The source said it has no more.
    ended: bool,
}

impl<'s, S: ?Sized> Taking<'s, S> {
    fn new(source: &'s mut S) -> Self {
        Taking {
            next: Mutex::new(Next {
                source,
                taken: 0,
                ended: false,
            }),
        }
    }

    /// The number of pieces taken so far (the number the next one will get).
    fn taken(&self) -> u64 {
        self.next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .taken
    }

    /// Fills `piece` with the next piece of input and numbers it; at the end of the input
    /// (or after a `fill` panicked), gives it back with the number of pieces taken.
    fn take<P>(&self, mut piece: P) -> Result<(u64, P), (P, u64)>
    where
        S: Source<P>,
    {
        let poisoned = self.next.is_poisoned();
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        if next.ended || poisoned || !next.source.fill(&mut piece) {
            next.ended = true;
            return Err((piece, next.taken));
        }
        let seq = next.taken;
        next.taken += 1;
        Ok((seq, piece))
    }
}

/// Empty pieces: a worker waits here while every piece is in flight, which bounds how far
/// the workers run ahead of the in-order stage.
struct Pool<P> {
    spare: Mutex<(Vec<P>, bool)>,
    ready: Condvar,
}

impl<P> Pool<P> {
    fn new(pieces: Vec<P>) -> Self {
        Pool {
            spare: Mutex::new((pieces, false)),
            ready: Condvar::new(),
        }
    }

    /// An empty piece, waiting for one; `None` once closed.
    fn get(&self) -> Option<P> {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if spare.1 {
                return None;
            }
            if let Some(piece) = spare.0.pop() {
                return Some(piece);
            }
            spare = self
                .ready
                .wait(spare)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// An empty piece if one is free now.
    fn try_get(&self) -> Option<P> {
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .pop()
    }

    fn put(&self, piece: P) {
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push(piece);
        self.ready.notify_one();
    }

    /// Wakes every waiting worker to stop.
    fn close(&self) {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.ready.notify_all();
    }
}

struct CloseOnDrop<'p, P>(&'p Pool<P>);

impl<P> Drop for CloseOnDrop<'_, P> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers doubled by the workers come back in the order the source gave them, with
    /// one thread and with several, every piece found exactly once.
    #[test]
    fn pieces_are_applied_in_input_order_with_any_number_of_threads() {
        for threads in [1, 2, 4] {
            let mut workers = vec![0u64; threads];
            let mut applied = Vec::new();
            let mut i = 0u64;
            in_order(
                &mut workers,
                Vec::<u64>::new,
                &mut |piece: &mut Vec<u64>| {
                    if i == 200 {
                        return false;
                    }
                    piece.extend([i, i + 1000]);
                    i += 1;
                    true
                },
                |seen, piece: &mut Vec<u64>| {
                    *seen += 1;
                    // Uneven work, so pieces finish out of order.
                    if piece[0].is_multiple_of(3) {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                    for n in piece.iter_mut() {
                        *n *= 2;
                    }
                },
                |piece| {
                    applied.extend(piece.iter().copied());
                    piece.clear();
                },
            );
            let expected: Vec<u64> = (0..200u64).flat_map(|i| [2 * i, 2 * (i + 1000)]).collect();
            assert_eq!(applied, expected, "{threads} threads");
            assert_eq!(workers.iter().sum::<u64>(), 200, "every piece found once");
        }
    }

    /// How many of 60 pieces the calling thread of two finds itself when finding a piece
    /// takes `find_ms` and applying one `apply_ms` (sleeps standing for the work).
    fn found_by_calling_thread(find_ms: u64, apply_ms: u64) -> u32 {
        let mut workers = vec![0u32; 2];
        let mut left = 60;
        in_order(
            &mut workers,
            || 0u8,
            &mut |_: &mut u8| {
                left -= 1;
                left >= 0
            },
            |found, _| {
                *found += 1;
                std::thread::sleep(std::time::Duration::from_millis(find_ms));
            },
            |_| std::thread::sleep(std::time::Duration::from_millis(apply_ms)),
        );
        assert_eq!(workers.iter().sum::<u32>(), 60, "every piece found once");
        workers[0]
    }

    /// When applying is the slower stage, the calling thread applies and leaves finding to
    /// the worker: it hardly waits, so it finds a piece itself only while no thread has
    /// taken the one due (at the start). Taking a later piece whenever the due one was
    /// still with the worker made it find every other piece, and the in-order stage stood
    /// still meanwhile.
    #[test]
    fn the_calling_thread_leaves_finding_to_a_worker_that_keeps_ahead() {
        let found = found_by_calling_thread(1, 3);
        assert!(found <= 6, "the calling thread found {found} of 60 pieces");
    }

    /// When finding is the slower stage, the calling thread finds pieces too while the
    /// one due is with the worker: finding 3 ms and applying 1 ms, two threads balance at
    /// the calling thread finding a third of the pieces. Waiting for each piece instead
    /// made it find only the first one and left it idle two thirds of the time.
    #[test]
    fn the_calling_thread_finds_too_when_the_worker_falls_behind() {
        let found = found_by_calling_thread(3, 1);
        assert!(found >= 10, "the calling thread found {found} of 60 pieces");
    }

    /// At most twice as many pieces as threads are ever made, however long the input.
    #[test]
    fn pieces_are_reused() {
        let made = std::sync::atomic::AtomicUsize::new(0);
        let mut workers = vec![(); 3];
        let mut left = 500;
        in_order(
            &mut workers,
            || {
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Vec::<u8>::new()
            },
            &mut |piece: &mut Vec<u8>| {
                assert!(piece.is_empty(), "a piece comes back applied");
                left -= 1;
                piece.push(1);
                left > 0
            },
            |_, _| {},
            |piece| piece.clear(),
        );
        assert!(made.into_inner() <= 6);
    }

    /// The message of the panic that `in_order` raised on `threads` threads over 20
    /// pieces, when reading piece `bad_read` or finding piece `bad_find` panics.
    fn panic_of(threads: usize, bad_read: u32, bad_find: u32) -> String {
        let mut workers = vec![(); threads];
        let mut i = 0u32;
        let result = catch_unwind(AssertUnwindSafe(|| {
            in_order(
                &mut workers,
                || 0u32,
                &mut |piece: &mut u32| {
                    i += 1;
                    assert!(i != bad_read, "reading piece {i}");
                    *piece = i;
                    i < 20
                },
                |_, piece: &mut u32| assert!(*piece != bad_find, "finding piece {piece}"),
                |_| {},
            )
        }));
        let panic = result.expect_err("a panic");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    /// A panic in any thread's `fill` or `find` reaches the caller as itself, and the
    /// threads stop (the scope ends).
    #[test]
    fn a_panic_while_reading_or_finding_reaches_the_caller() {
        for threads in [1, 2, 3] {
            assert!(
                panic_of(threads, 0, 7).contains("finding piece 7"),
                "{threads}"
            );
            assert!(
                panic_of(threads, 9, 0).contains("reading piece 9"),
                "{threads}"
            );
        }
    }
}
