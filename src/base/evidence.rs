//! The evidence line: what an incident, a window and the store keep of a log line.
//!
//! A leaf type of its own so the store's codec can encode it without importing detection,
//! which itself stores its windows through that codec (detection builds evidence from
//! lines in [`crate::detection`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A log line kept as evidence on an incident. Its text is shared: the same line sits in a
/// window, a hit and an incident without being copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Name of the configured source the line came from.
    pub source: Arc<str>,
    /// Where the source read it: a file path, `-` for stdin and drills, or the listener
    /// (`syslog+udp://…`) or journal (`journal:…`) for the other sources.
    pub path: Arc<str>,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// The line's own time (or arrival time).
    pub time: DateTime<Utc>,
    /// The line as text (invalid UTF-8 replaced), cut at [`crate::detection::EVIDENCE_LINE_BYTES`].
    pub line: Arc<str>,
}
