//! One run's reading of journalctl's export output: each entry judged (the saved entry
//! again, the first after a gap, or the next line), batched, and handed to the pipeline
//! with the position it reaches.
//!
//! Apart from the source's restart loop because this is where exactly-once is decided,
//! entry by entry.

use super::child::readable;
use super::export::{Entry, ExportReader};
use super::{JournalSource, MAX_BATCH, Start};
use crate::sources::{Batch, JournalGap, JournalPosition, LogLine};
use chrono::{DateTime, Utc};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// The pipeline's receiver is gone (the daemon is stopping): the reading run ends rather
/// than read entries nobody will take.
pub(super) struct Closed;

/// The state of one run's reading: where it stands and the batch being filled.
pub(super) struct Reading<'a> {
    pub(super) source: &'a JournalSource,
    pub(super) start: Start,
    /// The next entry is the first of this run.
    pub(super) first: bool,
    pub(super) lines: Vec<LogLine>,
    /// Whether any line went to the pipeline.
    pub(super) delivered: bool,
    /// Position after the last entry read in this run.
    pub(super) position: Option<JournalPosition>,
    /// A gap found and not yet handed over.
    pub(super) gap: Option<JournalGap>,
    pub(super) path: Arc<str>,
}

impl Reading<'_> {
    /// Reads entries until journalctl's output ends; `Err` when the pipeline is gone.
    pub(super) fn read_all(&mut self, stdout: std::process::ChildStdout) -> Result<(), Closed> {
        let fd = stdout.as_raw_fd();
        let mut reader = ExportReader::new(stdout, self.source.max_line_bytes);
        loop {
            match reader.next_entry() {
                Ok(Some(entry)) => self.take(entry),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(source = %self.source.name, error = %e, "unreadable journalctl output; restarting it");
                    break;
                }
            }
            // A batch goes as soon as journalctl has nothing more to say right now (live
            // entries wait for nothing), or when full (a backlog goes in large batches).
            if self.lines.len() >= MAX_BATCH || (!reader.has_buffered() && !readable(fd)) {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Decides what a read entry is: the saved entry again (dropped), the first after a
    /// gap, or the next line.
    fn take(&mut self, entry: Entry) {
        let first = std::mem::replace(&mut self.first, false);
        match (&self.start, first) {
            (Start::Cursor { cursor, .. }, true) if entry.cursor.as_deref() == Some(cursor) => {
                return;
            }
            (
                Start::Cursor {
                    cursor,
                    realtime_usec,
                },
                true,
            ) => {
                let gap = JournalGap {
                    saved_cursor: cursor.clone(),
                    saved_time: usec_time(*realtime_usec),
                    resumed_cursor: entry.cursor.clone(),
                    resumed_time: entry.time(),
                    reason:
                        "the saved entry is no longer in the journal (vacuumed or rotated away)"
                            .into(),
                };
                self.source.count_gap(&gap);
                self.gap = Some(gap);
            }
            (Start::Since { gap, .. }, true) => {
                let mut gap = gap.clone();
                gap.resumed_cursor = entry.cursor.clone();
                gap.resumed_time = entry.time();
                self.gap = Some(gap);
            }
            _ => {}
        }
        let arrival = Utc::now();
        let (bytes, cut) = entry.line(arrival, self.source.max_line_bytes);
        if cut {
            self.source
                .metrics
                .lines_truncated
                .with_label_values(&[&self.source.name])
                .inc();
        }
        self.lines.push(LogLine {
            source: self.source.name.clone(),
            path: self.path.clone(),
            offset: 0,
            bytes,
            arrival,
            time: Some(entry.time().unwrap_or(arrival)),
        });
        if let Some(cursor) = entry.cursor {
            self.position = Some(self.source.position(Some(cursor), entry.realtime_usec));
        }
    }

    /// Hands the lines read so far to the pipeline with the position they reach.
    fn flush(&mut self) -> Result<(), Closed> {
        if self.lines.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.lines);
        self.delivered = true;
        self.source
            .metrics
            .lines_read
            .with_label_values(&[&self.source.name])
            .inc_by(lines.len() as u64);
        match &self.position {
            Some(position) => self.source.send(lines, position.clone(), self.gap.take()),
            // Entries without a cursor (never seen from journalctl) move no position.
            None => self
                .source
                .tx
                .blocking_send(Batch {
                    lines,
                    progress: None,
                })
                .map_err(|_| Closed),
        }
    }

    /// Where the next run starts: after the last entry read; else, when journalctl
    /// refused the saved cursor, by time from the saved entry; else where this run did.
    pub(super) fn next_start(&mut self, last_error: &str) -> Start {
        if let Some(JournalPosition {
            cursor: Some(cursor),
            realtime_usec,
            ..
        }) = &self.position
        {
            return Start::Cursor {
                cursor: cursor.clone(),
                realtime_usec: realtime_usec.unwrap_or(0),
            };
        }
        match &self.start {
            Start::Cursor {
                cursor,
                realtime_usec,
            } if self.first && last_error.contains("cursor") => {
                let gap = JournalGap {
                    saved_cursor: cursor.clone(),
                    saved_time: usec_time(*realtime_usec),
                    resumed_cursor: None,
                    resumed_time: None,
                    reason: format!("journalctl refused the saved cursor: {last_error}"),
                };
                self.source.count_gap(&gap);
                // The saved entry itself was read: start just after its time (an entry
                // logged in the same microsecond after it is taken as read too).
                Start::Since {
                    realtime_usec: realtime_usec.saturating_add(1),
                    gap,
                }
            }
            other => other.clone(),
        }
    }
}

/// A journal timestamp (microseconds since the epoch) as a time.
fn usec_time(usec: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(i64::try_from(usec).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_times_are_microseconds_since_the_epoch() {
        let t = usec_time(1_700_000_000_123_456).unwrap();
        assert_eq!(t.timestamp(), 1_700_000_000);
        assert_eq!(t.timestamp_subsec_micros(), 123_456);
        assert!(usec_time(u64::MAX).is_none());
    }
}
