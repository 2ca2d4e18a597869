//! Append-only segment files: where the store keeps its high-volume records (evidence
//! blocks, window changes and snapshots) outside the storage engine, so the engine only
//! receives small commits.
//!
//! A journal is a sequence of numbered segments (`NNNNNNNN.seg`, about
//! [`SEGMENT_BYTES`] each; a record never spans two). A record is its payload's length
//! (u32 LE), the CRC32 of what follows the CRC, a version byte, a kind byte and the payload.
//! A record is appended and synced before the engine commit that references it (by
//! position), so a reference the engine holds always points at a whole record. Bytes past
//! the end the engine last committed belong to a commit that never happened (their lines
//! are read again from the log because their checkpoint was not committed either):
//! [`Journal::recover`] cuts them off, torn or whole. Whole segments go once nothing the
//! engine holds points into them ([`Journal::drop_before`]).
//!
//! Segments are files in a directory ([`FileSegments`]) or buffers in memory
//! ([`MemorySegments`], for tools and tests), behind [`SegmentIo`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Size at which a journal starts a new segment (small in unit tests, so a few commits
/// fill several).
pub const SEGMENT_BYTES: u64 = if cfg!(test) { 64 << 10 } else { 4 << 20 };
/// Bytes before a record's payload: length, CRC, version, kind.
pub(super) const HEADER: usize = 10;
/// Version of the record layout.
const RECORD_VERSION: u8 = 1;
/// Largest payload read back (a length beyond it is a torn or corrupt header).
const MAX_PAYLOAD: u32 = 1 << 30;

/// Where a record starts: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Segment number: the file `NNNNNNNN.seg`, counting up as segments fill.
    pub seg: u32,
    /// Byte offset of the record's header in the segment.
    pub off: u32,
}

impl Pos {
    /// The position as one number (segment in the high half): ordered like positions.
    pub fn pack(self) -> u64 {
        (u64::from(self.seg) << 32) | u64::from(self.off)
    }

    /// The position [`Pos::pack`] made `n` from.
    pub fn unpack(n: u64) -> Pos {
        Pos {
            seg: (n >> 32) as u32,
            off: n as u32,
        }
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08}.seg@{}", self.seg, self.off)
    }
}

/// Errors reading a journal.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The disk failed (or is full).
    #[error("segment I/O error: {0}")]
    Io(#[from] io::Error),
    /// A record is cut short or its checksum does not match.
    #[error("segment record at {0} is torn or corrupt ({1})")]
    Corrupt(Pos, &'static str),
    /// A record was written by a newer release.
    #[error("segment record at {0} has version {1}, newer than this release reads")]
    NewerRecord(Pos, u8),
}

/// Numbered byte buffers that can be appended to, synced, cut and removed.
pub trait SegmentIo: Send + Sync {
    /// The segments there are, in order.
    fn list(&self) -> io::Result<Vec<u32>>;
    /// A segment's length (0 when it does not exist).
    fn len(&self, seg: u32) -> io::Result<u64>;
    /// Writes `bytes` at `off` (creating the segment).
    fn write_at(&self, seg: u32, off: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was written to the segment durable.
    fn sync(&self, seg: u32) -> io::Result<()>;
    /// Reads exactly `len` bytes at `off`.
    fn read_at(&self, seg: u32, off: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Cuts the segment to `len` bytes.
    fn truncate(&self, seg: u32, len: u64) -> io::Result<()>;
    /// Removes the segment.
    fn remove(&self, seg: u32) -> io::Result<()>;
}

/// Segments as files `NNNNNNNN.seg` in a directory.
pub struct FileSegments {
    dir: PathBuf,
    /// Open files by segment (removed with the segment).
    files: Mutex<HashMap<u32, Arc<File>>>,
}

impl FileSegments {
    /// The segments in `dir` (created if missing).
    pub fn open(dir: PathBuf) -> io::Result<FileSegments> {
        std::fs::create_dir_all(&dir)?;
        Ok(FileSegments {
            dir,
            files: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, seg: u32) -> PathBuf {
        self.dir.join(format!("{seg:08}.seg"))
    }

    /// The segment's file; `create`: made (and its name made durable) when missing.
    fn file(&self, seg: u32, create: bool) -> io::Result<Option<Arc<File>>> {
        let mut files = self.files.lock().expect("segment files lock");
        if let Some(f) = files.get(&seg) {
            return Ok(Some(f.clone()));
        }
        let path = self.path(seg);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                // The new name must survive a crash as well as the bytes synced into it.
                File::open(&self.dir)?.sync_all()?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = Arc::new(file);
        files.insert(seg, file.clone());
        Ok(Some(file))
    }
}

impl SegmentIo for FileSegments {
    fn list(&self) -> io::Result<Vec<u32>> {
        let mut segs = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                segs.push(n);
            }
        }
        segs.sort_unstable();
        Ok(segs)
    }

    fn len(&self, seg: u32) -> io::Result<u64> {
        match self.file(seg, false)? {
            Some(f) => Ok(f.metadata()?.len()),
            None => Ok(0),
        }
    }

    fn write_at(&self, seg: u32, off: u64, bytes: &[u8]) -> io::Result<()> {
        let f = self.file(seg, true)?.expect("created");
        f.write_all_at(bytes, off)
    }

    fn sync(&self, seg: u32) -> io::Result<()> {
        match self.file(seg, false)? {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    fn read_at(&self, seg: u32, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self
            .file(seg, false)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such segment"))?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    fn truncate(&self, seg: u32, len: u64) -> io::Result<()> {
        match self.file(seg, false)? {
            Some(f) => {
                f.set_len(len)?;
                f.sync_all()
            }
            None => Ok(()),
        }
    }

    fn remove(&self, seg: u32) -> io::Result<()> {
        self.files.lock().expect("segment files lock").remove(&seg);
        match std::fs::remove_file(self.path(seg)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Segments in memory: the same journal without a disk.
#[derive(Default)]
pub struct MemorySegments {
    segs: Mutex<BTreeMap<u32, Vec<u8>>>,
}

impl SegmentIo for MemorySegments {
    fn list(&self) -> io::Result<Vec<u32>> {
        Ok(self
            .segs
            .lock()
            .expect("segments lock")
            .keys()
            .copied()
            .collect())
    }

    fn len(&self, seg: u32) -> io::Result<u64> {
        let segs = self.segs.lock().expect("segments lock");
        Ok(segs.get(&seg).map_or(0, |s| s.len() as u64))
    }

    fn write_at(&self, seg: u32, off: u64, bytes: &[u8]) -> io::Result<()> {
        let mut segs = self.segs.lock().expect("segments lock");
        let s = segs.entry(seg).or_default();
        let (off, end) = (off as usize, off as usize + bytes.len());
        if s.len() < end {
            s.resize(end, 0);
        }
        s[off..end].copy_from_slice(bytes);
        Ok(())
    }

    fn sync(&self, _: u32) -> io::Result<()> {
        Ok(())
    }

    fn read_at(&self, seg: u32, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let segs = self.segs.lock().expect("segments lock");
        let s = segs
            .get(&seg)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such segment"))?;
        s.get(off as usize..off as usize + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the segment"))
    }

    fn truncate(&self, seg: u32, len: u64) -> io::Result<()> {
        if let Some(s) = self.segs.lock().expect("segments lock").get_mut(&seg) {
            s.truncate(len as usize);
        }
        Ok(())
    }

    fn remove(&self, seg: u32) -> io::Result<()> {
        self.segs.lock().expect("segments lock").remove(&seg);
        Ok(())
    }
}

/// An append-only journal over segments: where the next record goes, and which segments
/// were written since the last sync.
pub struct Journal {
    io: Arc<dyn SegmentIo>,
    end: Pos,
    unsynced: BTreeSet<u32>,
    segment_bytes: u64,
}

impl Journal {
    /// The journal over `io`, cut back to `committed` (everything past it belongs to a
    /// commit the engine does not have: later segments are removed, the last one cut).
    pub fn recover(io: Arc<dyn SegmentIo>, committed: Pos) -> io::Result<Journal> {
        for seg in io.list()? {
            if seg > committed.seg {
                io.remove(seg)?;
            }
        }
        if io.len(committed.seg)? > u64::from(committed.off) {
            io.truncate(committed.seg, u64::from(committed.off))?;
        }
        Ok(Journal {
            io,
            end: committed,
            unsynced: BTreeSet::new(),
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// The journal over `io` as it is, only to read its records (nothing is cut).
    pub fn reading(io: Arc<dyn SegmentIo>) -> Journal {
        Journal {
            io,
            end: Pos::default(),
            unsynced: BTreeSet::new(),
            segment_bytes: SEGMENT_BYTES,
        }
    }

    /// Segments of `bytes` instead of [`SEGMENT_BYTES`] (tests).
    pub fn with_segment_bytes(mut self, bytes: u64) -> Journal {
        self.segment_bytes = bytes;
        self
    }

    /// Where the next record goes.
    pub fn end(&self) -> Pos {
        self.end
    }

    /// The segment files under the journal, shared so a reload can open the same journal again.
    pub fn io(&self) -> &Arc<dyn SegmentIo> {
        &self.io
    }

    /// Appends a record (not yet durable: see [`Journal::sync`]); returns where it starts.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> io::Result<Pos> {
        let size = (HEADER + payload.len()) as u64;
        if payload.len() as u64 > u64::from(MAX_PAYLOAD) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large",
            ));
        }
        if self.end.off > 0 && u64::from(self.end.off) + size > self.segment_bytes {
            // The segment is full: cut anything a failed append left past its end (so a
            // reader walking it meets only records), then go on in the next one.
            self.io.truncate(self.end.seg, u64::from(self.end.off))?;
            self.unsynced.insert(self.end.seg);
            self.end = Pos {
                seg: self.end.seg + 1,
                off: 0,
            };
        }
        let mut bytes = Vec::with_capacity(size as usize);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.push(RECORD_VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(payload);
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[8..]);
        let crc = crc.sum();
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        let at = self.end;
        self.io.write_at(at.seg, u64::from(at.off), &bytes)?;
        self.unsynced.insert(at.seg);
        self.end.off = u32::try_from(u64::from(at.off) + size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        Ok(at)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> io::Result<()> {
        while let Some(seg) = self.unsynced.first().copied() {
            self.io.sync(seg)?;
            self.unsynced.remove(&seg);
        }
        Ok(())
    }

    /// Forgets what was appended since `to` (a commit that failed): the next record goes
    /// there. Cutting the bytes is best effort; [`Journal::recover`] cuts them at the
    /// latest.
    pub fn rewind(&mut self, to: Pos) {
        for seg in to.seg + 1..=self.end.seg {
            let _ = self.io.remove(seg);
        }
        let _ = self.io.truncate(to.seg, u64::from(to.off));
        self.end = to;
    }

    /// Removes every segment before `seg` (none of their records is referenced any more);
    /// returns how many went.
    pub fn drop_before(&mut self, seg: u32) -> io::Result<usize> {
        let mut gone = 0;
        for s in self.io.list()? {
            if s >= seg.min(self.end.seg) {
                break;
            }
            self.io.remove(s)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// The records from `from` up to `to`, in order, with their positions and kinds.
    pub fn records(
        &self,
        from: Pos,
        to: Pos,
    ) -> impl Iterator<Item = Result<(Pos, u8, Vec<u8>), SegmentError>> + '_ {
        let mut at = from;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            loop {
                if at >= to {
                    return None;
                }
                match self.io.len(at.seg) {
                    Ok(len) if u64::from(at.off) >= len && at.seg < to.seg => {
                        at = Pos {
                            seg: at.seg + 1,
                            off: 0,
                        };
                    }
                    Ok(_) => break,
                    Err(e) => {
                        failed = true;
                        return Some(Err(e.into()));
                    }
                }
            }
            let item = read(self.io.as_ref(), at).map(|(kind, payload)| {
                let here = at;
                at.off += (HEADER + payload.len()) as u32;
                (here, kind, payload)
            });
            failed = item.is_err();
            Some(item)
        })
    }
}

/// The record at `at`: its kind and payload, checked against its CRC.
pub fn read(io: &dyn SegmentIo, at: Pos) -> Result<(u8, Vec<u8>), SegmentError> {
    let torn = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => SegmentError::Corrupt(at, "cut short"),
        _ => SegmentError::Io(e),
    };
    let head = io
        .read_at(at.seg, u64::from(at.off), HEADER)
        .map_err(torn)?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Err(SegmentError::Corrupt(at, "impossible length"));
    }
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let payload = io
        .read_at(at.seg, u64::from(at.off) + HEADER as u64, len as usize)
        .map_err(torn)?;
    let mut hasher = flate2::Crc::new();
    hasher.update(&head[8..]);
    hasher.update(&payload);
    if hasher.sum() != crc {
        return Err(SegmentError::Corrupt(at, "checksum mismatch"));
    }
    if head[8] > RECORD_VERSION {
        return Err(SegmentError::NewerRecord(at, head[8]));
    }
    Ok((head[9], payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, Arc<dyn SegmentIo>) {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(FileSegments::open(dir.path().join("j")).unwrap());
        (dir, io)
    }

    fn all(j: &Journal, from: Pos) -> Vec<(u8, Vec<u8>)> {
        j.records(from, j.end())
            .map(|r| r.map(|(_, k, p)| (k, p)).unwrap())
            .collect()
    }

    #[test]
    fn records_read_back_across_segments_and_survive_reopening() {
        for io in [
            files().1,
            Arc::new(MemorySegments::default()) as Arc<dyn SegmentIo>,
        ] {
            let mut j = Journal::recover(io.clone(), Pos::default())
                .unwrap()
                .with_segment_bytes(64);
            let a = j.append(1, &[7; 30]).unwrap();
            let b = j.append(2, &[8; 30]).unwrap();
            j.sync().unwrap();
            assert_eq!(
                (a, b.seg, b.off),
                (Pos::default(), 1, 0),
                "b starts a segment"
            );
            assert_eq!(read(io.as_ref(), b).unwrap(), (2, vec![8; 30]));
            let end = j.end();
            let j = Journal::recover(io, end).unwrap();
            assert_eq!(
                all(&j, Pos::default()),
                [(1, vec![7; 30]), (2, vec![8; 30])]
            );
        }
    }

    #[test]
    fn a_torn_tail_past_the_committed_end_is_cut_off_on_recovery() {
        let (_dir, io) = files();
        let mut j = Journal::recover(io.clone(), Pos::default()).unwrap();
        j.append(1, b"committed").unwrap();
        let committed = j.end();
        j.append(1, b"never committed").unwrap();
        let whole = io.len(0).unwrap();
        // The process died while writing the last record: half of it reached the disk.
        io.truncate(0, whole - 5).unwrap();
        let mut j = Journal::recover(io.clone(), committed).unwrap();
        assert_eq!(io.len(0).unwrap(), u64::from(committed.off));
        assert_eq!(all(&j, Pos::default()), [(1, b"committed".to_vec())]);
        // The next record goes where the torn one was.
        assert_eq!(j.append(1, b"next").unwrap(), committed);
    }

    #[test]
    fn segments_past_the_committed_end_are_removed_on_recovery() {
        let (_dir, io) = files();
        let mut j = Journal::recover(io.clone(), Pos::default())
            .unwrap()
            .with_segment_bytes(32);
        j.append(1, &[1; 20]).unwrap();
        let committed = j.end();
        j.append(1, &[2; 20]).unwrap();
        j.append(1, &[3; 20]).unwrap();
        assert_eq!(io.list().unwrap(), [0, 1, 2]);
        Journal::recover(io.clone(), committed).unwrap();
        assert_eq!(io.list().unwrap(), [0]);
    }

    #[test]
    fn a_record_whose_checksum_does_not_match_is_refused() {
        let (_dir, io) = files();
        let mut j = Journal::recover(io.clone(), Pos::default()).unwrap();
        let at = j.append(3, b"evidence").unwrap();
        j.sync().unwrap();
        io.write_at(0, HEADER as u64 + 2, b"X").unwrap();
        assert!(matches!(
            read(io.as_ref(), at),
            Err(SegmentError::Corrupt(_, "checksum mismatch"))
        ));
        let walked: Vec<_> = j.records(Pos::default(), j.end()).collect();
        assert_eq!(walked.len(), 1, "the walk stops at the corrupt record");
        assert!(walked[0].is_err());
    }

    #[test]
    fn a_failed_append_is_rewound_and_not_read_back() {
        let io: Arc<dyn SegmentIo> = Arc::new(MemorySegments::default());
        let mut j = Journal::recover(io.clone(), Pos::default()).unwrap();
        j.append(1, b"kept").unwrap();
        let before = j.end();
        j.append(1, b"of a failed commit").unwrap();
        j.rewind(before);
        j.append(1, b"next").unwrap();
        assert_eq!(
            all(&j, Pos::default()),
            [(1, b"kept".to_vec()), (1, b"next".to_vec())]
        );
    }

    #[test]
    fn whole_segments_before_the_oldest_reference_are_collected() {
        let (_dir, io) = files();
        let mut j = Journal::recover(io.clone(), Pos::default())
            .unwrap()
            .with_segment_bytes(32);
        let mut at = Vec::new();
        for n in 0..4u8 {
            at.push(j.append(1, &[n; 20]).unwrap());
        }
        assert_eq!(io.list().unwrap(), [0, 1, 2, 3]);
        // The oldest record still referenced is in segment 2.
        assert_eq!(j.drop_before(at[2].seg).unwrap(), 2);
        assert_eq!(io.list().unwrap(), [2, 3]);
        assert_eq!(read(io.as_ref(), at[2]).unwrap().1, [2; 20]);
        // The segment being written is never collected.
        assert_eq!(j.drop_before(u32::MAX).unwrap(), 1);
        assert_eq!(io.list().unwrap(), [3]);
    }
}
