//! Splitting a TCP byte stream into syslog frames (RFC 6587 octet counting or newline
//! framing) with bounded buffers.
//!
//! Apart from the listener because framing is a pure state machine over bytes: hostile
//! input (oversized, malformed, or unbelievable frames) is tested here without a socket.

use super::{Closed, Dropped};

/// An oversized octet-counted frame up to this many times `max_line_bytes` is skipped whole
/// (a real sender's long message); a longer announcement is not believed and closes the
/// connection, since skipping it would silently swallow everything the peer sends after it.
pub(super) const SKIP_FACTOR: usize = 16;

/// Splits a TCP byte stream into syslog frames (RFC 6587): `LEN SP MSG` when a frame
/// starts with a digit, else up to the next newline. Holds at most `max` bytes of a frame.
pub struct TcpFramer {
    buf: Vec<u8>,
    max: usize,
    /// Bytes of an oversized frame still to be skipped (octet counting).
    skip: usize,
    /// Discarding up to the next newline (an oversized newline-framed frame).
    skip_line: bool,
}

impl TcpFramer {
    /// A framer that accepts frames up to `max` bytes.
    pub fn new(max: usize) -> Self {
        TcpFramer {
            buf: Vec::new(),
            max,
            skip: 0,
            skip_line: false,
        }
    }

    /// Feeds bytes; `emit` gets each complete frame, or why one was dropped. An error
    /// means the stream cannot be framed any further and the connection must be closed.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut emit: impl FnMut(Result<&[u8], Dropped>),
    ) -> Result<(), Closed> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip > 0 {
                    return Ok(());
                }
            }
            if self.skip_line {
                match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        self.skip_line = false;
                        bytes = &bytes[i + 1..];
                    }
                    None => return Ok(()),
                }
            }
            self.buf.extend_from_slice(bytes);
            bytes = &[];
            match self.next_frame(&mut emit) {
                Progress::Again => continue,
                Progress::NeedMore => return Ok(()),
                Progress::Close(why) => return Err(why),
            }
        }
    }

    /// Whether a frame has begun and not yet ended (bytes held or still to be skipped).
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || self.skip > 0 || self.skip_line
    }

    fn next_frame(&mut self, emit: &mut impl FnMut(Result<&[u8], Dropped>)) -> Progress {
        // Leading newlines between frames are framing.
        let start = self
            .buf
            .iter()
            .position(|b| *b != b'\n' && *b != b'\r')
            .unwrap_or(self.buf.len());
        self.buf.drain(..start);
        let Some(first) = self.buf.first() else {
            return Progress::NeedMore;
        };
        if first.is_ascii_digit() {
            let Some(space) = self.buf.iter().take(12).position(|b| *b == b' ') else {
                if self.buf.len() >= 12 || self.buf.iter().any(|b| !b.is_ascii_digit()) {
                    emit(Err(Dropped::Malformed));
                    self.buf.clear();
                    self.skip_line = true;
                    return Progress::Again;
                }
                return Progress::NeedMore;
            };
            let Ok(len) = std::str::from_utf8(&self.buf[..space])
                .unwrap_or("x")
                .parse::<usize>()
            else {
                emit(Err(Dropped::Malformed));
                self.buf.clear();
                self.skip_line = true;
                return Progress::Again;
            };
            if len > self.max.saturating_mul(SKIP_FACTOR) {
                emit(Err(Dropped::Oversized));
                self.buf.clear();
                return Progress::Close(Closed::FrameTooLong);
            }
            if len > self.max {
                emit(Err(Dropped::Oversized));
                let have = self.buf.len() - space - 1;
                self.skip = len.saturating_sub(have);
                self.buf.clear();
                return Progress::Again;
            }
            if self.buf.len() < space + 1 + len {
                return Progress::NeedMore;
            }
            let frame: Vec<u8> = self.buf.drain(..space + 1 + len).skip(space + 1).collect();
            emit(Ok(&frame));
            return Progress::Again;
        }
        match memchr::memchr(b'\n', &self.buf) {
            Some(i) => {
                let frame: Vec<u8> = self.buf.drain(..=i).collect();
                let frame = &frame[..i];
                emit(Ok(frame.strip_suffix(b"\r").unwrap_or(frame)));
                Progress::Again
            }
            None if self.buf.len() > self.max => {
                emit(Err(Dropped::Oversized));
                self.buf.clear();
                self.skip_line = true;
                Progress::Again
            }
            None => Progress::NeedMore,
        }
    }
}

/// What one step of framing came to.
enum Progress {
    Again,
    NeedMore,
    Close(Closed),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, Dropped>> {
        let mut framer = TcpFramer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            framer.feed(c, |f| out.push(f.map(<[u8]>::to_vec))).unwrap();
        }
        out
    }

    #[test]
    fn octet_counting_and_newline_framing_across_chunk_boundaries() {
        let got = frames(
            64,
            &[
                b"4 <1>a5 <1>b",
                b"c\n<2>line one\r\n<2>li",
                b"ne two\n3 <3",
                b">",
            ],
        );
        assert_eq!(
            got,
            vec![
                Ok(b"<1>a".to_vec()),
                Ok(b"<1>bc".to_vec()),
                Ok(b"<2>line one".to_vec()),
                Ok(b"<2>line two".to_vec()),
                Ok(b"<3>".to_vec()),
            ]
        );
    }

    #[test]
    fn oversized_frames_are_skipped_whole_without_buffering_them() {
        let mut framer = TcpFramer::new(1000);
        let mut out = Vec::new();
        let mut feed = |framer: &mut TcpFramer, bytes: &[u8]| {
            framer
                .feed(bytes, |f| out.push(f.map(<[u8]>::to_vec)))
                .unwrap()
        };
        feed(&mut framer, b"15000 ");
        for _ in 0..14 {
            feed(&mut framer, &[b'x'; 1_000]);
            assert!(framer.in_frame());
        }
        feed(&mut framer, &[b'x'; 1_000]);
        assert!(framer.buf.capacity() < 1024);
        assert!(!framer.in_frame());
        feed(&mut framer, b"4 <1>z");
        feed(&mut framer, &[b'y'; 2000]);
        feed(&mut framer, b"\n<1>ok\n");
        assert!(!framer.in_frame());
        assert_eq!(
            out,
            vec![
                Err(Dropped::Oversized),
                Ok(b"<1>z".to_vec()),
                Err(Dropped::Oversized),
                Ok(b"<1>ok".to_vec())
            ]
        );
    }

    #[test]
    fn an_octet_count_beyond_belief_closes_the_connection_instead_of_swallowing_it() {
        let mut framer = TcpFramer::new(1000);
        let mut out = Vec::new();
        let closed = framer.feed(b"4 <1>a99999999999 <1>rest of the stream\n", |f| {
            out.push(f.map(<[u8]>::to_vec))
        });
        assert_eq!(closed, Err(Closed::FrameTooLong));
        assert_eq!(out, vec![Ok(b"<1>a".to_vec()), Err(Dropped::Oversized)]);
    }

    #[test]
    fn a_frame_in_progress_is_known_so_it_can_be_timed() {
        let mut framer = TcpFramer::new(100);
        let mut feed = |bytes: &[u8]| framer.feed(bytes, |_| {}).map(|()| framer.in_frame());
        assert_eq!(feed(b"<1>half a li"), Ok(true));
        assert_eq!(feed(b"ne\n"), Ok(false));
        assert_eq!(feed(b"10 <1>"), Ok(true));
        assert_eq!(feed(b"abcdefg"), Ok(false));
        assert_eq!(feed(b"\n\r\n"), Ok(false));
    }
}
