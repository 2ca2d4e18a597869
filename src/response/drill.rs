//! Drills: a synthetic incident sent through the live response path (escalation, receivers,
//! lifecycle, audit) so a team can rehearse and measure its response. Every trace of it is
//! marked: `drill: true` on the incident and in the audit, `[DRILL]` in the summary that
//! every notification format carries, and `drill="true"` on the response-time KPIs.

use crate::detection::{Crossing, Evidence, Fields, Hit, Key};
use crate::incidents::Incident;
use crate::rules::{Rule, RuleKind};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Prefix of a drill incident's summary (and so of every notification about it).
pub const MARK: &str = "[DRILL]";

/// A match of `rule` that completes it at once, with plausible synthetic captures (so its
/// summary and notifications read like the real thing) under a key of its own: the rule's
/// `group_by` values plus `drill=<time>`, so no real match ever folds into the drill and every
/// drill is a new incident.
pub fn synthetic_hit(rule: &Arc<Rule>, actor: &str, now: DateTime<Utc>) -> Hit {
    let captures: BTreeMap<String, String> = rule
        .patterns
        .iter()
        .flat_map(|p| p.capture_names().flatten())
        .map(|name| (name.to_string(), sample_value(name)))
        .collect();
    let mut key: Key = rule
        .def
        .group_by
        .iter()
        .map(|f| (f.clone(), sample_value(f)))
        .collect();
    key.insert("drill".to_string(), now.to_rfc3339());
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
    let count = match &rule.kind {
        RuleKind::Threshold { count, .. } | RuleKind::Distinct { count, .. } => *count,
        RuleKind::Spike { min_count, .. } => *min_count,
        RuleKind::Sequence { counts, .. } => counts.iter().sum(),
        RuleKind::Absence { .. } => 0,
    };
    let key = Fields::from_map(&key);
    Hit {
        rule: rule.clone(),
        captures: Fields::from_map(&captures),
        step: rule.patterns.len().saturating_sub(1),
        key,
        time: now,
        evidence: Some(evidence.clone()),
        crossed: Some(Crossing {
            count: count.max(1),
            evidence: vec![evidence],
        }),
        resumed: None,
    }
}

/// A value that looks like what a capture of this name holds: documentation addresses
/// (RFC 5737) for addresses, obvious drill names for the rest.
fn sample_value(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    let has = |parts: &[&str]| parts.iter().any(|p| name.contains(p));
    if has(&["ip", "addr", "src", "dst", "client", "remote", "peer"]) {
        "192.0.2.10"
    } else if has(&["user", "login", "account"]) {
        "drill-user"
    } else if has(&["port"]) {
        "4242"
    } else if has(&["host", "server", "domain"]) {
        "drill.example"
    } else if has(&["path", "url", "uri", "file"]) {
        "/drill"
    } else if has(&["status", "code"]) {
        "500"
    } else {
        "drill"
    }
    .to_string()
}

/// Marks a freshly opened incident as a drill.
pub fn mark(incident: &mut Incident, actor: &str, now: DateTime<Utc>) {
    incident.drill = true;
    if !incident.summary.starts_with(MARK) {
        incident.summary = format!("{MARK} {}", incident.summary);
    }
    incident.record(
        now,
        crate::incidents::timeline::TimelineKind::Drill,
        actor,
        Some("synthetic incident for a response drill".into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_hit_carries_plausible_captures_and_the_threshold_count() {
        let rules = crate::rules::RuleSet::from_yaml(
            "rules:\n  - id: ssh\n    match: 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 5, within: 1m}\n    severity: low\n    summary: '{{ count }} failed SSH logins from {{ ip }}'\n",
        );
        let hit = synthetic_hit(&rules.rules[0], "tester", Utc::now());
        let captures: BTreeMap<String, String> = hit
            .captures
            .view()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(captures["ip"], "192.0.2.10");
        assert_eq!(captures["user"], "drill-user");
        assert_eq!(hit.crossed.as_ref().unwrap().count, 5);
        let key: Vec<String> = hit.key.view().iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(key, ["drill", "ip"]);
    }
}
