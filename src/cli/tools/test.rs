//! `logwarden test`: rule test files — input lines and the incidents they must open.
//!
//! A test's `expect` is exact: these incidents and no others (`expect: []` is expected
//! silence). Lines run through the shared [`Evaluation`] on their own times, or on a
//! `start` time plus offsets, and the clock runs to the last line (or `until`) so absence
//! rules can fire. A failure prints an expected/got diff per test and exits 1.

mod spec;

use super::eval::Evaluation;
use crate::base::diag::{Diagnostic, Position, YamlLocator};
use crate::base::duration::HumanDuration;
use crate::detection::Key;
use crate::incidents::Incident;
use crate::rules::{RuleContext, RuleSet, Severity};
use crate::sources::LogLine;
use crate::sources::timestamp::TimestampFormat;
use chrono::{DateTime, Local, SecondsFormat, TimeZone, Utc};
use spec::{TestCase, TestFile};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Source name lines of a test belong to unless the test says `source:`.
pub const DEFAULT_SOURCE: &str = "test";

/// `logwarden test` arguments.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Rule test files (YAML).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// What the tests of all files came to.
#[derive(Debug, Default)]
struct Totals {
    files: usize,
    tests: usize,
    failed: usize,
    invalid: bool,
    unreadable: bool,
}

/// Runs `test`: exit 0 when every test passes, 1 on a failed test or an invalid file, 2
/// when a file cannot be read.
pub fn run(args: TestArgs) -> ExitCode {
    let mut totals = Totals::default();
    for file in &args.files {
        run_file(file, &mut totals);
    }
    if totals.unreadable {
        return ExitCode::from(2);
    }
    if totals.failed > 0 || totals.invalid {
        crate::outln!(
            "FAILED: {} of {} tests in {} files failed{}",
            totals.failed,
            totals.tests,
            totals.files,
            if totals.invalid {
                " (and some files are invalid)"
            } else {
                ""
            }
        );
        return ExitCode::from(1);
    }
    crate::outln!(
        "ok: {} tests in {} files passed",
        totals.tests,
        totals.files
    );
    ExitCode::SUCCESS
}

fn run_file(path: &Path, totals: &mut Totals) {
    totals.files += 1;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("logwarden test: cannot read {}: {e}", path.display());
            totals.unreadable = true;
            return;
        }
    };
    let file: TestFile = match serde_yaml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            crate::outln!("{}", Diagnostic::from_yaml(path, &e));
            totals.invalid = true;
            return;
        }
    };
    let loc = YamlLocator::new(&text);
    let base = path.parent().unwrap_or(Path::new("."));
    let rule_files: Vec<PathBuf> = file.rule_files.iter().map(|f| base.join(f)).collect();
    let rules = match RuleSet::load(&rule_files, &RuleContext::default()) {
        Ok(rules) => Arc::new(rules),
        Err(problems) => {
            for p in problems {
                crate::outln!("{p}");
            }
            totals.invalid = true;
            return;
        }
    };
    let mut failed = 0;
    for (i, case) in file.tests.iter().enumerate() {
        totals.tests += 1;
        let at = loc.item("tests", i);
        let ctx = CaseContext {
            path,
            at,
            loc: &loc,
            format: case
                .timestamp
                .clone()
                .or(file.timestamp.clone())
                .unwrap_or(TimestampFormat::Syslog),
            reference: reference(case.year.or(file.year)),
            source: case
                .source
                .clone()
                .or(file.source.clone())
                .unwrap_or_else(|| DEFAULT_SOURCE.into()),
        };
        match run_case(case, &ctx, &rules) {
            Ok(diff) if diff.is_empty() => {}
            Ok(diff) => {
                failed += 1;
                crate::outln!(
                    "FAIL {}:{}:{}: {}",
                    path.display(),
                    at.line,
                    at.col,
                    case.name
                );
                crate::outln!("  --- expected\n  +++ got");
                for line in diff {
                    crate::outln!("  {line}");
                }
            }
            Err(problems) => {
                failed += 1;
                for p in problems {
                    crate::outln!("{p}");
                }
            }
        }
    }
    totals.failed += failed;
    let passed = file.tests.len() - failed;
    crate::outln!(
        "{}: {passed} of {} tests passed",
        path.display(),
        file.tests.len()
    );
}

/// Year reference for formats without a year: the last second of `year` (local time), so
/// every date of that year reads as that year; without `year`, now.
fn reference(year: Option<i32>) -> DateTime<Utc> {
    year.and_then(|y| {
        Local
            .with_ymd_and_hms(y, 12, 31, 23, 59, 59)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
    .unwrap_or_else(Utc::now)
}

/// What a test case is read with.
struct CaseContext<'a> {
    path: &'a Path,
    at: Position,
    loc: &'a YamlLocator<'a>,
    format: TimestampFormat,
    reference: DateTime<Utc>,
    source: String,
}

impl CaseContext<'_> {
    fn problem(&self, key: &str, name: &str, message: String) -> Diagnostic {
        Diagnostic::at(
            self.path,
            self.loc.key_in_block(self.at, key),
            format!("test {name:?}: {message}"),
        )
    }

    /// A time written as RFC 3339 or like the test's lines (`Nov 22 10:00:01`).
    fn time(&self, text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| self.format.parse(text.trim().as_bytes(), self.reference))
    }

    /// An optional time field (`start`, `opened_at`): its time, or a problem at `key` when
    /// it is given but unreadable.
    fn optional_time(
        &self,
        text: Option<&String>,
        key: &str,
        field: &str,
        name: &str,
        problems: &mut Vec<Diagnostic>,
    ) -> Option<DateTime<Utc>> {
        let text = text?;
        let time = self.time(text);
        if time.is_none() {
            problems.push(self.problem(
                key,
                name,
                format!("{field} {text:?} is neither RFC 3339 nor a time the lines' format reads"),
            ));
        }
        time
    }
}

/// Runs one test; `Ok` holds the diff lines (empty when it passed). Every problem of the
/// case's times and expectations is collected before any line is evaluated, so one run
/// names them all.
fn run_case(
    case: &TestCase,
    ctx: &CaseContext<'_>,
    rules: &Arc<RuleSet>,
) -> Result<Vec<String>, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    if let Err(e) = ctx.format.validate() {
        problems.push(ctx.problem("timestamp", &case.name, e.to_string()));
    }
    let start = ctx.optional_time(
        case.start.as_ref(),
        "start",
        "start",
        &case.name,
        &mut problems,
    );
    let timed = line_times(case, ctx, start, &mut problems);
    let last = timed.last().map(|&(_, time)| time);
    let until = until_time(case, ctx, last.or(start), &mut problems);
    let expected = expectations(case, ctx, rules, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut evaluation = Evaluation::new(rules.clone(), std::slice::from_ref(&ctx.source));
    if let Some(start) = start {
        evaluation.clock_to(start);
    }
    let source: Arc<str> = ctx.source.as_str().into();
    let path: Arc<str> = ctx.path.display().to_string().into();
    for (n, time) in timed {
        let line = LogLine {
            source: source.clone(),
            path: path.clone(),
            offset: n as u64,
            bytes: case.lines[n].text.as_bytes().to_vec(),
            arrival: time,
            time: None,
        };
        evaluation.observe(&line, time);
    }
    let got = evaluation.finish(until);
    Ok(diff(&expected, &got))
}

/// The time of every line the case feeds (each repeat its own), with its index in
/// `case.lines`: `at:` from `start`, `after:` from the line before, else the line's own
/// time in the case's format (or the line before's). A line with no time is a problem.
fn line_times(
    case: &TestCase,
    ctx: &CaseContext<'_>,
    start: Option<DateTime<Utc>>,
    problems: &mut Vec<Diagnostic>,
) -> Vec<(usize, DateTime<Utc>)> {
    let mut timed = Vec::new();
    let mut previous: Option<DateTime<Utc>> = None;
    for (n, spec) in case.lines.iter().enumerate() {
        let base = if let Some(at) = spec.at {
            start.map(|s| s + at.0)
        } else if let Some(after) = spec.after {
            previous.or(start).map(|p| p + after.0)
        } else {
            ctx.format
                .parse(spec.text.as_bytes(), ctx.reference)
                .or(previous)
                .or(start)
        };
        let Some(base) = base else {
            problems.push(ctx.problem(
                "lines",
                &case.name,
                format!(
                    "line {} has no time: it carries none the `{}` format reads, and the test has no `start` (give one, and `at:` or `after:` offsets)",
                    n + 1,
                    format_name(&ctx.format)
                ),
            ));
            continue;
        };
        for r in 0..spec.repeat {
            let time = base + spec.every.map_or(std::time::Duration::ZERO, |e| e.0 * r);
            timed.push((n, time));
            previous = Some(time);
        }
    }
    timed
}

/// The case's `until`: a duration after `last` (the last line's time, or `start`), or a
/// time; a problem when it is neither.
fn until_time(
    case: &TestCase,
    ctx: &CaseContext<'_>,
    last: Option<DateTime<Utc>>,
    problems: &mut Vec<Diagnostic>,
) -> Option<DateTime<Utc>> {
    match &case.until {
        None => None,
        Some(text) => match HumanDuration::parse(text) {
            Ok(d) => last.map(|t| t + d.0),
            Err(_) => ctx.time(text),
        }
        .or_else(|| {
            problems.push(ctx.problem(
                "until",
                &case.name,
                format!("until {text:?} is neither a duration after the last line, RFC 3339, nor a time the lines' format reads"),
            ));
            None
        }),
    }
}

/// The case's expectations with their times read; an expectation naming a missing rule,
/// or keyed on other fields than the rule's `group_by`, is a problem.
fn expectations<'a>(
    case: &'a TestCase,
    ctx: &CaseContext<'_>,
    rules: &RuleSet,
    problems: &mut Vec<Diagnostic>,
) -> Vec<Want<'a>> {
    let mut expected = Vec::new();
    for e in &case.expect {
        let Some(rule) = rules.rule(&e.rule) else {
            problems.push(ctx.problem(
                "expect",
                &case.name,
                format!("expect names rule {:?}, which the rule files lack", e.rule),
            ));
            continue;
        };
        let fields: Vec<&String> = e.key.keys().collect();
        let mut group_by: Vec<&String> = rule.def.group_by.iter().collect();
        group_by.sort();
        if fields != group_by {
            problems.push(ctx.problem(
                "expect",
                &case.name,
                format!(
                    "the key of rule {:?} has the fields {group_by:?} (its group_by), the expectation gives {fields:?}",
                    e.rule
                ),
            ));
        }
        let opened_at = ctx.optional_time(
            e.opened_at.as_ref(),
            "expect",
            "opened_at",
            &case.name,
            problems,
        );
        expected.push(Want {
            rule: &e.rule,
            key: &e.key,
            severity: e.severity,
            count: e.count,
            opened_at,
            summary: e.summary.as_deref(),
        });
    }
    expected
}

/// A format as written in YAML.
fn format_name(format: &TimestampFormat) -> &str {
    match format {
        TimestampFormat::Arrival => "arrival",
        TimestampFormat::Syslog => "syslog",
        TimestampFormat::Rfc3339 => "rfc3339",
        TimestampFormat::Clf => "clf",
        TimestampFormat::Epoch => "epoch",
        TimestampFormat::Pattern(p) => p,
    }
}

/// An expectation, with its times read.
struct Want<'a> {
    rule: &'a str,
    key: &'a Key,
    severity: Option<Severity>,
    count: Option<u64>,
    opened_at: Option<DateTime<Utc>>,
    summary: Option<&'a str>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn key_text(key: &Key) -> String {
    let fields: Vec<String> = key.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", fields.join(", "))
}

/// The fields an expectation checks, from the expectation or from an incident.
fn describe(rule: &str, key: &Key, fields: &[(&str, String)]) -> String {
    let mut out = format!("{rule} {}", key_text(key));
    for (name, value) in fields {
        out.push_str(&format!(" {name}: {value}"));
    }
    out
}

/// `-` lines for what was expected and `+` lines for what opened instead; empty when the
/// incidents are exactly the expected ones.
fn diff(expected: &[Want<'_>], got: &[Incident]) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = vec![false; got.len()];
    for want in expected {
        let found = got
            .iter()
            .enumerate()
            .find(|(i, g)| !used[*i] && g.rule == want.rule && &g.key == want.key);
        let mut wanted: Vec<(&str, String)> = Vec::new();
        let mut actual: Vec<(&str, String)> = Vec::new();
        let mut push = |name, w: Option<String>, g: Option<String>| {
            if let Some(w) = w {
                wanted.push((name, w));
                actual.push((name, g.unwrap_or_default()));
            }
        };
        let g = found.map(|(_, g)| g);
        push(
            "severity",
            want.severity.map(|s| s.to_string()),
            g.map(|g| g.severity.to_string()),
        );
        push(
            "count",
            want.count.map(|c| c.to_string()),
            g.map(|g| g.count.to_string()),
        );
        push(
            "opened_at",
            want.opened_at.map(time),
            g.map(|g| time(g.opened_at)),
        );
        push(
            "summary",
            want.summary.map(|s| format!("{s:?}")),
            g.map(|g| format!("{:?}", g.summary)),
        );
        match found {
            None => out.push(format!(
                "- {}   (expected, not opened)",
                describe(want.rule, want.key, &wanted)
            )),
            Some((i, g)) => {
                used[i] = true;
                if wanted != actual {
                    out.push(format!("- {}", describe(want.rule, want.key, &wanted)));
                    out.push(format!("+ {}", describe(&g.rule, &g.key, &actual)));
                }
            }
        }
    }
    for (g, _) in got.iter().zip(&used).filter(|(_, used)| !**used) {
        let fields = [
            ("severity", g.severity.to_string()),
            ("count", g.count.to_string()),
            ("opened_at", time(g.opened_at)),
        ];
        out.push(format!(
            "+ {}   (opened, not expected)",
            describe(&g.rule, &g.key, &fields)
        ));
    }
    out
}
