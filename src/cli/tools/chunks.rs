//! Replay on every core: the logs are read in pieces of whole lines (a single log straight
//! into the piece's buffer, several merged in time order and copied in), which go out to
//! worker threads; a worker reads the lines' times and finds their matches (one literal
//! pass over the piece, then the gate and captures of the lines it names: the per-line
//! work, [`crate::detection::Matchers::find_run`]); one stage, on the calling thread,
//! takes the pieces back in input order and counts their matches into windows and
//! incidents. Windows see the lines in exactly the order one thread would, so the
//! incidents are the same. With one thread the worker's part runs on the calling thread.
//! The workers and the ordering are [`crate::detection::in_order`], which the daemon's
//! pipeline runs too.

use super::eval::Evaluation;
use super::input::{Lines, LogFile, LogReader, PIECE_BYTES, merge};
use crate::detection::in_order::in_order;
use crate::detection::{Found, Matchers};
use crate::sources::LogLine;
use crate::sources::timestamp::HeadTimes;
use chrono::{DateTime, Utc};
use std::io;
use std::sync::Arc;

/// A piece of whole lines in input order and, once a worker has been at it, their times
/// and matches for each evaluation.
struct Chunk {
    lines: Lines,
    /// Per evaluation, the matches of each line.
    found: Vec<Found>,
}

impl Chunk {
    fn new(evaluations: usize) -> Self {
        Chunk {
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
        let mut times = HeadTimes::default();
        for (at, range) in lines.iter_mut().zip(ranges.iter()) {
            if at.time.is_some() {
                continue;
            }
            let file = &files[at.reader];
            at.time = times.time_of(
                file.format(),
                at.reader,
                &text[range.clone()],
                file.reference,
            );
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
    let mut workers: Vec<Vec<Matchers>> = (0..threads.max(1))
        .map(|_| evaluations.iter().map(|e| e.matchers()).collect())
        .collect();
    let mut apply = Apply::new(evaluations, &files, counted);
    let count = apply.evaluations.len();
    let mut readers = in_order(
        &mut workers,
        || Chunk::new(count),
        |matchers, chunk: &mut Chunk| chunk.find(&files, matchers),
        |chunk| {
            apply.chunk(chunk);
            chunk.lines.clear();
        },
        |feed| {
            let mut current = feed.fresh();
            let read = read(readers, &mut current, |full| {
                let next = feed.fresh();
                feed.send(std::mem::replace(full, next));
            });
            if !current.lines.is_empty() {
                feed.send(current);
            }
            read
        },
    )?;
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
