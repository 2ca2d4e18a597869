//! Recurring windows of a silence (maintenance windows): on some weekdays, from a wall
//! clock time to another, in a named time zone.
//!
//! A window belongs to the day it starts on; a `to` at or before `from` ends the next day
//! (`22:00`–`02:00` crosses midnight), and `24:00` is the end of the day.
//!
//! Daylight saving changes follow the wall clock, as Alertmanager's `time_intervals` do: a
//! window covers every moment the local clock reads a time inside it, as one stretch.
//! - A time the clock skips (spring forward) is reached when the clock jumps: a window
//!   from `02:30` starts at the change (03:00 local); a window wholly inside the skipped
//!   hour (`02:00`–`03:00` in Europe/Berlin on the last Sunday of March) does not happen
//!   that day.
//! - A time the clock reads twice (fall back) starts a window at its first reading and
//!   ends one at its second: `02:30`–`03:30` on the last Sunday of October in
//!   Europe/Berlin runs from 02:30 CEST to 03:30 CET, two hours.
//!
//! Zones come from the system's tz database (`/usr/share/zoneinfo`), so they follow the
//! distribution's tzdata updates.

use chrono::{DateTime, Utc};
use jiff::civil;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Days ahead looked at for the next window: a week, and another for a window skipped by a
/// daylight saving change.
const LOOKAHEAD_DAYS: i16 = 15;

/// A weekday, as written in a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn of(weekday: civil::Weekday) -> Day {
        match weekday {
            civil::Weekday::Monday => Day::Mon,
            civil::Weekday::Tuesday => Day::Tue,
            civil::Weekday::Wednesday => Day::Wed,
            civil::Weekday::Thursday => Day::Thu,
            civil::Weekday::Friday => Day::Fri,
            civil::Weekday::Saturday => Day::Sat,
            civil::Weekday::Sunday => Day::Sun,
        }
    }
}

/// Why a schedule was refused: each names the field to fix, since the API answers it to
/// whoever wrote the silence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `from` or `to` is not `HH:MM`.
    #[error("{0:?} is not a time of day as HH:MM (00:00 to 24:00)")]
    ClockTime(String),
    /// No day, so no window would ever open.
    #[error("schedule.days needs at least one day (mon … sun)")]
    NoDays,
    /// A window starting at the end of the day starts on the next one: write `00:00`.
    #[error("schedule.from must be before 24:00")]
    StartsAtEndOfDay,
    /// `from == to` is ambiguous between no time and the whole day.
    #[error(
        "schedule.from and schedule.to are both {0}: give the end of the window (a whole day is 00:00 to 24:00)"
    )]
    EmptyWindow(ClockTime),
    /// The zone is unknown here: windows could not be placed in UTC.
    #[error(
        "schedule.time_zone {zone:?} is not in the system's time zone database (/usr/share/zoneinfo): {reason}"
    )]
    Zone {
        /// The zone as given.
        zone: String,
        /// What the zone database said.
        reason: String,
    },
}

/// A wall clock time `HH:MM`, as minutes since midnight; `24:00` (1440) is the end of the
/// day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(u16);

const DAY_MINUTES: u16 = 24 * 60;

impl ClockTime {
    /// Parses `HH:MM` (`00:00` to `24:00`).
    pub fn parse(text: &str) -> Result<ClockTime, ScheduleError> {
        let bad = || ScheduleError::ClockTime(text.to_string());
        let (h, m) = text.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(ClockTime(h * 60 + m))
    }

    fn civil_on(self, date: civil::Date) -> civil::DateTime {
        let (date, minutes) = if self.0 == DAY_MINUTES {
            (date.tomorrow().unwrap_or(date), 0)
        } else {
            (date, self.0)
        };
        date.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0)
    }
}

impl std::fmt::Display for ClockTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ClockTime::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// When a recurring silence is in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Days a window starts on.
    pub days: Vec<Day>,
    /// Local start time, in `time_zone`, as people plan maintenance.
    pub from: ClockTime,
    /// Local end time: at or before `from` means the next day.
    pub to: ClockTime,
    /// IANA zone name, e.g. `Europe/Berlin` (or `UTC`).
    pub time_zone: String,
}

/// One window, in UTC: what is compared with event times, free of time-zone rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// When it starts, inclusive: an event at this very instant is muted.
    pub starts_at: DateTime<Utc>,
    /// When it ends (exclusive), so back-to-back windows do not overlap.
    pub ends_at: DateTime<Utc>,
}

impl Window {
    /// Whether `at` is inside: the one test every mute decision of a recurring silence makes.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.starts_at <= at && at < self.ends_at
    }
}

impl Schedule {
    /// Refuses a schedule that can never apply or names an unknown zone.
    pub fn check(&self) -> Result<(), ScheduleError> {
        if self.days.is_empty() {
            return Err(ScheduleError::NoDays);
        }
        if self.from.0 == DAY_MINUTES {
            return Err(ScheduleError::StartsAtEndOfDay);
        }
        if self.from == self.to {
            return Err(ScheduleError::EmptyWindow(self.from));
        }
        self.zone().map(|_| ())
    }

    fn zone(&self) -> Result<TimeZone, ScheduleError> {
        TimeZone::get(&self.time_zone).map_err(|e| ScheduleError::Zone {
            zone: self.time_zone.clone(),
            reason: e.to_string(),
        })
    }

    /// The window in effect at `at`, else the first one after it (`None`: the zone cannot
    /// be read, or the time is at the calendar's end).
    pub fn window_at_or_after(&self, at: DateTime<Utc>) -> Option<Window> {
        let tz = self.zone().ok()?;
        let today = tz.to_datetime(timestamp(at)?).date();
        // From yesterday: a window that started yesterday may still run.
        let mut date = today.yesterday().ok()?;
        for _ in 0..LOOKAHEAD_DAYS {
            if self.days.contains(&Day::of(date.weekday()))
                && let Some(w) = self.window_on(&tz, date)
                && w.ends_at > at
            {
                return Some(w);
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The window that starts on local `date`; `None` when a daylight saving change leaves
    /// nothing of it.
    fn window_on(&self, tz: &TimeZone, date: civil::Date) -> Option<Window> {
        let end_date = if self.to <= self.from {
            date.tomorrow().ok()?
        } else {
            date
        };
        let starts_at = instant(tz, self.from.civil_on(date), Edge::Start)?;
        let ends_at = instant(tz, self.to.civil_on(end_date), Edge::End)?;
        (starts_at < ends_at).then_some(Window { starts_at, ends_at })
    }
}

/// Which end of a window a wall clock time is.
#[derive(Clone, Copy)]
enum Edge {
    Start,
    End,
}

/// The instant a window's edge falls on: a time read twice starts a window at its first
/// reading and ends one at its second; a skipped time is reached when the clock jumps.
fn instant(tz: &TimeZone, dt: civil::DateTime, edge: Edge) -> Option<DateTime<Utc>> {
    let at = |offset: Offset| offset.to_timestamp(dt).ok();
    let ts = match (tz.to_ambiguous_timestamp(dt).offset(), edge) {
        (AmbiguousOffset::Unambiguous { offset }, _) => at(offset)?,
        (AmbiguousOffset::Fold { before, .. }, Edge::Start) => at(before)?,
        (AmbiguousOffset::Fold { after, .. }, Edge::End) => at(after)?,
        // Read with the later offset, the skipped time is an instant before the change.
        (AmbiguousOffset::Gap { after, .. }, _) => tz.following(at(after)?).next()?.timestamp(),
    };
    DateTime::from_timestamp_millis(ts.as_millisecond())
}

fn timestamp(at: DateTime<Utc>) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(at.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(days: &[Day], from: &str, to: &str) -> Schedule {
        Schedule {
            days: days.to_vec(),
            from: ClockTime::parse(from).unwrap(),
            to: ClockTime::parse(to).unwrap(),
            time_zone: "Europe/Berlin".into(),
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn window(from: &str, to: &str) -> Option<Window> {
        Some(Window {
            starts_at: utc(from),
            ends_at: utc(to),
        })
    }

    fn have_zone() -> bool {
        let ok = std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists();
        if !ok {
            assert!(
                std::env::var("LOGWARDEN_REQUIRE_PEERS").is_err(),
                "no /usr/share/zoneinfo (package tzdata)"
            );
            eprintln!("SKIPPED: no /usr/share/zoneinfo/Europe/Berlin (package tzdata)");
        }
        ok
    }

    #[test]
    fn times_and_schedules_are_checked() {
        assert_eq!(ClockTime::parse("02:30").unwrap().to_string(), "02:30");
        assert_eq!(ClockTime::parse("24:00").unwrap().0, 1440);
        for bad in ["2:30", "24:01", "12:60", "noon", "12-00", "-1:00"] {
            assert!(ClockTime::parse(bad).is_err(), "{bad}");
        }
        assert!(berlin(&[], "02:00", "04:00").check().is_err());
        assert!(berlin(&[Day::Sat], "04:00", "04:00").check().is_err());
        assert!(berlin(&[Day::Sat], "24:00", "04:00").check().is_err());
        let mut nowhere = berlin(&[Day::Sat], "02:00", "04:00");
        nowhere.time_zone = "Mars/Olympus_Mons".into();
        let why = nowhere.check().unwrap_err();
        assert!(why.to_string().contains("Mars/Olympus_Mons"), "{why}");
        let parsed: Schedule = serde_json::from_str(
            r#"{"days": ["sat", "sun"], "from": "02:00", "to": "04:00", "time_zone": "UTC"}"#,
        )
        .unwrap();
        assert_eq!(parsed.days, [Day::Sat, Day::Sun]);
        assert!(
            serde_json::from_str::<Schedule>(
                r#"{"days": ["caturday"], "from": "02:00", "to": "04:00", "time_zone": "UTC"}"#
            )
            .is_err()
        );
    }

    /// Weekend nights in winter (CET, UTC+1): the window in effect, then the next one,
    /// skipping the weekdays.
    #[test]
    fn windows_fall_on_their_days_in_local_time() {
        if !have_zone() {
            return;
        }
        let s = berlin(&[Day::Sat, Day::Sun], "02:00", "04:00");
        // Wednesday 2026-01-07: next is Saturday 02:00 CET.
        let sat = window("2026-01-10T01:00:00Z", "2026-01-10T03:00:00Z");
        assert_eq!(s.window_at_or_after(utc("2026-01-07T12:00:00Z")), sat);
        // Inside Saturday's window: that window.
        assert_eq!(s.window_at_or_after(utc("2026-01-10T02:59:59Z")), sat);
        // At its end: Sunday's.
        assert_eq!(
            s.window_at_or_after(utc("2026-01-10T03:00:00Z")),
            window("2026-01-11T01:00:00Z", "2026-01-11T03:00:00Z")
        );
        // After Sunday's: next Saturday.
        assert_eq!(
            s.window_at_or_after(utc("2026-01-11T03:00:00Z")),
            window("2026-01-17T01:00:00Z", "2026-01-17T03:00:00Z")
        );
    }

    /// A window crossing midnight belongs to the day it starts on and is found from the
    /// next day's side of midnight too.
    #[test]
    fn a_window_crosses_midnight() {
        if !have_zone() {
            return;
        }
        let s = berlin(&[Day::Fri], "22:00", "02:00");
        let fri = window("2026-01-09T21:00:00Z", "2026-01-10T01:00:00Z");
        assert_eq!(s.window_at_or_after(utc("2026-01-09T12:00:00Z")), fri);
        // Saturday 01:30 local: still Friday's window.
        assert_eq!(s.window_at_or_after(utc("2026-01-10T00:30:00Z")), fri);
        let whole_day = berlin(&[Day::Sun], "00:00", "24:00");
        assert_eq!(
            whole_day.window_at_or_after(utc("2026-01-07T00:00:00Z")),
            window("2026-01-10T23:00:00Z", "2026-01-11T23:00:00Z")
        );
    }

    /// Spring forward in Europe/Berlin, Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST
    /// (01:00 UTC). A window inside the skipped hour does not happen; one starting in it
    /// starts at the change; one ending in it ends at the change.
    #[test]
    fn spring_forward_skips_or_shortens_windows() {
        if !have_zone() {
            return;
        }
        let before = utc("2026-03-28T12:00:00Z");
        // 02:00–03:00 on the 29th: skipped; the next Sunday's is the next window.
        assert_eq!(
            berlin(&[Day::Sun], "02:00", "03:00").window_at_or_after(before),
            window("2026-04-05T00:00:00Z", "2026-04-05T01:00:00Z")
        );
        // 02:30–04:00: from the change (03:00 CEST) to 04:00 CEST.
        assert_eq!(
            berlin(&[Day::Sun], "02:30", "04:00").window_at_or_after(before),
            window("2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z")
        );
        // 01:00–02:30: from 01:00 CET to the change.
        assert_eq!(
            berlin(&[Day::Sun], "01:00", "02:30").window_at_or_after(before),
            window("2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z")
        );
    }

    /// Fall back in Europe/Berlin, Sunday 2026-10-25: 03:00 CEST goes back to 02:00 CET
    /// (01:00 UTC), so 02:00–02:59 are read twice. A window starting at 02:30 starts at the
    /// first reading; one ending at 02:30 ends at the second.
    #[test]
    fn fall_back_starts_at_the_first_reading_and_ends_at_the_second() {
        if !have_zone() {
            return;
        }
        let before = utc("2026-10-24T12:00:00Z");
        // 02:30 CEST (00:30 UTC) to 03:30 CET (02:30 UTC): two hours.
        assert_eq!(
            berlin(&[Day::Sun], "02:30", "03:30").window_at_or_after(before),
            window("2026-10-25T00:30:00Z", "2026-10-25T02:30:00Z")
        );
        // 01:00 CEST (23:00 UTC) to the second 02:30, CET (01:30 UTC).
        assert_eq!(
            berlin(&[Day::Sun], "01:00", "02:30").window_at_or_after(before),
            window("2026-10-24T23:00:00Z", "2026-10-25T01:30:00Z")
        );
        // Crossing midnight into the change: Saturday 23:00 CEST to Sunday 02:30 CET.
        assert_eq!(
            berlin(&[Day::Sat], "23:00", "02:30").window_at_or_after(before),
            window("2026-10-24T21:00:00Z", "2026-10-25T01:30:00Z")
        );
        // The week after, plain CET again.
        assert_eq!(
            berlin(&[Day::Sun], "02:30", "03:30").window_at_or_after(utc("2026-10-25T02:30:00Z")),
            window("2026-11-01T01:30:00Z", "2026-11-01T02:30:00Z")
        );
    }
}
