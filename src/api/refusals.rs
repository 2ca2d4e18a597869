//! Refused API calls (401/403), aggregated: one audit record per client, actor, status and
//! minute, with the count and a few example paths cut short — never one durable record per
//! request, which would let an unauthenticated client fill the disk.

use crate::audit::{AuditEvent, Entry};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Longest path kept in an audit record or log line.
pub const PATH_KEPT: usize = 120;
/// Example paths kept per record.
const EXAMPLES: usize = 3;
/// Clients tallied separately within one minute; the rest share one tally (`other`).
const CLIENTS: usize = 1024;

/// Who was refused and how: (client address, token name or `-`, status).
type Who = (String, String, u16);

#[derive(Default)]
struct Tally {
    count: u64,
    reasons: Vec<&'static str>,
    paths: Vec<String>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

/// The refusals of the current minute.
#[derive(Default)]
pub struct Refusals {
    window: Mutex<(i64, BTreeMap<Who, Tally>)>,
}

/// `text` cut at `max` bytes (on a character boundary), marked when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

impl Refusals {
    /// Counts a refusal at `now`; returns the records of minutes that are over.
    pub fn refuse(
        &self,
        client: &str,
        actor: &str,
        call: &str,
        status: u16,
        reason: &'static str,
        now: DateTime<Utc>,
    ) -> Vec<Entry> {
        let mut window = self.window.lock().expect("refusals lock");
        let done = Self::roll(&mut window, now);
        let tallies = &mut window.1;
        let mut who = (client.to_string(), actor.to_string(), status);
        if !tallies.contains_key(&who) && tallies.len() >= CLIENTS {
            who.0 = "other".into();
        }
        let tally = tallies.entry(who).or_default();
        tally.count += 1;
        if !tally.reasons.contains(&reason) {
            tally.reasons.push(reason);
        }
        let call = truncate(call, PATH_KEPT);
        if tally.paths.len() < EXAMPLES && !tally.paths.contains(&call) {
            tally.paths.push(call);
        }
        tally.first.get_or_insert(now);
        tally.last = Some(now);
        done
    }

    /// The records of minutes that are over at `now` (called periodically, so a minute's
    /// record is written even when no refusal follows it).
    pub fn due(&self, now: DateTime<Utc>) -> Vec<Entry> {
        let mut window = self.window.lock().expect("refusals lock");
        Self::roll(&mut window, now)
    }

    fn roll(window: &mut (i64, BTreeMap<Who, Tally>), now: DateTime<Utc>) -> Vec<Entry> {
        let minute = now.timestamp().div_euclid(60);
        if window.0 == minute {
            return Vec::new();
        }
        window.0 = minute;
        std::mem::take(&mut window.1)
            .into_iter()
            .map(|((client, actor, status), t)| {
                Entry::new(
                    AuditEvent::ApiDenied,
                    &actor,
                    None,
                    serde_json::json!({
                        "client": client,
                        "status": status,
                        "count": t.count,
                        "reason": t.reasons.join(", "),
                        "calls": t.paths,
                        "first": t.first,
                        "last": t.last,
                    }),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_minute_of_refusals_is_one_record_per_client_with_the_count() {
        let r = Refusals::default();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        let long = format!("GET /api/v1/{}", "x".repeat(60_000));
        assert!(
            r.refuse("10.0.0.1", "-", &long, 401, "unknown token", t0)
                .is_empty()
        );
        for s in 1..59 {
            let at = t0 + chrono::Duration::seconds(s);
            assert!(
                r.refuse("10.0.0.1", "-", &long, 401, "unknown token", at)
                    .is_empty()
            );
        }
        r.refuse(
            "10.0.0.2",
            "ci",
            "GET /api/v1/silences",
            403,
            "role too small",
            t0,
        );
        assert!(r.due(t0 + chrono::Duration::seconds(59)).is_empty());
        let records = r.due(t0 + chrono::Duration::seconds(60));
        assert_eq!(records.len(), 2);
        let first = &records[0].details;
        assert_eq!(first["count"], 59, "{first}");
        assert_eq!(first["calls"].as_array().unwrap().len(), 1);
        assert!(first.to_string().len() < 1000, "paths are cut: {first}");
        assert!(r.due(t0 + chrono::Duration::seconds(120)).is_empty());
    }
}
