//! Reading historical logs for `replay`: plain or gzip files, each line with its own time,
//! several files merged into one stream in time order.
//!
//! Merging matters: `auth.log.1` and `auth.log` given in any order (or two sources covering
//! the same day) must reach the windows as the day happened, not file after file.

use crate::sources::LogLine;
use crate::sources::timestamp::TimestampFormat;
use chrono::{DateTime, Utc};
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// Read buffer per file.
const BUFFER: usize = 256 << 10;

/// Counts the bytes read from the file itself (compressed bytes for a `.gz`), for progress.
struct Counting {
    file: File,
    read: Rc<Cell<u64>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.set(self.read.get() + n as u64);
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
    reader: Box<dyn BufRead>,
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
    pub fn open(path: &Path, spec: &LogSpec, read: Rc<Cell<u64>>) -> io::Result<LogReader> {
        let file = File::open(path)?;
        let reference = file
            .metadata()?
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        let mut raw = BufReader::with_capacity(BUFFER, Counting { file, read });
        let gzip = raw.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if gzip {
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

/// Calls `each` for every line of every reader, in time order across readers (ties and
/// equal times keep file order). Returns the readers for their counts.
pub fn merge(
    mut readers: Vec<LogReader>,
    mut each: impl FnMut(&LogLine, DateTime<Utc>),
) -> io::Result<Vec<LogReader>> {
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(t) = r.advance()? {
            heap.push(Reverse((t, i)));
        }
    }
    while let Some(Reverse((time, i))) = heap.pop() {
        let reader = &mut readers[i];
        each(&reader.line, time);
        if let Some(next) = reader.advance()? {
            heap.push(Reverse((next, i)));
        }
    }
    Ok(readers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec() -> LogSpec {
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
        let counter = Rc::new(Cell::new(0));
        let readers = vec![
            LogReader::open(&a, &spec(), counter.clone()).unwrap(),
            LogReader::open(&b, &spec(), counter.clone()).unwrap(),
        ];
        let mut seen = Vec::new();
        let readers = merge(readers, |line, _| {
            seen.push(String::from_utf8_lossy(&line.bytes).to_string())
        })
        .unwrap();
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
        assert!(counter.get() > 0);
    }
}
