//! How the window stage holds a counted line: one allocation per line, shared by every
//! window that counts it.
//!
//! Under attack nearly every line a rule counts makes a new key, and each key's window
//! holds the line until it expires a window later. Held as `Arc<Evidence>` that was two
//! allocations per line (the text's `Arc<str>` and the evidence's own) and two frees at
//! expiry, which also left glibc's fast bins full of small chunks for
//! `malloc_consolidate` to walk. A [`HeldLine`] is one allocation: a reference count, the
//! line's place and time, and its text inline after them. An [`Evidence`] (whose text is
//! an `Arc<str>` of its own) is made once per line: with the line where every line's is
//! needed (the daemon, which makes a hit of every match and stores every window; the
//! text then lives only in it), else the first time a crossing asks (a replay).

use super::{EVIDENCE_LINE_BYTES, Evidence};
use crate::base::line::LogLine;
use crate::store::codec::PlaceMemo;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};

/// A counted line: shared like an `Arc<Evidence>` (cloning counts a reference, the last
/// drop frees it), in one allocation with its text.
pub struct HeldLine {
    ptr: NonNull<Header>,
}

/// What precedes the text in a [`HeldLine`]'s allocation.
#[repr(C)]
struct Header {
    count: AtomicUsize,
    origin: Arc<Origin>,
    offset: u64,
    time: DateTime<Utc>,
    /// Bytes of text after the header (at most `EVIDENCE_LINE_BYTES`; beside the time, in
    /// what was its padding).
    len: u32,
    /// The line as [`Evidence`] (its text an `Arc<str>` of its own), made the first time
    /// it is asked for: the daemon asks per line, for its hits and its stored windows; a
    /// replay only for crossings.
    shared: OnceLock<Evidence>,
    /// Where the daemon's evidence writer stored the line (the store's, not read here).
    place: PlaceMemo,
}

// SAFETY: the header's fields are `Send + Sync` and the text is never written after
// `HeldLine::new` returns; the reference count is atomic, as `Arc`'s is.
unsafe impl Send for HeldLine {}
// SAFETY: see `Send`: shared access only reads.
unsafe impl Sync for HeldLine {}

/// Where lines come from: a source's name and the path it read. Shared by the lines held
/// from there, so holding a line counts one reference to it, not one each to the name and
/// the path.
#[derive(Debug)]
pub struct Origin {
    source: Arc<str>,
    path: Arc<str>,
}

/// The origin of the lines last held, kept while lines come from the same place (nearly
/// always: a piece of input is one file's lines).
#[derive(Debug, Default)]
pub struct Origins {
    last: Option<Arc<Origin>>,
}

impl Origins {
    /// The origin of `source` and `path`: the last one when it is the same place.
    pub fn of(&mut self, source: &Arc<str>, path: &Arc<str>) -> &Arc<Origin> {
        let same = |o: &Arc<Origin>| {
            (Arc::ptr_eq(&o.source, source) || o.source == *source)
                && (Arc::ptr_eq(&o.path, path) || o.path == *path)
        };
        if !self.last.as_ref().is_some_and(same) {
            self.last = Some(Arc::new(Origin {
                source: source.clone(),
                path: path.clone(),
            }));
        }
        self.last.as_ref().expect("set above")
    }
}

/// Longest reference count before aborting, as `Arc` does (a count that wrapped would free
/// a line still held).
const MAX_COUNT: usize = isize::MAX as usize;

impl HeldLine {
    /// The layout of a line with `len` bytes of text, and where the text starts.
    fn layout(len: usize) -> (Layout, usize) {
        let (layout, at) = Layout::new::<Header>()
            .extend(Layout::array::<u8>(len).expect("evidence text is bounded"))
            .expect("evidence text is bounded");
        (layout.pad_to_align(), at)
    }

    /// The evidence of `line` read at `time`: its first [`EVIDENCE_LINE_BYTES`] bytes,
    /// invalid UTF-8 replaced (copied once, straight into the allocation when valid).
    ///
    /// `as_evidence`: the caller will ask for the line's [`Evidence`] anyway (the daemon
    /// makes a hit of every match and stores every window): it is made now, and the text is
    /// copied once, into it, not also inline.
    pub fn from_line(
        line: &LogLine,
        time: DateTime<Utc>,
        origins: &mut Origins,
        as_evidence: bool,
    ) -> Self {
        let bytes = &line.bytes[..line.bytes.len().min(EVIDENCE_LINE_BYTES)];
        let lossy;
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                lossy = String::from_utf8_lossy(bytes);
                &*lossy
            }
        };
        let origin = origins.of(&line.source, &line.path).clone();
        if !as_evidence {
            return Self::new(origin, line.offset, time, text, None);
        }
        let evidence = Evidence {
            source: origin.source.clone(),
            path: origin.path.clone(),
            offset: line.offset,
            time,
            line: Arc::from(text),
        };
        Self::new(origin, line.offset, time, "", Some(evidence))
    }

    /// A held copy of `evidence` (read back from the store), which it keeps as its
    /// evidence (the text is not copied).
    pub fn from_evidence(evidence: Evidence) -> Self {
        let origin = Arc::new(Origin {
            source: evidence.source.clone(),
            path: evidence.path.clone(),
        });
        Self::new(origin, evidence.offset, evidence.time, "", Some(evidence))
    }

    fn new(
        origin: Arc<Origin>,
        offset: u64,
        time: DateTime<Utc>,
        text: &str,
        shared: Option<Evidence>,
    ) -> Self {
        let (layout, at) = Self::layout(text.len());
        // SAFETY: the layout is not zero-sized (it holds the header); the header is
        // written before the pointer is used as one, and the text into the bytes the
        // layout reserves after it.
        unsafe {
            let raw = alloc(layout);
            let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
                handle_alloc_error(layout)
            };
            ptr.as_ptr().write(Header {
                count: AtomicUsize::new(1),
                len: u32::try_from(text.len()).expect("evidence text is bounded"),
                origin,
                offset,
                time,
                shared: shared.map(OnceLock::from).unwrap_or_default(),
                place: PlaceMemo::default(),
            });
            std::ptr::copy_nonoverlapping(text.as_ptr(), raw.add(at), text.len());
            HeldLine { ptr }
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while any handle does (reference counted).
        unsafe { self.ptr.as_ref() }
    }

    /// The line's text.
    pub fn text(&self) -> &str {
        // Made with its evidence, a line holds its text there only.
        if let Some(evidence) = self.header().shared.get() {
            return &evidence.line;
        }
        let len = self.header().len as usize;
        let at = Self::layout(len).1;
        // SAFETY: `new` copied `len` bytes of a `str` there and nothing writes them again.
        unsafe {
            let bytes = std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(at), len);
            std::str::from_utf8_unchecked(bytes)
        }
    }

    /// The line's own time.
    pub fn time(&self) -> DateTime<Utc> {
        self.header().time
    }

    /// The line as evidence for an incident, a hit or the store: made once per line, the
    /// first time it is asked for.
    pub fn evidence(&self) -> &Evidence {
        let h = self.header();
        h.shared.get_or_init(|| Evidence {
            source: h.origin.source.clone(),
            path: h.origin.path.clone(),
            offset: h.offset,
            time: h.time,
            line: Arc::from(self.text()),
        })
    }
}

impl HeldLine {
    /// Where the line is stored, once a commit stored it (see [`PlaceMemo`]).
    pub fn place_memo(&self) -> &PlaceMemo {
        &self.header().place
    }
}

impl Clone for HeldLine {
    fn clone(&self) -> Self {
        // Relaxed, as `Arc::clone`: a new reference is made from one already held.
        if self.header().count.fetch_add(1, Ordering::Relaxed) > MAX_COUNT {
            std::process::abort();
        }
        HeldLine { ptr: self.ptr }
    }
}

impl Drop for HeldLine {
    fn drop(&mut self) {
        // Release, then Acquire before freeing, as `Arc`'s drop: every use of the line by
        // other handles happens before it is freed.
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        let (layout, _) = Self::layout(self.header().len as usize);
        // SAFETY: this was the last handle; the header was written by `new` and is dropped
        // once, then the allocation is freed with the layout it was made with.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            dealloc(self.ptr.as_ptr().cast::<u8>(), layout);
        }
    }
}

impl PartialEq for HeldLine {
    /// Equal when the evidence made of them would be (the same place, time and text).
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.header(), other.header());
        a.origin.source == b.origin.source
            && a.origin.path == b.origin.path
            && a.offset == b.offset
            && a.time == b.time
            && self.text() == other.text()
    }
}

impl std::fmt::Debug for HeldLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.header();
        f.debug_struct("HeldLine")
            .field("source", &h.origin.source)
            .field("path", &h.origin.path)
            .field("offset", &h.offset)
            .field("time", &h.time)
            .field("line", &self.text())
            .finish()
    }
}

/// Serialised as the [`Evidence`] it stands for.
impl Serialize for HeldLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.evidence().serialize(s)
    }
}

impl<'de> Deserialize<'de> for HeldLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Evidence::deserialize(d).map(HeldLine::from_evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: &Arc<str>, path: &Arc<str>, offset: u64, bytes: &[u8]) -> LogLine {
        LogLine {
            source: source.clone(),
            path: path.clone(),
            offset,
            bytes: bytes.to_vec(),
            arrival: at(0),
            time: None,
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    /// Every handle shows its own line (text, place, time) and the evidence made of it is
    /// its first `EVIDENCE_LINE_BYTES` bytes, lossy, whatever the text's length (empty, cut,
    /// not UTF-8), however the handles are cloned and dropped in between; and when the
    /// last handle goes, nothing of the line is held (the source and path are referenced
    /// by the test alone again): no line leaks.
    #[test]
    fn each_handle_shows_its_own_line_and_the_last_drop_frees_it() {
        let source: Arc<str> = "auth".into();
        let path: Arc<str> = "/var/log/auth.log".into();
        let mut texts: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"x".to_vec(),
            b"Failed password for root from 10.0.0.1 port 22 ssh2".to_vec(),
            vec![b'a'; EVIDENCE_LINE_BYTES + 300],
            b"bad \xff\xfe utf-8 \xc3".to_vec(),
            "caf\u{e9} \u{1F600}".as_bytes().to_vec(),
        ];
        for i in 0..200u64 {
            texts.push(format!("line {i} {}", "y".repeat((i * 7 % 130) as usize)).into_bytes());
        }
        let mut held: Vec<(usize, HeldLine)> = Vec::new();
        let mut origins = Origins::default();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for (i, bytes) in texts.iter().enumerate() {
            let l = line(&source, &path, i as u64 * 100, bytes);
            let h = HeldLine::from_line(&l, at(i as i64 * 1_000), &mut origins, i % 3 == 0);
            for _ in 0..(i % 4) {
                held.push((i, h.clone()));
            }
            held.push((i, h));
            // Drop a pseudo-random handle now and then, as windows expire out of order.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if seed.is_multiple_of(3) && !held.is_empty() {
                let gone = (seed >> 8) as usize % held.len();
                held.swap_remove(gone);
            }
        }
        for (i, h) in &held {
            let bytes = &texts[*i];
            let want_text = String::from_utf8_lossy(&bytes[..bytes.len().min(EVIDENCE_LINE_BYTES)]);
            assert_eq!(h.text(), want_text, "line {i}");
            let e = h.evidence();
            assert_eq!(&*e.line, want_text, "line {i}");
            assert_eq!((e.offset, e.time), (*i as u64 * 100, at(*i as i64 * 1_000)));
            assert_eq!((&*e.source, &*e.path), ("auth", "/var/log/auth.log"));
            // Made once per line: a second evidence shares the first one's text.
            assert!(Arc::ptr_eq(&e.line, &h.evidence().line));
            // Round trip through the store's form keeps it equal.
            assert_eq!(HeldLine::from_evidence(e.clone()), *h);
        }
        assert!(Arc::strong_count(&source) > 1);
        drop((held, origins));
        assert_eq!(Arc::strong_count(&source), 1, "a line outlived its handles");
        assert_eq!(Arc::strong_count(&path), 1, "a line outlived its handles");
    }

    #[test]
    fn handles_shared_across_threads_free_the_line_once() {
        let source: Arc<str> = "s".into();
        let mut origins = Origins::default();
        let h = HeldLine::from_line(
            &line(&source, &source, 7, b"shared"),
            at(5),
            &mut origins,
            false,
        );
        drop(origins);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut copies: Vec<HeldLine> = (0..1_000).map(|_| h.clone()).collect();
                    copies.retain(|c| c.text() == "shared");
                    copies.len()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 1_000);
        }
        assert_eq!(h.evidence().offset, 7);
        drop(h);
        assert_eq!(Arc::strong_count(&source), 1);
    }

    #[test]
    fn it_serialises_as_the_evidence_it_stands_for() {
        let source: Arc<str> = "s".into();
        let h = HeldLine::from_line(
            &line(&source, &source, 3, b"text"),
            at(9),
            &mut Origins::default(),
            false,
        );
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, serde_json::to_string(&h.evidence()).unwrap());
        let back: HeldLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }
}
