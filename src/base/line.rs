//! One log line as a source read it: the value every input hands to detection. It sits
//! below both, so detection depends on what a line is, not on how sources read it.

use chrono::{DateTime, Utc};
use std::sync::Arc;

/// One line as read, with where it came from.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Source name from the config.
    pub source: Arc<str>,
    /// File path, or `-` for stdin.
    pub path: Arc<str>,
    /// Byte offset of the line's start in the file.
    pub offset: u64,
    /// The line without its newline; at most `max_line_bytes`.
    pub bytes: Vec<u8>,
    /// When the daemon read it: the line's time when it carries none, or carries one too far
    /// from this to trust.
    pub arrival: DateTime<Utc>,
    /// The line's own time when the source knows it exactly (a journal entry's timestamp);
    /// `None`: read from the line by the source's timestamp format.
    pub time: Option<DateTime<Utc>>,
}
