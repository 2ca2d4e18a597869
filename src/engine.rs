//! One engine: the detector, the incident book and the clock, as the daemon, `test` and
//! `replay` all run them, so what the tools show is what the daemon does.
//!
//! A line's counted matches fold into incidents at once, and the detections they make are
//! fed back at once to rules over detections (repeat offenders). Time moves only when the
//! caller says so ([`Engine::advance`]): absence gaps open at the exact moment they fall
//! due, however far the clock jumps. What differs between callers is named, not coded
//! twice: [`Stamp`] says which clock dates incident changes.

use crate::detection::{Detector, FoundLine, Hit, LineRef, Matchers, RuleChange};
use crate::incidents::{IncidentBook, IncidentEvent};
use crate::response::recidive;
use crate::rules::{Rule, RuleKind, RuleSet};
use crate::sources::LogLine;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Which clock dates an incident's opening and changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The wall clock: the daemon, which acts now.
    Wall,
    /// The time of the match (the line's own, or when an absence fell due): `test` and
    /// `replay`, which report when the daemon would have acted.
    Match,
}

/// Detector, incident book and clock.
pub struct Engine {
    detector: Detector,
    book: IncidentBook,
    stamp: Stamp,
    hits: Vec<Hit>,
    /// Some rule is an absence (only then does the clock have anything to do).
    has_absence: bool,
    /// Some rule reads detections ([`recidive`]).
    recidive: bool,
    /// Cached [`Detector::next_absence_due`]; `None` inside means nothing is due.
    due: Option<Option<DateTime<Utc>>>,
    /// The clock has run once (rules without `group_by` start their absence clock then).
    started: bool,
    /// Incident changes are reported as [`IncidentEvent`]s (each with a copy of the
    /// incident), and every counted match is a hit the caller's `counted` sees; off for
    /// evaluations that notify no one ([`Engine::without_events`]).
    events: bool,
}

impl Engine {
    /// An engine over a detector and a book.
    pub fn new(detector: Detector, book: IncidentBook, stamp: Stamp) -> Self {
        let rules = detector.rules().clone();
        Engine {
            has_absence: has_absence(&rules),
            recidive: recidive::wanted(&rules),
            detector,
            book,
            stamp,
            hits: Vec::new(),
            due: None,
            started: false,
            events: true,
        }
    }

    /// This engine, reporting no [`IncidentEvent`]s for counted matches: the book changes
    /// as before, without a copy of the incident per match for a notifier there is not.
    /// Nor are hits made of matches that change nothing in the book (they count in their
    /// windows all the same): `counted` sees those that complete a condition, fold into an
    /// open incident or are an absence rule's.
    pub fn without_events(mut self) -> Self {
        self.events = false;
        self
    }

    /// The rules evaluated: the detector's own, which [`Engine::replace_rules`] swaps.
    pub fn rules(&self) -> &Arc<RuleSet> {
        self.detector.rules()
    }

    /// The detector (window state, evictions).
    pub fn detector_mut(&mut self) -> &mut Detector {
        &mut self.detector
    }

    /// The incident book the engine's hits fold into: what callers read incidents from.
    pub fn book(&self) -> &IncidentBook {
        &self.book
    }

    /// The incident book, to change.
    pub fn book_mut(&mut self) -> &mut IncidentBook {
        &mut self.book
    }

    /// Both, for changes that need the book and the rules at once.
    pub fn parts_mut(&mut self) -> (&mut Detector, &mut IncidentBook) {
        (&mut self.detector, &mut self.book)
    }

    /// Swaps in a new rule set (see [`Detector::replace_rules`]).
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) -> RuleChange {
        self.has_absence = has_absence(&rules);
        self.recidive = recidive::wanted(&rules);
        self.due = None;
        self.detector.replace_rules(rules)
    }

    /// Evaluates one line at `time`: its counted matches fold into incidents (events
    /// appended to `events`); `counted` sees each match first.
    pub fn observe(
        &mut self,
        line: &LogLine,
        time: DateTime<Utc>,
        events: &mut Vec<IncidentEvent>,
        counted: &mut dyn FnMut(&Hit),
    ) {
        self.detector.observe_where(
            line,
            time,
            &mut self.hits,
            &wanted_hits(self.events, &self.book),
        );
        self.line_done(events, counted);
    }

    /// Like [`Engine::observe`], with the line's matches already found by a copy of the
    /// detector's [`Matchers`] (on a worker thread).
    pub fn observe_found<'l>(
        &mut self,
        line: impl Into<LineRef<'l>>,
        time: DateTime<Utc>,
        found: FoundLine<'_>,
        events: &mut Vec<IncidentEvent>,
        counted: &mut dyn FnMut(&Hit),
    ) {
        self.detector.apply(
            line.into(),
            time,
            found,
            &mut self.hits,
            &wanted_hits(self.events, &self.book),
        );
        self.line_done(events, counted);
    }

    /// A copy of the detector's matching stage, for a worker thread.
    pub fn matchers(&self) -> Matchers {
        self.detector.matchers()
    }

    /// Folds a line's hits into incidents.
    fn line_done(&mut self, events: &mut Vec<IncidentEvent>, counted: &mut dyn FnMut(&Hit)) {
        if self.hits.is_empty() {
            return;
        }
        if self.has_absence
            && self
                .hits
                .iter()
                .any(|h| matches!(h.rule.kind, RuleKind::Absence { .. }))
        {
            self.due = None;
        }
        for hit in &self.hits {
            counted(hit);
        }
        self.apply_hits(events);
    }

    /// Lets the clock run to `now`: absence gaps due by then open at the moment they are
    /// due, in order. The first call starts the clock of rules without `group_by`.
    pub fn advance(&mut self, now: DateTime<Utc>, events: &mut Vec<IncidentEvent>) {
        if !self.has_absence {
            return;
        }
        if !self.started {
            self.started = true;
            self.detector.advance(now, &mut self.hits);
            self.apply_hits(events);
            self.due = None;
        }
        loop {
            let due = *self
                .due
                .get_or_insert_with(|| self.detector.next_absence_due());
            let Some(due) = due.filter(|d| *d <= now) else {
                break;
            };
            self.detector.advance(due, &mut self.hits);
            self.due = None;
            if self.hits.is_empty() {
                // Nothing crossed after all (a key with a match from the future): the rest
                // is noticed by the next line or the next advance.
                self.detector.advance(now, &mut self.hits);
                self.apply_hits(events);
                break;
            }
            self.apply_hits(events);
        }
    }

    /// Folds the pending hits into incidents, then feeds their detections back.
    fn apply_hits(&mut self, events: &mut Vec<IncidentEvent>) {
        let rules = self.detector.rules().clone();
        let mut detections = Vec::new();
        for hit in self.hits.drain(..) {
            if self.recidive {
                detections.extend(recidive::detection_line(&hit));
            }
            let at = stamp(self.stamp, &hit);
            if !self.events {
                self.book.fold(&hit, &rules, at);
            } else if let Some(event) = self.book.apply(hit, &rules, at) {
                events.push(event);
            }
        }
        let kind = self.stamp;
        recidive::feed_back(
            &mut self.detector,
            &mut self.book,
            &rules,
            detections,
            events,
            |hit| stamp(kind, hit),
        );
    }
}

/// Which counted matches that complete nothing are made hits ([`Detector::apply`]'s
/// `wanted`): all of them for an engine that reports events (the caller's `counted` sees
/// every match); otherwise those that change something here — they fold into the key's
/// open incident, or they are an absence rule's (which moves the time the clock next has
/// to look at).
fn wanted_hits(all: bool, book: &IncidentBook) -> impl Fn(&Rule, &str) -> bool + '_ {
    move |rule, key| {
        all || matches!(rule.kind, RuleKind::Absence { .. }) || book.is_open(rule.id(), key)
    }
}

fn stamp(kind: Stamp, hit: &Hit) -> DateTime<Utc> {
    match kind {
        Stamp::Wall => Utc::now(),
        Stamp::Match => hit.time,
    }
}

fn has_absence(rules: &RuleSet) -> bool {
    rules
        .rules
        .iter()
        .any(|r| matches!(r.kind, RuleKind::Absence { .. }))
}
