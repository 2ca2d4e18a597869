//! Replay on every core: the logs are read in pieces of whole lines (a single log straight
//! into the piece's buffer, several merged in time order and copied in) by whichever
//! thread takes the next piece; that thread reads the lines' times and finds their matches
//! (one literal pass over the piece, then the gate and captures of the lines it names: the
//! per-line work, [`crate::detection::Matchers::find_run`]); one stage, on the calling
//! thread, takes the pieces back in input order and counts their matches into windows and
//! incidents. Windows see the lines in exactly the order one thread would, so the
//! incidents are the same. With one thread everything runs on the calling thread. The
//! threads and the ordering are [`crate::detection::in_order`], which the daemon's
//! pipeline runs too.

use super::eval::Evaluation;
use super::input::{Lines, LogFile, LogReader, Merge};
use crate::detection::in_order::{Source, in_order};
use crate::detection::{Found, LineRef, Matchers};
use crate::sources::timestamp::HeadTimes;
use chrono::{DateTime, Utc};
use std::io;

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
/// on `threads` threads in all (1: everything on this thread). This thread counts the
/// matches into windows; the others read pieces and find their matches.
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
    let mut reading = Reading::new(readers)?;
    in_order(
        &mut workers,
        || Chunk::new(count),
        &mut reading,
        |matchers, chunk: &mut Chunk| chunk.find(&files, matchers),
        |chunk| {
            apply.chunk(chunk);
            chunk.lines.clear();
        },
    );
    let mut readers = reading.finish()?;
    for (reader, untimed) in readers.iter_mut().zip(&apply.untimed) {
        reader.untimed += untimed;
    }
    Ok(readers)
}

/// Where the pieces come from: one file read in pieces straight into the piece's buffer
/// (times read later, by the worker that finds the piece's matches); several merged in
/// time order (each line's time read to order it) and copied in.
struct Reading {
    logs: Logs,
    /// The first read error: the input ends there.
    error: Option<io::Error>,
}

enum Logs {
    One(LogReader),
    Merged(Merge),
}

impl Reading {
    fn new(mut readers: Vec<LogReader>) -> io::Result<Reading> {
        let logs = match readers.len() {
            1 => Logs::One(readers.remove(0)),
            _ => Logs::Merged(Merge::new(readers)?),
        };
        Ok(Reading { logs, error: None })
    }

    /// The readers, for their counts, or the error that stopped the reading.
    fn finish(self) -> io::Result<Vec<LogReader>> {
        match (self.error, self.logs) {
            (Some(e), _) => Err(e),
            (None, Logs::One(reader)) => Ok(vec![reader]),
            (None, Logs::Merged(merge)) => Ok(merge.into_readers()),
        }
    }
}

impl Source<Chunk> for Reading {
    fn fill(&mut self, chunk: &mut Chunk) -> bool {
        let read = match &mut self.logs {
            Logs::One(reader) => reader.read_lines(0, &mut chunk.lines),
            Logs::Merged(merge) => merge.read_lines(&mut chunk.lines),
        };
        read.unwrap_or_else(|e| {
            self.error = Some(e);
            false
        })
    }
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
                let line = LineRef {
                    source: &file.source,
                    path: &file.path,
                    offset: at.offset,
                    bytes: &text[range.clone()],
                };
                evaluation.observe_found(line, time, found);
            }
            self.lines += 1;
            (self.counted)(self.lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::input::tests::{Read, awkward_log, by_lines, spec};
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    /// Lines as the in-order stage takes them: (reader, bytes, offset, time).
    type Applied = Vec<(usize, Vec<u8>, u64, Option<DateTime<Utc>>)>;

    /// Every line the in-order stage takes from `paths` on `threads` threads, in order.
    fn applied(paths: &[&Path], threads: usize) -> Applied {
        let spec = super::super::input::LogSpec {
            max_line_bytes: 200,
            ..spec()
        };
        let readers: Vec<LogReader> = paths
            .iter()
            .map(|p| LogReader::open(p, &spec, Arc::default()).unwrap())
            .collect();
        let files: Vec<LogFile> = readers.iter().map(LogReader::file).collect();
        let mut reading = Reading::new(readers).unwrap();
        let mut workers = vec![(); threads];
        let mut out = Vec::new();
        in_order(
            &mut workers,
            || Chunk::new(0),
            &mut reading,
            |_, chunk: &mut Chunk| {
                // Uneven work, so pieces come back out of order.
                if chunk.lines.lines[0].offset.is_multiple_of(3) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                chunk.find(&files, &mut []);
            },
            |chunk| {
                let Lines {
                    text,
                    ranges,
                    lines,
                } = &chunk.lines;
                for (at, range) in lines.iter().zip(ranges) {
                    out.push((at.reader, text[range.clone()].to_vec(), at.offset, at.time));
                }
                chunk.lines.clear();
            },
        );
        let readers = reading.finish().unwrap();
        assert_eq!(readers.len(), paths.len());
        out
    }

    /// With any number of threads, the in-order stage takes every line exactly once, in
    /// input order, as reading line by line gives it: lines across piece boundaries, CRLF,
    /// a line longer than two pieces, empty lines, a last line without a newline; one log
    /// read in pieces, and two merged in time order.
    #[test]
    fn every_line_is_applied_once_in_input_order_with_any_number_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        awkward_log(&a, 40_000, 0);
        awkward_log(&b, 30_000, 7);
        let spec = super::super::input::LogSpec {
            max_line_bytes: 200,
            ..spec()
        };
        let one = by_lines(&a, &spec);
        assert_eq!(one.len(), 40_004);
        // Two logs merged: the earlier head line first, the first log's on a tie; a line
        // without a time takes its log's time before.
        let timed = |read: Read| {
            let mut last = None;
            read.into_iter()
                .map(|(bytes, offset, time)| {
                    last = time.or(last);
                    (bytes, offset, last.unwrap())
                })
                .collect::<Vec<_>>()
        };
        let (mut left, mut right) = (
            timed(one.clone()).into_iter().peekable(),
            timed(by_lines(&b, &spec)).into_iter().peekable(),
        );
        let mut merged = Vec::new();
        loop {
            let take_left = match (left.peek(), right.peek()) {
                (Some(l), Some(r)) => l.2 <= r.2,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (reader, (bytes, offset, time)) = if take_left {
                (0, left.next().unwrap())
            } else {
                (1, right.next().unwrap())
            };
            merged.push((reader, bytes, offset, Some(time)));
        }
        let one: Vec<_> = one
            .into_iter()
            .map(|(bytes, offset, time)| (0, bytes, offset, time))
            .collect();
        for threads in [1, 2, 3] {
            let got = applied(&[&a], threads);
            assert_eq!(got.len(), one.len(), "one log, {threads} threads");
            for (i, (got, want)) in got.iter().zip(&one).enumerate() {
                assert_eq!(got, want, "one log, {threads} threads, line {i}");
            }
            let got = applied(&[&a, &b], threads);
            assert_eq!(got.len(), merged.len(), "two logs, {threads} threads");
            for (i, (got, want)) in got.iter().zip(&merged).enumerate() {
                assert_eq!(got, want, "two logs, {threads} threads, line {i}");
            }
        }
    }
}
