//! Receiving syslog over the network (RFC 3164 and RFC 5424; UDP, and TCP with octet
//! counting or newline framing), so one logwarden can take what rsyslog forwards from other
//! hosts.
//!
//! Every message is turned into the same text the local log files hold
//! (`TIMESTAMP HOST APP[PID]: MSG`), so one rule pack serves files and network alike.
//! Buffers are bounded: an oversized or malformed frame is counted and dropped, never a
//! crash, and a flood of connections is refused beyond a limit. Network input has no
//! checkpoint: what is in flight when the daemon stops is lost, as with any syslog receiver.

use super::{Batch, LogLine};
use crate::config::SyslogListen;
use crate::metrics::Metrics;
use chrono::Utc;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Largest UDP datagram.
const DATAGRAM: usize = 65_535;
/// Bytes read from a TCP connection per call.
const TCP_CHUNK: usize = 64 * 1024;

/// Why a frame was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Longer than `max_line_bytes`.
    Oversized,
    /// No `<PRI>` header, or a broken octet count.
    Malformed,
    /// A TCP connection beyond `max_connections`.
    Refused,
}

impl Dropped {
    fn label(self) -> &'static str {
        match self {
            Dropped::Oversized => "oversized",
            Dropped::Malformed => "malformed",
            Dropped::Refused => "connection_refused",
        }
    }
}

/// A syslog source's sockets, bound before the daemon reports ready.
pub struct SyslogSource {
    name: Arc<str>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    max_line_bytes: usize,
    max_connections: usize,
}

impl SyslogSource {
    /// Binds the configured addresses; an address in use is an error at start, not later.
    pub async fn bind(
        name: &str,
        listen: &SyslogListen,
        max_line_bytes: usize,
    ) -> Result<Self, String> {
        let udp = match &listen.udp {
            Some(addr) => Some(
                UdpSocket::bind(addr)
                    .await
                    .map_err(|e| format!("syslog source {name:?}: cannot bind udp {addr}: {e}"))?,
            ),
            None => None,
        };
        let tcp = match &listen.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("syslog source {name:?}: cannot bind tcp {addr}: {e}"))?,
            ),
            None => None,
        };
        Ok(SyslogSource {
            name: Arc::from(name),
            udp,
            tcp,
            max_line_bytes,
            max_connections: listen.max_connections,
        })
    }

    /// Receives until the task is aborted.
    pub async fn run(self, tx: mpsc::Sender<Batch>, metrics: Arc<Metrics>) {
        let mut tasks = JoinSet::new();
        if let Some(socket) = self.udp {
            let (name, max, tx, metrics) = (
                self.name.clone(),
                self.max_line_bytes,
                tx.clone(),
                metrics.clone(),
            );
            tasks.spawn(receive_udp(socket, name, max, tx, metrics));
        }
        if let Some(listener) = self.tcp {
            let (name, max, tx, metrics) = (
                self.name.clone(),
                self.max_line_bytes,
                tx.clone(),
                metrics.clone(),
            );
            tasks.spawn(accept_tcp(
                listener,
                name,
                max,
                self.max_connections,
                tx,
                metrics,
            ));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Counts frames and hands accepted ones to the pipeline.
struct Intake {
    source: Arc<str>,
    path: Arc<str>,
    max_line_bytes: usize,
    metrics: Arc<Metrics>,
    frames: u64,
}

impl Intake {
    fn new(source: Arc<str>, path: String, max_line_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Intake {
            source,
            path: Arc::from(path),
            max_line_bytes,
            metrics,
            frames: 0,
        }
    }

    fn drop_frame(&self, why: Dropped) {
        self.metrics
            .syslog_frames_dropped
            .with_label_values(&[&self.source, why.label()])
            .inc();
    }

    /// Turns a frame into a line, or counts why it was dropped.
    fn accept(&mut self, frame: &[u8], out: &mut Vec<LogLine>) {
        if frame.len() > self.max_line_bytes {
            return self.drop_frame(Dropped::Oversized);
        }
        let Some(text) = normalize(frame) else {
            return self.drop_frame(Dropped::Malformed);
        };
        self.metrics
            .bytes_read
            .with_label_values(&[&self.source])
            .inc_by(frame.len() as u64);
        self.metrics
            .lines_read
            .with_label_values(&[&self.source])
            .inc();
        out.push(LogLine {
            source: self.source.clone(),
            path: self.path.clone(),
            offset: self.frames,
            bytes: text,
            arrival: Utc::now(),
            time: None,
        });
        self.frames += 1;
    }
}

async fn receive_udp(
    socket: UdpSocket,
    source: Arc<str>,
    max: usize,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
) {
    let addr = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut intake = Intake::new(source, format!("syslog+udp://{addr}"), max, metrics);
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _peer)) => n,
            Err(e) => {
                tracing::warn!(error = %e, "syslog udp receive failed");
                continue;
            }
        };
        let mut lines = Vec::with_capacity(1);
        // One message per datagram; a trailing newline is framing, not content.
        let frame = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
        intake.accept(frame, &mut lines);
        if !forward(&tx, lines).await {
            return;
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    source: Arc<str>,
    max: usize,
    max_connections: usize,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "syslog tcp accept failed");
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics
                .syslog_frames_dropped
                .with_label_values(&[&source, Dropped::Refused.label()])
                .inc();
            drop(stream);
            continue;
        };
        let intake = Intake::new(
            source.clone(),
            format!("syslog+tcp://{peer}"),
            max,
            metrics.clone(),
        );
        let tx = tx.clone();
        connections.spawn(async move {
            receive_tcp(stream, peer, intake, tx).await;
            drop(permit);
        });
    }
}

async fn receive_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut intake: Intake,
    tx: mpsc::Sender<Batch>,
) {
    let mut framer = TcpFramer::new(intake.max_line_bytes);
    let mut chunk = vec![0u8; TCP_CHUNK];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "syslog tcp connection ended");
                return;
            }
        };
        let mut lines = Vec::new();
        framer.feed(&chunk[..n], |frame| match frame {
            Ok(bytes) => intake.accept(bytes, &mut lines),
            Err(why) => intake.drop_frame(why),
        });
        if !forward(&tx, lines).await {
            return;
        }
    }
}

/// Hands accepted lines to the pipeline; false once the pipeline is gone.
async fn forward(tx: &mpsc::Sender<Batch>, lines: Vec<LogLine>) -> bool {
    lines.is_empty()
        || tx
            .send(Batch {
                lines,
                progress: None,
            })
            .await
            .is_ok()
}

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

    /// Feeds bytes; `emit` gets each complete frame, or why one was dropped.
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Result<&[u8], Dropped>)) {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                if self.skip > 0 {
                    return;
                }
            }
            if self.skip_line {
                match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        self.skip_line = false;
                        bytes = &bytes[i + 1..];
                    }
                    None => return,
                }
            }
            self.buf.extend_from_slice(bytes);
            bytes = &[];
            match self.next_frame(&mut emit) {
                Progress::Again => continue,
                Progress::NeedMore => return,
            }
        }
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

enum Progress {
    Again,
    NeedMore,
}

/// Turns one syslog message into the text a local log file would hold; `None` when it has
/// no valid `<PRI>`.
pub fn normalize(frame: &[u8]) -> Option<Vec<u8>> {
    let rest = frame.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|b| *b == b'>')?;
    let pri: u16 = std::str::from_utf8(&rest[..close]).ok()?.parse().ok()?;
    if close == 0 || pri > 191 {
        return None;
    }
    let body = &rest[close + 1..];
    match body.strip_prefix(b"1 ") {
        Some(v1) => rfc5424(v1),
        // RFC 3164 already reads like a log file line.
        None => Some(body.to_vec()),
    }
}

/// `TIMESTAMP HOST APP PROCID MSGID SD MSG` → `TIMESTAMP HOST APP[PROCID]: MSG`.
fn rfc5424(v1: &[u8]) -> Option<Vec<u8>> {
    let mut fields = v1.splitn(6, |b| *b == b' ');
    let timestamp = fields.next()?;
    let host = fields.next()?;
    let app = fields.next()?;
    let procid = fields.next()?;
    let _msgid = fields.next()?;
    let rest = fields.next().unwrap_or(b"");
    let msg = skip_structured_data(rest)?;
    let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    let mut out = Vec::with_capacity(v1.len());
    out.extend_from_slice(timestamp);
    out.push(b' ');
    out.extend_from_slice(host);
    out.push(b' ');
    out.extend_from_slice(app);
    if procid != b"-" {
        out.push(b'[');
        out.extend_from_slice(procid);
        out.push(b']');
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(msg);
    Some(out)
}

/// The message after STRUCTURED-DATA (`-` or `[id k="v" ...]...`, with `\]` escapes).
fn skip_structured_data(rest: &[u8]) -> Option<&[u8]> {
    if let Some(after) = rest.strip_prefix(b"-") {
        return Some(after.strip_prefix(b" ").unwrap_or(after));
    }
    let mut i = 0;
    while rest.get(i) == Some(&b'[') {
        let mut escaped = false;
        let mut in_quotes = false;
        loop {
            i += 1;
            let b = *rest.get(i)?;
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quotes = !in_quotes,
                b']' if !in_quotes => break,
                _ => {}
            }
        }
        i += 1;
    }
    let after = &rest[i..];
    Some(after.strip_prefix(b" ").unwrap_or(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rfcs_become_log_file_lines() {
        assert_eq!(
            normalize(b"<38>Nov 22 10:00:01 web1 sshd[811]: Failed password").unwrap(),
            b"Nov 22 10:00:01 web1 sshd[811]: Failed password"
        );
        assert_eq!(
            normalize(b"<38>1 2026-11-22T10:00:01.5Z web1 sshd 811 - [meta x=\"a]\\\"b\"][o y=\"1\"] \xEF\xBB\xBFFailed password").unwrap(),
            b"2026-11-22T10:00:01.5Z web1 sshd[811]: Failed password"
        );
        assert_eq!(
            normalize(b"<13>1 2026-11-22T10:00:01Z h app - - - hello").unwrap(),
            b"2026-11-22T10:00:01Z h app: hello"
        );
    }

    #[test]
    fn frames_without_a_valid_pri_are_malformed() {
        for bad in [
            &b"no pri"[..],
            b"<>x",
            b"<999>x",
            b"<12",
            b"<1a>x",
            b"<38>1 2026 h app 1",
        ] {
            assert_eq!(normalize(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, Dropped>> {
        let mut framer = TcpFramer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            framer.feed(c, |f| out.push(f.map(<[u8]>::to_vec)));
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
        let mut framer = TcpFramer::new(16);
        let mut out = Vec::new();
        framer.feed(b"100000 ", |f| out.push(f.map(<[u8]>::to_vec)));
        for _ in 0..10 {
            framer.feed(&[b'x'; 10_000], |f| out.push(f.map(<[u8]>::to_vec)));
        }
        assert!(framer.buf.capacity() < 1024);
        framer.feed(b"4 <1>z", |f| out.push(f.map(<[u8]>::to_vec)));
        framer.feed(&[b'y'; 100], |f| out.push(f.map(<[u8]>::to_vec)));
        framer.feed(b"\n<1>ok\n", |f| out.push(f.map(<[u8]>::to_vec)));
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
}
