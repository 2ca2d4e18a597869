//! Replay on every core: the logs are read in pieces of whole lines (a single log straight
//! into the piece's buffer, several merged in time order and copied in), which go out to
//! worker threads; a worker reads the lines' times and finds their matches (one literal
//! pass over the piece, then the gate and captures of the lines it names: the per-line
//! work, [`crate::detection::Matchers::find_run`]); one stage, on the calling thread,
//! takes the pieces back in input order and counts their matches into windows and
//! incidents. Windows see the lines in exactly the order one thread would, so the
//! incidents are the same. With one thread the worker's part runs on the calling thread.

use super::eval::Evaluation;
use super::input::{Lines, LogFile, LogReader, PIECE_BYTES, merge};
use crate::detection::{Found, Matchers};
use crate::sources::LogLine;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

/// A piece of whole lines in input order and, once a worker has been at it, their times
/// and matches for each evaluation.
struct Chunk {
    /// Place in input order.
    seq: u64,
    lines: Lines,
    /// Per evaluation, the matches of each line.
    found: Vec<Found>,
}

impl Chunk {
    fn new(evaluations: usize) -> Self {
        Chunk {
            seq: 0,
            lines: Lines::default(),
            found: (0..evaluations).map(|_| Found::default()).collect(),
        }
    }

    /// The worker's part: reads the times of lines that have none yet, then finds every
    /// evaluation's matches, one run of lines of the same file at a time.
    fn find(&mut self, files: &[LogFile], matchers: &mut [Matchers]) {
        let Lines {
            text,
            ranges,
            lines,
        } = &mut self.lines;
        // The last parsed line's file, time head (as a range of `text`) and time: a line
        // of the same file with the same head has the same time.
        let mut last: Option<(usize, Range<usize>, Option<DateTime<Utc>>)> = None;
        for (at, range) in lines.iter_mut().zip(ranges.iter()) {
            if at.time.is_some() {
                continue;
            }
            let file = &files[at.reader];
            let line = &text[range.clone()];
            let head = file.fixed_head(line);
            if let (Some(head), Some((reader, last_head, time))) = (head, &last)
                && *reader == at.reader
                && &text[last_head.clone()] == head
            {
                at.time = *time;
                continue;
            }
            at.time = file.time_of(line);
            last = head.map(|h| (at.reader, range.start..range.start + h.len(), at.time));
        }
        for (matcher, found) in matchers.iter_mut().zip(&mut self.found) {
            found.clear();
            let mut start = 0;
            while start < lines.len() {
                let reader = lines[start].reader;
                let end = lines[start..]
                    .iter()
                    .position(|l| l.reader != reader)
                    .map_or(lines.len(), |n| start + n);
                matcher.find_run(&files[reader].source, text, &ranges[start..end], found);
                start = end;
            }
        }
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
    counted: impl FnMut(u64),
) -> io::Result<Vec<LogReader>> {
    let files: Vec<LogFile> = readers.iter().map(LogReader::file).collect();
    let matchers: Vec<Matchers> = evaluations.iter().map(|e| e.matchers()).collect();
    let mut apply = Apply::new(evaluations, &files, counted);
    let mut readers = if threads <= 1 {
        let mut matchers = matchers;
        let mut chunk = Chunk::new(apply.evaluations.len());
        let mut each = |chunk: &mut Chunk| {
            chunk.find(&files, &mut matchers);
            apply.chunk(chunk);
            chunk.lines.clear();
        };
        let readers = read(readers, &mut chunk, &mut each)?;
        if !chunk.lines.is_empty() {
            each(&mut chunk);
        }
        readers
    } else {
        std::thread::scope(|scope| {
            // Bounded: the reader waits for the workers rather than queueing the whole log.
            let (work, work_queue) = sync_channel::<Chunk>(threads);
            let work_queue = Arc::new(Mutex::new(work_queue));
            let (done, finished) = channel::<Chunk>();
            for _ in 0..threads {
                let queue = work_queue.clone();
                let done = done.clone();
                let mut matchers = matchers.clone();
                let files = &files;
                scope.spawn(move || {
                    loop {
                        // The lock is held only to take a chunk.
                        let next = queue.lock().map(|q| q.recv());
                        let Ok(Ok(mut chunk)) = next else { break };
                        chunk.find(files, &mut matchers);
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
                evaluations: apply.evaluations.len(),
            };
            let mut current = stage.fresh();
            let read = read(readers, &mut current, |full| {
                let next = stage.fresh();
                stage.send(std::mem::replace(full, next), &mut |c| apply.chunk(c));
            });
            if !current.lines.is_empty() {
                stage.send(current, &mut |c| apply.chunk(c));
            }
            stage.drain(&mut |c| apply.chunk(c));
            read
        })?
    };
    for (reader, untimed) in readers.iter_mut().zip(&apply.untimed) {
        reader.untimed += untimed;
    }
    Ok(readers)
}

/// Reads every line of `readers` into `chunk`, calling `full` with each full chunk (which
/// it empties or replaces): one file is read in pieces straight into the chunk's buffer;
/// several are merged in time order (each line's time read to order it) and copied in.
/// A last partial chunk is left in `chunk`.
fn read(
    mut readers: Vec<LogReader>,
    chunk: &mut Chunk,
    mut full: impl FnMut(&mut Chunk),
) -> io::Result<Vec<LogReader>> {
    if let [reader] = readers.as_mut_slice() {
        while reader.read_lines(0, &mut chunk.lines)? {
            full(chunk);
        }
        return Ok(readers);
    }
    merge(readers, |line, reader, time| {
        chunk.lines.push(&line.bytes, line.offset, reader, time);
        if chunk.lines.text.len() >= PIECE_BYTES {
            full(chunk);
        }
    })
}

/// The window stage: counts each line's matches in input order.
struct Apply<'a, 'e, C> {
    evaluations: &'a mut [&'e mut Evaluation],
    files: &'a [LogFile],
    counted: C,
    lines: u64,
    /// Per file: the time of its last line (a line without one takes it) and how many
    /// lines took it.
    last_time: Vec<Option<DateTime<Utc>>>,
    untimed: Vec<u64>,
    /// A matching line as the detector takes it, its buffers reused.
    line: Option<LogLine>,
}

impl<'a, 'e, C: FnMut(u64)> Apply<'a, 'e, C> {
    fn new(evaluations: &'a mut [&'e mut Evaluation], files: &'a [LogFile], counted: C) -> Self {
        Apply {
            evaluations,
            files,
            counted,
            lines: 0,
            last_time: vec![None; files.len()],
            untimed: vec![0; files.len()],
            line: None,
        }
    }

    fn chunk(&mut self, chunk: &Chunk) {
        let Lines {
            text,
            ranges,
            lines,
        } = &chunk.lines;
        for (i, (at, range)) in lines.iter().zip(ranges).enumerate() {
            let file = &self.files[at.reader];
            let time = match at.time {
                Some(time) => time,
                None => {
                    self.untimed[at.reader] += 1;
                    self.last_time[at.reader].unwrap_or(file.reference)
                }
            };
            self.last_time[at.reader] = Some(time);
            for (evaluation, found) in self.evaluations.iter_mut().zip(&chunk.found) {
                let found = found.line(i);
                if found.matches.is_empty() {
                    evaluation.observe_nothing(time);
                    continue;
                }
                let line = self.line.get_or_insert_with(|| LogLine {
                    source: file.source.clone(),
                    path: file.path.clone(),
                    offset: 0,
                    bytes: Vec::new(),
                    arrival: time,
                    time: None,
                });
                if !Arc::ptr_eq(&line.path, &file.path) {
                    line.source = file.source.clone();
                    line.path = file.path.clone();
                }
                line.offset = at.offset;
                line.arrival = time;
                line.bytes.clear();
                line.bytes.extend_from_slice(&text[range.clone()]);
                evaluation.observe_found(line, time, found);
            }
            self.lines += 1;
            (self.counted)(self.lines);
        }
    }
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
        chunk.lines.clear();
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
