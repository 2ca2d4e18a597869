//! Reading historical logs for `replay`: plain or gzip files, each line with its own time,
//! several files merged into one stream in time order.
//!
//! Merging matters: `auth.log.1` and `auth.log` given in any order (or two sources covering
//! the same day) must reach the windows as the day happened, not file after file.

use crate::sources::LogLine;
use crate::sources::timestamp::TimestampFormat;
use chrono::{DateTime, Utc};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Read buffer per file.
const BUFFER: usize = 256 << 10;

/// Bytes of whole lines read in one piece by [`LogReader::read_lines`]: large enough that
/// handing a piece to a worker and its one literal pass cost nothing per line, small
/// enough that the pieces in flight stay a few MiB.
pub const PIECE_BYTES: usize = 1 << 20;

/// Counts the bytes read from the file itself (compressed bytes for a `.gz`), for progress.
struct Counting {
    file: File,
    read: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// How one log file is read.
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// Source the file's lines belong to.
    pub source: String,
    /// How its lines carry their time.
    pub format: TimestampFormat,
    /// Longest line kept (the rest is cut, as the tailer does).
    pub max_line_bytes: usize,
}

/// One log file being read line by line.
pub struct LogReader {
    reader: Box<dyn BufRead + Send>,
    format: TimestampFormat,
    /// Year reference for formats without a year: the file's modification time.
    reference: DateTime<Utc>,
    max_line_bytes: usize,
    offset: u64,
    last_time: Option<DateTime<Utc>>,
    buf: Vec<u8>,
    line: LogLine,
    /// Lines whose time could not be read (they took the time of the line before).
    pub untimed: u64,
}

impl LogReader {
    /// Opens a log; gzip is recognised by its magic bytes, whatever the name.
    pub fn open(path: &Path, spec: &LogSpec, read: Arc<AtomicU64>) -> io::Result<LogReader> {
        let file = File::open(path)?;
        let reference = file
            .metadata()?
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        let mut raw = BufReader::with_capacity(BUFFER, Counting { file, read });
        let gzip = raw.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                BUFFER,
                flate2::bufread::MultiGzDecoder::new(raw),
            ))
        } else {
            Box::new(raw)
        };
        let name: Arc<str> = path.display().to_string().into();
        Ok(LogReader {
            reader,
            format: spec.format.clone(),
            reference,
            max_line_bytes: spec.max_line_bytes.max(1),
            offset: 0,
            last_time: None,
            buf: Vec::new(),
            line: LogLine {
                source: spec.source.as_str().into(),
                path: name,
                offset: 0,
                bytes: Vec::new(),
                arrival: reference,
                time: None,
            },
            untimed: 0,
        })
    }

    /// What every line of this file shares: its source, path and how its times read.
    pub fn file(&self) -> LogFile {
        LogFile {
            source: self.line.source.clone(),
            path: self.line.path.clone(),
            format: self.format.clone(),
            reference: self.reference,
        }
    }

    /// Appends the next whole lines of the file (about [`PIECE_BYTES`], at least one line
    /// however long) to `lines` as lines of reader `reader`, untimed: their times are read
    /// by [`LogFile::time_of`] where the lines are matched. Returns false at the end of the
    /// file. A last line without a newline is a line; lines are cut at the source's
    /// `max_line_bytes` and lose a `\r` before their newline, as [`Merge`] reads them.
    pub fn read_lines(&mut self, reader: usize, lines: &mut Lines) -> io::Result<bool> {
        let text = &mut lines.text;
        let base = text.len();
        // What the last piece left after its last newline comes first.
        text.append(&mut self.buf);
        // No newline in `text[base..searched]`: a line longer than a piece is searched
        // once, however many reads it takes.
        let mut searched = base;
        loop {
            if text.len() - base >= PIECE_BYTES {
                // Whole lines only: the rest waits for the next piece.
                if let Some(last) = memchr::memrchr(b'\n', &text[searched..]) {
                    let cut = searched + last + 1;
                    self.buf.extend_from_slice(&text[cut..]);
                    text.truncate(cut);
                    break;
                }
                searched = text.len();
            }
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                break;
            }
            let room = (base + PIECE_BYTES).saturating_sub(text.len());
            let n = match room {
                // One line longer than a piece: read on until it ends.
                0 => available.len(),
                room => available.len().min(room),
            };
            text.extend_from_slice(&available[..n]);
            self.reader.consume(n);
        }
        if text.len() == base {
            return Ok(false);
        }
        let mut start = base;
        while start < text.len() {
            let newline = memchr::memchr(b'\n', &text[start..]).map(|i| start + i);
            let next = newline.map_or(text.len(), |i| i + 1);
            let mut end = newline.unwrap_or(text.len());
            if end > start && text[end - 1] == b'\r' {
                end -= 1;
            }
            end = end.min(start + self.max_line_bytes);
            lines.ranges.push(start..end);
            lines.lines.push(LineAt {
                offset: self.offset,
                reader,
                time: None,
            });
            self.offset += (next - start) as u64;
            start = next;
        }
        Ok(true)
    }

    /// Reads the next line; returns its time, or `None` at the end of the file.
    fn advance(&mut self) -> io::Result<Option<DateTime<Utc>>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.line.offset = self.offset;
        self.offset += n as u64;
        let mut end = self.buf.len();
        if self.buf[..end].ends_with(b"\n") {
            end -= 1;
        }
        if self.buf[..end].ends_with(b"\r") {
            end -= 1;
        }
        end = end.min(self.max_line_bytes);
        self.line.bytes.clear();
        self.line.bytes.extend_from_slice(&self.buf[..end]);
        let time = match self.format.parse(&self.line.bytes, self.reference) {
            Some(t) => t,
            None => {
                self.untimed += 1;
                self.last_time.unwrap_or(self.reference)
            }
        };
        self.last_time = Some(time);
        self.line.arrival = time;
        Ok(Some(time))
    }
}

/// What the lines of one log file share.
#[derive(Debug, Clone)]
pub struct LogFile {
    /// Source the lines belong to.
    pub source: Arc<str>,
    /// The file's path as given, shown in evidence and messages like a tailed file's path.
    pub path: Arc<str>,
    format: TimestampFormat,
    /// Year reference for formats without a year.
    pub reference: DateTime<Utc>,
}

impl LogFile {
    /// The time `line` carries, if its format reads one.
    pub fn time_of(&self, line: &[u8]) -> Option<DateTime<Utc>> {
        self.format.parse(line, self.reference)
    }

    /// How the file's lines carry their time.
    pub fn format(&self) -> &TimestampFormat {
        &self.format
    }
}

/// Where one line of [`Lines`] came from, and its time once read.
#[derive(Debug, Clone)]
pub struct LineAt {
    /// Byte offset of the line's start in its file.
    pub offset: u64,
    /// Which reader (file) it came from.
    pub reader: usize,
    /// Its time; `None` until read, or when it carries none.
    pub time: Option<DateTime<Utc>>,
}

/// Whole lines in one buffer: the text, each line's range in it (each range followed by
/// a newline before the next starts) and where each came from.
#[derive(Debug, Default)]
pub struct Lines {
    /// The lines' bytes, newlines included.
    pub text: Vec<u8>,
    /// Each line's bytes in `text`, without newline, cut at its source's longest line.
    pub ranges: Vec<Range<usize>>,
    /// Each line's origin and time.
    pub lines: Vec<LineAt>,
}

impl Lines {
    /// Empties it, keeping its buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ranges.clear();
        self.lines.clear();
    }

    /// Lines held since the last [`Lines::clear`]; `ranges` and `lines` both have this many.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether it holds no line.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Appends a copy of `bytes` as a line of reader `reader` at `offset`, read at `time`.
    pub fn push(&mut self, bytes: &[u8], offset: u64, reader: usize, time: DateTime<Utc>) {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        self.ranges.push(start..self.text.len());
        self.text.push(b'\n');
        self.lines.push(LineAt {
            offset,
            reader,
            time: Some(time),
        });
    }
}

/// Several logs read as one stream in time order (ties and equal times keep file order):
/// each file's next line waits in a heap by its time.
pub struct Merge {
    readers: Vec<LogReader>,
    /// Readers with a line read and not yet taken, by that line's time.
    heap: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    /// The reader whose line was taken last: it reads its next one before the next take.
    taken: Option<usize>,
}

impl Merge {
    /// Reads the first line of every reader.
    pub fn new(mut readers: Vec<LogReader>) -> io::Result<Merge> {
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(t) = r.advance()? {
                heap.push(Reverse((t, i)));
            }
        }
        Ok(Merge {
            readers,
            heap,
            taken: None,
        })
    }

    /// The next line in time order, with the index of its reader and its time (a line
    /// without one takes the time of its file's line before); `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<(&LogLine, usize, DateTime<Utc>)>> {
        if let Some(i) = self.taken.take()
            && let Some(next) = self.readers[i].advance()?
        {
            self.heap.push(Reverse((next, i)));
        }
        let Some(Reverse((time, i))) = self.heap.pop() else {
            return Ok(None);
        };
        self.taken = Some(i);
        Ok(Some((&self.readers[i].line, i, time)))
    }

    /// Appends the next lines in time order (about [`PIECE_BYTES`]) to `lines`, with their
    /// times; false at the end.
    pub fn read_lines(&mut self, lines: &mut Lines) -> io::Result<bool> {
        let before = lines.len();
        while lines.text.len() < PIECE_BYTES {
            let Some((line, reader, time)) = self.next_line()? else {
                break;
            };
            lines.push(&line.bytes, line.offset, reader, time);
        }
        Ok(lines.len() > before)
    }

    /// The readers, for their counts.
    pub fn into_readers(self) -> Vec<LogReader> {
        self.readers
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;

    pub(in crate::cli::tools) fn spec() -> LogSpec {
        LogSpec {
            source: "s".into(),
            format: TimestampFormat::Rfc3339,
            max_line_bytes: 1024,
        }
    }

    #[test]
    fn merges_files_by_time_and_reads_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        std::fs::write(
            &a,
            "2026-11-22T10:00:02Z a2\n2026-11-22T10:00:04Z a4\r\ncontinued\n",
        )
        .unwrap();
        let b = dir.path().join("b.log.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"2026-11-22T10:00:01Z b1\n2026-11-22T10:00:03Z b3")
            .unwrap();
        std::fs::write(&b, gz.finish().unwrap()).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let readers = vec![
            LogReader::open(&a, &spec(), counter.clone()).unwrap(),
            LogReader::open(&b, &spec(), counter.clone()).unwrap(),
        ];
        let mut seen = Vec::new();
        let mut merge = Merge::new(readers).unwrap();
        while let Some((line, _, _)) = merge.next_line().unwrap() {
            seen.push(String::from_utf8_lossy(&line.bytes).to_string())
        }
        let readers = merge.into_readers();
        assert_eq!(
            seen,
            [
                "2026-11-22T10:00:01Z b1",
                "2026-11-22T10:00:02Z a2",
                "2026-11-22T10:00:03Z b3",
                "2026-11-22T10:00:04Z a4",
                "continued",
            ]
        );
        assert_eq!(readers[0].untimed, 1);
        assert!(counter.load(Ordering::Relaxed) > 0);
    }

    /// Every line [`Merge`] reads, as (bytes, offset, time or none).
    pub(in crate::cli::tools) type Read = Vec<(Vec<u8>, u64, Option<DateTime<Utc>>)>;

    pub(in crate::cli::tools) fn by_lines(path: &Path, spec: &LogSpec) -> Read {
        let reader = LogReader::open(path, spec, Arc::default()).unwrap();
        let format = spec.format.clone();
        let mut out = Vec::new();
        let mut merge = Merge::new(vec![reader]).unwrap();
        while let Some((line, _, _)) = merge.next_line().unwrap() {
            let time = format.parse(&line.bytes, line.arrival);
            out.push((line.bytes.clone(), line.offset, time))
        }
        out
    }

    fn by_pieces(path: &Path, spec: &LogSpec) -> (Read, usize) {
        let mut reader = LogReader::open(path, spec, Arc::default()).unwrap();
        let file = reader.file();
        let mut lines = Lines::default();
        let (mut out, mut pieces) = (Vec::new(), 0);
        while reader.read_lines(3, &mut lines).unwrap() {
            pieces += 1;
            for (at, range) in lines.lines.iter().zip(&lines.ranges) {
                assert_eq!(at.reader, 3);
                let bytes = &lines.text[range.clone()];
                out.push((bytes.to_vec(), at.offset, file.time_of(bytes)));
            }
            lines.clear();
        }
        (out, pieces)
    }

    /// A log that is awkward to cut into pieces, with `lines` ordinary lines (the `i`th at
    /// second `i + shift` of 10:00 on a day): lines across piece boundaries, CRLF, a line
    /// longer than a piece and than 200 bytes, empty lines, and a last line without a
    /// newline. Read with `max_line_bytes: 200`, it has `lines + 4` lines.
    pub(in crate::cli::tools) fn awkward_log(path: &Path, lines: u32, shift: u32) {
        let mut text = Vec::new();
        for i in 0..lines {
            let end: &[u8] = if i % 3 == 0 { b"\r\n" } else { b"\n" };
            let second = i + shift;
            text.extend_from_slice(
                format!(
                    "2026-11-22T10:{:02}:{:02}Z host line {i} {}",
                    second / 60 % 60,
                    second % 60,
                    "x".repeat((i % 97) as usize)
                )
                .as_bytes(),
            );
            text.extend_from_slice(end);
            if i == lines / 2 {
                // Longer than a piece, and than the longest line kept.
                text.extend_from_slice(b"2026-11-22T11:00:00Z long ");
                text.extend(std::iter::repeat_n(b'y', PIECE_BYTES * 2 + 17));
                text.extend_from_slice(b"\r\n\n\r\n");
            }
        }
        text.extend_from_slice(b"2026-11-22T12:00:00Z the last line, without newline");
        std::fs::write(path, &text).unwrap();
    }

    /// Reading in pieces of whole lines gives exactly the lines, offsets and times that
    /// reading line by line gives.
    #[test]
    fn pieces_hold_the_same_lines_as_reading_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        awkward_log(&path, 40_000, 0);
        let spec = LogSpec {
            max_line_bytes: 200,
            ..spec()
        };
        let expected = by_lines(&path, &spec);
        let (got, pieces) = by_pieces(&path, &spec);
        assert!(pieces >= 4, "{pieces} pieces");
        assert_eq!(got.len(), expected.len());
        assert_eq!(got.len(), 40_004);
        for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(a, b, "line {i}");
        }
        // An empty file has no line; a newline alone is one empty line.
        std::fs::write(&path, b"").unwrap();
        assert_eq!(by_pieces(&path, &spec).0, by_lines(&path, &spec));
        std::fs::write(&path, b"\n").unwrap();
        assert_eq!(by_pieces(&path, &spec).0.len(), 1);
        assert_eq!(by_pieces(&path, &spec).0, by_lines(&path, &spec));
    }
}
