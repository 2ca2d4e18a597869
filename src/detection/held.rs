//! How the window stage holds a counted line: written once into an arena of chunks owned
//! by the stage, shared by every window that counts it.
//!
//! Under attack nearly every line a rule counts makes a new key, and each key's window
//! holds the line until it expires a window later. Held in an allocation of its own, each
//! line cost a `malloc`, and at expiry a `free` and a cache miss on its reference count,
//! written a window earlier (together ~7 % of a replay). Lines are now bump-written into
//! 64 KiB chunks ([`Arena`]): a handle ([`HeldLine`]) counts one reference to its
//! *chunk*, found by rounding the handle's address down, so lines written together are
//! counted in one cache line that stays warm while they expire together, and a chunk is
//! freed (kept for reuse) with its last line. The text is not touched again unless someone
//! asks for it.
//!
//! A chunk lives while any of its lines does: a window that holds one old line pins the
//! whole chunk. So the arena holds at most [`ARENA_CHUNKS`] chunks (16 MiB); while they
//! are all pinned, lines are held each in an allocation of its own, as before, and memory
//! follows the lines held, not the chunks. Lines restored from the store are held that way
//! too.
//!
//! An [`Evidence`] (whose text is an `Arc<str>` of its own) is made once per line: with
//! the line where every line's is needed (the daemon, which makes a hit of every match and
//! stores every window; the text then lives only in it), else the first time a crossing
//! asks (a replay).

use super::{EVIDENCE_LINE_BYTES, Evidence};
use crate::base::line::LogLine;
use crate::store::codec::PlaceMemo;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::{Cell, UnsafeCell};
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes of one arena chunk, and its alignment: a handle finds its chunk by rounding its
/// address down to this.
const CHUNK_BYTES: usize = 64 * 1024;

/// Most chunks an arena holds at once (16 MiB); past them lines are held one by one.
pub const ARENA_CHUNKS: usize = 256;

/// Empty chunks kept for the next lines rather than freed (a chunk's pages are faulted in
/// once, not once per 400 lines).
const SPARE_CHUNKS: usize = 8;

/// The low bit of a handle to a line in a chunk (lines held alone have it clear).
const IN_CHUNK: usize = 1;

/// References to its open chunk the arena takes at once, to hand out as handles without an
/// atomic operation each: a locked instruction right after the line is written waits for
/// those writes (into memory not in cache) to complete.
const CREDITS: usize = 4096;

/// Words of a chunk's bitmap of lines whose evidence was made: a bit per 8 bytes.
const MADE_WORDS: usize = CHUNK_BYTES / 8 / 64;

/// A counted line: shared like an `Arc<Evidence>` (cloning counts a reference, the last
/// drop frees it), its text stored with it.
pub struct HeldLine {
    /// The line's [`Line`], tagged with [`IN_CHUNK`] when it lies in an arena chunk, else
    /// the [`Alone`] that holds it.
    ptr: NonNull<u8>,
}

/// A line as held, followed by `len` bytes of text.
#[repr(C)]
struct Line {
    /// Kept alive by the chunk's `origins` or the [`Alone`]'s `origin`.
    origin: NonNull<Origin>,
    offset: u64,
    time: DateTime<Utc>,
    /// Bytes of text after the line (at most `EVIDENCE_LINE_BYTES`; beside the time, in
    /// what would be its padding).
    len: u32,
    /// The line as [`Evidence`] (its text an `Arc<str>` of its own), made the first time
    /// it is asked for: the daemon asks per line, for its hits and its stored windows; a
    /// replay only for crossings.
    evidence: OnceLock<Box<Evidence>>,
    /// Where the daemon's evidence writer stored the line (the store's, not read here).
    place: PlaceMemo,
}

/// A line held in an allocation of its own, its reference count with it.
#[repr(C)]
struct Alone {
    count: AtomicUsize,
    origin: Arc<Origin>,
    /// Last: its text follows.
    line: Line,
}

/// The head of an arena chunk; lines follow from [`LINES_START`].
#[repr(C)]
struct Chunk {
    /// Handles to its lines, plus one while the arena writes into it.
    count: AtomicUsize,
    /// Bytes written (set when the arena lets go of it).
    used: AtomicUsize,
    /// Some line's evidence was made (it is dropped with the chunk).
    evidence_made: AtomicBool,
    /// Every line was held with its evidence (a daemon's): all are dropped.
    all_made: AtomicBool,
    /// Otherwise, the lines whose evidence was made, by their place (a bit per 8 bytes):
    /// only those are visited when the chunk is freed.
    made: [AtomicU64; MADE_WORDS],
    /// The origins of its lines, which point into these; changed only by the arena while it
    /// writes into the chunk.
    origins: UnsafeCell<Vec<Arc<Origin>>>,
    pool: Arc<Pool>,
}

/// Where a chunk's lines start.
const LINES_START: usize = size_of::<Chunk>().next_multiple_of(align_of::<Line>());

/// What an arena's chunks share: how many hold lines, and empty ones kept for reuse.
#[derive(Default)]
struct Pool {
    live: AtomicUsize,
    spare: Mutex<Vec<Spare>>,
}

/// An empty chunk (its head not initialised).
struct Spare(NonNull<u8>);

// SAFETY: an empty chunk is plain memory, owned by whoever holds the `Spare`.
unsafe impl Send for Spare {}

fn chunk_layout() -> Layout {
    Layout::from_size_align(CHUNK_BYTES, CHUNK_BYTES).expect("a valid chunk layout")
}

impl Drop for Pool {
    fn drop(&mut self) {
        let spare = self.spare.get_mut().unwrap_or_else(|e| e.into_inner());
        for Spare(ptr) in spare.drain(..) {
            // SAFETY: spare chunks were allocated with the chunk layout and hold nothing.
            unsafe { dealloc(ptr.as_ptr(), chunk_layout()) };
        }
    }
}

// SAFETY: every field reached through a handle is `Send + Sync` or only read (the text and
// the line are never written after `Arena::hold`/`HeldLine::alone` return); the reference
// counts are atomic, as `Arc`'s are.
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
struct Origins {
    last: Option<Arc<Origin>>,
}

impl Origins {
    /// The origin of `source` and `path`: the last one when it is the same place.
    fn of(&mut self, source: &Arc<str>, path: &Arc<str>) -> &Arc<Origin> {
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

/// A line as the counting stage takes it: where it was read and its bytes, borrowed from
/// wherever the caller keeps them (a replay's piece of input, the daemon's [`LogLine`]),
/// so a line is copied once, into the arena, and only if it is counted.
#[derive(Debug, Clone, Copy)]
pub struct LineRef<'a> {
    /// Name of the configured source.
    pub source: &'a Arc<str>,
    /// Where the source read it.
    pub path: &'a Arc<str>,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// The line without its newline.
    pub bytes: &'a [u8],
}

impl<'a> From<&'a LogLine> for LineRef<'a> {
    fn from(line: &'a LogLine) -> Self {
        LineRef {
            source: &line.source,
            path: &line.path,
            offset: line.offset,
            bytes: &line.bytes,
        }
    }
}

/// Where the window stage writes the lines it holds: the chunk it writes into, the origins
/// of the lines, and the chunks' shared pool. Owned by one detector; its lines may be
/// dropped on any thread.
pub struct Arena {
    origins: Origins,
    chunks: Chunks,
}

/// An arena's chunks: the one written into (holding a reference of its own) and the next
/// line's place in it, and the pool of them.
struct Chunks {
    open: Option<NonNull<Chunk>>,
    at: usize,
    /// References to the open chunk the arena holds beyond its own, to hand out.
    credits: Cell<usize>,
    pool: Arc<Pool>,
    max_chunks: usize,
}

// SAFETY: the open chunk is written only through the arena (`&mut self`); what its lines'
// handles share of it is atomic.
unsafe impl Send for Chunks {}

impl Default for Arena {
    fn default() -> Self {
        Self::with_max_chunks(ARENA_CHUNKS)
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("chunks", &self.chunks())
            .finish_non_exhaustive()
    }
}

/// Longest reference count before aborting, as `Arc` does (a count that wrapped would free
/// a line still held).
const MAX_COUNT: usize = isize::MAX as usize;

/// A held line's text length as stored: the text is cut to `EVIDENCE_LINE_BYTES` first.
fn text_len(text: &str) -> u32 {
    u32::try_from(text.len()).expect("evidence text is bounded")
}

/// Bytes a line with `len` bytes of text takes in a chunk.
fn line_size(len: usize) -> usize {
    (size_of::<Line>() + len).next_multiple_of(align_of::<Line>())
}

impl Arena {
    /// An arena of at most `max_chunks` chunks at once.
    pub fn with_max_chunks(max_chunks: usize) -> Self {
        Arena {
            origins: Origins::default(),
            chunks: Chunks {
                open: None,
                at: 0,
                credits: Cell::new(0),
                pool: Arc::default(),
                max_chunks,
            },
        }
    }

    /// Chunks holding lines (the one written into included).
    pub fn chunks(&self) -> usize {
        self.chunks.live()
    }

    /// Holds `line` read at `time`: its first [`EVIDENCE_LINE_BYTES`] bytes, invalid UTF-8
    /// replaced (copied once, straight into the chunk when valid).
    ///
    /// `as_evidence`: the caller will ask for the line's [`Evidence`] anyway (the daemon
    /// makes a hit of every match and stores every window): it is made now, and the text is
    /// copied once, into it, not also into the chunk.
    pub fn hold(&mut self, line: LineRef<'_>, time: DateTime<Utc>, as_evidence: bool) -> HeldLine {
        let bytes = &line.bytes[..line.bytes.len().min(EVIDENCE_LINE_BYTES)];
        let lossy;
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                lossy = String::from_utf8_lossy(bytes);
                &*lossy
            }
        };
        let origin = self.origins.of(line.source, line.path);
        let (evidence, text) = if as_evidence {
            let evidence = Evidence {
                source: origin.source.clone(),
                path: origin.path.clone(),
                offset: line.offset,
                time,
                line: Arc::from(text),
            };
            (Some(evidence), "")
        } else {
            (None, text)
        };
        let size = line_size(text.len());
        let chunks = &mut self.chunks;
        let Some(chunk) = chunks.room(size) else {
            return HeldLine::alone(origin.clone(), line.offset, time, text, evidence);
        };
        // SAFETY: `room` left `size` free bytes at `at` in the open chunk, which the arena
        // alone writes; the line is written before a handle to it exists, and the chunk
        // counts the handle before it is returned.
        unsafe {
            let head = chunk.as_ref();
            let origins = &mut *head.origins.get();
            if !origins.last().is_some_and(|o| Arc::ptr_eq(o, origin)) {
                origins.push(origin.clone());
            }
            let origin = NonNull::from(&**origins.last().expect("pushed above"));
            if evidence.is_some() {
                // Plain stores: a locked one would wait for the writes before it.
                head.evidence_made.store(true, Ordering::Relaxed);
                head.all_made.store(true, Ordering::Relaxed);
            }
            let slot = chunk.as_ptr().cast::<u8>().add(chunks.at);
            slot.cast::<Line>().write(Line {
                len: text_len(text),
                origin,
                offset: line.offset,
                time,
                evidence: evidence
                    .map(|e| OnceLock::from(Box::new(e)))
                    .unwrap_or_default(),
                place: PlaceMemo::default(),
            });
            std::ptr::copy_nonoverlapping(text.as_ptr(), slot.add(size_of::<Line>()), text.len());
            chunks.at += size;
            chunks.take_credit(chunk);
            HeldLine {
                ptr: NonNull::new_unchecked(slot.map_addr(|a| a | IN_CHUNK)),
            }
        }
    }

    /// The line `line` as the kinds count it: more handles to it, for the windows that keep
    /// it, cost no atomic operation while the arena writes into its chunk.
    pub fn counted<'a>(&'a self, line: &'a HeldLine) -> Counted<'a> {
        Counted {
            line,
            credits: (line.in_chunk() && Some(line.chunk()) == self.chunks.open)
                .then_some(&self.chunks.credits),
        }
    }

    /// Drops a handle, as a credit if it is to the open chunk (no atomic operation).
    pub fn give_back(&mut self, line: HeldLine) {
        if line.in_chunk() && Some(line.chunk()) == self.chunks.open {
            std::mem::forget(line);
            self.chunks.credits.set(self.chunks.credits.get() + 1);
        }
    }
}

impl Chunks {
    fn live(&self) -> usize {
        self.pool.live.load(Ordering::Relaxed)
    }

    /// Takes a reference to the open chunk `chunk` from the credits, taking more when none
    /// are left.
    fn take_credit(&self, chunk: NonNull<Chunk>) {
        let left = self.credits.get();
        if left == 0 {
            // SAFETY: the arena's own reference keeps its open chunk alive.
            unsafe { chunk.as_ref() }
                .count
                .fetch_add(CREDITS, Ordering::Relaxed);
            self.credits.set(CREDITS - 1);
        } else {
            self.credits.set(left - 1);
        }
    }

    /// The open chunk with `size` bytes free at `at`: the one written into, or a new one;
    /// `None` when the arena holds all the chunks it may.
    fn room(&mut self, size: usize) -> Option<NonNull<Chunk>> {
        if let Some(open) = self.open
            && self.at + size <= CHUNK_BYTES
        {
            return Some(open);
        }
        self.let_go();
        let spare = self
            .pool
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let raw = match spare {
            Some(Spare(raw)) => raw,
            None if self.live() >= self.max_chunks => return None,
            None => {
                // SAFETY: the layout is not zero-sized.
                let raw = unsafe { alloc(chunk_layout()) };
                NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(chunk_layout()))
            }
        };
        let chunk = raw.cast::<Chunk>();
        // SAFETY: a fresh or spare chunk: memory of the chunk layout that nothing uses.
        unsafe {
            chunk.as_ptr().write(Chunk {
                count: AtomicUsize::new(1 + CREDITS),
                used: AtomicUsize::new(LINES_START),
                evidence_made: AtomicBool::new(false),
                all_made: AtomicBool::new(false),
                made: [const { AtomicU64::new(0) }; MADE_WORDS],
                origins: UnsafeCell::new(Vec::new()),
                pool: self.pool.clone(),
            });
        }
        self.pool.live.fetch_add(1, Ordering::Relaxed);
        self.open = Some(chunk);
        self.credits.set(CREDITS);
        self.at = LINES_START;
        assert!(LINES_START + size <= CHUNK_BYTES, "a line fits in a chunk");
        Some(chunk)
    }

    /// Stops writing into the open chunk: it lives on while its lines do.
    fn let_go(&mut self) {
        if let Some(open) = self.open.take() {
            // SAFETY: the arena holds a reference to its open chunk, given up here.
            unsafe {
                open.as_ref().used.store(self.at, Ordering::Relaxed);
                release(open, 1 + self.credits.replace(0));
            }
        }
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// Gives up `n` references to `chunk`; the last frees its lines and keeps it for reuse.
///
/// # Safety
/// The caller holds `n` references to the chunk, which it no longer uses.
unsafe fn release(chunk: NonNull<Chunk>, n: usize) {
    // Release, then Acquire before freeing, as `Arc`'s drop: every use of the chunk's lines
    // by other handles, and the arena's last writes, happen before it is freed.
    // SAFETY: the caller's reference keeps the chunk alive up to here.
    if unsafe { chunk.as_ref() }
        .count
        .fetch_sub(n, Ordering::Release)
        != n
    {
        return;
    }
    fence(Ordering::Acquire);
    // SAFETY: this was the last reference: nothing else reads the chunk. Its lines are
    // walked by their lengths up to `used` (what the arena wrote) and dropped once, then
    // its head.
    unsafe {
        let head = chunk.as_ptr();
        if (*head).all_made.load(Ordering::Relaxed) {
            let used = (*head).used.load(Ordering::Relaxed);
            let mut at = LINES_START;
            while at < used {
                let line = head.cast::<u8>().add(at).cast::<Line>();
                at += line_size((*line).len as usize);
                std::ptr::drop_in_place(line);
            }
        } else if (*head).evidence_made.load(Ordering::Relaxed) {
            for (i, word) in (*head).made.iter().enumerate() {
                let mut bits = word.load(Ordering::Relaxed);
                while bits != 0 {
                    let at = (i * 64 + bits.trailing_zeros() as usize) * 8;
                    bits &= bits - 1;
                    std::ptr::drop_in_place(head.cast::<u8>().add(at).cast::<Line>());
                }
            }
        }
        let pool = std::ptr::read(&(*head).pool);
        std::ptr::drop_in_place(&mut (*head).origins);
        pool.live.fetch_sub(1, Ordering::Relaxed);
        let mut spare = pool.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_CHUNKS {
            spare.push(Spare(chunk.cast()));
        } else {
            dealloc(head.cast(), chunk_layout());
        }
    }
}

impl HeldLine {
    /// The layout of a line held alone with `len` bytes of text.
    fn alone_layout(len: usize) -> Layout {
        Layout::from_size_align(size_of::<Alone>() + len, align_of::<Alone>())
            .expect("evidence text is bounded")
    }

    /// A held copy of `evidence` (read back from the store), which it keeps as its
    /// evidence (the text is not copied).
    pub fn from_evidence(evidence: Evidence) -> Self {
        let origin = Arc::new(Origin {
            source: evidence.source.clone(),
            path: evidence.path.clone(),
        });
        Self::alone(origin, evidence.offset, evidence.time, "", Some(evidence))
    }

    /// A line in an allocation of its own.
    fn alone(
        origin: Arc<Origin>,
        offset: u64,
        time: DateTime<Utc>,
        text: &str,
        evidence: Option<Evidence>,
    ) -> Self {
        let layout = Self::alone_layout(text.len());
        // SAFETY: the layout is not zero-sized (it holds the head); the head is written
        // before the pointer is used as one, and the text into the bytes the layout
        // reserves after it.
        unsafe {
            let raw = alloc(layout);
            let Some(ptr) = NonNull::new(raw.cast::<Alone>()) else {
                handle_alloc_error(layout)
            };
            ptr.as_ptr().write(Alone {
                count: AtomicUsize::new(1),
                line: Line {
                    len: text_len(text),
                    origin: NonNull::from(&*origin),
                    offset,
                    time,
                    evidence: evidence
                        .map(|e| OnceLock::from(Box::new(e)))
                        .unwrap_or_default(),

                    place: PlaceMemo::default(),
                },
                origin,
            });
            std::ptr::copy_nonoverlapping(text.as_ptr(), raw.add(size_of::<Alone>()), text.len());
            HeldLine { ptr: ptr.cast() }
        }
    }

    fn in_chunk(&self) -> bool {
        self.ptr.addr().get() & IN_CHUNK != 0
    }

    fn line_ptr(&self) -> *mut Line {
        if self.in_chunk() {
            self.ptr.as_ptr().map_addr(|a| a & !IN_CHUNK).cast()
        } else {
            // SAFETY: an untagged handle points to an `Alone`, alive while it is.
            unsafe { &raw mut (*self.ptr.as_ptr().cast::<Alone>()).line }
        }
    }

    /// The chunk a handle in one points into.
    fn chunk(&self) -> NonNull<Chunk> {
        let line = self.line_ptr();
        // SAFETY: lines in a chunk lie past its head, inside its aligned bytes.
        unsafe { NonNull::new_unchecked(line.map_addr(|a| a & !(CHUNK_BYTES - 1))).cast::<Chunk>() }
    }

    /// The reference count the handle takes part in: its chunk's, or its own.
    fn count(&self) -> &AtomicUsize {
        // SAFETY: the chunk or the allocation lives while any handle does.
        unsafe {
            if self.in_chunk() {
                &(*self.chunk().as_ptr()).count
            } else {
                &(*self.ptr.as_ptr().cast::<Alone>()).count
            }
        }
    }

    /// Where the line is stored, once a commit stored it (see [`PlaceMemo`]).
    pub fn place_memo(&self) -> &PlaceMemo {
        &self.line().place
    }

    fn line(&self) -> &Line {
        // SAFETY: the line lives while any handle does and is not written after it is made.
        unsafe { &*self.line_ptr() }
    }

    fn origin(&self) -> &Origin {
        // SAFETY: the origin is kept by the line's chunk or allocation.
        unsafe { self.line().origin.as_ref() }
    }

    /// The line's text.
    pub fn text(&self) -> &str {
        let line = self.line();
        // Made with its evidence, a line holds its text there only.
        if let Some(evidence) = line.evidence.get() {
            return &evidence.line;
        }
        // SAFETY: the text (`len` bytes of a `str`) was copied right after the line, and
        // nothing writes it again.
        unsafe {
            let bytes = std::slice::from_raw_parts(
                self.line_ptr().cast::<u8>().add(size_of::<Line>()),
                line.len as usize,
            );
            std::str::from_utf8_unchecked(bytes)
        }
    }

    /// The line's own time.
    pub fn time(&self) -> DateTime<Utc> {
        self.line().time
    }

    /// The line as evidence for an incident, a hit or the store: made once per line, the
    /// first time it is asked for.
    pub fn evidence(&self) -> &Evidence {
        let line = self.line();
        line.evidence.get_or_init(|| {
            if self.in_chunk() {
                let chunk = self.chunk();
                // SAFETY: the chunk lives while this handle does.
                let head = unsafe { chunk.as_ref() };
                let bit = (self.line_ptr().addr() - chunk.as_ptr().addr()) / 8;
                head.made[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
                head.evidence_made.store(true, Ordering::Relaxed);
            }
            let origin = self.origin();
            Box::new(Evidence {
                source: origin.source.clone(),
                path: origin.path.clone(),
                offset: line.offset,
                time: line.time,
                line: Arc::from(self.text()),
            })
        })
    }
}

/// The line a match counts, as [`super::kinds`] see it: [`Counted::keep`] makes the
/// handles the windows keep.
pub struct Counted<'a> {
    line: &'a HeldLine,
    /// The arena's credits when the line is in its open chunk.
    credits: Option<&'a Cell<usize>>,
}

impl<'a> Counted<'a> {
    /// A line not written by an arena (tests, lines restored from the store).
    pub fn of(line: &'a HeldLine) -> Self {
        Counted {
            line,
            credits: None,
        }
    }

    /// Another handle to the line, for a window to keep.
    pub fn keep(&self) -> HeldLine {
        match self.credits {
            Some(credits) if credits.get() > 0 => {
                credits.set(credits.get() - 1);
                HeldLine { ptr: self.line.ptr }
            }
            _ => self.line.clone(),
        }
    }
}

impl std::ops::Deref for Counted<'_> {
    type Target = HeldLine;

    fn deref(&self) -> &HeldLine {
        self.line
    }
}

impl Clone for HeldLine {
    fn clone(&self) -> Self {
        // Relaxed, as `Arc::clone`: a new reference is made from one already held.
        if self.count().fetch_add(1, Ordering::Relaxed) > MAX_COUNT {
            std::process::abort();
        }
        HeldLine { ptr: self.ptr }
    }
}

impl Drop for HeldLine {
    fn drop(&mut self) {
        if self.in_chunk() {
            // SAFETY: this handle's reference, given up.
            unsafe { release(self.chunk(), 1) };
            return;
        }
        // Release, then Acquire before freeing, as `Arc`'s drop.
        if self.count().fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        let layout = Self::alone_layout(self.line().len as usize);
        // SAFETY: this was the last handle; the allocation was written by `alone` and is
        // dropped once, then freed with the layout it was made with.
        unsafe {
            let alone = self.ptr.as_ptr().cast::<Alone>();
            std::ptr::drop_in_place(alone);
            dealloc(alone.cast(), layout);
        }
    }
}

impl PartialEq for HeldLine {
    /// Equal when the evidence made of them would be (the same place, time and text).
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.line(), other.line());
        let (oa, ob) = (self.origin(), other.origin());
        oa.source == ob.source
            && oa.path == ob.path
            && a.offset == b.offset
            && a.time == b.time
            && self.text() == other.text()
    }
}

impl std::fmt::Debug for HeldLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (line, origin) = (self.line(), self.origin());
        f.debug_struct("HeldLine")
            .field("source", &origin.source)
            .field("path", &origin.path)
            .field("offset", &line.offset)
            .field("time", &line.time)
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
        // A small arena: most lines in chunks, some past its bound held alone.
        let mut arena = Arena::with_max_chunks(2);
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for (i, bytes) in texts.iter().enumerate() {
            let l = line(&source, &path, i as u64 * 100, bytes);
            let h = arena.hold((&l).into(), at(i as i64 * 1_000), i % 3 == 0);
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
        drop((held, arena));
        assert_eq!(Arc::strong_count(&source), 1, "a line outlived its handles");
        assert_eq!(Arc::strong_count(&path), 1, "a line outlived its handles");
    }

    #[test]
    fn handles_shared_across_threads_free_the_line_once() {
        let source: Arc<str> = "s".into();
        let mut arena = Arena::default();
        let h = arena.hold((&line(&source, &source, 7, b"shared")).into(), at(5), false);
        drop(arena);
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
        let h = Arena::default().hold((&line(&source, &source, 3, b"text")).into(), at(9), false);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, serde_json::to_string(&h.evidence()).unwrap());
        let back: HeldLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }

    /// A chunk is freed with its last line, whichever it is and whenever the arena has
    /// moved on; a line held alone past the arena's bound is freed with its own last
    /// handle; and at no time does the arena hold more chunks than its bound.
    #[test]
    fn a_chunk_is_freed_with_its_last_line_and_the_arena_stays_bounded() {
        let source: Arc<str> = "auth".into();
        let text = vec![b'z'; 500];
        let mut arena = Arena::with_max_chunks(3);
        let mut lines: Vec<HeldLine> = Vec::new();
        for i in 0..1_000u64 {
            let held = arena.hold(
                (&line(&source, &source, i, &text)).into(),
                at(i as i64),
                false,
            );
            // Windows keep handles made from the arena's credits, the stage gives its own
            // back; some lines' evidence is made (dropped with the chunk).
            let kept: Vec<HeldLine> = {
                let counted = arena.counted(&held);
                (0..i % 3).map(|_| counted.keep()).collect()
            };
            if i % 7 == 0 {
                assert_eq!(held.evidence().offset, i);
            }
            if kept.is_empty() {
                lines.push(held);
            } else {
                arena.give_back(held);
                lines.extend(kept);
            }
        }
        // Now one handle per line: the first, the last, and the chunks between them.
        lines.dedup_by(|a, b| a.line_ptr() == b.line_ptr());
        assert_eq!(lines.len(), 1_000);
        for (i, h) in lines.iter().enumerate() {
            assert_eq!((h.evidence().offset, h.time()), (i as u64, at(i as i64)));
        }
        assert_eq!(
            arena.chunks(),
            3,
            "1,000 lines of 500 bytes fill more than 3 chunks"
        );
        let alone = lines.iter().filter(|h| !h.in_chunk()).count();
        assert!(alone > 0, "past the bound lines are held alone");
        // Keep the first line and the last: every chunk between them goes.
        let last = lines.pop().unwrap();
        let first = lines.remove(0);
        let shared = first.clone();
        drop(lines);
        // At its bound the arena let go of the chunk it wrote last, so it went too.
        assert_eq!(arena.chunks(), 1, "the first line's chunk alone");
        drop(first);
        assert_eq!(arena.chunks(), 1, "a clone still holds the first chunk");
        assert_eq!(shared.text().len(), 500);
        assert_eq!(shared.evidence().offset, 0);
        drop(shared);
        assert_eq!(arena.chunks(), 0, "every chunk is freed");
        // Freed chunks are reused: a new run of lines makes no more than the bound.
        let again: Vec<HeldLine> = (0..400u64)
            .map(|i| {
                arena.hold(
                    (&line(&source, &source, i, &text)).into(),
                    at(i as i64),
                    true,
                )
            })
            .collect();
        assert!(arena.chunks() <= 3);
        assert!(again.iter().all(|h| h.text().len() == 500));
        drop(arena);
        assert_eq!(last.evidence().offset, 999);
        drop((again, last));
        assert_eq!(
            Arc::strong_count(&source),
            1,
            "a line or chunk outlived its handles"
        );
    }
}
