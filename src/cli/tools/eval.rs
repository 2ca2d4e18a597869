//! One evaluation of lines against a rule set, in memory, on the lines' own clock.
//!
//! This is the daemon's [`Engine`] over the store's in-memory engine, without the outbox:
//! `test` and `replay` must report exactly what the daemon would have opened and stored, so
//! they run the same engine, write incidents through the same book and codecs, report the
//! incidents as read back from the store, and never evaluate rules another way. The clock is the lines'
//! time: absence rules are advanced to the exact moment a gap opens, state is expired as
//! log time passes, and an incident's `opened_at` is the log time it would have opened at.

use crate::detection::matcher::Design;
use crate::detection::{Detector, FoundLine, LineRef, Matchers};
use crate::engine::{Engine, Stamp};
use crate::incidents::{Incident, IncidentBook, IncidentEvent};
use crate::rules::RuleSet;
use crate::sources::LogLine;
use crate::store::evidence::EvidenceLog;
use crate::store::{self, Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Log time between two passes that drop window state that can no longer count (the
/// daemon does it every second of wall time; memory is all it changes). Each pass visits
/// every live key, so in a replay it is spaced out: every minute of log time halved the
/// replay rate of a busy log.
const HOUSEKEEPING_MS: i64 = 600_000;

/// Lines evaluated in time order into incidents, without side effects (the store is in
/// memory and goes with the evaluation).
pub struct Evaluation {
    engine: Engine,
    store: Store,
    evidence: EvidenceLog,
    events: Vec<IncidentEvent>,
    watermark: Option<DateTime<Utc>>,
    last_housekeeping_ms: i64,
    evicted: BTreeMap<String, u64>,
}

impl Evaluation {
    /// An evaluation of `rules` for lines of the named sources.
    pub fn new(rules: Arc<RuleSet>, sources: &[String]) -> Self {
        Self::with_design(rules, sources, Design::CURRENT)
    }

    /// An evaluation whose detector is of `design` (benchmarks compare designs).
    pub fn with_design(rules: Arc<RuleSet>, sources: &[String], design: Design) -> Self {
        let store = Store::memory();
        let book = IncidentBook::load(&store, &crate::base::host::kernel_host_name())
            .expect("an empty store in memory reads");
        Evaluation {
            engine: Engine::new(
                // No windows are stored: which keys changed is the daemon store's business.
                Detector::with_design(rules, sources, design).without_change_tracking(),
                book,
                Stamp::Match,
            )
            // The incidents are read back from the store; no one is notified.
            .without_events(),
            store,
            evidence: EvidenceLog::default(),
            events: Vec::new(),
            watermark: None,
            last_housekeeping_ms: i64::MIN,
            evicted: BTreeMap::new(),
        }
    }

    /// The rules evaluated, loaded once from the files given (the tools never reload them).
    pub fn rules(&self) -> &Arc<RuleSet> {
        self.engine.rules()
    }

    /// Evaluates one line at its time. Lines should come in time order (as merged by
    /// [`crate::cli::tools::input`]); a late line is judged like the daemon judges one.
    pub fn observe(&mut self, line: &LogLine, time: DateTime<Utc>) {
        self.clock_before(time);
        self.engine
            .observe(line, time, &mut self.events, &mut |_| {});
        // The incidents are in the book; what to notify is the daemon's business.
        self.events.clear();
    }

    /// Like [`Evaluation::observe`], with the line's matches already found by a copy of
    /// [`Evaluation::matchers`] (on a worker thread).
    pub fn observe_found(&mut self, line: LineRef<'_>, time: DateTime<Utc>, found: FoundLine<'_>) {
        self.clock_before(time);
        self.engine
            .observe_found(line, time, found, &mut self.events, &mut |_| {});
        // The incidents are in the book; what to notify is the daemon's business.
        self.events.clear();
    }

    /// Like [`Evaluation::observe_found`] for a line with no matches: only its time counts
    /// (the clock runs to it).
    pub fn observe_nothing(&mut self, time: DateTime<Utc>) {
        self.clock_before(time);
    }

    /// A copy of the matching stage, for a worker thread.
    pub fn matchers(&self) -> Matchers {
        self.engine.matchers()
    }

    /// Runs the clock to a line's time before the line counts.
    fn clock_before(&mut self, time: DateTime<Utc>) {
        if self.watermark.is_none_or(|w| time > w) {
            self.clock_to(time);
        }
    }

    /// Lets log time run to `now` with no lines: absence gaps due by then open at the
    /// moment they are due. The first call starts the clock of rules without `group_by`.
    pub fn clock_to(&mut self, now: DateTime<Utc>) {
        if self.watermark.is_some_and(|w| now < w) {
            return;
        }
        self.engine.advance(now, &mut self.events);
        self.events.clear();
        self.watermark = Some(now);
        let now_ms = now.timestamp_millis();
        if now_ms.saturating_sub(self.last_housekeeping_ms) >= HOUSEKEEPING_MS {
            self.last_housekeeping_ms = now_ms;
            let detector = self.engine.detector_mut();
            detector.expire(now);
            for (rule, n) in detector.take_evictions() {
                *self.evicted.entry(rule).or_default() += n;
            }
            // Incidents are written as the daemon writes them (a failure shows at the
            // end, where the written incidents are read back).
            let _ = self.write_incidents();
        }
    }

    /// Writes the incidents changed since the last write to the store, with their
    /// evidence, as the daemon's commits do.
    fn write_incidents(&mut self) -> Result<(), StoreError> {
        let mut batch = store::Batch::new();
        let written = self
            .engine
            .book_mut()
            .write_changes(&self.store, &mut batch, &mut self.evidence)
            .and_then(|()| self.store.commit(batch));
        match written {
            Ok(()) => self.evidence.committed(),
            Err(_) => self.evidence.abandoned(),
        }
        written
    }

    /// Keys dropped per rule because `max_keys` was reached (matches may have been lost).
    pub fn evictions(&mut self) -> BTreeMap<String, u64> {
        for (rule, n) in self.engine.detector_mut().take_evictions() {
            *self.evicted.entry(rule).or_default() += n;
        }
        self.evicted.clone()
    }

    /// Ends the evaluation at `until` (else at the last line's time) and returns every
    /// incident opened, in the order they opened, as stored.
    pub fn finish(mut self, until: Option<DateTime<Utc>>) -> Vec<Incident> {
        if let Some(end) = until.or(self.watermark) {
            self.clock_to(end);
        }
        // The store is in memory and the codecs are the daemon's: a failure here is a bug
        // in them, which the tools must not paper over.
        self.write_incidents()
            .and_then(|()| crate::incidents::stored::scan(&self.store, |_| true))
            .expect("incidents written to the in-memory store read back")
            .into_iter()
            .map(|(_, incident, _)| incident)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Arc<RuleSet> {
        RuleSet::from_yaml(yaml)
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + s, 0).unwrap()
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            source: "t".into(),
            path: "t.log".into(),
            offset: 0,
            bytes: text.as_bytes().to_vec(),
            arrival: at(0),
            time: None,
        }
    }

    #[test]
    fn an_absence_opens_at_the_moment_it_is_due_not_at_the_next_line() {
        let mut e = Evaluation::new(
            rules(
                "rules:\n  - id: hb\n    match: beat\n    absence: {within: 5m}\n    severity: high\n",
            ),
            &["t".into()],
        );
        e.observe(&line("beat"), at(0));
        e.observe(&line("beat"), at(60));
        e.observe(&line("beat"), at(3600));
        let incidents = e.finish(None);
        assert_eq!(incidents.len(), 1);
        assert_eq!(
            incidents[0].opened_at,
            at(60 + 300) + chrono::Duration::milliseconds(1)
        );
        assert_eq!(incidents[0].resumed_at, Some(at(3600)));
    }

    /// Later failures from the address fold into the breach incident: the summary follows
    /// the count and severity but keeps the user who logged in, not the failed one.
    #[test]
    fn earlier_sequence_steps_count_but_leave_the_summary() {
        let mut e = Evaluation::new(
            rules(
                r#"
rules:
  - id: breach
    group_by: [ip]
    sequence:
      within: 1m
      steps:
        - {match: 'fail (?P<user>\S+) (?P<ip>\S+)', count: 2}
        - {match: 'ok (?P<user>\S+) (?P<ip>\S+)'}
    summary: "{{ ip }} logged in as {{ user }} ({{ count }}, {{ severity }})"
    severity: {high: 1, critical: 5}
"#,
            ),
            &["t".into()],
        );
        e.observe(&line("fail guest 1.2.3.4"), at(0));
        e.observe(&line("fail guest 1.2.3.4"), at(1));
        e.observe(&line("ok alice 1.2.3.4"), at(2));
        e.observe(&line("fail mallory 1.2.3.4"), at(3));
        e.observe(&line("fail mallory 1.2.3.4"), at(4));
        let incidents = e.finish(None);
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].count, 5);
        assert_eq!(
            incidents[0].summary,
            "1.2.3.4 logged in as alice (5, critical)"
        );
    }

    #[test]
    fn opened_at_is_log_time_and_later_matches_fold_in() {
        let mut e = Evaluation::new(
            rules(
                "rules:\n  - id: f\n    match: 'fail (?P<ip>\\S+)'\n    group_by: [ip]\n    threshold: {count: 2, within: 1m}\n    severity: low\n",
            ),
            &["t".into()],
        );
        for s in [0, 10, 20] {
            e.observe(&line("fail 1.2.3.4"), at(s));
        }
        e.observe(&line("fail 5.6.7.8"), at(30));
        let incidents = e.finish(None);
        assert_eq!(incidents.len(), 1);
        assert_eq!((incidents[0].count, incidents[0].opened_at), (3, at(10)));
    }

    /// The daemon's engine (wall-clock stamps) and the tools' (match-time stamps) open the
    /// same incidents from the same lines and clock, and differ only in when they say
    /// they acted.
    #[test]
    fn the_daemons_engine_and_the_tools_open_the_same_incidents() {
        let rules = rules(
            r#"
rules:
  - id: fail
    match: 'fail (?P<ip>\S+)'
    group_by: [ip]
    threshold: {count: 3, within: 1m}
    severity: {low: 3, high: 5}
  - id: beat
    match: 'beat'
    absence: {within: 5m}
    severity: high
"#,
        );
        let run = |stamp| {
            let mut engine = crate::engine::Engine::new(
                Detector::new(rules.clone(), &["t".into()]),
                IncidentBook::empty(),
                stamp,
            );
            let mut events = Vec::new();
            let mut counted = 0;
            engine.advance(at(0), &mut events);
            for (s, text) in [(0, "beat"), (1, "fail a"), (2, "fail a"), (3, "fail b")] {
                engine.observe(&line(text), at(s), &mut events, &mut |_| counted += 1);
            }
            for s in [4, 5, 6] {
                engine.observe(&line("fail a"), at(s), &mut events, &mut |_| counted += 1);
            }
            // The clock jumps: the heartbeat's gap opened at its due time.
            engine.advance(at(3600), &mut events);
            let incidents: Vec<_> = events
                .into_iter()
                .map(|e| {
                    let i = e.incident;
                    (
                        e.kind,
                        i.id,
                        i.rule,
                        i.count,
                        i.severity,
                        i.first_seen,
                        i.opened_at,
                    )
                })
                .collect();
            (counted, incidents)
        };
        let (tool_count, tool) = run(crate::engine::Stamp::Match);
        let (daemon_count, daemon) = run(crate::engine::Stamp::Wall);
        assert_eq!(tool_count, daemon_count);
        assert_eq!(tool.len(), daemon.len());
        for (t, d) in tool.iter().zip(&daemon) {
            assert_eq!(
                (&t.0, &t.1, &t.2, t.3, t.4, t.5),
                (&d.0, &d.1, &d.2, d.3, d.4, d.5)
            );
        }
        let opened: Vec<(&str, DateTime<Utc>)> = tool
            .iter()
            .filter(|t| t.0 == crate::incidents::EventKind::Opened)
            .map(|t| (t.2.as_str(), t.6))
            .collect();
        assert_eq!(
            opened,
            [
                ("fail", at(4)),
                ("beat", at(300) + chrono::Duration::milliseconds(1))
            ]
        );
        assert!(
            daemon.iter().all(|d| d.6 > at(3600)),
            "the daemon stamps now"
        );
    }

    /// An engine of `rules` stamping match times, as the tools' (events still on).
    fn tools_engine(rules: &Arc<RuleSet>) -> crate::engine::Engine {
        crate::engine::Engine::new(
            Detector::new(rules.clone(), &["t".into()]),
            IncidentBook::empty(),
            crate::engine::Stamp::Match,
        )
    }

    /// Without events, matches of keys with no incident are not made hits, but a line
    /// that completes a sequence and matches an earlier step too (the same key) folds both
    /// matches into the incident it opens, as the daemon's engine does; later matches of
    /// the key fold in as well.
    #[test]
    fn without_events_every_match_of_the_line_that_opens_an_incident_folds_in() {
        let rules = rules(
            r#"
rules:
  - id: seq
    group_by: [ip]
    sequence:
      within: 1m
      steps:
        - {match: 'try (?P<ip>\S+)', count: 2}
        - {match: 'try (?P<ip>\S+) win'}
    severity: {low: 1, high: 4}
"#,
        );
        let run = |engine: crate::engine::Engine| {
            let mut engine = engine;
            let mut events = Vec::new();
            let mut counted = 0;
            for (s, text) in [
                (0, "try 1.2.3.4"),
                (1, "try 5.6.7.8"),
                (2, "try 1.2.3.4"),
                (3, "try 1.2.3.4 win"),
                (4, "try 1.2.3.4"),
                (5, "try 5.6.7.8"),
            ] {
                engine.observe(&line(text), at(s), &mut events, &mut |_| counted += 1);
            }
            let book: Vec<Incident> = engine.book().all_active().cloned().collect();
            (book, counted)
        };
        let (with, all) = run(tools_engine(&rules));
        let (without, some) = run(tools_engine(&rules).without_events());
        assert_eq!(with.len(), 1);
        assert_eq!(with, without);
        // The two tries, the win, the same line's try, and the try after it.
        assert_eq!(with[0].count, 5);
        assert_eq!(all, 7, "every match is a hit with events");
        assert_eq!(
            some, 3,
            "only those that open or fold into the incident without"
        );
    }

    /// An engine that reports no events (the tools') keeps exactly the book of one that
    /// reports them (the daemon's): counts, severities, summaries and evidence.
    #[test]
    fn an_engine_without_events_keeps_the_same_incidents() {
        let rules = rules(
            r#"
rules:
  - id: fail
    match: 'fail (?P<user>\S+) (?P<ip>\S+)'
    group_by: [ip]
    threshold: {count: 2, within: 1m}
    summary: "{{ ip }} as {{ user }} ({{ count }})"
    severity: {low: 2, high: 3}
"#,
        );
        let run = |engine: crate::engine::Engine| {
            let mut engine = engine;
            let mut events = Vec::new();
            for s in 0..8 {
                let text = format!("fail u{s} 10.0.0.{}", s % 3);
                engine.observe(&line(&text), at(s), &mut events, &mut |_| {});
            }
            let mut book: Vec<Incident> = engine.book().all_active().cloned().collect();
            book.sort_by_key(|i| Incident::number(&i.id));
            (book, events.len())
        };
        let (with, reported) = run(tools_engine(&rules));
        let (without, unreported) = run(tools_engine(&rules).without_events());
        assert_eq!(with.len(), 3);
        assert!(
            with.iter()
                .any(|i| i.count == 3 && i.severity > with[2].severity)
        );
        assert_eq!(with, without);
        assert!(reported > 0);
        assert_eq!(unreported, 0);
    }
}
