//! Reading what a file gained since the last look, in bounded rounds, and noticing on the
//! way that it was truncated or rewritten.

use super::identity::{FINGERPRINT_BYTES, fingerprint_of, parent, reopen};
use super::tracked::{Tracked, Truncated, checkpoint_of};
use crate::metrics::Metrics;
use crate::sources::lines::LineSplitter;
use crate::sources::{Batch, Fingerprint, LogLine, Progress};
use chrono::Utc;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

/// Most bytes read from one file per round, so one busy file cannot starve the others.
pub(super) const READ_BUDGET: usize = 256 * 1024;
/// Size of one read call.
pub(super) const CHUNK: usize = 64 * 1024;

/// What one read of a file produced.
pub(super) struct ReadResult {
    pub(super) lines: Vec<LogLine>,
    /// The read position changed (lines read, or a rewind after a truncation), so a new
    /// checkpoint is due even without lines.
    moved: bool,
    /// The head fingerprint and checkpoint the file had before it was found truncated: what
    /// its copy must match and where the copy continues.
    truncated: Option<(Fingerprint, u64)>,
}

impl ReadResult {
    pub(super) fn into_batch(
        self,
        tracked: &Tracked,
        source: &str,
    ) -> (Option<Batch>, Option<Truncated>) {
        let truncation = self.truncated.map(|(fingerprint, checkpoint)| Truncated {
            id: tracked.id,
            dir: parent(&tracked.path),
            fingerprint,
            checkpoint,
        });
        if self.lines.is_empty() && !self.moved {
            return (None, truncation);
        }
        let batch = Batch {
            lines: self.lines,
            progress: Some(Progress::At(checkpoint_of(tracked, source))),
        };
        (Some(batch), truncation)
    }
}

pub(super) fn read_file(
    source: Arc<str>,
    max_line_bytes: usize,
    tracked: &mut Tracked,
    metrics: &Metrics,
) -> ReadResult {
    let mut result = ReadResult {
        lines: Vec::new(),
        moved: false,
        truncated: None,
    };
    if tracked.file.is_none() {
        let unchanged = tracked.seen_len == tracked.splitter.next_offset()
            && (tracked.read_mtime.is_none() || tracked.seen_mtime == tracked.read_mtime);
        if unchanged && tracked.gone_since.is_none() {
            return result;
        }
        tracked.file = reopen(&tracked.path, tracked.id);
    }
    let Some(file) = &tracked.file else {
        return result;
    };
    let Ok(meta) = file.metadata() else {
        return result;
    };
    let next = tracked.splitter.next_offset();
    let mtime = meta.modified().ok();
    let touched =
        meta.len() > next || (tracked.read_mtime.is_some() && mtime != tracked.read_mtime);
    tracked.read_mtime = mtime;
    // Shorter than what was read, or (truncated and refilled to or past the old offset
    // between two looks) a head that is no longer the one fingerprinted.
    let rewritten = meta.len() < next
        || (touched
            && tracked.fingerprint.len > 0
            && fingerprint_of(file, tracked.fingerprint.len) != Some(tracked.fingerprint));
    if rewritten {
        tracing::warn!(source = %source, path = %tracked.path.display(), "file truncated; reading it from the start");
        metrics.file_truncations.with_label_values(&[&source]).inc();
        result.truncated = Some((tracked.fingerprint, tracked.splitter.checkpoint()));
        tracked.splitter = LineSplitter::new(0, max_line_bytes);
        tracked.fingerprint = Fingerprint::default();
        tracked.copy_of = None;
        result.moved = true;
    }
    let path: Arc<str> = Arc::from(tracked.path.to_string_lossy().as_ref());
    let arrival = Utc::now();
    let mut buf = vec![0u8; CHUNK];
    let mut budget = READ_BUDGET;
    let mut truncated_lines = 0u64;
    let mut bytes_read = 0u64;
    while budget > 0 {
        let want = budget.min(CHUNK);
        let n = match file.read_at(&mut buf[..want], tracked.splitter.next_offset()) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        budget -= n;
        bytes_read += n as u64;
        tracked.splitter.feed(&buf[..n], |line| {
            truncated_lines += u64::from(line.truncated);
            result.lines.push(LogLine {
                source: source.clone(),
                path: path.clone(),
                offset: line.offset,
                bytes: line.bytes.to_vec(),
                arrival,
                time: None,
            });
        });
    }
    let consumed = FINGERPRINT_BYTES.min(tracked.splitter.next_offset());
    if tracked.fingerprint.len < consumed
        && let Some(fp) = fingerprint_of(file, consumed)
    {
        tracked.fingerprint = fp;
    }
    tracked.read_any |= !result.lines.is_empty();
    if bytes_read > 0 {
        tracked.last_growth = Instant::now();
        result.moved = true;
        metrics
            .bytes_read
            .with_label_values(&[&source])
            .inc_by(bytes_read);
    }
    tracked.seen_len = tracked.seen_len.max(tracked.splitter.next_offset());
    metrics
        .lines_read
        .with_label_values(&[&source])
        .inc_by(result.lines.len() as u64);
    if truncated_lines > 0 {
        metrics
            .lines_truncated
            .with_label_values(&[&source])
            .inc_by(truncated_lines);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::testing::{append, lines, source, track};
    use super::*;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    fn read(source: &super::super::FileSource, tracked: &mut Tracked) -> ReadResult {
        read_file(
            source.name.clone(),
            source.max_line_bytes,
            tracked,
            &Metrics::new(),
        )
    }

    fn texts(result: &ReadResult) -> Vec<&str> {
        result
            .lines
            .iter()
            .map(|l| std::str::from_utf8(&l.bytes).unwrap())
            .collect()
    }

    /// Moves the file's modification time well past any file system's granularity.
    fn touch_later(path: &Path) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let later = SystemTime::now() + Duration::from_secs(10);
        file.set_modified(later).unwrap();
    }

    #[test]
    fn a_line_split_across_reads_is_emitted_once_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log) = (source(dir.path()), dir.path().join("app.log"));
        append(&log, "first ha");
        let mut tracked = track(&src, &log, 0);
        let result = read(&src, &mut tracked);
        assert!(result.lines.is_empty());
        assert!(result.moved, "bytes were consumed");
        assert_eq!(tracked.splitter.checkpoint(), 0, "nothing complete yet");
        append(&log, "lf\nsecond");
        let result = read(&src, &mut tracked);
        assert_eq!(texts(&result), ["first half"]);
        assert_eq!(result.lines[0].offset, 0);
        assert_eq!(tracked.splitter.checkpoint(), 11);
        append(&log, "\n");
        let result = read(&src, &mut tracked);
        assert_eq!(texts(&result), ["second"]);
        assert_eq!(result.lines[0].offset, 11);
    }

    #[test]
    fn a_shorter_file_is_read_again_from_its_start_and_reports_where_reading_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log) = (source(dir.path()), dir.path().join("app.log"));
        append(&log, "one\ntwo\n");
        let mut tracked = track(&src, &log, 0);
        read(&src, &mut tracked);
        let before = tracked.fingerprint;
        std::fs::write(&log, "x\n").unwrap();
        let result = read(&src, &mut tracked);
        assert_eq!(result.truncated, Some((before, 8)));
        assert_eq!(texts(&result), ["x"]);
        assert_eq!(result.lines[0].offset, 0);
    }

    #[test]
    fn a_file_rewritten_to_the_same_size_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log) = (source(dir.path()), dir.path().join("app.log"));
        append(&log, "aaaa\n");
        let mut tracked = track(&src, &log, 0);
        assert_eq!(texts(&read(&src, &mut tracked)), ["aaaa"]);
        std::fs::write(&log, "bbbb\n").unwrap();
        touch_later(&log);
        let result = read(&src, &mut tracked);
        assert!(result.truncated.is_some());
        assert_eq!(texts(&result), ["bbbb"]);
    }

    #[test]
    fn a_file_only_touched_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log) = (source(dir.path()), dir.path().join("app.log"));
        append(&log, "aaaa\n");
        let mut tracked = track(&src, &log, 0);
        read(&src, &mut tracked);
        touch_later(&log);
        let result = read(&src, &mut tracked);
        assert!(result.truncated.is_none());
        assert!(result.lines.is_empty());
    }

    #[test]
    fn a_busy_file_is_read_in_rounds_of_the_budget_losing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log) = (source(dir.path()), dir.path().join("app.log"));
        let text = lines(0, 3000);
        assert!(text.len() > READ_BUDGET);
        append(&log, &text);
        let mut tracked = track(&src, &log, 0);
        let first = read(&src, &mut tracked);
        let first_bytes: usize = first.lines.iter().map(|l| l.bytes.len() + 1).sum();
        assert!(first_bytes <= READ_BUDGET && !first.lines.is_empty());
        let mut all: Vec<String> = texts(&first).iter().map(|s| s.to_string()).collect();
        for _ in 0..text.len() / READ_BUDGET + 1 {
            let more = read(&src, &mut tracked);
            all.extend(texts(&more).iter().map(|s| s.to_string()));
        }
        assert_eq!(all, text.lines().collect::<Vec<_>>());
    }

    #[test]
    fn a_closed_file_that_did_not_change_stays_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, log) = (source(dir.path()), dir.path().join("app.log"));
        append(&log, "one\n");
        let mut tracked = track(&src, &log, 0);
        read(&src, &mut tracked);
        // As discovery's `stat` would see it: same size and time as when last read.
        tracked.file = None;
        tracked.seen_len = 4;
        tracked.seen_mtime = tracked.read_mtime;
        assert!(read(&src, &mut tracked).lines.is_empty());
        assert!(tracked.file.is_none());
        append(&log, "two\n");
        tracked.seen_len = 8;
        tracked.seen_mtime = std::fs::metadata(&log).unwrap().modified().ok();
        assert_eq!(texts(&read(&src, &mut tracked)), ["two"]);
    }
}
