//! How far a line's own time is trusted.
//!
//! Windows run on the lines' own times, so a time is an input an attacker controls: one
//! syslog datagram dated 2099, or a forwarding host whose clock runs fast, would otherwise
//! become "now" for every window and expire the slow attack that follows. A time further
//! ahead of the wall clock than `max_ahead`, or further behind than `max_behind` (a device
//! whose clock was never set says 1970, and its lines would land in windows that closed
//! decades ago), is not believed: the line is evaluated at its arrival time and counted.

use chrono::{DateTime, Utc};

pub use crate::config::LineTimeBounds;

/// What [`LineTimeBounds::judge`] made of a line's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Within the bounds: the line's own time.
    Trusted(DateTime<Utc>),
    /// Dated too far ahead: the arrival time instead.
    Future(DateTime<Utc>),
    /// Dated too far behind: the arrival time instead.
    Ancient(DateTime<Utc>),
}

impl Judged {
    /// The time the line is evaluated at.
    pub fn time(self) -> DateTime<Utc> {
        match self {
            Judged::Trusted(t) | Judged::Future(t) | Judged::Ancient(t) => t,
        }
    }
}

impl LineTimeBounds {
    /// The time to evaluate a line at, given its own time and when it arrived.
    pub fn judge(&self, own: DateTime<Utc>, arrival: DateTime<Utc>) -> Judged {
        let ahead = (own - arrival).num_milliseconds();
        if ahead > self.max_ahead.millis() {
            Judged::Future(arrival)
        } else if -ahead > self.max_behind.millis() {
            Judged::Ancient(arrival)
        } else {
            Judged::Trusted(own)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_beyond_the_bounds_are_replaced_by_the_arrival() {
        let bounds = LineTimeBounds::default();
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        let min = |n: i64| chrono::Duration::minutes(n);
        assert_eq!(
            bounds.judge(now + min(5), now),
            Judged::Trusted(now + min(5))
        );
        assert_eq!(
            bounds.judge(now - min(30), now),
            Judged::Trusted(now - min(30))
        );
        assert_eq!(bounds.judge(now + min(6), now), Judged::Future(now));
        let y2099 = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(bounds.judge(y2099, now), Judged::Future(now));
        let epoch = Utc.timestamp_opt(0, 0).unwrap();
        assert_eq!(bounds.judge(epoch, now), Judged::Ancient(now));
        assert_eq!(
            bounds.judge(DateTime::<Utc>::MIN_UTC, now),
            Judged::Ancient(now),
            "the earliest representable time does not overflow"
        );
        assert_eq!(
            bounds.judge(DateTime::<Utc>::MAX_UTC, now),
            Judged::Future(now)
        );
    }
}
