//! The line half of a step: matches are found on worker threads in pieces of lines (the
//! same piece front end `replay` runs, [`crate::detection::in_order`]) and counted into the
//! engine on the pipeline thread in input order, so a step's outcome does not depend on
//! the number of workers. Kept apart from the pipeline's loop so the order-preserving
//! part can be tested against line-by-line evaluation on its own.

use crate::detection::in_order::in_order;
use crate::detection::{Found, Hit, Matchers};
use crate::engine::Engine;
use crate::incidents::IncidentEvent;
use crate::metrics::Metrics;
use crate::sources::line_time::{Judged, LineTimeBounds};
use crate::sources::timestamp::{HeadTimes, TimestampFormat};
use crate::sources::{Batch, LogLine};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::ops::Range;

/// Lines a matching worker takes at a time.
pub(super) const PIECE_LINES: usize = 1024;

/// A line's own time as its source knows it: a journal entry's, else read by its source's
/// timestamp format with its arrival as the year reference (on a matching worker: it
/// depends on nothing but the line). `times` reuses the time of the line before when only
/// the text after an equal fixed head differs.
pub(super) fn own_time<'l>(
    formats: &HashMap<String, TimestampFormat>,
    times: &mut HeadTimes<(&'l str, DateTime<Utc>)>,
    line: &'l LogLine,
) -> Option<DateTime<Utc>> {
    line.time.or_else(|| {
        let format = formats.get(line.source.as_ref())?;
        times.time_of(
            format,
            (line.source.as_ref(), line.arrival),
            &line.bytes,
            line.arrival,
        )
    })
}

/// The time a line is evaluated at: its own time (`own`, see [`own_time`]; a line without
/// one counts and takes its arrival), judged against the wall clock: a time too far ahead
/// or behind is counted and replaced by the arrival.
pub(super) fn judge_line_time(
    metrics: &Metrics,
    bounds: &LineTimeBounds,
    formats: &HashMap<String, TimestampFormat>,
    line: &LogLine,
    own: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let format = formats.get(line.source.as_ref());
    if own.is_none() && format.is_some_and(|f| *f != TimestampFormat::Arrival) {
        metrics
            .lines_without_time
            .with_label_values(&[&line.source])
            .inc();
    }
    let Some(judged) = own.map(|t| bounds.judge(t, line.arrival)) else {
        return line.arrival;
    };
    let distrusted = match judged {
        Judged::Trusted(_) => None,
        Judged::Future(_) => Some(&metrics.lines_future),
        Judged::Ancient(_) => Some(&metrics.lines_ancient),
    };
    if let Some(counter) = distrusted {
        counter.with_label_values(&[&line.source]).inc();
    }
    judged.time()
}

/// Lines of one batch, a piece of a step: a worker copies them into one text, reads their
/// own times and finds their matches; the pipeline thread then counts them in order.
#[derive(Default)]
struct Piece<'a> {
    /// Which batch of the step the lines belong to.
    batch: usize,
    lines: &'a [LogLine],
    text: Vec<u8>,
    ranges: Vec<Range<usize>>,
    own_times: Vec<Option<DateTime<Utc>>>,
    found: Found,
}

impl Piece<'_> {
    /// The worker's part: the lines' own times, then their matches, one literal pass over
    /// each run of lines of one source ([`Matchers::find_run`], as `replay` does).
    fn find(&mut self, matchers: &mut Matchers, formats: &HashMap<String, TimestampFormat>) {
        self.text.clear();
        self.ranges.clear();
        self.own_times.clear();
        self.found.clear();
        let mut times = HeadTimes::default();
        for line in self.lines {
            let start = self.text.len();
            self.text.extend_from_slice(&line.bytes);
            self.ranges.push(start..self.text.len());
            self.text.push(b'\n');
            self.own_times.push(own_time(formats, &mut times, line));
        }
        let mut start = 0;
        while start < self.lines.len() {
            let source = &self.lines[start].source;
            let end = self.lines[start..]
                .iter()
                .position(|l| l.source != *source)
                .map_or(self.lines.len(), |n| start + n);
            matchers.find_run(
                source,
                &self.text,
                &self.ranges[start..end],
                &mut self.found,
            );
            start = end;
        }
    }
}

/// Evaluates every line of `batches` on `engine`, in order: matches are found on `workers`
/// (one thread each, this one the first's) in pieces of [`PIECE_LINES`], and counted
/// here in input order, so the outcome is the same with any number of workers. `judge`
/// gives each line's evaluation time from its own time. Returns each batch's latest time.
pub(super) fn evaluate_lines<'b>(
    workers: &mut [Matchers],
    engine: &mut Engine,
    formats: &HashMap<String, TimestampFormat>,
    batches: &'b [Batch],
    mut judge: impl FnMut(&LogLine, Option<DateTime<Utc>>) -> DateTime<Utc>,
    events: &mut Vec<IncidentEvent>,
    counted: &mut dyn FnMut(&Hit),
) -> Vec<Option<DateTime<Utc>>> {
    let mut latest = vec![None; batches.len()];
    let mut pieces = batches
        .iter()
        .enumerate()
        .flat_map(|(batch, b)| b.lines.chunks(PIECE_LINES).map(move |lines| (batch, lines)));
    in_order(
        workers,
        Piece::default,
        &mut |piece: &mut Piece<'b>| {
            let Some((batch, lines)) = pieces.next() else {
                return false;
            };
            piece.batch = batch;
            piece.lines = lines;
            true
        },
        |matchers, piece: &mut Piece| piece.find(matchers, formats),
        |piece| {
            for (i, line) in piece.lines.iter().enumerate() {
                crate::base::supervise::test_panic_point("pipeline", &line.bytes);
                let time = judge(line, piece.own_times[i]);
                let at: &mut Option<DateTime<Utc>> = &mut latest[piece.batch];
                *at = Some(at.map_or(time, |l| l.max(time)));
                engine.observe_found(line, time, piece.found.line(i), events, counted);
            }
        },
    );
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::Detector;
    use crate::engine::Stamp;
    use crate::incidents::IncidentBook;
    use crate::rules::RuleContext;
    use crate::rules::RuleSet;
    use crate::store::Store;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// An attack-heavy auth log of many sources' batches: failed and invalid logins from a
    /// pool of addresses, accepted ones, sudo failures, noise, lines without a time and
    /// lines dated far ahead.
    fn batches() -> Vec<Batch> {
        let arrival = DateTime::parse_from_rfc3339("2026-11-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut state = 7u64;
        let mut below = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut batches = Vec::new();
        let mut i = 0u64;
        for b in 0..10 {
            let source: Arc<str> = if b % 5 == 4 {
                "other".into()
            } else {
                "auth".into()
            };
            let mut lines = Vec::new();
            for _ in 0..(300 + below(900)) {
                i += 1;
                let sec = 30_000 + i / 10;
                let stamp = format!(
                    "Nov  3 {:02}:{:02}:{:02}",
                    sec / 3600 % 24,
                    sec / 60 % 60,
                    sec % 60
                );
                let ip = format!("203.0.{}.{}", below(4), below(40));
                let user = ["root", "admin", "oracle", "git"][below(4) as usize];
                let text = match below(20) {
                    0..=7 => format!(
                        "{stamp} web1 sshd[{i}]: Failed password for invalid user {user} from {ip} port {} ssh2",
                        30_000 + below(30_000)
                    ),
                    8..=10 => {
                        format!("{stamp} web1 sshd[{i}]: Invalid user {user} from {ip} port 22")
                    }
                    11 => format!(
                        "{stamp} web1 sshd[{i}]: Accepted password for {user} from {ip} port 22 ssh2"
                    ),
                    12 => format!(
                        "{stamp} web1 sudo:    {user} : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh"
                    ),
                    13 => format!("sshd[{i}]: Failed password for root from {ip} port 22 ssh2"),
                    14 => format!(
                        "Dec 24 10:00:00 web1 sshd[{i}]: Failed password for root from {ip} port 22 ssh2"
                    ),
                    _ => format!("{stamp} web1 CRON[{i}]: pam_unix(cron:session): session opened"),
                };
                lines.push(LogLine {
                    source: source.clone(),
                    path: "/var/log/auth.log".into(),
                    offset: i * 100,
                    bytes: text.into_bytes(),
                    arrival,
                    time: None,
                });
            }
            batches.push(Batch {
                lines,
                progress: None,
            });
        }
        batches
    }

    /// What an evaluation made: per incident event its kind, rule, key, count and times,
    /// the matches counted per rule, each batch's latest time and the lines judged.
    type Outcome = (
        Vec<String>,
        BTreeMap<String, u64>,
        Vec<Option<DateTime<Utc>>>,
        Vec<DateTime<Utc>>,
    );

    fn engine() -> Engine {
        static SHIPPED: std::sync::OnceLock<Arc<RuleSet>> = std::sync::OnceLock::new();
        let rules = SHIPPED
            .get_or_init(|| {
                Arc::new(
                    RuleSet::load(&["rules".into()], &RuleContext::default())
                        .unwrap_or_else(|e| panic!("{e:?}")),
                )
            })
            .clone();
        let sources = ["auth".to_string(), "other".to_string()];
        let store = Store::memory();
        let book = IncidentBook::load(&store, "test-host").unwrap();
        Engine::new(Detector::new(rules, &sources), book, Stamp::Match)
    }

    fn formats() -> HashMap<String, TimestampFormat> {
        [
            ("auth".to_string(), TimestampFormat::Syslog),
            ("other".to_string(), TimestampFormat::Syslog),
        ]
        .into_iter()
        .collect()
    }

    fn judge(line: &LogLine, own: Option<DateTime<Utc>>) -> DateTime<Utc> {
        judge_line_time(
            &Metrics::new(),
            &LineTimeBounds::default(),
            &formats(),
            line,
            own,
        )
    }

    fn outcome(
        events: Vec<IncidentEvent>,
        matched: BTreeMap<String, u64>,
        latest: Vec<Option<DateTime<Utc>>>,
        judged: Vec<DateTime<Utc>>,
    ) -> Outcome {
        let events = events
            .iter()
            .map(|e| {
                let i = &e.incident;
                format!(
                    "{:?} {} {:?} {} {} {}",
                    e.kind, i.rule, i.key, i.count, i.first_seen, i.last_seen
                )
            })
            .collect();
        (events, matched, latest, judged)
    }

    /// The daemon's step with `threads` matching workers.
    fn in_pieces(batches: &[Batch], threads: usize) -> Outcome {
        let mut engine = engine();
        let mut workers: Vec<Matchers> = (0..threads).map(|_| engine.matchers()).collect();
        let (mut events, mut matched, mut judged) = (Vec::new(), BTreeMap::new(), Vec::new());
        let latest = evaluate_lines(
            &mut workers,
            &mut engine,
            &formats(),
            batches,
            |line, own| {
                let time = judge(line, own);
                judged.push(time);
                time
            },
            &mut events,
            &mut |hit: &Hit| *matched.entry(hit.rule.id().to_string()).or_default() += 1,
        );
        outcome(events, matched, latest, judged)
    }

    /// The engine line by line, as the daemon evaluated before it matched in pieces.
    fn line_by_line(batches: &[Batch]) -> Outcome {
        let mut engine = engine();
        let (mut events, mut matched, mut judged) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut latest = Vec::new();
        for batch in batches {
            let mut last: Option<DateTime<Utc>> = None;
            for line in &batch.lines {
                let time = judge(line, own_time(&formats(), &mut HeadTimes::default(), line));
                judged.push(time);
                last = Some(last.map_or(time, |l| l.max(time)));
                engine.observe(line, time, &mut events, &mut |hit: &Hit| {
                    *matched.entry(hit.rule.id().to_string()).or_default() += 1
                });
            }
            latest.push(last);
        }
        outcome(events, matched, latest, judged)
    }

    #[test]
    fn matching_on_several_workers_counts_exactly_what_one_thread_does() {
        let batches = batches();
        let lines: usize = batches.iter().map(|b| b.lines.len()).sum();
        assert!(lines > 8 * PIECE_LINES, "many pieces: {lines} lines");
        let one = line_by_line(&batches);
        assert!(
            one.0.len() > 50 && one.1.values().sum::<u64>() > 5_000,
            "the log opens incidents and counts matches: {} events, {:?}",
            one.0.len(),
            one.1
        );
        for threads in [1, 3] {
            let found = in_pieces(&batches, threads);
            assert_eq!(found.1, one.1, "matches per rule, {threads} workers");
            assert_eq!(found.2, one.2, "latest time per batch, {threads} workers");
            assert_eq!(found.3, one.3, "line times, {threads} workers");
            assert_eq!(found.0, one.0, "incident events, {threads} workers");
        }
    }
}
