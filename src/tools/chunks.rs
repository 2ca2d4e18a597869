//! Replay on every core: lines read in input order go out in chunks to worker threads,
//! which find each line's matches (the gate, captures and exceptions: the per-line work,
//! [`crate::detection::Matchers`]); one stage, on the calling thread, takes the chunks back
//! in input order and counts their matches into windows and incidents. Windows see the
//! lines in exactly the order one thread would, so the incidents are the same.

use super::eval::Evaluation;
use super::input::{LogReader, merge};
use crate::detection::{Found, Matchers};
use crate::sources::LogLine;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

/// Lines per chunk: large enough that handing a chunk over costs nothing per line, small
/// enough that chunks in flight stay a few MiB.
const CHUNK_LINES: usize = 8192;

/// A run of lines in input order and, once a worker has been at it, their matches for
/// each evaluation.
struct Chunk {
    /// Place in input order.
    seq: u64,
    /// Lines and their times; only the first `len` are this chunk's (the rest are buffers
    /// kept for reuse).
    lines: Vec<(LogLine, DateTime<Utc>)>,
    len: usize,
    /// Per evaluation, the matches of each line.
    found: Vec<Found>,
}

impl Chunk {
    fn new(evaluations: usize) -> Self {
        Chunk {
            seq: 0,
            lines: Vec::with_capacity(CHUNK_LINES),
            len: 0,
            found: (0..evaluations).map(|_| Found::default()).collect(),
        }
    }

    /// Appends a copy of `line`, reusing the buffers of an earlier line in this place.
    fn push(&mut self, line: &LogLine, time: DateTime<Utc>) {
        if self.len < self.lines.len() {
            let (kept, kept_time) = &mut self.lines[self.len];
            kept.bytes.clear();
            kept.bytes.extend_from_slice(&line.bytes);
            kept.source = line.source.clone();
            kept.path = line.path.clone();
            kept.offset = line.offset;
            kept.arrival = line.arrival;
            kept.time = line.time;
            *kept_time = time;
        } else {
            self.lines.push((line.clone(), time));
        }
        self.len += 1;
    }
}

/// Feeds every line of `readers` (merged in time order) to every evaluation, in order,
/// finding matches on `threads` worker threads (1: all on this thread, no workers).
/// `counted` is called with the number of lines evaluated so far, after each line.
/// Returns the readers for their counts.
pub fn evaluate(
    readers: Vec<LogReader>,
    evaluations: &mut [&mut Evaluation],
    threads: usize,
    mut counted: impl FnMut(u64),
) -> io::Result<Vec<LogReader>> {
    let mut lines = 0u64;
    if threads <= 1 {
        return merge(readers, |line, time| {
            for evaluation in evaluations.iter_mut() {
                evaluation.observe(line, time);
            }
            lines += 1;
            counted(lines);
        });
    }
    let matchers: Vec<Matchers> = evaluations.iter().map(|e| e.matchers()).collect();
    std::thread::scope(|scope| {
        // Bounded: the reader waits for the workers rather than queueing the whole log.
        let (work, work_queue) = sync_channel::<Chunk>(threads);
        let work_queue = Arc::new(Mutex::new(work_queue));
        let (done, finished) = channel::<Chunk>();
        for _ in 0..threads {
            let queue = work_queue.clone();
            let done = done.clone();
            let mut matchers = matchers.clone();
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a chunk.
                    let next = queue.lock().map(|q| q.recv());
                    let Ok(Ok(mut chunk)) = next else { break };
                    for (matcher, found) in matchers.iter_mut().zip(&mut chunk.found) {
                        found.clear();
                        for (line, _) in &chunk.lines[..chunk.len] {
                            matcher.find(line, found);
                        }
                    }
                    if done.send(chunk).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done);
        let mut stage = Stage {
            work,
            finished,
            in_flight: 0,
            max_in_flight: 2 * threads + 1,
            next_seq: 0,
            next_apply: 0,
            arrived: BTreeMap::new(),
            spare: Vec::new(),
            evaluations: evaluations.len(),
        };
        let mut current = stage.fresh();
        let mut apply = |chunk: &Chunk| {
            for (i, (line, time)) in chunk.lines[..chunk.len].iter().enumerate() {
                for (evaluation, found) in evaluations.iter_mut().zip(&chunk.found) {
                    evaluation.observe_found(line, *time, found.line(i));
                }
                lines += 1;
                counted(lines);
            }
        };
        let merged = merge(readers, |line, time| {
            current.push(line, time);
            if current.len == CHUNK_LINES {
                let full = std::mem::replace(&mut current, stage.fresh());
                stage.send(full, &mut apply);
            }
        });
        if current.len > 0 {
            stage.send(current, &mut apply);
        }
        stage.drain(&mut apply);
        merged
    })
}

/// The ordering stage: hands chunks to the workers and applies their results in input
/// order.
struct Stage {
    work: SyncSender<Chunk>,
    finished: Receiver<Chunk>,
    in_flight: usize,
    max_in_flight: usize,
    next_seq: u64,
    next_apply: u64,
    /// Chunks back from the workers ahead of their turn.
    arrived: BTreeMap<u64, Chunk>,
    /// Applied chunks, kept for their buffers.
    spare: Vec<Chunk>,
    evaluations: usize,
}

impl Stage {
    /// An empty chunk, with the buffers of an applied one when there is one.
    fn fresh(&mut self) -> Chunk {
        let mut chunk = self
            .spare
            .pop()
            .unwrap_or_else(|| Chunk::new(self.evaluations));
        chunk.len = 0;
        chunk
    }

    /// Hands `chunk` to the workers, first applying what is due if enough is in flight.
    fn send(&mut self, mut chunk: Chunk, apply: &mut impl FnMut(&Chunk)) {
        chunk.seq = self.next_seq;
        self.next_seq += 1;
        while self.in_flight >= self.max_in_flight {
            self.apply_next(apply);
        }
        self.work
            .send(chunk)
            .expect("replay workers stopped (a worker panicked)");
        self.in_flight += 1;
    }

    /// Applies every chunk still in flight.
    fn drain(&mut self, apply: &mut impl FnMut(&Chunk)) {
        while self.in_flight > 0 {
            self.apply_next(apply);
        }
    }

    /// Waits for the next chunk in input order and applies it.
    fn apply_next(&mut self, apply: &mut impl FnMut(&Chunk)) {
        let chunk = loop {
            if let Some(chunk) = self.arrived.remove(&self.next_apply) {
                break chunk;
            }
            let chunk = self
                .finished
                .recv()
                .expect("replay workers stopped (a worker panicked)");
            self.arrived.insert(chunk.seq, chunk);
        };
        apply(&chunk);
        self.next_apply += 1;
        self.in_flight -= 1;
        self.spare.push(chunk);
    }
}
