//! Drills: a synthetic incident sent through the live response path (escalation, receivers,
//! lifecycle, audit) so a team can rehearse and measure its response. Every trace of it is
//! marked: `drill: true` on the incident and in the audit, `[DRILL]` in the summary that
//! every notification format carries, and `drill="true"` on the response-time KPIs.

use crate::detection::{Crossing, Evidence, Fields, Hit, Key};
use crate::incidents::Incident;
use crate::rules::Rule;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Prefix of a drill incident's summary (and so of every notification about it).
pub const MARK: &str = "[DRILL]";

/// A match of `rule` that completes it at once, under a key of its own (so no real match
/// ever folds into the drill, and every drill is a new incident).
pub fn synthetic_hit(rule: &Arc<Rule>, actor: &str, now: DateTime<Utc>) -> Hit {
    let key: Key = BTreeMap::from([("drill".to_string(), now.to_rfc3339())]);
    let evidence = Evidence {
        source: "drill".into(),
        path: "-".into(),
        offset: 0,
        time: now,
        line: format!(
            "{MARK} synthetic evidence for rule {} (drill started by {actor})",
            rule.id()
        )
        .into(),
    };
    let key = Fields::from_map(&key);
    Hit {
        rule: rule.clone(),
        captures: key.clone(),
        step: rule.patterns.len().saturating_sub(1),
        key,
        time: now,
        evidence: Some(evidence.clone()),
        crossed: Some(Crossing {
            count: 1,
            evidence: vec![evidence],
        }),
        resumed: None,
    }
}

/// Marks a freshly opened incident as a drill.
pub fn mark(incident: &mut Incident, actor: &str, now: DateTime<Utc>) {
    incident.drill = true;
    if !incident.summary.starts_with(MARK) {
        incident.summary = format!("{MARK} {}", incident.summary);
    }
    incident.record(
        now,
        "drill",
        actor,
        Some("synthetic incident for a response drill".into()),
    );
}
