//! The compact binary codec of records nobody reads but the daemon (evidence lines, window
//! state, incident heads): varints, length-prefixed text, and evidence lines written as
//! references to their own records.
//!
//! An evidence line is stored once, under [`EvidenceRef::key`], in the commit where it first
//! counts; every record that shows it (a window, a sequence prefix, a distinct set, an
//! incident) holds its 16-byte reference. [`Enc::evidence`] writes a reference and hands the
//! line to the writer's sink, which stores the line unless it already did.

use crate::detection::Evidence;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end early or hold an impossible value.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// A referenced evidence line is not in the store.
    #[error("evidence line {0} is missing")]
    MissingEvidence(String),
    /// The record was written in a later version of its layout.
    #[error("record version {0} is newer than this release reads")]
    Version(u8),
}

/// A reference to a stored evidence line: the line's time (milliseconds, which orders the
/// records by age for garbage collection) and a hash of everything it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EvidenceRef {
    /// The line's time in milliseconds.
    pub time_ms: i64,
    /// FNV-1a 64 of source, path, offset, time and text.
    pub hash: u64,
}

impl EvidenceRef {
    /// The reference of a line (the same line always gets the same one).
    pub fn of(e: &Evidence) -> Self {
        let mut h = Fnv::default();
        h.write(e.source.as_bytes());
        h.write(&[0]);
        h.write(e.path.as_bytes());
        h.write(&[0]);
        h.write(&e.offset.to_le_bytes());
        h.write(&e.time.timestamp().to_le_bytes());
        h.write(&e.time.timestamp_subsec_nanos().to_le_bytes());
        h.write(e.line.as_bytes());
        EvidenceRef {
            time_ms: e.time.timestamp_millis(),
            hash: h.0,
        }
    }

    /// The store key: time (sign bit flipped, big-endian, so keys sort by time), then hash.
    pub fn key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&((self.time_ms as u64) ^ (1 << 63)).to_be_bytes());
        k[8..].copy_from_slice(&self.hash.to_be_bytes());
        k
    }

    /// The reference a store key names.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        let time: [u8; 8] = key.get(..8)?.try_into().ok()?;
        let hash: [u8; 8] = key.get(8..16)?.try_into().ok()?;
        Some(EvidenceRef {
            time_ms: (u64::from_be_bytes(time) ^ (1 << 63)) as i64,
            hash: u64::from_be_bytes(hash),
        })
    }

    /// The key of the first line at or after `time_ms`.
    pub fn first_key_at(time_ms: i64) -> [u8; 16] {
        EvidenceRef { time_ms, hash: 0 }.key()
    }
}

/// A stand-in for the line a reference names, for readers that only collect references.
pub fn placeholder(r: EvidenceRef) -> Evidence {
    Evidence {
        source: "".into(),
        path: "".into(),
        offset: 0,
        time: DateTime::from_timestamp_millis(r.time_ms).unwrap_or_default(),
        line: "".into(),
    }
}

impl std::fmt::Display for EvidenceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:016x}", self.time_ms, self.hash)
    }
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Version byte of an evidence line record.
const EVIDENCE_VERSION: u8 = 1;

/// An evidence line's own record (its time and hash are in the key).
pub fn encode_evidence(e: &Evidence) -> Vec<u8> {
    let mut w = Enc::plain();
    w.u8(EVIDENCE_VERSION);
    w.time(e.time);
    w.u64(e.offset);
    w.str(&e.source);
    w.str(&e.path);
    w.str(&e.line);
    w.finish()
}

/// Reads an evidence line record.
pub fn decode_evidence(bytes: &[u8]) -> Result<Evidence, CodecError> {
    let mut r = Dec::plain(bytes);
    r.version(EVIDENCE_VERSION)?;
    let time = r.time()?;
    let offset = r.u64()?;
    let source: Arc<str> = r.str()?.into();
    let path: Arc<str> = r.str()?.into();
    let line: Arc<str> = r.str()?.into();
    Ok(Evidence {
        source,
        path,
        offset,
        time,
        line,
    })
}

/// Writes a record.
pub struct Enc<'a> {
    buf: Vec<u8>,
    sink: Option<&'a mut dyn FnMut(EvidenceRef, &Evidence)>,
}

impl<'a> Enc<'a> {
    /// A writer that hands every evidence line it references to `sink`.
    pub fn new(sink: &'a mut dyn FnMut(EvidenceRef, &Evidence)) -> Self {
        Enc {
            buf: Vec::with_capacity(64),
            sink: Some(sink),
        }
    }

    /// A writer for records without evidence references.
    pub fn plain() -> Enc<'static> {
        Enc {
            buf: Vec::with_capacity(64),
            sink: None,
        }
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    /// An unsigned varint.
    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A signed varint (zigzag).
    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A float.
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    /// Length-prefixed text.
    pub fn str(&mut self, v: &str) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// A time to the nanosecond.
    pub fn time(&mut self, t: DateTime<Utc>) {
        self.i64(t.timestamp());
        self.u64(u64::from(t.timestamp_subsec_nanos()));
    }

    /// An optional time.
    pub fn opt_time(&mut self, t: Option<DateTime<Utc>>) {
        self.bool(t.is_some());
        if let Some(t) = t {
            self.time(t);
        }
    }

    /// Optional text.
    pub fn opt_str(&mut self, v: Option<&str>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.str(v);
        }
    }

    /// A reference to an evidence line (the line goes to the sink).
    pub fn evidence(&mut self, e: &Evidence) {
        let r = EvidenceRef::of(e);
        self.i64(r.time_ms);
        self.buf.extend_from_slice(&r.hash.to_le_bytes());
        if let Some(sink) = self.sink.as_mut() {
            sink(r, e);
        }
    }

    /// A list of evidence references.
    pub fn evidence_list<'e>(&mut self, list: impl ExactSizeIterator<Item = &'e Evidence>) {
        self.u64(list.len() as u64);
        for e in list {
            self.evidence(e);
        }
    }

    /// An optional evidence reference.
    pub fn opt_evidence(&mut self, e: Option<&Evidence>) {
        self.bool(e.is_some());
        if let Some(e) = e {
            self.evidence(e);
        }
    }
}

/// Reads a record written by [`Enc`].
pub struct Dec<'a> {
    buf: &'a [u8],
    resolve: Option<&'a mut dyn FnMut(EvidenceRef) -> Result<Evidence, CodecError>>,
}

impl<'a> Dec<'a> {
    /// A reader that looks evidence references up with `resolve`.
    pub fn new(
        buf: &'a [u8],
        resolve: &'a mut dyn FnMut(EvidenceRef) -> Result<Evidence, CodecError>,
    ) -> Self {
        Dec {
            buf,
            resolve: Some(resolve),
        }
    }

    /// A reader for records without evidence references.
    pub fn plain(buf: &'a [u8]) -> Self {
        Dec { buf, resolve: None }
    }

    /// Reads the version byte; a version newer than `supported` is an error.
    pub fn version(&mut self, supported: u8) -> Result<u8, CodecError> {
        let v = self.u8()?;
        if v > supported || v == 0 {
            return Err(CodecError::Version(v));
        }
        Ok(v)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(CodecError::Malformed("ends early"))?;
        self.buf = rest;
        Ok(b)
    }

    /// A boolean.
    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Malformed("not a boolean")),
        }
    }

    /// An unsigned varint.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CodecError::Malformed("varint too long"))
    }

    /// A count of items that follow, bounded by the bytes left (each item takes at least
    /// one byte), so a corrupt length cannot make a huge allocation.
    pub fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(CodecError::Malformed("length beyond the record"));
        }
        Ok(n as usize)
    }

    /// A signed varint.
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A float.
    pub fn f64(&mut self) -> Result<f64, CodecError> {
        let bytes: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| CodecError::Malformed("float"))?;
        Ok(f64::from_bits(u64::from_le_bytes(bytes)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Malformed("ends early"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Length-prefixed text.
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Malformed("text"))
    }

    /// A time.
    pub fn time(&mut self) -> Result<DateTime<Utc>, CodecError> {
        let secs = self.i64()?;
        let nanos = u32::try_from(self.u64()?).map_err(|_| CodecError::Malformed("time"))?;
        DateTime::from_timestamp(secs, nanos).ok_or(CodecError::Malformed("time"))
    }

    /// An optional time.
    pub fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, CodecError> {
        Ok(if self.bool()? {
            Some(self.time()?)
        } else {
            None
        })
    }

    /// Optional text.
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, CodecError> {
        Ok(if self.bool()? {
            Some(self.str()?)
        } else {
            None
        })
    }

    /// An evidence reference, looked up.
    pub fn evidence(&mut self) -> Result<Evidence, CodecError> {
        let time_ms = self.i64()?;
        let hash: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| CodecError::Malformed("reference"))?;
        let r = EvidenceRef {
            time_ms,
            hash: u64::from_le_bytes(hash),
        };
        match self.resolve.as_mut() {
            Some(resolve) => resolve(r),
            None => Err(CodecError::MissingEvidence(r.to_string())),
        }
    }

    /// A list of evidence references, looked up.
    pub fn evidence_list(&mut self) -> Result<Vec<Evidence>, CodecError> {
        let n = self.len()?;
        (0..n).map(|_| self.evidence()).collect()
    }

    /// An optional evidence reference, looked up.
    pub fn opt_evidence(&mut self) -> Result<Option<Evidence>, CodecError> {
        Ok(if self.bool()? {
            Some(self.evidence()?)
        } else {
            None
        })
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: i64, text: &str) -> Evidence {
        Evidence {
            source: "auth".into(),
            path: "/var/log/auth.log".into(),
            offset: 4242,
            time: DateTime::from_timestamp_millis(ms).unwrap() + chrono::Duration::nanoseconds(123),
            line: text.into(),
        }
    }

    #[test]
    fn values_and_evidence_references_round_trip() {
        let a = line(1_700_000_000_000, "Failed password for root from 10.0.0.1");
        let b = line(-5, "before 1970");
        let mut seen = Vec::new();
        let mut sink = |r: EvidenceRef, e: &Evidence| seen.push((r, e.clone()));
        let mut w = Enc::new(&mut sink);
        w.u64(300);
        w.i64(-77);
        w.str("ünïcode");
        w.opt_time(None);
        w.evidence_list([&a, &b].into_iter());
        w.f64(1.5);
        let bytes = w.finish();
        assert_eq!(seen.len(), 2);
        let stored: std::collections::HashMap<EvidenceRef, Vec<u8>> =
            seen.iter().map(|(r, e)| (*r, encode_evidence(e))).collect();
        let mut resolve = |r: EvidenceRef| decode_evidence(&stored[&r]);
        let mut r = Dec::new(&bytes, &mut resolve);
        assert_eq!(r.u64().unwrap(), 300);
        assert_eq!(r.i64().unwrap(), -77);
        assert_eq!(r.str().unwrap(), "ünïcode");
        assert_eq!(r.opt_time().unwrap(), None);
        assert_eq!(r.evidence_list().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(r.f64().unwrap(), 1.5);
        assert!(r.is_done());
        // Keys sort by time, also across 1970.
        let (ka, kb) = (EvidenceRef::of(&a).key(), EvidenceRef::of(&b).key());
        assert!(kb < ka);
        assert_eq!(EvidenceRef::from_key(&ka), Some(EvidenceRef::of(&a)));
    }

    #[test]
    fn truncated_and_oversized_records_are_errors_not_panics() {
        let mut w = Enc::plain();
        w.str("hello");
        let bytes = w.finish();
        for cut in 0..bytes.len() {
            assert!(Dec::plain(&bytes[..cut]).str().is_err());
        }
        // A length far beyond the record.
        let mut w = Enc::plain();
        w.u64(u64::MAX);
        assert!(Dec::plain(&w.finish()).len().is_err());
        assert!(matches!(
            Dec::plain(&[9]).version(1),
            Err(CodecError::Version(9))
        ));
    }
}
