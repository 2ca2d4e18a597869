//! Log inputs: files and globs that survive rotation, stdin, syslog over the network, and the
//! systemd journal.
//!
//! Sources only read. They hand the pipeline batches of lines plus the checkpoint the batch
//! ends at; the pipeline makes a checkpoint durable only after it has evaluated the lines and
//! stored what they caused, so a crash replays from a point whose effects are not yet stored.

pub mod discover;
pub mod file;
pub mod journal;
pub mod line_time;
pub mod lines;
pub mod stdin;
pub mod syslog;
pub mod timestamp;
pub mod watch;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::base::line::LogLine;

/// A file's identity: the inode it lives in, guarded by a hash of its first bytes so a
/// reused inode is not mistaken for the old file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    /// Device number of the file system the inode is on (inode numbers repeat across devices).
    pub dev: u64,
    /// Inode number; a reused one is told apart by the [`Fingerprint`] stored with it.
    pub ino: u64,
}

/// Fingerprint of a file's head: how many bytes were hashed and their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    /// Bytes hashed (a short file is fingerprinted by what it has).
    pub len: u64,
    /// 64-bit FNV-1a of those bytes: also what finds the file a new one was copied from
    /// (copytruncate rotation) by its head.
    pub hash: u64,
}

/// How far a file has been read, as stored in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Source the file belongs to.
    pub source: String,
    /// Last path the file was seen at.
    pub path: String,
    /// Inode identity, which finds the file again after a rename while the daemon was down.
    pub id: FileId,
    /// Head fingerprint, which tells a reused inode or a file rewritten while the daemon was
    /// down from the file that was read, so its offset is not applied to other content.
    pub fingerprint: Fingerprint,
    /// Offset of the first byte not yet part of an evaluated line.
    pub offset: u64,
}

impl Checkpoint {
    /// The store key of this checkpoint.
    pub fn store_key(&self) -> String {
        checkpoint_key(self.id)
    }
}

/// Every file checkpoint in the store.
pub fn stored_checkpoints(
    store: &crate::store::Store,
) -> Result<Vec<Checkpoint>, crate::store::StoreError> {
    Ok(store
        .scan(crate::store::Space::Checkpoints)?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// The store key for a file identity's checkpoint.
pub fn checkpoint_key(id: FileId) -> String {
    format!("{}:{}", id.dev, id.ino)
}

/// Why a source cannot start. Raised at start, before anything is read, so a typo or a port
/// in use stops the daemon with the source named instead of leaving it blind.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {name:?}: {error}")]
    Paths {
        name: String,
        error: discover::PathSetError,
    },
    #[error("syslog source {name:?}: cannot bind {transport} {addr}: {error}")]
    Bind {
        name: String,
        /// `udp` or `tcp`.
        transport: &'static str,
        addr: String,
        error: std::io::Error,
    },
    /// `udp_buffer_bytes` was configured and neither socket option could be set.
    #[error("syslog source {name:?}: cannot set the udp receive buffer to {bytes} bytes: {error}")]
    ReceiveBuffer {
        name: String,
        bytes: usize,
        error: std::io::Error,
    },
}

/// What a source tells the pipeline about progress in a file.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Lines up to here are in this batch.
    At(Checkpoint),
    /// The file is gone and fully read: forget its checkpoint.
    Done(FileId),
    /// A journal source has read up to here; `gap` when the entries between the saved
    /// position and this one may be lost (the saved entry was vacuumed or rotated away).
    Journal {
        /// Where the source resumes.
        position: JournalPosition,
        /// The gap to record with this position, if one was found.
        gap: Option<JournalGap>,
    },
}

/// How far a journal source has read, as stored in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPosition {
    /// Source the position belongs to.
    pub source: String,
    /// Cursor of the last entry read; `None` when the source was first seen with an empty
    /// journal (everything that comes is new, so it starts at the head).
    pub cursor: Option<String>,
    /// That entry's `__REALTIME_TIMESTAMP` (microseconds since the epoch): where reading
    /// resumes by time when the cursor can no longer be found.
    pub realtime_usec: Option<u64>,
}

/// Entries that may have been lost between a saved journal position and where reading
/// resumed, because the saved entry is no longer in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalGap {
    /// The saved cursor that could not be found.
    pub saved_cursor: String,
    /// Its entry's time, if known.
    pub saved_time: Option<DateTime<Utc>>,
    /// The first entry read after the gap (`None`: resumed by time, nothing read yet).
    pub resumed_cursor: Option<String>,
    /// That entry's time (`None` when nothing was read after the gap yet): the gap is at
    /// most from `saved_time` to this.
    pub resumed_time: Option<DateTime<Utc>>,
    /// How the gap was found.
    pub reason: String,
}

/// Lines from one file (or stdin) and how far they reach.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The lines, in file order.
    pub lines: Vec<LogLine>,
    /// Progress to record once the lines' effects are stored; `None` for stdin.
    pub progress: Option<Progress>,
}
