//! Detections as input: repeat offenders (fail2ban's `recidive`) in the rule language.
//!
//! Every time a rule's condition is met — a new incident opens, or a new burst crosses the
//! threshold again while the key's incident is still open — that detection becomes one
//! line on the built-in source [`SOURCE`], at the log time of the line that completed it:
//!
//! ```text
//! incident rule=ssh-bruteforce key={"ip":"203.0.113.9"}
//! ```
//!
//! An ordinary rule that names `sources: [logwarden]` then counts detections like any other
//! lines ("3 brute-force incidents for one address in 24 h"), with the same windows, stored
//! state, `check`, `test` and `explain`. Only rules that name the source read it: a rule
//! without `sources:` never sees these lines, and no log line can pose as one. The key is
//! written as JSON, so a captured value cannot fake another field.

use crate::detection::{Detector, Hit};
use crate::incidents::{IncidentBook, IncidentEvent};
use crate::rules::RuleSet;
use crate::sources::LogLine;
use std::sync::Arc;

/// The built-in source of detection lines.
pub use crate::rules::DETECTION_SOURCE as SOURCE;

/// Rounds of detections causing detections (a rule over a rule over ...) followed at most,
/// so a cycle in the rules cannot loop.
const MAX_ROUNDS: usize = 4;

/// Whether any rule reads detection lines (when none does, nothing is fed back).
pub fn wanted(rules: &RuleSet) -> bool {
    rules
        .rules
        .iter()
        .any(|r| r.def.sources.iter().any(|s| s == SOURCE))
}

/// The line a hit writes on [`SOURCE`] when it completed its rule's condition.
pub fn detection_line(hit: &Hit) -> Option<LogLine> {
    hit.crossed.as_ref()?;
    let key = serde_json::to_string(&hit.key.to_map()).unwrap_or_default();
    let text = format!("incident rule={} key={key}", hit.rule.id());
    Some(LogLine {
        source: Arc::from(SOURCE),
        path: Arc::from(SOURCE),
        offset: 0,
        bytes: text.into_bytes(),
        arrival: hit.time,
        time: Some(hit.time),
    })
}

/// Feeds `lines` (from [`detection_line`]) to `detector`, applies the hits to `book`
/// (at the time `at` gives) and appends the events to `events`; detections among those hits
/// are fed back in turn.
pub fn feed_back(
    detector: &mut Detector,
    book: &mut IncidentBook,
    rules: &RuleSet,
    mut lines: Vec<LogLine>,
    events: &mut Vec<IncidentEvent>,
    at: impl Fn(&Hit) -> chrono::DateTime<chrono::Utc>,
) {
    let mut hits = Vec::new();
    for _ in 0..MAX_ROUNDS {
        if lines.is_empty() {
            return;
        }
        let mut next = Vec::new();
        for line in &lines {
            detector.observe(line, line.arrival, &mut hits);
            for hit in hits.drain(..) {
                next.extend(detection_line(&hit));
                let when = at(&hit);
                if let Some(event) = book.apply(hit, rules, when) {
                    events.push(event);
                }
            }
        }
        lines = next;
    }
}
