//! Splitting a byte stream into lines, the same way for files and stdin.

/// Turns chunks of bytes into complete lines, holding a partial last line until its newline
/// arrives and cutting lines longer than a limit (the cut is reported, never an allocation
/// that grows with the line).
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    partial_start: u64,
    partial_truncated: bool,
    next_offset: u64,
    max_line_bytes: usize,
}

/// A complete line found by [`LineSplitter::feed`].
#[derive(Debug, PartialEq, Eq)]
pub struct SplitLine<'a> {
    /// Offset of the line's first byte.
    pub offset: u64,
    /// The line without `\n` (and without a trailing `\r`), at most the limit.
    pub bytes: &'a [u8],
    /// Whether bytes past the limit were dropped.
    pub truncated: bool,
}

impl LineSplitter {
    /// A splitter whose next byte is at `offset`.
    pub fn new(offset: u64, max_line_bytes: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            partial_start: offset,
            partial_truncated: false,
            next_offset: offset,
            max_line_bytes: max_line_bytes.max(1),
        }
    }

    /// Offset just after the last complete line: where a restart must read from.
    pub fn checkpoint(&self) -> u64 {
        self.partial_start
    }

    /// Offset of the next byte to be fed.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Feeds the next chunk; calls `emit` for every line it completes.
    pub fn feed(&mut self, chunk: &[u8], mut emit: impl FnMut(SplitLine<'_>)) {
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (piece, after) = rest.split_at(nl);
            let end_offset = self.next_offset + nl as u64 + 1;
            if self.partial.is_empty() && !self.partial_truncated {
                let (bytes, truncated) = self.limit(strip_cr(piece));
                emit(SplitLine {
                    offset: self.partial_start,
                    bytes,
                    truncated,
                });
            } else {
                self.append_partial(piece);
                let truncated = self.partial_truncated;
                let mut line = std::mem::take(&mut self.partial);
                if !truncated && line.last() == Some(&b'\r') {
                    line.pop();
                }
                emit(SplitLine {
                    offset: self.partial_start,
                    bytes: &line,
                    truncated,
                });
                line.clear();
                self.partial = line;
                self.partial_truncated = false;
            }
            self.next_offset = end_offset;
            self.partial_start = end_offset;
            rest = &after[1..];
        }
        self.append_partial(rest);
        self.next_offset += rest.len() as u64;
    }

    /// Ends the stream (a file that will not grow again): its last line, if it had no
    /// newline, is complete now.
    pub fn finish(&mut self) -> Option<(u64, Vec<u8>, bool)> {
        if self.partial.is_empty() && !self.partial_truncated {
            return None;
        }
        let line = std::mem::take(&mut self.partial);
        let truncated = std::mem::replace(&mut self.partial_truncated, false);
        let offset = self.partial_start;
        self.partial_start = self.next_offset;
        Some((offset, line, truncated))
    }

    fn limit<'a>(&self, line: &'a [u8]) -> (&'a [u8], bool) {
        if line.len() > self.max_line_bytes {
            (&line[..self.max_line_bytes], true)
        } else {
            (line, false)
        }
    }

    fn append_partial(&mut self, bytes: &[u8]) {
        let room = self.max_line_bytes.saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.partial.extend_from_slice(&bytes[..room]);
            self.partial_truncated = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<(u64, Vec<u8>, bool)> {
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |l| {
                out.push((l.offset, l.bytes.to_vec(), l.truncated))
            });
        }
        out
    }

    #[test]
    fn holds_a_partial_line_until_its_newline() {
        let mut s = LineSplitter::new(100, 1024);
        let lines = collect(&mut s, &[b"ab", b"c\r\nde", b"f\n", b"gh"]);
        assert_eq!(
            lines,
            vec![(100, b"abc".to_vec(), false), (105, b"def".to_vec(), false)]
        );
        assert_eq!(s.checkpoint(), 109);
        assert_eq!(s.next_offset(), 111);
        assert_eq!(s.finish(), Some((109, b"gh".to_vec(), false)));
        assert_eq!(s.checkpoint(), 111);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn cuts_long_lines_without_keeping_the_excess() {
        let mut s = LineSplitter::new(0, 4);
        let long = vec![b'x'; 10_000];
        let lines = collect(&mut s, &[b"12345678\nab", &long, b"\nok\n"]);
        assert_eq!(lines[0], (0, b"1234".to_vec(), true));
        assert_eq!(lines[1], (9, b"abxx".to_vec(), true));
        assert_eq!(lines[2], (10_012, b"ok".to_vec(), false));
        assert!(s.partial.capacity() < 1024, "excess bytes were buffered");
        assert_eq!(s.checkpoint(), 10_015);
    }

    #[test]
    fn any_bytes_are_fine() {
        let mut s = LineSplitter::new(0, 64);
        let lines = collect(&mut s, &[b"\xff\x00\xfe\n\n"]);
        assert_eq!(
            lines,
            vec![(0, b"\xff\x00\xfe".to_vec(), false), (4, vec![], false)]
        );
    }
}
