//! Matching on every core with results taken in input order: pieces of input go out to
//! worker threads (each with its own copy of the matching stage), and come back to the
//! calling thread, which applies them strictly in the order they were handed over. Windows
//! see the lines in exactly the order one thread would, so what they count is the same
//! with any number of workers. `replay` ([`crate::cli::tools`]) and the daemon's pipeline both
//! run their matching through [`in_order`].
//!
//! With one worker no thread is started: each piece is found and applied on the calling
//! thread as it is handed over.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

/// Where the producer hands its pieces, in input order.
pub trait Feed<P> {
    /// An empty piece to fill: one already applied (its buffers reused) or a new one.
    fn fresh(&mut self) -> P;
    /// Hands over the next piece.
    fn send(&mut self, piece: P);
}

/// Runs `produce`, which hands pieces to its [`Feed`] in input order; each piece is given
/// to `find` with one of `workers` (one thread per worker; with one worker, on this
/// thread), then to `apply` on this thread, in the order the pieces were handed over.
/// `apply` leaves the piece ready to be refilled. A panic in `find` is raised again here.
/// `workers` must not be empty.
pub fn in_order<P, W, R>(
    workers: &mut [W],
    new_piece: impl Fn() -> P,
    find: impl Fn(&mut W, &mut P) + Sync,
    apply: impl FnMut(&mut P),
    produce: impl FnOnce(&mut dyn Feed<P>) -> R,
) -> R
where
    P: Send,
    W: Send,
{
    if workers.len() <= 1 {
        let worker = workers.first_mut().expect("at least one worker");
        let mut inline = Inline {
            worker,
            new_piece,
            find,
            apply,
            spare: None,
        };
        return produce(&mut inline);
    }
    let threads = workers.len();
    std::thread::scope(|scope| {
        // Bounded: the producer waits for the workers rather than queueing all its input.
        let (work, queue) = sync_channel::<(u64, P)>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let (done, finished) = channel::<Returned<P>>();
        let find = &find;
        for worker in workers.iter_mut() {
            let queue = queue.clone();
            let done = done.clone();
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a piece.
                    let next = queue.lock().map(|q| q.recv());
                    let Ok(Ok((seq, mut piece))) = next else {
                        break;
                    };
                    let result = catch_unwind(AssertUnwindSafe(|| find(worker, &mut piece)));
                    let back = result.map(|()| piece);
                    if done.send((seq, back)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done);
        let mut stage = Stage {
            work,
            finished,
            new_piece,
            apply,
            in_flight: 0,
            max_in_flight: 2 * threads + 1,
            next_seq: 0,
            next_apply: 0,
            arrived: BTreeMap::new(),
            spare: Vec::new(),
        };
        let result = produce(&mut stage);
        stage.drain();
        result
    })
}

/// A piece back from a worker: found, or the panic that stopped its `find`.
type Returned<P> = (u64, Result<P, Box<dyn Any + Send>>);

/// One worker, on the calling thread.
struct Inline<'w, W, N, F, A, P> {
    worker: &'w mut W,
    new_piece: N,
    find: F,
    apply: A,
    spare: Option<P>,
}

impl<W, N, F, A, P> Feed<P> for Inline<'_, W, N, F, A, P>
where
    N: Fn() -> P,
    F: Fn(&mut W, &mut P),
    A: FnMut(&mut P),
{
    fn fresh(&mut self) -> P {
        self.spare.take().unwrap_or_else(&self.new_piece)
    }

    fn send(&mut self, mut piece: P) {
        (self.find)(self.worker, &mut piece);
        (self.apply)(&mut piece);
        self.spare = Some(piece);
    }
}

/// The ordering stage: hands pieces to the workers and applies their results in input
/// order.
struct Stage<P, N, A> {
    work: SyncSender<(u64, P)>,
    finished: Receiver<Returned<P>>,
    new_piece: N,
    apply: A,
    in_flight: usize,
    max_in_flight: usize,
    next_seq: u64,
    next_apply: u64,
    /// Pieces back from the workers ahead of their turn.
    arrived: BTreeMap<u64, P>,
    /// Applied pieces, kept for their buffers.
    spare: Vec<P>,
}

impl<P, N: Fn() -> P, A: FnMut(&mut P)> Feed<P> for Stage<P, N, A> {
    fn fresh(&mut self) -> P {
        self.spare.pop().unwrap_or_else(&self.new_piece)
    }

    /// Hands `piece` to the workers, first applying what is due if enough is in flight.
    fn send(&mut self, piece: P) {
        let seq = self.next_seq;
        self.next_seq += 1;
        while self.in_flight >= self.max_in_flight {
            self.apply_next();
        }
        self.work
            .send((seq, piece))
            .expect("matching workers stopped");
        self.in_flight += 1;
    }
}

impl<P, N, A: FnMut(&mut P)> Stage<P, N, A> {
    /// Applies every piece still in flight.
    fn drain(&mut self) {
        while self.in_flight > 0 {
            self.apply_next();
        }
    }

    /// Waits for the next piece in input order and applies it.
    fn apply_next(&mut self) {
        let mut piece = loop {
            if let Some(piece) = self.arrived.remove(&self.next_apply) {
                break piece;
            }
            let (seq, piece) = self.finished.recv().expect("matching workers stopped");
            match piece {
                Ok(piece) => {
                    self.arrived.insert(seq, piece);
                }
                // Dropping the stage on the way out closes the queue: the other workers
                // stop and the scope ends with this panic.
                Err(panic) => resume_unwind(panic),
            }
        };
        (self.apply)(&mut piece);
        self.next_apply += 1;
        self.in_flight -= 1;
        self.spare.push(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers doubled by the workers come back in the order they were handed over,
    /// with one worker and with several.
    #[test]
    fn pieces_are_applied_in_input_order_with_any_number_of_workers() {
        for threads in [1, 2, 4] {
            let mut workers = vec![0u64; threads];
            let mut applied = Vec::new();
            in_order(
                &mut workers,
                Vec::<u64>::new,
                |seen, piece: &mut Vec<u64>| {
                    *seen += 1;
                    // Uneven work, so pieces finish out of order.
                    if piece[0].is_multiple_of(3) {
                        std::thread::yield_now();
                    }
                    for n in piece.iter_mut() {
                        *n *= 2;
                    }
                },
                |piece| {
                    applied.extend(piece.iter().copied());
                    piece.clear();
                },
                |feed| {
                    for i in 0..200u64 {
                        let mut piece = feed.fresh();
                        piece.extend([i, i + 1000]);
                        feed.send(piece);
                    }
                },
            );
            let expected: Vec<u64> = (0..200u64).flat_map(|i| [2 * i, 2 * (i + 1000)]).collect();
            assert_eq!(applied, expected, "{threads} workers");
            assert_eq!(workers.iter().sum::<u64>(), 200, "every piece found once");
        }
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller() {
        let mut workers = vec![(); 2];
        let result = catch_unwind(AssertUnwindSafe(|| {
            in_order(
                &mut workers,
                || 0u32,
                |_, piece: &mut u32| assert!(*piece != 7, "piece 7"),
                |_| {},
                |feed| {
                    for i in 0..20 {
                        feed.send(i);
                    }
                },
            )
        }));
        assert!(result.is_err());
    }
}
