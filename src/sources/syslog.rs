//! Receiving syslog over the network (RFC 3164 and RFC 5424; UDP, and TCP with octet
//! counting or newline framing), so one logwarden can take what rsyslog forwards from other
//! hosts.
//!
//! Every message is turned into the same text the local log files hold
//! (`TIMESTAMP HOST APP[PID]: MSG`), so one rule pack serves files and network alike.
//! Buffers are bounded: an oversized or malformed frame is counted and dropped, never a
//! crash, and a flood of connections is refused beyond a limit. A TCP connection that sends
//! nothing, trickles a frame, or announces a frame too long to be believed is closed and
//! counted, so idle or hostile peers cannot hold the slots real senders need. Datagrams the
//! kernel drops because the receive buffer was full are read from `/proc/net/udp` and
//! counted. Network input has no checkpoint: what is in flight when the daemon stops is
//! lost, as with any syslog receiver.

use super::{Batch, LogLine, SourceError};
use crate::config::SyslogListen;
use crate::metrics::Metrics;
use chrono::Utc;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest UDP datagram: the receive buffer holds any datagram whole, since a datagram read
/// into a shorter buffer is cut silently by the kernel.
const DATAGRAM: usize = 65_535;
/// Bytes read from a TCP connection per call.
const TCP_CHUNK: usize = 64 * 1024;
/// An oversized octet-counted frame up to this many times `max_line_bytes` is skipped whole
/// (a real sender's long message); a longer announcement is not believed and closes the
/// connection, since skipping it would silently swallow everything the peer sends after it.
const SKIP_FACTOR: usize = 16;

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

/// Why the daemon closed a TCP connection (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Nothing arrived for `idle_timeout`.
    Idle,
    /// A frame was not complete `frame_timeout` after its first byte.
    FrameTimeout,
    /// An octet count beyond what is skipped (see [`SKIP_FACTOR`]).
    FrameTooLong,
}

impl Closed {
    /// Every reason, for the metric's zero series.
    pub const ALL: [Closed; 3] = [Closed::Idle, Closed::FrameTimeout, Closed::FrameTooLong];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::FrameTimeout => "frame_timeout",
            Closed::FrameTooLong => "frame_too_long",
        }
    }
}

/// How long a TCP peer may keep a connection without delivering.
#[derive(Debug, Clone, Copy)]
struct TcpLimits {
    idle: Duration,
    frame: Duration,
}

/// A syslog source's sockets, bound before the daemon reports ready.
pub struct SyslogSource {
    name: Arc<str>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    max_line_bytes: usize,
    max_connections: usize,
    limits: TcpLimits,
}

impl SyslogSource {
    /// Binds the configured addresses; an address in use is an error at start, not later.
    pub async fn bind(
        name: &str,
        listen: &SyslogListen,
        max_line_bytes: usize,
    ) -> Result<Self, SourceError> {
        let bind_error = |transport, addr: &dyn std::fmt::Display| {
            let name = name.to_string();
            let addr = addr.to_string();
            move |error| SourceError::Bind {
                name,
                transport,
                addr,
                error,
            }
        };
        let udp = match &listen.udp {
            Some(addr) => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(bind_error("udp", addr))?;
                if let Some(bytes) = listen.udp_buffer_bytes {
                    size_receive_buffer(&socket, name, bytes)?;
                }
                Some(socket)
            }
            None => None,
        };
        let tcp = match &listen.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind_error("tcp", addr))?,
            ),
            None => None,
        };
        Ok(SyslogSource {
            name: Arc::from(name),
            udp,
            tcp,
            max_line_bytes,
            max_connections: listen.max_connections,
            limits: TcpLimits {
                idle: listen.idle_timeout.0,
                frame: listen.frame_timeout.0,
            },
        })
    }

    /// Receives until the task is aborted.
    pub async fn run(self, tx: mpsc::Sender<Batch>, metrics: Arc<Metrics>) {
        let mut tasks = JoinSet::new();
        if let Some(socket) = self.udp {
            count_kernel_drops(&socket, &self.name, &metrics);
            let (name, max, tx, metrics) = (
                self.name.clone(),
                self.max_line_bytes,
                tx.clone(),
                metrics.clone(),
            );
            tasks.spawn(receive_udp(socket, name, max, tx, metrics));
        }
        if let Some(listener) = self.tcp {
            // Every reason's series from the start, at 0 (see `Metrics::preset`).
            for reason in Closed::ALL {
                metrics
                    .syslog_connections_closed
                    .with_label_values(&[&self.name, reason.label()]);
            }
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
                self.limits,
                tx,
                metrics,
            ));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Asks for a receive buffer of `bytes`: with `SO_RCVBUFFORCE` where the daemon may (root
/// or CAP_NET_ADMIN), else `SO_RCVBUF`, which the kernel caps at `net.core.rmem_max`. What
/// the kernel granted is logged, with a hint when it is less than asked.
fn size_receive_buffer(socket: &UdpSocket, name: &str, bytes: usize) -> Result<(), SourceError> {
    let fd = socket.as_raw_fd();
    let wanted = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `fd` is an open socket owned by `socket`; the option value is a c_int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&wanted as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        return Err(SourceError::ReceiveBuffer {
            name: name.to_string(),
            bytes,
            error: std::io::Error::last_os_error(),
        });
    }
    let mut granted: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; `granted` and `len` are valid for writes of their sizes.
    let read = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // The kernel reports twice the usable size (it reserves half for bookkeeping).
    let usable = usize::try_from(granted).unwrap_or(0) / 2;
    if read == 0 && usable < bytes {
        tracing::warn!(source = %name, wanted = bytes, granted = usable, "udp receive buffer smaller than configured; raise net.core.rmem_max or run with CAP_NET_ADMIN");
    } else {
        tracing::info!(source = %name, bytes = usable, "udp receive buffer set");
    }
    Ok(())
}

/// Exports the kernel's drop count of this socket (`/proc/net/udp{,6}`, found by the
/// socket's inode) as `logwarden_syslog_udp_kernel_drops_total`, read at each scrape.
fn count_kernel_drops(socket: &UdpSocket, name: &str, metrics: &Metrics) {
    // SAFETY: fstat writes a `stat` for an open descriptor; zeroed is a valid initial value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(socket.as_raw_fd(), &mut stat) } != 0 {
        tracing::warn!(source = %name, error = %std::io::Error::last_os_error(), "cannot identify the udp socket; kernel drops are not counted");
        return;
    }
    let inode = stat.st_ino;
    let counter = metrics.syslog_udp_kernel_drops.with_label_values(&[name]);
    metrics.before_scrape(Box::new(move || {
        if let Some(drops) = kernel_drops(inode) {
            // The kernel's count only grows while the socket lives.
            counter.inc_by(drops.saturating_sub(counter.get()));
        }
    }));
}

/// The `drops` column of the socket with this inode in `/proc/net/udp` or `/proc/net/udp6`.
fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            udp_table_drops(&text, inode)
        })
}

/// In a `/proc/net/udp` table: `sl local rem st queues tr retrnsmt uid timeout inode ref
/// pointer drops`.
fn udp_table_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        (fields.get(9)?.parse::<u64>().ok()? == inode)
            .then(|| fields.get(12)?.parse().ok())
            .flatten()
    })
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
    limits: TcpLimits,
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
        let (tx, metrics, source) = (tx.clone(), metrics.clone(), source.clone());
        connections.spawn(async move {
            if let Some(why) = receive_tcp(stream, peer, intake, limits, tx).await {
                tracing::debug!(%peer, reason = why.label(), "syslog tcp connection closed");
                metrics
                    .syslog_connections_closed
                    .with_label_values(&[&source, why.label()])
                    .inc();
            }
            drop(permit);
        });
    }
}

/// Reads frames until the peer closes (`None`) or the daemon closes the connection (why).
async fn receive_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut intake: Intake,
    limits: TcpLimits,
    tx: mpsc::Sender<Batch>,
) -> Option<Closed> {
    let mut framer = TcpFramer::new(intake.max_line_bytes);
    let mut chunk = vec![0u8; TCP_CHUNK];
    // When the frame in progress began, if one is.
    let mut frame_started: Option<Instant> = None;
    loop {
        let (deadline, late) = match frame_started {
            Some(start) => (start + limits.frame, Closed::FrameTimeout),
            None => (Instant::now() + limits.idle, Closed::Idle),
        };
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Some(late),
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "syslog tcp connection ended");
                return None;
            }
        };
        let mut lines = Vec::new();
        let mut ended = false;
        let flow = framer.feed(&chunk[..n], |frame| {
            ended = true;
            match frame {
                Ok(bytes) => intake.accept(bytes, &mut lines),
                Err(why) => intake.drop_frame(why),
            }
        });
        // A frame that ended in this chunk means the one in progress (if any) began in it.
        frame_started = match (framer.in_frame(), frame_started) {
            (false, _) => None,
            (true, Some(start)) if !ended => Some(start),
            (true, _) => Some(Instant::now()),
        };
        if !forward(&tx, lines).await {
            return None;
        }
        if let Err(why) = flow {
            return Some(why);
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

enum Progress {
    Again,
    NeedMore,
    Close(Closed),
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

    #[test]
    fn kernel_drops_are_read_from_the_socket_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          120: 0100007F:15AA 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4242 2 0000000000000000 0\n\
          121: 0100007F:15AB 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 77 2 0000000000000000 1234\n";
        assert_eq!(udp_table_drops(table, 77), Some(1234));
        assert_eq!(udp_table_drops(table, 4242), Some(0));
        assert_eq!(udp_table_drops(table, 5), None);
    }
}
