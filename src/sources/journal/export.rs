//! Reading `journalctl --output=export`: the journal's own serialisation, parsed as a stream.
//!
//! Each entry is a run of fields ended by an empty line. A field is `NAME=VALUE\n` when the
//! value is printable text, else `NAME\n`, a 64-bit little-endian length and the raw bytes,
//! then `\n`. Unlike `--output=json` this carries non-UTF-8 values as they are, never
//! replaces a long value with `null`, and tells a value's length before its bytes, so every
//! field can be kept up to a bound and the rest skipped: memory stays bounded however long
//! a message is.

use chrono::{DateTime, SecondsFormat, Utc};
use std::io::{self, BufRead, BufReader, ErrorKind, Read};

/// Longest field name accepted; journald's own limit is 64.
const MAX_NAME: usize = 256;
/// Most bytes kept of a field other than `MESSAGE` (cursors are about 150 bytes).
const MAX_FIELD: usize = 4096;

/// The fields of an entry that make up its line; all but `MESSAGE` bounded by [`MAX_FIELD`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// `__CURSOR`: where this entry is in the journal.
    pub cursor: Option<String>,
    /// `__REALTIME_TIMESTAMP`: microseconds since the epoch.
    pub realtime_usec: Option<u64>,
    /// `_HOSTNAME`, the line's host; `-` in the line when missing.
    pub hostname: Option<Vec<u8>>,
    /// `SYSLOG_IDENTIFIER`, the line's program name; `_COMM` stands in when it is missing.
    pub identifier: Option<Vec<u8>>,
    /// `_COMM`: the process name, when the entry has no identifier.
    pub comm: Option<Vec<u8>>,
    /// `_PID`, which journald records itself, else the `SYSLOG_PID` the client claimed; the
    /// line leaves `[PID]` out when there is neither.
    pub pid: Option<Vec<u8>>,
    /// `MESSAGE`, up to the reader's message bound.
    pub message: Vec<u8>,
    /// The message was longer than what was kept.
    pub message_cut: bool,
}

impl Entry {
    /// The entry's time, if it has a valid one.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(i64::try_from(self.realtime_usec?).ok()?)
    }

    /// The entry as a syslog-style line, `TIME HOST IDENTIFIER[PID]: MESSAGE` (time in RFC
    /// 3339 UTC with microseconds; `[PID]` left out when unknown), at most `max` bytes; and
    /// whether anything was cut.
    pub fn line(&self, fallback_time: DateTime<Utc>, max: usize) -> (Vec<u8>, bool) {
        let time = self
            .time()
            .unwrap_or(fallback_time)
            .to_rfc3339_opts(SecondsFormat::Micros, false);
        let dash: &[u8] = b"-";
        let host = self.hostname.as_deref().unwrap_or(dash);
        let ident = self
            .identifier
            .as_deref()
            .or(self.comm.as_deref())
            .unwrap_or(dash);
        let mut line = Vec::with_capacity(time.len() + host.len() + ident.len() + 16);
        line.extend_from_slice(time.as_bytes());
        line.push(b' ');
        line.extend_from_slice(host);
        line.push(b' ');
        line.extend_from_slice(ident);
        if let Some(pid) = &self.pid {
            line.push(b'[');
            line.extend_from_slice(pid);
            line.push(b']');
        }
        line.extend_from_slice(b": ");
        line.extend_from_slice(&self.message);
        let cut = self.message_cut || line.len() > max;
        line.truncate(max);
        (line, cut)
    }
}

/// Which kept field a name is.
#[derive(Clone, Copy)]
enum Field {
    Cursor,
    Realtime,
    Hostname,
    Identifier,
    Comm,
    Pid,
    SyslogPid,
    Message,
    Other,
}

impl Field {
    fn of(name: &[u8]) -> Field {
        match name {
            b"__CURSOR" => Field::Cursor,
            b"__REALTIME_TIMESTAMP" => Field::Realtime,
            b"_HOSTNAME" => Field::Hostname,
            b"SYSLOG_IDENTIFIER" => Field::Identifier,
            b"_COMM" => Field::Comm,
            b"_PID" => Field::Pid,
            b"SYSLOG_PID" => Field::SyslogPid,
            b"MESSAGE" => Field::Message,
            _ => Field::Other,
        }
    }
}

/// The fields `journalctl --output-fields` is asked for (it adds the cursor and timestamps).
pub const OUTPUT_FIELDS: &str = "MESSAGE,_HOSTNAME,SYSLOG_IDENTIFIER,_COMM,_PID,SYSLOG_PID";

/// Parses entries from a `journalctl --output=export` stream.
pub struct ExportReader<R> {
    inner: BufReader<R>,
    message_limit: usize,
}

impl<R: Read> ExportReader<R> {
    /// Reads from `inner`, keeping at most `message_limit` bytes of each message.
    pub fn new(inner: R, message_limit: usize) -> Self {
        ExportReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            message_limit,
        }
    }

    /// Whether more input is already buffered (reading on would not wait).
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// The next whole entry; `None` at the end of the stream (an entry cut off by the end is
    /// dropped: its position was never handed out, so it is read again on resume).
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        let mut entry = Entry::default();
        let mut fields = 0usize;
        let mut name = Vec::with_capacity(32);
        loop {
            name.clear();
            let Some(end) = read_bounded(&mut self.inner, b"=\n", MAX_NAME, &mut name)? else {
                return Ok(None);
            };
            if end == b'\n' && name.is_empty() {
                if fields == 0 {
                    // Blank lines between entries carry nothing.
                    continue;
                }
                return Ok(Some(entry));
            }
            if name.len() > MAX_NAME {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "journal export field name too long",
                ));
            }
            fields += 1;
            let field = Field::of(&name);
            let limit = match field {
                Field::Message => self.message_limit,
                Field::Other => 0,
                _ => MAX_FIELD,
            };
            let mut value = Vec::new();
            let cut = if end == b'=' {
                match read_bounded(&mut self.inner, b"\n", limit, &mut value)? {
                    Some(_) => value.len() > limit,
                    None => return Ok(None),
                }
            } else {
                match self.read_binary(limit, &mut value)? {
                    Some(cut) => cut,
                    None => return Ok(None),
                }
            };
            value.truncate(limit);
            store(&mut entry, field, value, cut);
        }
    }

    /// A binary field's value after its name line: length, bytes, newline. `None` at the
    /// end of the stream; else whether the value was longer than `limit`.
    fn read_binary(&mut self, limit: usize, value: &mut Vec<u8>) -> io::Result<Option<bool>> {
        let mut len = [0u8; 8];
        if !read_exact_or_eof(&mut self.inner, &mut len)? {
            return Ok(None);
        }
        let len = u64::from_le_bytes(len);
        let keep = len.min(limit as u64) as usize;
        value.resize(keep, 0);
        if !read_exact_or_eof(&mut self.inner, value)? {
            return Ok(None);
        }
        let skip = len - keep as u64;
        if io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())? < skip {
            return Ok(None);
        }
        let mut newline = [0u8; 1];
        if !read_exact_or_eof(&mut self.inner, &mut newline)? {
            return Ok(None);
        }
        if newline[0] != b'\n' {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "journal export binary field not followed by a newline",
            ));
        }
        Ok(Some(len > limit as u64))
    }
}

/// Keeps a field's value; a field given more than once keeps its first value.
fn store(entry: &mut Entry, field: Field, value: Vec<u8>, cut: bool) {
    fn first(slot: &mut Option<Vec<u8>>, value: Vec<u8>) {
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    match field {
        Field::Cursor => {
            if entry.cursor.is_none() {
                entry.cursor = String::from_utf8(value).ok();
            }
        }
        Field::Realtime => {
            if entry.realtime_usec.is_none() {
                entry.realtime_usec = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok());
            }
        }
        Field::Hostname => first(&mut entry.hostname, value),
        Field::Identifier => first(&mut entry.identifier, value),
        Field::Comm => first(&mut entry.comm, value),
        // The trusted `_PID` wins over what the program said in `SYSLOG_PID`.
        Field::Pid => entry.pid = Some(value),
        Field::SyslogPid => first(&mut entry.pid, value),
        Field::Message => {
            if entry.message.is_empty() && !entry.message_cut {
                entry.message = value;
                entry.message_cut = cut;
            }
        }
        Field::Other => {}
    }
}

/// Reads up to the first of `ends`, keeping at most `limit` bytes of what comes before it
/// (one more is kept when there was more, so a caller can tell) and consuming the rest.
/// Returns the delimiter found, `None` at the end of the stream.
pub fn read_bounded(
    r: &mut impl BufRead,
    ends: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> io::Result<Option<u8>> {
    loop {
        let buf = match r.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let found = buf.iter().position(|b| ends.contains(b));
        let take = found.unwrap_or(buf.len());
        let room = (limit + 1).saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        match found {
            Some(i) => {
                let end = buf[i];
                r.consume(i + 1);
                return Ok(Some(end));
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

/// `read_exact`, but `false` instead of an error when the stream ends first.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = name.as_bytes().to_vec();
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    fn entries(stream: &[u8], limit: usize) -> Vec<Entry> {
        let mut reader = ExportReader::new(stream, limit);
        let mut out = Vec::new();
        while let Some(e) = reader.next_entry().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn text_and_binary_fields_make_one_line_each() {
        let mut stream = b"__CURSOR=s=1;i=1\n__REALTIME_TIMESTAMP=1796162772310947\n_HOSTNAME=web1\nSYSLOG_IDENTIFIER=sshd\n_PID=811\nMESSAGE=Failed password for root\n\n".to_vec();
        stream.extend_from_slice(
            b"__CURSOR=s=1;i=2\n__REALTIME_TIMESTAMP=1796162772310948\n_COMM=sshd-session\n",
        );
        stream.extend(binary("MESSAGE", b"bad \xff\xfe\nsecond line"));
        stream.extend_from_slice(b"\n");
        let got = entries(&stream, 1000);
        assert_eq!(got.len(), 2);
        let t = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(
            got[0].line(t, 1000).0,
            b"2026-12-01T22:06:12.310947+00:00 web1 sshd[811]: Failed password for root"
        );
        assert_eq!(got[0].cursor.as_deref(), Some("s=1;i=1"));
        assert_eq!(
            got[1].line(t, 1000).0,
            b"2026-12-01T22:06:12.310948+00:00 - sshd-session: bad \xff\xfe\nsecond line"
        );
    }

    #[test]
    fn long_messages_are_cut_to_the_bound_and_the_stream_stays_in_step() {
        let big = vec![b'x'; 10_000];
        let mut stream = b"__CURSOR=a\nMESSAGE=".to_vec();
        stream.extend_from_slice(&big);
        stream.extend_from_slice(b"\n_PID=1\n\n__CURSOR=b\n");
        stream.extend(binary("MESSAGE", &big));
        stream.extend_from_slice(b"_PID=2\n\n");
        let got = entries(&stream, 100);
        assert_eq!(got.len(), 2);
        for (e, pid) in got.iter().zip([b"1", b"2"]) {
            assert_eq!(e.message.len(), 100);
            assert!(e.message_cut);
            assert_eq!(e.pid.as_deref(), Some(&pid[..]));
        }
        let (line, cut) = got[0].line(DateTime::<Utc>::UNIX_EPOCH, 64);
        assert_eq!((line.len(), cut), (64, true));
    }

    #[test]
    fn an_entry_cut_off_by_the_end_of_the_stream_is_not_returned() {
        let got = entries(b"__CURSOR=a\nMESSAGE=one\n\n__CURSOR=b\nMESSAGE=tw", 100);
        assert_eq!(got.len(), 1);
        let mut cut = b"__CURSOR=a\nMESSAGE=one\n\n__CURSOR=b\n".to_vec();
        cut.extend_from_slice(&binary("MESSAGE", b"abcdef")[..12]);
        assert_eq!(entries(&cut, 100).len(), 1);
    }

    #[test]
    fn the_trusted_pid_wins_and_a_missing_pid_is_left_out() {
        let got = entries(
            b"SYSLOG_PID=9\n_PID=7\nSYSLOG_IDENTIFIER=cron\nMESSAGE=m\n\nSYSLOG_IDENTIFIER=k\nMESSAGE=n\n\n",
            100,
        );
        let t = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(
            got[0].line(t, 100).0,
            b"1970-01-01T00:00:00.000000+00:00 - cron[7]: m"
        );
        assert_eq!(
            got[1].line(t, 100).0,
            b"1970-01-01T00:00:00.000000+00:00 - k: n"
        );
    }
}
