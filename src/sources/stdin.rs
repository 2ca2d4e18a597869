//! Reading a source from standard input (`paths: ["-"]`), e.g. `journalctl -f | logwarden run`.

use super::lines::LineSplitter;
use super::{Batch, LogLine};
use crate::metrics::Metrics;
use chrono::Utc;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Reads stdin to its end on the calling thread, sending a batch per read. There is no
/// checkpoint: a pipe cannot be re-read.
pub fn read_stdin(
    source: &str,
    max_line_bytes: usize,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
) {
    let name: Arc<str> = Arc::from(source);
    let path: Arc<str> = Arc::from("-");
    let mut splitter = LineSplitter::new(0, max_line_bytes);
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(source, error = %e, "stdin read failed; the source stops");
                break;
            }
        };
        let arrival = Utc::now();
        let mut lines = Vec::new();
        let mut truncated = 0;
        splitter.feed(&buf[..n], |l| {
            truncated += u64::from(l.truncated);
            lines.push(LogLine {
                source: name.clone(),
                path: path.clone(),
                offset: l.offset,
                bytes: l.bytes.to_vec(),
                arrival,
                time: None,
            });
        });
        metrics
            .bytes_read
            .with_label_values(&[source])
            .inc_by(n as u64);
        metrics
            .lines_read
            .with_label_values(&[source])
            .inc_by(lines.len() as u64);
        metrics
            .lines_truncated
            .with_label_values(&[source])
            .inc_by(truncated);
        if !lines.is_empty()
            && tx
                .blocking_send(Batch {
                    lines,
                    progress: None,
                })
                .is_err()
        {
            return;
        }
    }
    if let Some((offset, bytes, _)) = splitter.finish() {
        metrics.lines_read.with_label_values(&[source]).inc();
        let line = LogLine {
            source: name,
            path,
            offset,
            bytes,
            arrival: Utc::now(),
            time: None,
        };
        let _ = tx.blocking_send(Batch {
            lines: vec![line],
            progress: None,
        });
    }
    tracing::info!(source, "stdin reached its end");
}
