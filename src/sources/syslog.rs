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
//!
//! This file is the listener (sockets, connections, limits); `framing` splits TCP streams,
//! `parse` turns frames into lines, `socket` sizes the UDP buffer and counts kernel drops.

mod framing;
mod parse;
mod socket;

pub use framing::TcpFramer;
pub use parse::normalize;

use super::{Batch, LogLine, SourceError};
use crate::config::SyslogListen;
use crate::metrics::Metrics;
use chrono::Utc;
use socket::{count_kernel_drops, size_receive_buffer};
use std::net::SocketAddr;
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
    /// An octet count beyond what is skipped (see `framing::SKIP_FACTOR`).
    FrameTooLong,
}

impl Closed {
    /// Every reason, for the metric's zero series.
    pub const ALL: [Closed; 3] = [Closed::Idle, Closed::FrameTimeout, Closed::FrameTooLong];

    /// The `reason` label of `logwarden_syslog_connections_closed_total`.
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
