//! Reading a log line's own time.
//!
//! Windows run on the time a line was written, not when it was read: a replay of a day of
//! logs in seconds must not flag everyone who logged N lines that day (the SEC/swatch
//! failure). A line whose time cannot be read falls back to its arrival time.

use chrono::{
    DateTime, Datelike, FixedOffset, Local, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc,
};

pub use crate::config::{BadTimestampFormat, TimestampFormat};

impl TimestampFormat {
    /// The line's own time, or `None` when it carries none this format can read.
    ///
    /// `reference` is a time close to when the line was written (its arrival, or a replayed
    /// file's modification time); formats without a year take the year that puts the line
    /// no later than one day after it.
    pub fn parse(&self, line: &[u8], reference: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let head = utf8_prefix(line, 96);
        match self {
            TimestampFormat::Arrival => None,
            TimestampFormat::Syslog => {
                if head.starts_with(|c: char| c.is_ascii_digit()) {
                    parse_rfc3339_field(head)
                } else {
                    parse_classic_syslog(head.get(..15)?, reference)
                }
            }
            TimestampFormat::Rfc3339 => parse_rfc3339_field(head),
            TimestampFormat::Clf => {
                let text = utf8_prefix(line, 512);
                let start = text.find('[')? + 1;
                let end = start + text[start..].find(']')?;
                DateTime::parse_from_str(&text[start..end], "%d/%b/%Y:%H:%M:%S %z")
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            TimestampFormat::Epoch => {
                let field = first_field(head)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let seconds: f64 = field.parse().ok()?;
                if !seconds.is_finite() || seconds < 0.0 {
                    return None;
                }
                DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64)
            }
            TimestampFormat::Pattern(pattern) => parse_pattern(head, pattern, reference),
        }
    }

    /// The bytes of `line` that alone decide its time (with the year reference), when the
    /// format reads it from a head of fixed size: a line whose head equals the line
    /// before's has the same time, so a reader of many lines can skip the parse (a busy
    /// log's lines mostly share their second). `None`: parse every such line.
    pub fn fixed_head<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        match self {
            // What `parse` reads as a classic head: 15 bytes, not starting with a digit.
            TimestampFormat::Syslog => {
                let head = line.get(..15)?;
                (head.is_ascii() && !head[0].is_ascii_digit()).then_some(head)
            }
            _ => None,
        }
    }
}

/// Reads the times of many lines, parsing a line only when it is not known already: a line
/// of the same origin (what else its time depends on: its file or source and year
/// reference, compared as `O`) whose [`TimestampFormat::fixed_head`] equals the last
/// parsed line's has that line's time. A busy log's lines mostly share their second, so
/// `replay`'s and the daemon's matching workers parse about once per second of log.
#[derive(Debug)]
pub struct HeadTimes<O> {
    /// The last parsed line's origin, fixed head (buffer reused) and time; `None` after a
    /// line without a fixed head.
    last: Option<(O, Option<DateTime<Utc>>)>,
    head: Vec<u8>,
}

impl<O> Default for HeadTimes<O> {
    fn default() -> Self {
        HeadTimes {
            last: None,
            head: Vec::new(),
        }
    }
}

impl<O: PartialEq> HeadTimes<O> {
    /// `line`'s own time by `format` (as [`TimestampFormat::parse`] with `reference`),
    /// reused from the last parsed line when `origin` and the fixed head are the same.
    pub fn time_of(
        &mut self,
        format: &TimestampFormat,
        origin: O,
        line: &[u8],
        reference: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let head = format.fixed_head(line);
        if let (Some(head), Some((last, time))) = (head, &self.last)
            && *last == origin
            && self.head == head
        {
            return *time;
        }
        let time = format.parse(line, reference);
        self.last = head.map(|head| {
            self.head.clear();
            self.head.extend_from_slice(head);
            (origin, time)
        });
        time
    }
}

fn parse_pattern(head: &str, pattern: &str, reference: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if pattern.contains("%z") || pattern.contains("%:z") {
        return DateTime::<FixedOffset>::parse_and_remainder(head, pattern)
            .ok()
            .map(|(t, _)| t.with_timezone(&Utc));
    }
    if pattern.contains("%Y") || pattern.contains("%y") || pattern.contains("%s") {
        return NaiveDateTime::parse_and_remainder(head, pattern)
            .ok()
            .and_then(|(t, _)| local_to_utc(t));
    }
    parse_without_year(head, pattern, reference)
}

/// `%b %e %H:%M:%S` (`Nov 22 10:00:01`, `Nov  2 10:00:01`) by hand: it is read for every
/// line of most logs, and the generic strftime parser costs more than the rest of detection.
/// Anything unusual falls back to that parser, so both read the same times.
fn parse_classic_syslog(head: &str, reference: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let year = local_year(reference);
    let Ok(read) = read_classic_cached(head.as_bytes(), year) else {
        return parse_without_year(head, "%b %e %H:%M:%S", reference);
    };
    let parsed = read?;
    // A line from late December read in early January belongs to the previous year.
    if parsed > reference + chrono::Duration::days(1) {
        return read_classic(head.as_bytes(), year - 1).ok().flatten();
    }
    Some(parsed)
}

/// Not in the exact shape [`read_classic`] reads: the strftime parser decides.
struct NotClassic;

/// A classic head, the year it was read for, and what it read.
type ClassicReading = ([u8; 15], i32, Option<DateTime<Utc>>);

thread_local! {
    /// The last classic head read on this thread: consecutive lines mostly share their
    /// second, so most lines skip the reading.
    static LAST_CLASSIC: std::cell::Cell<Option<ClassicReading>> =
        const { std::cell::Cell::new(None) };
}

/// [`read_classic`], answered from [`LAST_CLASSIC`] when the head and year repeat.
fn read_classic_cached(b: &[u8], year: i32) -> Result<Option<DateTime<Utc>>, NotClassic> {
    let head: [u8; 15] = b.try_into().map_err(|_| NotClassic)?;
    if let Some((last, last_year, read)) = LAST_CLASSIC.get()
        && last == head
        && last_year == year
    {
        return Ok(read);
    }
    let read = read_classic(b, year)?;
    LAST_CLASSIC.set(Some((head, year, read)));
    Ok(read)
}

/// Reads `Nov  2 10:00:01` as a local time in `year`: `Ok(None)` for a date or time that
/// does not exist.
fn read_classic(b: &[u8], year: i32) -> Result<Option<DateTime<Utc>>, NotClassic> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let digit = |i: usize| b[i].is_ascii_digit().then(|| u32::from(b[i] - b'0'));
    let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
    if b.len() != 15 || b[3] != b' ' || b[6] != b' ' || b[9] != b':' || b[12] != b':' {
        return Err(NotClassic);
    }
    let month = MONTHS
        .iter()
        .position(|m| &b[..3] == *m)
        .ok_or(NotClassic)?;
    let day = match b[4] {
        b' ' => digit(5),
        _ => two(4),
    };
    let (Some(day), Some(h), Some(m), Some(sec)) = (day, two(7), two(10), two(13)) else {
        return Err(NotClassic);
    };
    let Some(time) = chrono::NaiveTime::from_hms_opt(h, m, sec) else {
        return Ok(None);
    };
    Ok(chrono::NaiveDate::from_ymd_opt(year, month as u32 + 1, day)
        .map(|d| d.and_time(time))
        .and_then(local_to_utc))
}

/// Parses a local time whose format has no year, choosing the year from `reference`.
fn parse_without_year(
    head: &str,
    pattern: &str,
    reference: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let year = local_year(reference);
    let with_year = format!("{year} {head}");
    let (naive, _) =
        NaiveDateTime::parse_and_remainder(&with_year, &format!("%Y {pattern}")).ok()?;
    let time = local_to_utc(naive)?;
    // A line from late December read in early January belongs to the previous year.
    if time > reference + chrono::Duration::days(1) {
        let previous = naive.with_year(year - 1)?;
        return local_to_utc(previous);
    }
    Some(time)
}

fn local_to_utc(naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    LOCAL.with_borrow_mut(|cache| cache.utc_of(naive))
}

/// The local year at `reference`.
fn local_year(reference: DateTime<Utc>) -> i32 {
    LOCAL.with_borrow_mut(|cache| cache.year(reference))
}

/// The time-zone lookups as chrono makes them, uncached.
fn uncached_local_to_utc(naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

thread_local! {
    static LOCAL: std::cell::RefCell<LocalCache> = const { std::cell::RefCell::new(LocalCache::new()) };
}

/// Lookups a [`LocalCache`] answers before asking chrono again.
const LOCAL_CACHE_USES: u32 = 4096;

/// Local-time conversions for lines without a zone, cached.
///
/// Every classic syslog line needs its local time converted to UTC and the local year of
/// its reference time; asked of chrono per line, that is a zone lookup and a clock read
/// each (chrono re-checks `TZ` and `/etc/localtime` once a second), a large share of the
/// per-line cost. Lines of one log come hour after hour, so the UTC offset is kept per
/// local hour, but only for an hour that has one offset from its first to its last instant
/// (both unambiguous and equal): an hour with a DST change, gap or fold, at whatever minute,
/// is always converted by chrono. No zone changes offset twice within an hour.
///
/// So that a change of the host's zone is still seen, the cache starts again whenever the
/// reference time moves to another second (the arrival time, live) and after
/// [`LOCAL_CACHE_USES`] lookups (a replay's constant reference).
struct LocalCache {
    /// Reference second the cache was filled in.
    epoch: i64,
    /// Lookups since it was filled.
    uses: u32,
    /// The local year at the reference second.
    year: Option<i32>,
    /// Start of a local hour and its one UTC offset (seconds east).
    hour: Option<(NaiveDateTime, i32)>,
}

impl LocalCache {
    const fn new() -> Self {
        LocalCache {
            epoch: i64::MIN,
            uses: 0,
            year: None,
            hour: None,
        }
    }

    /// Counts a lookup, starting again when it is time to.
    fn refresh(&mut self, epoch: Option<i64>) {
        self.uses += 1;
        let moved = epoch.is_some_and(|e| e != self.epoch);
        if moved || self.uses > LOCAL_CACHE_USES {
            self.year = None;
            self.hour = None;
            // Readings made with the old offsets go too (the zone may have changed).
            LAST_CLASSIC.set(None);
            self.uses = 1;
            if let Some(e) = epoch {
                self.epoch = e;
            }
        }
    }

    fn year(&mut self, reference: DateTime<Utc>) -> i32 {
        self.refresh(Some(reference.timestamp()));
        *self
            .year
            .get_or_insert_with(|| reference.with_timezone(&Local).year())
    }

    fn utc_of(&mut self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        self.refresh(None);
        let start = naive.date().and_hms_opt(naive.hour(), 0, 0)?;
        match self.hour {
            Some((hour, offset)) if hour == start => {
                return Some((naive - chrono::Duration::seconds(offset.into())).and_utc());
            }
            _ => {}
        }
        let end = start + chrono::Duration::nanoseconds(3_600_000_000_000 - 1);
        self.hour = match (
            Local.offset_from_local_datetime(&start),
            Local.offset_from_local_datetime(&end),
        ) {
            (LocalResult::Single(a), LocalResult::Single(b)) if a == b => {
                Some((start, a.local_minus_utc()))
            }
            _ => None,
        };
        uncached_local_to_utc(naive)
    }
}

fn parse_rfc3339_field(head: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(first_field(head))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn first_field(text: &str) -> &str {
    text.split([' ', '\t']).next().unwrap_or("")
}

/// The longest valid UTF-8 prefix of at most `max` bytes: timestamps sit at the start of
/// the line, and a non-UTF-8 tail must not stop them being read.
fn utf8_prefix(line: &[u8], max: usize) -> &str {
    let head = &line[..line.len().min(max)];
    match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines that share a fixed head share their time, whatever follows; a head that is
    /// not the classic one (a digit first, non-ASCII, too short, another format) is none.
    #[test]
    fn a_fixed_head_decides_the_time_alone() {
        let reference = utc("2026-11-20T00:00:00Z");
        let f = TimestampFormat::Syslog;
        let lines: [&[u8]; 4] = [
            b"Nov  1 00:00:07 web1 sshd[1]: Failed password for root",
            b"Nov  1 00:00:07 db2 CRON[9]: session opened",
            b"Nov  1 00:00:07",
            b"Nov  1 00:00:07 \xff\xfe invalid after the head",
        ];
        let head = f.fixed_head(lines[0]).unwrap();
        assert_eq!(head, b"Nov  1 00:00:07");
        for line in lines {
            assert_eq!(f.fixed_head(line), Some(head));
            assert_eq!(f.parse(line, reference), f.parse(lines[0], reference));
        }
        assert!(f.parse(lines[0], reference).is_some());
        for none in [
            &b"2026-11-01T00:00:07Z host x"[..],
            b"Nov  1 00:00:0",
            "Nov  1 00:00:0\u{e9} x".as_bytes(),
        ] {
            assert_eq!(
                f.fixed_head(none),
                None,
                "{:?}",
                String::from_utf8_lossy(none)
            );
        }
        assert_eq!(TimestampFormat::Rfc3339.fixed_head(lines[0]), None);
    }

    /// Times read through `HeadTimes` are the parsed ones, line by line, across origins,
    /// references (a New Year's Eve head read near and far from the year's turn), heads
    /// shared or not and lines without a head.
    #[test]
    fn head_times_are_the_parsed_times() {
        let f = TimestampFormat::Syslog;
        let lines: [&[u8]; 7] = [
            b"Dec 31 23:59:59 a x",
            b"Dec 31 23:59:59 b y",
            b"Jan  1 00:00:00 c z",
            b"no time at all here",
            b"Jan  1 00:00:00 d w",
            b"Jan  1 00:00:00 e v",
            b"Dec 31 23:59:59 f u",
        ];
        let references = [utc("2027-01-01T00:00:30Z"), utc("2026-06-01T00:00:00Z")];
        let mut times = HeadTimes::default();
        for round in 0..3 {
            for (i, line) in lines.iter().enumerate() {
                let origin = (round + i / 3) % 2;
                let reference = references[(round + i / 4) % 2];
                let want = f.parse(line, reference);
                assert_eq!(
                    times.time_of(&f, (origin, reference), line, reference),
                    want,
                    "round {round}, line {i}"
                );
            }
        }
        assert_ne!(
            f.parse(lines[0], references[0]),
            f.parse(lines[0], references[1]),
            "the reference decides the year"
        );
        // The same head of the same source under another reference is parsed again.
        let mut times = HeadTimes::default();
        for reference in references {
            assert_eq!(
                times.time_of(&f, ("auth", reference), lines[0], reference),
                f.parse(lines[0], reference)
            );
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn reads_each_format() {
        let reference = utc("2026-11-22T12:00:00Z");
        let cases: &[(TimestampFormat, &[u8], &str)] = &[
            (
                TimestampFormat::Rfc3339,
                b"2026-11-22T10:00:01.250+01:00 host x",
                "2026-11-22T09:00:01.250Z",
            ),
            (
                TimestampFormat::Syslog,
                b"2026-11-22T10:00:01Z host sshd[1]: x",
                "2026-11-22T10:00:01Z",
            ),
            (
                TimestampFormat::Clf,
                b"203.0.113.9 - - [22/Nov/2026:10:00:01 +0000] \"GET / HTTP/1.1\" 200",
                "2026-11-22T10:00:01Z",
            ),
            (
                TimestampFormat::Epoch,
                b"1795341601.5 something",
                "2026-11-22T10:00:01.500Z",
            ),
            (
                TimestampFormat::Pattern("%Y/%m/%d %H:%M:%S %z".into()),
                b"2026/11/22 10:00:01 +0000 [error] x",
                "2026-11-22T10:00:01Z",
            ),
        ];
        for (format, line, want) in cases {
            assert_eq!(format.parse(line, reference), Some(utc(want)), "{format:?}");
        }
    }

    #[test]
    fn bsd_syslog_takes_the_year_that_keeps_the_line_in_the_past() {
        let fmt = TimestampFormat::Syslog;
        let line = b"Dec 31 23:59:59 host sshd[1]: x";
        let in_january = utc("2027-01-01T00:10:00Z");
        let t = fmt.parse(line, in_january).unwrap();
        assert_eq!(t.with_timezone(&Local).year(), 2026);
        let in_december = utc("2026-12-31T23:59:59Z");
        let t = fmt.parse(b"Nov  2 03:04:05 host x", in_december).unwrap();
        assert_eq!(
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            "2026-11-02 03:04:05"
        );
    }

    /// Consecutive lines of the same second are answered from the last reading; the
    /// answer still follows the reference's year and the one-day rule.
    #[test]
    fn a_repeated_head_reads_the_same_as_a_fresh_one() {
        let fmt = TimestampFormat::Syslog;
        let line = b"Dec 31 23:59:59 host sshd[1]: x";
        let in_december = utc("2026-12-31T12:00:00Z");
        let first = fmt.parse(line, in_december).unwrap();
        assert_eq!(
            fmt.parse(b"Dec 31 23:59:59 other", in_december),
            Some(first)
        );
        // Same head, reference a year later: read for that year, then moved back a year
        // by the one-day rule only when it lies ahead.
        let next_december = utc("2027-12-31T12:00:00Z");
        let later = fmt.parse(line, next_december).unwrap();
        assert_eq!(later.with_timezone(&Local).year(), 2027);
        let in_january = utc("2027-01-01T00:10:00Z");
        assert_eq!(fmt.parse(line, in_january), Some(first));
        // A head that is not a date at all, after a cached one, still falls back or fails.
        assert_eq!(fmt.parse(b"Feb 30 10:00:00 host x", in_december), None);
        assert_eq!(
            fmt.parse(b"Dec 31 23:59:59 host x", in_december),
            Some(first)
        );
    }

    #[test]
    fn unreadable_or_binary_lines_have_no_time() {
        let reference = utc("2026-11-22T12:00:00Z");
        assert_eq!(
            TimestampFormat::Syslog.parse(b"\xff\xfe garbage", reference),
            None
        );
        assert_eq!(TimestampFormat::Clf.parse(b"no brackets", reference), None);
        assert_eq!(TimestampFormat::Epoch.parse(b"-5 x", reference), None);
        assert_eq!(
            TimestampFormat::Arrival.parse(b"2026-11-22T10:00:01Z", reference),
            None
        );
        // A valid prefix followed by invalid bytes still yields the time.
        assert!(
            TimestampFormat::Rfc3339
                .parse(b"2026-11-22T10:00:01Z \xff\xff", reference)
                .is_some()
        );
    }

    #[test]
    fn a_pattern_without_a_time_of_day_is_rejected() {
        assert!(
            TimestampFormat::Pattern("%Y-%m-%d".into())
                .validate()
                .is_err()
        );
        assert!(
            TimestampFormat::Pattern("%b %d %H:%M:%S".into())
                .validate()
                .is_ok()
        );
    }
}

#[cfg(test)]
mod classic_syslog_tests {
    use super::*;

    #[test]
    fn the_hand_parser_reads_what_the_strftime_parser_reads() {
        let reference = DateTime::parse_from_rfc3339("2026-01-01T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for head in [
            "Nov 22 10:00:01",
            "Jan  1 00:00:00",
            "Jan  2 08:30:59",
            "Dec 31 23:59:59",
            "Feb 29 12:00:00",
            "Jun 15 25:00:00",
            "Foo 15 10:00:00",
            "Nov 2x 10:00:00",
        ] {
            assert_eq!(
                parse_classic_syslog(head, reference),
                parse_without_year(head, "%b %e %H:%M:%S", reference),
                "{head}"
            );
        }
        assert!(parse_classic_syslog("Dec 31 23:59:59", reference).is_some());
    }
}

#[cfg(test)]
mod local_cache_tests {
    use super::*;
    use chrono::NaiveDate;

    /// Zones with DST changes on the hour (Berlin, New York) and by half an hour at 02:00
    /// (Lord Howe), checked in a child test process each (`TZ` is process-wide).
    const ZONES: [&str; 3] = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"];
    const CHILD: &str = "LOGWARDEN_TZ_CACHE_CHILD";
    const NAME: &str = "sources::timestamp::local_cache_tests::cached_local_times_equal_chrono_across_dst_and_year_changes";

    fn walk(from: NaiveDateTime, days: i64) -> Vec<NaiveDateTime> {
        let mut times = Vec::new();
        let mut t = from;
        while t < from + chrono::Duration::days(days) {
            times.push(t);
            times.push(t + chrono::Duration::seconds(59));
            times.push(t + chrono::Duration::nanoseconds(59_999_999_999));
            t += chrono::Duration::minutes(1);
        }
        times
    }

    fn check_current_zone() {
        let start = |m, d| {
            NaiveDate::from_ymd_opt(2026, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
        };
        // Spring and autumn changes of all three zones, and the year's end.
        let mut times = walk(start(3, 6), 35);
        times.extend(walk(start(10, 2), 32));
        times.extend(walk(start(12, 31), 2));
        for t in &times {
            assert_eq!(local_to_utc(*t), uncached_local_to_utc(*t), "{t} in order");
        }
        // Out of order: every lookup may miss the cached hour.
        let mut rng = fastrand::Rng::with_seed(7);
        rng.shuffle(&mut times);
        for t in times.iter().take(50_000) {
            assert_eq!(local_to_utc(*t), uncached_local_to_utc(*t), "{t} shuffled");
        }
        // The local year of references around the year's end (and DST changes).
        for utc in times.iter().step_by(7) {
            let reference = utc.and_utc();
            assert_eq!(
                local_year(reference),
                reference.with_timezone(&Local).year(),
                "{reference}"
            );
        }
    }

    #[test]
    fn cached_local_times_equal_chrono_across_dst_and_year_changes() {
        if let Ok(zone) = std::env::var(CHILD) {
            // The zone took effect: it has DST.
            let offset = |m| {
                Local
                    .from_local_datetime(
                        &NaiveDate::from_ymd_opt(2026, m, 1)
                            .unwrap()
                            .and_hms_opt(12, 0, 0)
                            .unwrap(),
                    )
                    .unwrap()
                    .offset()
                    .local_minus_utc()
            };
            assert_ne!(offset(1), offset(7), "{zone} has no DST here");
            check_current_zone();
            return;
        }
        check_current_zone();
        let exe = std::env::current_exe().unwrap();
        for zone in ZONES {
            if !std::path::Path::new("/usr/share/zoneinfo")
                .join(zone)
                .exists()
            {
                eprintln!("no zoneinfo for {zone}: not checked");
                continue;
            }
            let out = std::process::Command::new(&exe)
                .args(["--exact", NAME, "--test-threads", "1"])
                .env("TZ", zone)
                .env(CHILD, zone)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{zone}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
