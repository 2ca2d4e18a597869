//! The population export: one CSV row per incident opened in a period, with each lifecycle
//! time, who did it, whether a review exists, and whether each stage met its SLA.
//!
//! Auditors sample from this list (a SOC 2 Type 2 audit asks for the population of incidents
//! in the period, then for a sample's timelines), and compliance platforms take it as an
//! uploaded CSV. Incidents are read a page at a time without their evidence lines, so a store
//! of tens of thousands of incidents is never held in memory at once.

use super::DAEMON;
use super::csv::csv_field;
use crate::incidents::sla::{self, Slas, Stage};
use crate::incidents::{Incident, State, TimelineKind, stored};
use crate::store::{Store, StoreError};
use chrono::{DateTime, SecondsFormat, Utc};

/// Incidents read per store page.
const PAGE: usize = 500;

/// The lifecycle steps after opening, each with its time and actor in the row: the state's
/// name in the timeline, and the CSV column prefix.
const STEPS: [&str; 5] = [
    "acknowledged",
    "contained",
    "eradicated",
    "recovered",
    "closed",
];

/// The CSV header: its columns are the contract auditors' sampling sheets are built on.
pub const HEADER: &str = "uid,id,rule,severity,category,controls,state,drill,detected_at,\
opened_at,opened_by,acknowledged_at,acknowledged_by,contained_at,contained_by,eradicated_at,\
eradicated_by,recovered_at,recovered_by,closed_at,closed_by,review,reviewed_by,\
sla_acknowledge,sla_contain,sla_resolve";

/// The population of incidents opened at or after `since` and before `until`, as CSV, with
/// SLA outcomes as of `now` (an active incident past an SLA counts as missed).
pub fn render(
    store: &Store,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    slas: &Slas,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    render_paged(store, (since, until), slas, now, PAGE)
}

fn render_paged(
    store: &Store,
    (since, until): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    slas: &Slas,
    now: DateTime<Utc>,
    page_size: usize,
) -> Result<String, StoreError> {
    let mut out = String::from(HEADER);
    out.push('\n');
    let in_period = |i: &Incident| {
        since.is_none_or(|s| i.opened_at >= s) && until.is_none_or(|u| i.opened_at < u)
    };
    let mut after = None;
    loop {
        let (page, more) = stored::page_without_evidence(store, after, page_size, in_period)?;
        for incident in &page {
            push_row(&mut out, incident, slas, now);
        }
        // More follow only after a full page: the next starts after its last incident.
        match page.last().and_then(|last| Incident::number(&last.id)) {
            Some(last) if more => after = Some(last),
            _ => break,
        }
    }
    Ok(out)
}

/// When and by whom each of [`STEPS`] was taken: the step's own timeline entry, or a
/// `resolved` entry that passed over it (resolving closes in one step).
fn steps(incident: &Incident) -> [Option<(DateTime<Utc>, &str)>; 5] {
    let mut found = [None; 5];
    for entry in &incident.timeline {
        // A false positive ends the incident: it is its close.
        let step = match &entry.event {
            TimelineKind::Moved(State::FalsePositive) => Some(State::Closed.as_str()),
            TimelineKind::Moved(state) => Some(state.as_str()),
            _ => None,
        };
        if let Some(i) = step.and_then(|step| STEPS.iter().position(|s| *s == step)) {
            found[i].get_or_insert((entry.at, entry.actor.as_str()));
        } else if entry.event == TimelineKind::Resolved {
            for slot in &mut found {
                slot.get_or_insert((entry.at, entry.actor.as_str()));
            }
        }
    }
    found
}

fn push_row(out: &mut String, incident: &Incident, slas: &Slas, now: DateTime<Utc>) {
    let time = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let opened_by = incident
        .timeline
        .iter()
        .find(|e| e.event == TimelineKind::Drill)
        .map_or(DAEMON, |e| e.actor.as_str());
    let mut fields = vec![
        incident.uid.clone(),
        incident.id.clone(),
        incident.rule.clone(),
        incident.severity.as_str().to_string(),
        incident.category.clone(),
        incident.controls.join(";"),
        incident.state.as_str().to_string(),
        incident.drill.to_string(),
        time(Some(incident.first_seen)),
        time(Some(incident.opened_at)),
        opened_by.to_string(),
    ];
    for step in steps(incident) {
        fields.push(time(step.map(|(at, _)| at)));
        fields.push(step.map(|(_, by)| by.to_string()).unwrap_or_default());
    }
    fields.push(incident.review.is_some().to_string());
    fields.push(
        incident
            .review
            .as_ref()
            .map(|r| r.by.clone())
            .unwrap_or_default(),
    );
    for stage in Stage::ALL {
        let outcome = sla::outcome(slas, incident, stage, now);
        fields.push(outcome.map(|o| o.as_str()).unwrap_or_default().to_string());
    }
    let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&row.join(","));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::sample_incident;

    #[test]
    fn a_resolved_incident_fills_the_steps_it_passed_over() {
        let mut incident = sample_incident();
        incident.timeline.clear();
        let t0 = incident.opened_at;
        let at = |m| t0 + chrono::Duration::minutes(m);
        incident.record(
            at(1),
            TimelineKind::Moved(State::Acknowledged),
            "alice",
            None,
        );
        incident.record(at(2), TimelineKind::Note, "bob", None);
        incident.record(at(9), TimelineKind::Resolved, "carol", None);
        let found = steps(&incident);
        assert_eq!(found[0], Some((at(1), "alice")));
        for step in &found[1..] {
            assert_eq!(*step, Some((at(9), "carol")));
        }
        incident.timeline.clear();
        incident.state = State::FalsePositive;
        incident.record(
            at(3),
            TimelineKind::Moved(State::FalsePositive),
            "dave",
            None,
        );
        assert_eq!(steps(&incident)[..4], [None; 4]);
        assert_eq!(steps(&incident)[4], Some((at(3), "dave")));
    }

    #[test]
    fn a_period_spanning_several_pages_lists_each_incident_in_it_once() {
        let store = Store::memory();
        let mut batch = crate::store::Batch::new();
        let first = sample_incident();
        for n in 1..=7 {
            let mut incident = first.clone();
            incident.id = format!("INC-{n}");
            incident.uid = format!("web1/INC-{n}");
            incident.opened_at = first.opened_at + chrono::Duration::minutes(n);
            incident.put(&store, &mut batch).unwrap();
        }
        store.commit(batch).unwrap();
        let at = |n| Some(first.opened_at + chrono::Duration::minutes(n));
        for page_size in [1, 2, 3, 500] {
            let csv =
                render_paged(&store, (at(2), at(7)), &Slas::new(), Utc::now(), page_size).unwrap();
            let ids: Vec<&str> = csv
                .lines()
                .skip(1)
                .map(|l| l.split(',').nth(1).unwrap())
                .collect();
            assert_eq!(
                ids,
                ["INC-2", "INC-3", "INC-4", "INC-5", "INC-6"],
                "{page_size}"
            );
        }
    }

    #[test]
    fn the_header_names_every_field_of_a_row() {
        let store = Store::memory();
        let incident = sample_incident();
        let mut batch = crate::store::Batch::new();
        incident.put(&store, &mut batch).unwrap();
        store.commit(batch).unwrap();
        let csv = render(&store, None, None, &Slas::new(), Utc::now()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2, "{csv}");
        assert_eq!(
            lines[1].split(',').count(),
            HEADER.split(',').count(),
            "{csv}"
        );
        let period_after = incident.opened_at + chrono::Duration::seconds(1);
        let none = render(&store, Some(period_after), None, &Slas::new(), Utc::now()).unwrap();
        assert_eq!(none.lines().count(), 1);
    }
}
