//! The store's layout: every table (a key prefix in the one sled tree, or a segment
//! journal for the two high-volume tables), its key, its value codec and the version of
//! that codec, in one place.
//!
//! Store format 4 (see [`super::FORMAT`]):
//!
//! | table | key | value | codec, version |
//! |---|---|---|---|
//! | `inc/` | incident number, 20 digits | head: state, severity, count, times, summary, evidence references, timeline length | binary v1 ([`crate::incidents::stored`]) |
//! | `incb/` | incident number | body: id, uid, rule, key, rule facts, review, approval | JSON |
//! | `inct/` | incident number, entry index (u32 big-endian) | one timeline entry | JSON |
//! | `ev/` | block id (u64 big-endian) | in the engine: a pointer (tag `0xB1`, journal position, newest line's time); in the `evidence/` journal: the block (a commit's new lines, deflated) | binary v1 ([`super::codec`], [`super::segmented`]) |
//! | `win/` | rule id, NUL, key values as JSON | only in the `windows/` journal (changes per commit, snapshots): rule hash, then the key's detection state with evidence references | binary v1 ([`crate::detection::kinds::KeyState::encode`]) |
//! | `meta/segments` | — | where the journals end and the last window snapshot starts, written by every commit | JSON |
//! | `ckpt/` | `dev:ino` | file checkpoint | JSON |
//! | `meta/` | name | counters, the audit head, the format marker | JSON |
//! | `out/`, `dead/` | notification id, 20 digits | notification with its rendered body | JSON |
//! | `audit/` | sequence number, 20 digits | hash-chained audit record | canonical JSON (hashed) |
//! | `esc/` | incident id | escalation progress | JSON |
//! | `sil/` | silence number | silence | JSON |
//! | `firing/` | receiver, NUL, incident uid | the alert last sent for an open incident | JSON |
//! | `jcur/` | source name | journal cursor | JSON |
//! | `cont/` | incident number, action, target | containment (ban) state and history | JSON |
//!
//! Every engine write reaches sled through the write-ahead journal `wal/` (deflated batches,
//! [`super::sled`]): sled holds what the journal covered at its last checkpoint, under the
//! key `wal-covered` outside every table, and the journal the rest (format 4; format 3 had
//! no journal and flushed sled at every commit).
//!
//! Binary records start with their codec's version byte; a reader refuses a version newer
//! than it knows. JSON stays where people and auditors read the bytes (the API's incidents
//! are rebuilt from head, body and timeline; the audit chain hashes its JSON).
//!
//! Format 2 kept evidence blocks and windows in the engine, where sled's rewrites of its
//! nodes multiplied their bytes on disk about tenfold.
//! Format 1 (releases before the marker) stored incidents and windows as whole JSON
//! documents with evidence lines copied into each; `crate::writer::upgrade` rewrites them.

/// The kinds of records, each under its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Incident heads by number (format 1: whole incidents as JSON).
    Incidents,
    /// Incident bodies (the parts that rarely change) by number.
    IncidentBodies,
    /// Incident timelines: one record per entry, appended.
    Timeline,
    /// Evidence lines, each stored once, by time and hash.
    Evidence,
    /// File read positions by file identity.
    Checkpoints,
    /// Detection windows by rule and key.
    Windows,
    /// Counters and other single values.
    Meta,
    /// Notifications written with the change that caused them, not yet delivered.
    Outbox,
    /// Notifications given up on (too old or refused); kept until re-sent.
    DeadLetters,
    /// The hash-chained audit log, by sequence number.
    Audit,
    /// Escalation progress per incident (steps fired, receivers reached, approvals).
    Escalations,
    /// Silences (approved exceptions), by id.
    Silences,
    /// The alert each Alertmanager receiver was last sent for each open incident, by
    /// receiver and incident uid: what is re-sent after a restart.
    Firing,
    /// Journal read positions (cursors), by source name.
    JournalCursors,
    /// Containments (bans) by incident number, action and target: what is in force, what
    /// is to be applied or lifted, and the history.
    Containments,
}

impl Space {
    /// The bytes in front of every engine key of this kind: one keyspace holds every table,
    /// so the prefixes must stay distinct and must never change (they are on disk).
    pub(super) fn prefix(self) -> &'static [u8] {
        match self {
            Space::Incidents => b"inc/",
            Space::IncidentBodies => b"incb/",
            Space::Timeline => b"inct/",
            Space::Evidence => b"ev/",
            Space::Checkpoints => b"ckpt/",
            Space::Windows => b"win/",
            Space::Meta => b"meta/",
            Space::Outbox => b"out/",
            Space::DeadLetters => b"dead/",
            Space::Audit => b"audit/",
            Space::Escalations => b"esc/",
            Space::Silences => b"sil/",
            Space::Firing => b"firing/",
            Space::JournalCursors => b"jcur/",
            Space::Containments => b"cont/",
        }
    }

    pub(super) fn key(self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix().to_vec();
        k.extend_from_slice(key);
        k
    }
}
