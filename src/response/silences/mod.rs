//! Silences: approved exceptions that keep an incident's notifications quiet for a while.
//!
//! A silence matches incidents by rule, key values and labels (all given matchers must
//! match), from `starts_at` to `ends_at`. A silenced incident is still opened and updated
//! (evidence is never lost), but its events notify nobody, except that a close still sends
//! resolves to receivers that can resolve (Alertmanager #226: a silence must not leave a
//! page open). Creating and expiring silences needs an approver; both, and a silence ending
//! by itself, are audit records.
//!
//! A silence with a [`Schedule`] recurs (maintenance windows): between `starts_at` and
//! `ends_at` it is in effect only inside its windows, and each window that takes effect is
//! an audit record when it opens and when it closes.

mod matchers;
pub mod schedule;

use crate::base::duration::HumanDuration;
use crate::incidents::Incident;
use crate::store::{self, Space, Store, StoreError};
use chrono::{DateTime, Utc};
pub use matchers::{Matchers, check_matchers};
pub use schedule::{Schedule, ScheduleError, Window};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a silence was refused; the API answers the message to its author (400), so each says
/// what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    /// The rule matcher names no rule: the silence would never match.
    #[error("no rule {rule:?}, so the silence could never match; {hint}known rules: {known}")]
    UnknownRule {
        /// The rule id given.
        rule: String,
        /// `did you mean …? ` or nothing.
        hint: String,
        /// The rule ids there are.
        known: String,
    },
    /// A key matcher names a field no rule in scope groups by.
    #[error(
        "key field {field:?} is not in the group_by of {whose}, so the silence could never match; key fields: {known}"
    )]
    UnknownKeyField {
        /// The field given.
        field: String,
        /// `rule "…"` or `any rule`.
        whose: String,
        /// The fields there are.
        known: String,
    },
    /// A silence without matchers would mute everything.
    #[error("a silence needs at least one matcher (rule, key or labels)")]
    NoMatcher,
    /// The reason is the approval's evidence.
    #[error("a silence needs a reason")]
    NoReason,
    /// The duration overflows the calendar.
    #[error("duration is too large")]
    DurationTooLarge,
    /// Both or neither of `ends_at` and `duration` (without a schedule).
    #[error("give exactly one of ends_at and duration")]
    End,
    /// A time too far from now: a forgotten silence must not mute for years.
    #[error("{name} {at} is more than {MAX_REACH_DAYS} days from now")]
    TooFar {
        /// `starts_at` or `ends_at`.
        name: &'static str,
        /// The time given.
        at: DateTime<Utc>,
    },
    /// It would end before it starts, or has ended already.
    #[error("ends_at must be in the future and after starts_at")]
    EndsTooEarly,
    /// The schedule's windows all fall outside `starts_at`..`ends_at`.
    #[error("the schedule has no window between starts_at and ends_at")]
    NoWindow,
    /// The schedule can never apply.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// A silence as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// `SIL-<n>`: what `silences expire` and the audit records name it by.
    pub id: String,
    /// What it covers: every given matcher must match, so a silence is as narrow as written.
    pub matchers: Matchers,
    /// From when: a silence may be set up ahead of a maintenance window.
    pub starts_at: DateTime<Utc>,
    /// Until when: every silence ends by itself, so none is forgotten in force.
    pub ends_at: DateTime<Utc>,
    /// Why the exception was granted.
    pub reason: String,
    /// Who granted it (token name).
    pub author: String,
    /// When it was created, for the audit trail of who muted what.
    pub created_at: DateTime<Utc>,
    /// When it stopped applying (expired by hand, or its end noticed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<DateTime<Utc>>,
    /// Who expired it (`logwarden` when it ended by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
    /// When it recurs; without one it is in effect from `starts_at` to `ends_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// The window recorded as open (its opening audited, its closing not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_window: Option<Window>,
}

/// A scheduled silence's window opening or closing, for the audit log.
#[derive(Debug, Clone)]
pub struct WindowChange {
    /// `true`: the window opened; `false`: it closed (each is its own audit record).
    pub opened: bool,
    /// The window that opened or closed, in UTC, as the audit record names it.
    pub window: Window,
    /// The silence after the change (to store).
    pub silence: Silence,
}

/// Where a silence is in its life at a given time. Derived from its times, never stored, so
/// it cannot disagree with them; only `Active` mutes notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    /// Not yet started, or a scheduled silence between its windows.
    Pending,
    /// In effect: covered incidents notify nobody.
    Active,
    /// Ended by its time or expired by someone; kept as evidence.
    Expired,
}

impl SilenceState {
    /// The name the API and the CLI show (`state` of a silence's JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }
}

impl PartialEq<&str> for SilenceState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Silence {
    /// Its state at `now`; a scheduled silence between its windows is pending.
    pub fn state(&self, now: DateTime<Utc>) -> SilenceState {
        if self.expired_at.is_some() || now >= self.ends_at {
            SilenceState::Expired
        } else if now < self.starts_at
            || (self.schedule.is_some() && !self.next_window(now).is_some_and(|w| w.contains(now)))
        {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }

    /// The window in effect at `now`, else the next one, cut to `starts_at`..`ends_at`
    /// (a silence without a schedule is one window); `None` when none is left.
    pub fn next_window(&self, now: DateTime<Utc>) -> Option<Window> {
        if self.expired_at.is_some() || now >= self.ends_at {
            return None;
        }
        let Some(schedule) = &self.schedule else {
            return Some(Window {
                starts_at: self.starts_at,
                ends_at: self.ends_at,
            });
        };
        let mut at = now.max(self.starts_at);
        // Each round passes a window that the bounds cut to nothing (at most one).
        for _ in 0..3 {
            let w = schedule.window_at_or_after(at)?;
            if w.starts_at >= self.ends_at {
                return None;
            }
            let cut = Window {
                starts_at: w.starts_at.max(self.starts_at),
                ends_at: w.ends_at.min(self.ends_at),
            };
            if cut.starts_at < cut.ends_at && cut.ends_at > now {
                return Some(cut);
            }
            at = w.ends_at;
        }
        None
    }

    fn key(number: u64) -> Vec<u8> {
        format!("{number:020}").into_bytes()
    }

    /// Puts the silence into `batch` under its number (the single writer does this with the
    /// decision's other effects).
    pub fn put(&self, batch: &mut store::Batch) -> Result<(), StoreError> {
        let number = Silence::number(&self.id).ok_or_else(|| {
            StoreError::Record(serde::de::Error::custom(format!(
                "not a silence id: {}",
                self.id
            )))
        })?;
        batch.put(Space::Silences, &Silence::key(number), self)
    }

    fn number(id: &str) -> Option<u64> {
        crate::base::ids::number(crate::base::ids::SILENCE, id)
    }

    /// The silence as the API shows it: with its `state`, and a scheduled one with its
    /// `next_window` (the one in effect, else the next; `null` when none is left).
    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("silences serialise");
        v["state"] = self.state(now).as_str().into();
        if let Some(o) = v.as_object_mut() {
            o.remove("open_window");
        }
        if self.schedule.is_some() {
            v["next_window"] =
                serde_json::to_value(self.next_window(now)).expect("windows serialise");
        }
        v
    }
}

/// `POST /api/v1/silences` body: a request, checked before it becomes a [`Silence`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// What it covers (at least one matcher).
    pub matchers: Matchers,
    /// End time; exactly one of `ends_at` and `duration`.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Length from `starts_at`: the common case, so nobody computes an end time by hand.
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    /// Start time (default now); later to prepare a silence before the work starts.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// Recurring windows; with one, `ends_at`/`duration` is optional (the end date of the
    /// recurrence, at most ten years ahead, which is also the default).
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Why: required, since an exception nobody can explain is a finding in an audit.
    pub reason: String,
}

/// Farthest a silence may start or end from now, either way: a silence for ever is a rule
/// deleted without review, and times near the calendar's end overflow arithmetic.
const MAX_REACH_DAYS: i64 = 3660;

fn max_reach() -> chrono::Duration {
    chrono::Duration::days(MAX_REACH_DAYS)
}

/// The silences not yet expired, owned by the pipeline thread (the only writer).
pub struct Silences {
    live: BTreeMap<u64, Silence>,
    next_number: u64,
}

impl Silences {
    /// Loads the silences that have not been recorded as expired.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let mut live = BTreeMap::new();
        let mut next_number = 1;
        for (_, s) in store.scan::<Silence>(Space::Silences)? {
            let Some(n) = Silence::number(&s.id) else {
                continue;
            };
            next_number = next_number.max(n + 1);
            if s.expired_at.is_none() {
                live.insert(n, s);
            }
        }
        Ok(Silences { live, next_number })
    }

    /// The windows of scheduled silences that opened or closed by `now`, in order: a
    /// window recorded as open that has ended (or is no longer the current one) closes,
    /// the window in effect at `now` opens. A window passed while the daemon was not
    /// running took no effect and is not recorded.
    pub fn windows_due(&mut self, now: DateTime<Utc>) -> Vec<WindowChange> {
        let mut changes = Vec::new();
        for silence in self.live.values_mut() {
            if silence.schedule.is_none() {
                continue;
            }
            let current = silence.next_window(now).filter(|w| w.contains(now));
            if let Some(open) = silence.open_window
                && Some(open) != current
            {
                silence.open_window = None;
                changes.push(WindowChange {
                    opened: false,
                    window: open,
                    silence: silence.clone(),
                });
            }
            if let Some(w) = current
                && silence.open_window.is_none()
            {
                silence.open_window = Some(w);
                changes.push(WindowChange {
                    opened: true,
                    window: w,
                    silence: silence.clone(),
                });
            }
        }
        changes
    }

    /// The active silence covering an incident, if any.
    pub fn covering(&self, incident: &Incident, now: DateTime<Utc>) -> Option<&Silence> {
        self.live
            .values()
            .find(|s| s.state(now) == SilenceState::Active && s.matchers.matches(incident))
    }

    /// Validates a new silence; the caller stores the one returned.
    pub fn create(
        &mut self,
        new: NewSilence,
        author: &str,
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        if new.matchers.is_empty() {
            return Err(SilenceError::NoMatcher);
        }
        if new.reason.trim().is_empty() {
            return Err(SilenceError::NoReason);
        }
        if let Some(schedule) = &new.schedule {
            schedule.check()?;
        }
        let starts_at = new.starts_at.unwrap_or(now);
        let ends_at = match (new.ends_at, new.duration) {
            (Some(end), None) => end,
            (None, Some(d)) => starts_at
                .checked_add_signed(chrono::Duration::milliseconds(d.millis()))
                .ok_or(SilenceError::DurationTooLarge)?,
            (None, None) if new.schedule.is_some() => now + max_reach(),
            _ => return Err(SilenceError::End),
        };
        for (name, at) in [("starts_at", starts_at), ("ends_at", ends_at)] {
            if (at - now).abs() > max_reach() {
                return Err(SilenceError::TooFar { name, at });
            }
        }
        if ends_at <= starts_at.max(now) {
            return Err(SilenceError::EndsTooEarly);
        }
        let number = self.next_number;
        let silence = Silence {
            id: format!("SIL-{number}"),
            matchers: new.matchers,
            starts_at,
            ends_at,
            reason: new.reason,
            author: author.to_string(),
            created_at: now,
            expired_at: None,
            expired_by: None,
            schedule: new.schedule,
            open_window: None,
        };
        if silence.schedule.is_some() && silence.next_window(now).is_none() {
            return Err(SilenceError::NoWindow);
        }
        self.next_number += 1;
        self.live.insert(number, silence.clone());
        Ok(silence)
    }

    /// Expires a silence by hand; `None` when no live silence has this id. The caller
    /// stores the one returned.
    pub fn expire(&mut self, id: &str, actor: &str, now: DateTime<Utc>) -> Option<Silence> {
        let number = Silence::number(id).filter(|n| self.live.contains_key(n))?;
        Some(self.finish(number, actor, now))
    }

    /// The end of every silence whose `ends_at` has passed; the caller stores them.
    pub fn expire_due(&mut self, now: DateTime<Utc>) -> Vec<Silence> {
        let due: Vec<(u64, DateTime<Utc>)> = self
            .live
            .iter()
            .filter(|(_, s)| s.ends_at <= now)
            .map(|(n, s)| (*n, s.ends_at))
            .collect();
        due.into_iter()
            .map(|(n, end)| self.finish(n, "logwarden", end))
            .collect()
    }

    fn finish(&mut self, number: u64, actor: &str, at: DateTime<Utc>) -> Silence {
        let mut silence = self.live.remove(&number).expect("live silence");
        silence.expired_at = Some(at);
        silence.expired_by = Some(actor.to_string());
        silence.open_window = None;
        silence
    }

    /// The window of a scheduled silence recorded as open, to close when the silence ends.
    pub fn open_window(&self, id: &str) -> Option<Window> {
        let number = Silence::number(id)?;
        self.live.get(&number)?.open_window
    }
}

/// Every stored silence, newest first, with its state at `now`.
pub fn list(store: &Store, now: DateTime<Utc>) -> Result<Vec<serde_json::Value>, StoreError> {
    let mut all: Vec<serde_json::Value> = store
        .scan::<Silence>(Space::Silences)?
        .into_iter()
        .map(|(_, s)| s.to_json(now))
        .collect();
    all.reverse();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;

    #[test]
    fn matchers_cover_rule_key_and_labels_and_silences_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut s = Silences::load(&store).unwrap();
        let incident = sample_incident();
        let now = incident.opened_at;
        let new = |m: Matchers| NewSilence {
            matchers: m,
            ends_at: None,
            duration: Some(HumanDuration::parse("1h").unwrap()),
            starts_at: None,
            schedule: None,
            reason: "maintenance".into(),
        };
        let mut b = store::Batch::new();
        assert!(s.create(new(Matchers::default()), "boss", now).is_err());
        let other_ip = Matchers {
            key: BTreeMap::from([("ip".into(), "198.51.100.1".into())]),
            ..Matchers::default()
        };
        s.create(new(other_ip), "boss", now)
            .unwrap()
            .put(&mut b)
            .unwrap();
        assert!(s.covering(&incident, now).is_none());
        let ours = Matchers {
            rule: Some("ssh-bruteforce".into()),
            labels: BTreeMap::from([("team".into(), "security".into())]),
            ..Matchers::default()
        };
        let made = s.create(new(ours), "boss", now).unwrap();
        made.put(&mut b).unwrap();
        assert_eq!(made.id, "SIL-2");
        assert_eq!(s.covering(&incident, now).unwrap().id, "SIL-2");
        let later = now + chrono::Duration::hours(1);
        assert!(s.covering(&incident, later).is_none());
        let ended = s.expire_due(later);
        assert_eq!(ended.len(), 2);
        for silence in &ended {
            silence.put(&mut b).unwrap();
        }
        assert_eq!(ended[0].expired_by.as_deref(), Some("logwarden"));
        store.commit(b).unwrap();
        let again = Silences::load(&store).unwrap();
        assert!(again.live.is_empty());
        assert_eq!(again.next_number, 3);
    }

    /// A recurring silence: inside its windows only, cut by its end date; each window
    /// opens and closes once (a tick inside the same window records nothing more), and
    /// the end of the silence closes the window it cuts.
    #[test]
    fn a_scheduled_silence_is_in_effect_inside_its_windows_until_its_end_date() {
        let store = Store::memory();
        let mut s = Silences::load(&store).unwrap();
        let incident = sample_incident();
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        // Wednesday 2026-01-07, noon UTC.
        let now = at("2026-01-07T12:00:00Z");
        let schedule: Schedule = serde_json::from_str(
            r#"{"days": ["wed", "thu"], "from": "22:00", "to": "02:00", "time_zone": "UTC"}"#,
        )
        .unwrap();
        let new = |ends_at: Option<DateTime<Utc>>| NewSilence {
            matchers: Matchers {
                rule: Some("ssh-bruteforce".into()),
                ..Matchers::default()
            },
            ends_at,
            duration: None,
            starts_at: None,
            schedule: Some(schedule.clone()),
            reason: "nightly backup".into(),
        };
        // No window before its end date: refused.
        assert!(
            s.create(new(Some(at("2026-01-07T20:00:00Z"))), "boss", now)
                .is_err()
        );
        // Ends Thursday 23:00: Thursday's window is cut to one hour, Friday's never comes.
        let made = s
            .create(new(Some(at("2026-01-08T23:00:00Z"))), "boss", now)
            .unwrap();
        let wed = Window {
            starts_at: at("2026-01-07T22:00:00Z"),
            ends_at: at("2026-01-08T02:00:00Z"),
        };
        let thu = Window {
            starts_at: at("2026-01-08T22:00:00Z"),
            ends_at: at("2026-01-08T23:00:00Z"),
        };
        assert_eq!(made.state(now), "pending");
        assert_eq!(made.next_window(now), Some(wed));
        assert_eq!(
            made.to_json(now)["next_window"]["starts_at"],
            "2026-01-07T22:00:00Z"
        );
        assert!(s.covering(&incident, now).is_none());
        assert!(s.windows_due(now).is_empty());

        let inside = at("2026-01-08T01:00:00Z");
        assert_eq!(s.covering(&incident, inside).unwrap().id, made.id);
        let opened = s.windows_due(inside);
        assert_eq!(opened.len(), 1);
        assert!(opened[0].opened && opened[0].window == wed);
        assert_eq!(opened[0].silence.open_window, Some(wed));
        assert!(s.windows_due(at("2026-01-08T01:30:00Z")).is_empty());

        let between = at("2026-01-08T12:00:00Z");
        assert!(s.covering(&incident, between).is_none());
        let closed = s.windows_due(between);
        assert_eq!(closed.len(), 1);
        assert!(!closed[0].opened && closed[0].window == wed);
        assert_eq!(made.next_window(between), Some(thu));

        // A tick that jumps from inside Thursday's window past the end date closes it,
        // then the silence ends.
        assert_eq!(s.windows_due(at("2026-01-08T22:30:00Z")).len(), 1);
        let end = at("2026-01-08T23:00:00Z");
        let closed = s.windows_due(end + chrono::Duration::minutes(5));
        assert_eq!(closed.len(), 1);
        assert!(!closed[0].opened && closed[0].window == thu);
        assert_eq!(s.expire_due(end + chrono::Duration::minutes(5)).len(), 1);
        assert_eq!(made.next_window(end), None);
    }
}
