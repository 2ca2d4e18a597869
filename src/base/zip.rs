//! A minimal ZIP writer: uncompressed ("stored") entries only, for evidence packs.
//!
//! Why not a crate: a pack holds a few small text files, so compression buys nothing, and
//! the stored format is three fixed records (local header, central directory, end record,
//! APPNOTE 6.3.x sections 4.3.7, 4.3.12, 4.3.16). Writing them here costs no new dependency
//! (CRC-32 comes from `flate2`, already used for evidence blocks), and every `unzip`,
//! Python `zipfile` or file manager reads the result. No ZIP64: an archive or entry past
//! 4 GiB, or past 65 535 entries, is refused rather than written wrong.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Why an archive cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    /// Too large for a ZIP without ZIP64 extensions.
    #[error("too large for a ZIP archive without ZIP64: {0}")]
    TooLarge(&'static str),
}

/// Entries added so far; [`StoredZip::finish`] returns the archive's bytes.
pub struct StoredZip {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
    /// DOS date and time every entry carries.
    stamp: (u16, u16),
}

/// Version needed to extract: 2.0 (stored entries, directories).
const VERSION: u16 = 20;
/// General purpose flag bit 11: names are UTF-8.
const UTF8_NAMES: u16 = 1 << 11;

impl StoredZip {
    /// An empty archive whose entries are dated `at` (DOS time: local, 2 s steps; UTC here).
    pub fn new(at: DateTime<Utc>) -> Self {
        let year = at.year().clamp(1980, 2107) as u16;
        let date = ((year - 1980) << 9) | ((at.month() as u16) << 5) | at.day() as u16;
        let time =
            ((at.hour() as u16) << 11) | ((at.minute() as u16) << 5) | (at.second() as u16 / 2);
        StoredZip {
            out: Vec::new(),
            central: Vec::new(),
            entries: 0,
            stamp: (time, date),
        }
    }

    /// Adds a file `name` (a relative path with `/` separators) holding `data`.
    pub fn add(&mut self, name: &str, data: &[u8]) -> Result<(), ZipError> {
        let size = u32::try_from(data.len()).map_err(|_| ZipError::TooLarge("an entry"))?;
        let offset =
            u32::try_from(self.out.len()).map_err(|_| ZipError::TooLarge("the archive"))?;
        let name_len = u16::try_from(name.len()).map_err(|_| ZipError::TooLarge("a name"))?;
        self.entries = self
            .entries
            .checked_add(1)
            .ok_or(ZipError::TooLarge("the entry count"))?;
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum();
        let (time, date) = self.stamp;

        let local = &mut self.out;
        put32(local, 0x0403_4b50);
        for v in [VERSION, UTF8_NAMES, 0, time, date] {
            put16(local, v);
        }
        for v in [crc, size, size] {
            put32(local, v);
        }
        put16(local, name_len);
        put16(local, 0);
        local.extend_from_slice(name.as_bytes());
        local.extend_from_slice(data);

        let central = &mut self.central;
        put32(central, 0x0201_4b50);
        // Made by: Unix (3), so the external attributes below are a file mode.
        for v in [(3 << 8) | VERSION, VERSION, UTF8_NAMES, 0, time, date] {
            put16(central, v);
        }
        for v in [crc, size, size] {
            put32(central, v);
        }
        // Name length, extra length, comment length, disk, internal attributes.
        for v in [name_len, 0, 0, 0, 0] {
            put16(central, v);
        }
        put32(central, 0o100_644 << 16);
        put32(central, offset);
        central.extend_from_slice(name.as_bytes());
        if self.out.len() > u32::MAX as usize {
            return Err(ZipError::TooLarge("the archive"));
        }
        Ok(())
    }

    /// The archive: the entries, their central directory and the end record.
    pub fn finish(mut self) -> Result<Vec<u8>, ZipError> {
        let too_large = || ZipError::TooLarge("the archive");
        let offset = u32::try_from(self.out.len()).map_err(|_| too_large())?;
        let size = u32::try_from(self.central.len()).map_err(|_| too_large())?;
        offset.checked_add(size).ok_or_else(too_large)?;
        self.out.append(&mut self.central);
        let end = &mut self.out;
        put32(end, 0x0605_4b50);
        for v in [0, 0, self.entries, self.entries] {
            put16(end, v);
        }
        put32(end, size);
        put32(end, offset);
        put16(end, 0);
        Ok(self.out)
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_stored_with_their_crc_and_listed_in_the_end_record() {
        let at = "2026-11-22T10:30:08Z".parse().unwrap();
        let mut zip = StoredZip::new(at);
        zip.add("a.txt", b"hello\n").unwrap();
        zip.add("dir/b.json", b"{}").unwrap();
        let bytes = zip.finish().unwrap();
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        // CRC-32 of "hello\n" at offset 14 of the first local header.
        assert_eq!(&bytes[14..18], &0x363a_3020u32.to_le_bytes());
        let end = &bytes[bytes.len() - 22..];
        assert_eq!(&end[..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
        let cd_offset = u32::from_le_bytes(end[16..20].try_into().unwrap()) as usize;
        assert_eq!(&bytes[cd_offset..cd_offset + 4], b"PK\x01\x02");
        // 10:30:08 → hour 10, minute 30, 4 two-second steps; 2026-11-22 → 46, 11, 22.
        assert_eq!(&bytes[10..14], &[0xc4, 0x53, 0x76, 0x5d]);
    }
}
