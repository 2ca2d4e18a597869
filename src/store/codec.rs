//! The compact binary codec of records nobody reads but the daemon (evidence lines, window
//! state, incident heads): varints, length-prefixed text, and evidence lines written as
//! references to where they are stored.
//!
//! An evidence line is stored once, in the commit where it first counts: every line a
//! commit stores goes into that commit's evidence block, one record compressed as a whole
//! (log lines repeat their stamps, hosts and messages, so a block is a fraction of the
//! lines). Every record that shows a line (a window, a sequence prefix, a distinct set, an
//! incident) holds its [`Loc`]: the block and the line's place in it, a few bytes.
//! [`Enc::evidence`] asks the writer's sink where a line is (the sink stores it if it is
//! not stored yet).

use crate::base::evidence::Evidence;
use chrono::{DateTime, Utc};
use std::io::{Read, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

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

/// Where a stored evidence line is: its block and its place in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    /// The block (its key in the evidence table).
    pub block: u64,
    /// The line's index in the block.
    pub index: u32,
}

/// Where a held line was stored, kept with the line: a window that shows the line again at
/// a later commit writes this place instead of hashing the line and looking it up (under
/// attack three in four of the places a commit writes are of lines already stored). It
/// holds only for the evidence writer generation that set it ([`Enc::reusing_remembering`]),
/// which changes whenever a place it gave may no longer hold (a batch abandoned, blocks
/// collected); a line shown again under a later generation remembers its new place.
///
/// Atomics rather than a lock or a `OnceLock` (whose first set went through `Once`'s slow
/// path, 2 % of the daemon's commit thread), used as a sequence lock: a writer claims the
/// memo, writes the place, then publishes its generation; a reader takes the place only if
/// it saw the same generation before and after reading it.
#[derive(Debug, Default)]
pub struct PlaceMemo {
    /// The generation of the place (high half; 0: none yet, [`PlaceMemo::WRITING`]: being
    /// written) and its index in its block (low half): one word, so the memo adds 16 bytes
    /// to a held line.
    stamp: AtomicU64,
    block: AtomicU64,
}

impl PlaceMemo {
    /// Marks a memo being written (no generation is ever `u32::MAX`).
    const WRITING: u64 = u64::MAX;

    /// The place remembered for `generation`, if any: read between two reads of the
    /// stamp, as a sequence lock is (a writer may rewrite it meanwhile).
    fn get(&self, generation: u32) -> Option<Loc> {
        let stamp = self.stamp.load(Ordering::Acquire);
        if (stamp >> 32) as u32 != generation {
            return None;
        }
        let block = self.block.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (self.stamp.load(Ordering::Relaxed) == stamp).then_some(Loc {
            block,
            index: stamp as u32,
        })
    }

    /// Remembers `loc` for `generation` (`0 < generation < u32::MAX`), unless another
    /// writer is writing the memo right now (it is then left to it).
    fn set(&self, generation: u32, loc: Loc) {
        let before = self.stamp.load(Ordering::Relaxed);
        if before == Self::WRITING
            || self
                .stamp
                .compare_exchange(before, Self::WRITING, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // A reader that sees the block written below then sees the claim too.
        fence(Ordering::Release);
        self.block.store(loc.block, Ordering::Relaxed);
        self.stamp.store(
            (u64::from(generation) << 32) | u64::from(loc.index),
            Ordering::Release,
        );
    }
}

/// A counted line that remembers where it is stored ([`Enc::held`]).
pub trait HeldEvidence {
    /// The line as evidence, for the writer's sink.
    fn evidence(&self) -> &Evidence;
    /// Where the line was stored, once it is.
    fn place_memo(&self) -> &PlaceMemo;
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.block, self.index)
    }
}

/// A hash of everything a line holds: the same line (source, path, offset, time, text)
/// is stored once however many records show it. Seeded per process by `seed`, so a
/// crafted line cannot be made to collide with another one and stand in for it.
pub fn line_hash(seed: &foldhash::quality::RandomState, e: &Evidence) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = seed.build_hasher();
    h.write(e.source.as_bytes());
    h.write_u8(0);
    h.write(e.path.as_bytes());
    h.write_u8(0);
    h.write_u64(e.offset);
    h.write_i64(e.time.timestamp());
    h.write_u32(e.time.timestamp_subsec_nanos());
    h.write(e.line.as_bytes());
    h.finish()
}

/// A stand-in for the line at a place, for readers that only collect places.
pub fn placeholder(_: Loc) -> Evidence {
    Evidence {
        source: "".into(),
        path: "".into(),
        offset: 0,
        time: DateTime::default(),
        line: "".into(),
    }
}

/// Version of the evidence block layout.
const BLOCK_VERSION: u8 = 1;

/// An evidence block: version, the newest line's time (ms; what garbage collection
/// judges age by), then the lines, deflated.
pub fn encode_block(lines: &[Evidence]) -> Vec<u8> {
    let newest = lines
        .iter()
        .map(|e| e.time.timestamp_millis())
        .max()
        .unwrap_or(i64::MIN);
    let mut head = Enc::plain();
    head.u8(BLOCK_VERSION);
    head.i64(newest);
    let mut body = Enc::plain();
    body.u64(lines.len() as u64);
    for e in lines {
        body.time(e.time);
        body.u64(e.offset);
        body.str(&e.source);
        body.str(&e.path);
        body.str(&e.line);
    }
    let mut out = head.finish();
    let mut z = flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::fast());
    z.write_all(&body.finish()).expect("writing to memory");
    z.finish().expect("writing to memory");
    out
}

/// The newest line's time in a block (ms), read without inflating it.
pub fn block_newest_ms(bytes: &[u8]) -> Result<i64, CodecError> {
    let mut r = Dec::plain(bytes);
    r.version(BLOCK_VERSION)?;
    r.i64()
}

/// Reads an evidence block's lines.
pub fn decode_block(bytes: &[u8]) -> Result<Vec<Evidence>, CodecError> {
    let mut r = Dec::plain(bytes);
    r.version(BLOCK_VERSION)?;
    r.i64()?;
    let mut body = Vec::new();
    flate2::read::DeflateDecoder::new(r.buf)
        .take(MAX_BLOCK_BYTES)
        .read_to_end(&mut body)
        .map_err(|_| CodecError::Malformed("evidence block does not inflate"))?;
    let mut r = Dec::plain(&body);
    let n = r.count()?;
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let time = r.time()?;
        let offset = r.u64()?;
        let source: Arc<str> = r.str()?.into();
        let path: Arc<str> = r.str()?.into();
        let line: Arc<str> = r.str()?.into();
        lines.push(Evidence {
            source,
            path,
            offset,
            time,
            line,
        });
    }
    Ok(lines)
}

/// Most bytes a block inflates to (a commit's lines are bounded; this bounds a corrupt one).
const MAX_BLOCK_BYTES: u64 = 256 << 20;

/// Encodes one record into bytes with the layout [`Dec`] reads back, field by field in
/// the same order; evidence lines become [`Loc`] references through the sink.
pub struct Enc<'a> {
    buf: Vec<u8>,
    sink: Option<&'a mut dyn FnMut(&Evidence) -> Loc>,
    /// The sink's generation when it is an evidence writer whose places held lines may
    /// remember ([`PlaceMemo`]); `None`: every line is asked of the sink.
    generation: Option<u32>,
}

impl<'a> Enc<'a> {
    /// A writer that asks `sink` where each evidence line it references is stored.
    pub fn new(sink: &'a mut dyn FnMut(&Evidence) -> Loc) -> Self {
        Enc {
            buf: Vec::with_capacity(64),
            sink: Some(sink),
            generation: None,
        }
    }

    /// [`Enc::new`] writing into `buf` (cleared): a caller encoding many records keeps one
    /// grown buffer instead of growing a new one for each.
    pub fn reusing(mut buf: Vec<u8>, sink: &'a mut dyn FnMut(&Evidence) -> Loc) -> Self {
        buf.clear();
        Enc {
            buf,
            sink: Some(sink),
            generation: None,
        }
    }

    /// [`Enc::reusing`] with a sink that is the evidence writer of `generation`: held lines
    /// ([`Enc::held`]) remember the places it gives, and a line that remembers one from
    /// this generation is not asked of it again.
    pub fn reusing_remembering(
        buf: Vec<u8>,
        sink: &'a mut dyn FnMut(&Evidence) -> Loc,
        generation: u32,
    ) -> Self {
        Enc {
            generation: Some(generation),
            ..Enc::reusing(buf, sink)
        }
    }

    /// A writer for records without evidence references.
    pub fn plain() -> Enc<'static> {
        Enc {
            buf: Vec::with_capacity(64),
            sink: None,
            generation: None,
        }
    }

    /// The encoded record, ready to store (evidence references already resolved by the sink).
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// One raw byte (version tags, enum discriminants).
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A boolean as one byte, 0 or 1 ([`Dec::bool`] rejects any other value).
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    /// An unsigned LEB128 varint: 7 bits a byte, so small counts and ids take one byte.
    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A signed varint, zigzag-mapped so small negative numbers stay short too.
    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A float as its 8 IEEE-754 bytes, little-endian: exact, no rounding through text.
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    /// UTF-8 text after its byte length as a varint.
    pub fn str(&mut self, v: &str) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v.as_bytes());
    }

    /// A time to the nanosecond.
    pub fn time(&mut self, t: DateTime<Utc>) {
        self.i64(t.timestamp());
        self.u64(u64::from(t.timestamp_subsec_nanos()));
    }

    /// A presence flag, then the time if there is one (`None` takes one byte).
    pub fn opt_time(&mut self, t: Option<DateTime<Utc>>) {
        self.bool(t.is_some());
        if let Some(t) = t {
            self.time(t);
        }
    }

    /// A presence flag, then the text if there is one (`None` takes one byte).
    pub fn opt_str(&mut self, v: Option<&str>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.str(v);
        }
    }

    /// A reference to an evidence line: where the sink says it is stored.
    pub fn evidence(&mut self, e: &Evidence) {
        let loc = self.place(e);
        self.loc(loc);
    }

    /// Where the sink says `e` is stored.
    fn place(&mut self, e: &Evidence) -> Loc {
        match self.sink.as_mut() {
            Some(sink) => sink(e),
            None => panic!("a writer without a sink cannot reference evidence"),
        }
    }

    fn loc(&mut self, loc: Loc) {
        self.u64(loc.block);
        self.u64(u64::from(loc.index));
    }

    /// A reference to a held line, the same bytes as [`Enc::evidence`] writes for its
    /// evidence: the place the line remembers from this writer's generation, else the
    /// sink's (then remembered).
    pub fn held(&mut self, line: &impl HeldEvidence) {
        let loc = match self.generation {
            Some(now) => {
                let memo = line.place_memo();
                match memo.get(now) {
                    Some(loc) => loc,
                    None => {
                        let loc = self.place(line.evidence());
                        memo.set(now, loc);
                        loc
                    }
                }
            }
            None => self.place(line.evidence()),
        };
        self.loc(loc);
    }

    /// A list of held line references ([`Enc::held`]), the bytes [`Enc::evidence_list`]
    /// writes for their evidence.
    pub fn held_list<'e, L: HeldEvidence + 'e>(
        &mut self,
        list: impl ExactSizeIterator<Item = &'e L>,
    ) {
        self.u64(list.len() as u64);
        for line in list {
            self.held(line);
        }
    }

    /// A list of evidence references.
    pub fn evidence_list<'e>(&mut self, list: impl ExactSizeIterator<Item = &'e Evidence>) {
        self.u64(list.len() as u64);
        for e in list {
            self.evidence(e);
        }
    }

    /// A presence flag, then the evidence reference if there is one (panics without a sink,
    /// like [`Enc::evidence`]).
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
    resolve: Option<&'a mut dyn FnMut(Loc) -> Result<Evidence, CodecError>>,
}

impl<'a> Dec<'a> {
    /// A reader that looks evidence references up with `resolve`.
    pub fn new(
        buf: &'a [u8],
        resolve: &'a mut dyn FnMut(Loc) -> Result<Evidence, CodecError>,
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

    /// One raw byte; an error if the record ends here.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(CodecError::Malformed("ends early"))?;
        self.buf = rest;
        Ok(b)
    }

    /// A boolean; a byte other than 0 or 1 means the record is corrupt.
    pub fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Malformed("not a boolean")),
        }
    }

    /// An unsigned LEB128 varint; a varint longer than ten bytes is corrupt.
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
    pub fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(CodecError::Malformed("length beyond the record"));
        }
        Ok(n as usize)
    }

    /// A zigzag varint written by [`Enc::i64`].
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A float from its 8 little-endian bytes, exactly as [`Enc::f64`] wrote it.
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

    /// Text after its varint length, borrowed from the record; the length is bounded by the
    /// bytes left and the text must be UTF-8.
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.count()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Malformed("text"))
    }

    /// A time as [`Enc::time`] wrote it; seconds or nanoseconds out of chrono's range are
    /// an error.
    pub fn time(&mut self) -> Result<DateTime<Utc>, CodecError> {
        let secs = self.i64()?;
        let nanos = u32::try_from(self.u64()?).map_err(|_| CodecError::Malformed("time"))?;
        DateTime::from_timestamp(secs, nanos).ok_or(CodecError::Malformed("time"))
    }

    /// A time behind a presence flag, as [`Enc::opt_time`] wrote it.
    pub fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, CodecError> {
        Ok(if self.bool()? {
            Some(self.time()?)
        } else {
            None
        })
    }

    /// Text behind a presence flag, as [`Enc::opt_str`] wrote it.
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, CodecError> {
        Ok(if self.bool()? {
            Some(self.str()?)
        } else {
            None
        })
    }

    /// An evidence reference, looked up.
    pub fn evidence(&mut self) -> Result<Evidence, CodecError> {
        let block = self.u64()?;
        let index = u32::try_from(self.u64()?).map_err(|_| CodecError::Malformed("line index"))?;
        let loc = Loc { block, index };
        match self.resolve.as_mut() {
            Some(resolve) => resolve(loc),
            None => Err(CodecError::MissingEvidence(loc.to_string())),
        }
    }

    /// A list of evidence references, looked up.
    pub fn evidence_list(&mut self) -> Result<Vec<Evidence>, CodecError> {
        let n = self.count()?;
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

    /// Writers on several threads remembering places of different generations in one memo:
    /// a reader never sees a generation with another generation's place.
    #[test]
    fn a_place_memo_is_never_read_torn() {
        let memo = PlaceMemo::default();
        let place = |g: u32| Loc {
            block: u64::from(g) * 1_000_003,
            index: g ^ 0x5555_5555,
        };
        std::thread::scope(|s| {
            for t in 0..3u32 {
                let memo = &memo;
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        let g = 1 + (i * 3 + t) % 7;
                        memo.set(g, place(g));
                        for g in 1..=7 {
                            if let Some(loc) = memo.get(g) {
                                assert_eq!(loc, place(g), "generation {g}");
                            }
                        }
                    }
                });
            }
        });
        let last = (1..=7).filter(|g| memo.get(*g).is_some()).count();
        assert_eq!(last, 1, "one generation is remembered at the end");
    }

    #[test]
    fn values_and_evidence_references_round_trip_through_a_block() {
        let a = line(1_700_000_000_000, "Failed password for root from 10.0.0.1");
        let b = line(-5, "before 1970");
        let mut block = Vec::new();
        let mut sink = |e: &Evidence| {
            block.push(e.clone());
            Loc {
                block: 7,
                index: block.len() as u32 - 1,
            }
        };
        let mut w = Enc::new(&mut sink);
        w.u64(300);
        w.i64(-77);
        w.str("ünïcode");
        w.opt_time(None);
        w.evidence_list([&a, &b].into_iter());
        w.f64(1.5);
        let bytes = w.finish();
        let stored = encode_block(&block);
        assert_eq!(block_newest_ms(&stored).unwrap(), 1_700_000_000_000);
        let lines = decode_block(&stored).unwrap();
        let mut resolve = |loc: Loc| {
            assert_eq!(loc.block, 7);
            Ok(lines[loc.index as usize].clone())
        };
        let mut r = Dec::new(&bytes, &mut resolve);
        assert_eq!(r.u64().unwrap(), 300);
        assert_eq!(r.i64().unwrap(), -77);
        assert_eq!(r.str().unwrap(), "ünïcode");
        assert_eq!(r.opt_time().unwrap(), None);
        assert_eq!(r.evidence_list().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(r.f64().unwrap(), 1.5);
        assert!(r.is_done());
        let seed = foldhash::quality::RandomState::default();
        assert_ne!(line_hash(&seed, &a), line_hash(&seed, &b));
        assert_eq!(line_hash(&seed, &a), line_hash(&seed, &a.clone()));
    }

    #[test]
    fn a_block_of_similar_lines_is_a_fraction_of_them() {
        let lines: Vec<Evidence> = (0..300)
            .map(|n| {
                line(
                    1_700_000_000_000 + n,
                    &format!(
                        "Dec  1 22:56:{:02} web1 sshd[{}]: Failed password for invalid user admin{} from 198.51.{}.{} port {} ssh2",
                        n % 60,
                        1000 + n * 7,
                        n % 13,
                        n % 250,
                        n * 3 % 250,
                        40000 + n
                    ),
                )
            })
            .collect();
        let raw: usize = lines.iter().map(|e| e.line.len()).sum();
        let stored = encode_block(&lines);
        assert!(stored.len() * 3 < raw, "{} of {raw} bytes", stored.len());
        assert_eq!(decode_block(&stored).unwrap(), lines);
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
        assert!(Dec::plain(&w.finish()).count().is_err());
        assert!(matches!(
            Dec::plain(&[9]).version(1),
            Err(CodecError::Version(9))
        ));
        let block = encode_block(&[line(0, "x")]);
        assert!(decode_block(&block[..block.len() - 1]).is_err());
    }
}
