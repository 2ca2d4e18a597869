//! `logwarden replay`: what the rules would have opened on historical logs.
//!
//! Windows run on the lines' own timestamps (a day of logs replayed in a second must not
//! flag everyone with N lines that day, the SEC/swatch failure), state lives only in
//! memory, and nothing is notified. `--against` evaluates a second rule set in the same
//! pass, so a team sees what a threshold change does before shipping it.

use super::chunks;
use super::eval::Evaluation;
use super::input::{LogReader, LogSpec};
use super::progress::Progress;
use crate::config::{DEFAULT_CONFIG_PATH, SourceConfig, absolute_clean};
use crate::detection::matcher::Design;
use crate::incidents::Incident;
use crate::sources::timestamp::TimestampFormat;
use chrono::{DateTime, SecondsFormat, Utc};
use globset::GlobBuilder;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// Lines between two progress checks.
const PROGRESS_EVERY: u64 = 1 << 16;

/// `logwarden replay` arguments.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Config file: its sources say how each log's lines carry their time.
    #[arg(long, env = "LOGWARDEN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Source for logs that no source's `paths` match (default: the only source).
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rule files or directories to replay instead of the config's rules (rule set A).
    #[arg(long = "rules", value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// A second rule set (B) to compare with A: incidents only in A, only in B, in both.
    #[arg(long, value_name = "PATH")]
    pub against: Vec<PathBuf>,
    /// Without a config (only `--rules`): how the logs' lines carry their time (syslog,
    /// rfc3339, clf, epoch or a strftime pattern).
    #[arg(long, value_name = "FORMAT", default_value = "syslog")]
    pub timestamp: String,
    /// Threads in all, this one included: the others read the logs and find matches (the
    /// gate and captures) while this one counts them in input order (and finds too when it
    /// would wait); the incidents are the same with any number. Default: the available
    /// cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// The detector's design before PCRE2 and the gate (`previous`), for benchmarks that
    /// measure both in the same run.
    #[arg(long, hide = true, value_parser = ["current", "previous"], default_value = "current")]
    pub design: String,
    /// Log files, plain or gzip-compressed.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
}

/// Runs `replay`: exit 0 with a report, 1 for invalid config or rules, 2 for unreadable
/// logs or a log no source can be chosen for.
pub fn run(args: ReplayArgs) -> ExitCode {
    let (config, rules_a) = match super::load_config_and_rules("replay", &args.config, &args.rules)
    {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let sources_config = match &config {
        Some(config) => config.sources.clone(),
        None => match implied_source(&args) {
            Ok(source) => vec![source],
            Err(message) => return usage(&message),
        },
    };
    let origin = config.as_ref().map_or("the rules alone".to_string(), |c| {
        c.path.display().to_string()
    });
    let rules_b = if args.against.is_empty() {
        None
    } else {
        match super::load_rules(config.as_ref(), &args.against) {
            Ok(rules) => Some(rules),
            Err(code) => return code,
        }
    };
    let read = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut total = 0;
    for log in &args.logs {
        let spec = match spec_for(&sources_config, &origin, log, args.source.as_deref()) {
            Ok(spec) => spec,
            Err(message) => return usage(&message),
        };
        match LogReader::open(log, &spec, read.clone()) {
            Ok(reader) => readers.push(reader),
            Err(e) => return usage(&format!("cannot read {}: {e}", log.display())),
        }
        total += std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    }
    let sources: Vec<String> = sources_config.iter().map(|s| s.name.clone()).collect();
    let design = match args.design.as_str() {
        "previous" => Design::PREVIOUS,
        _ => Design::CURRENT,
    };
    let mut a = Evaluation::with_design(rules_a, &sources, design);
    let mut b = rules_b.map(|rules| Evaluation::with_design(rules, &sources, design));
    let mut progress = Progress::new(read, total);
    let mut lines = 0u64;
    let started = Instant::now();
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let mut evaluations: Vec<&mut Evaluation> = std::iter::once(&mut a).chain(b.as_mut()).collect();
    let merged = chunks::evaluate(readers, &mut evaluations, threads, |n| {
        lines = n;
        if n.is_multiple_of(PROGRESS_EVERY) {
            progress.tick(n);
        }
    });
    progress.finish();
    let readers = match merged {
        Ok(readers) => readers,
        Err(e) => return usage(&format!("cannot read logs: {e}")),
    };
    warn_about(&mut a, b.as_mut(), &readers);
    let a = a.finish(None);
    let b = b.map(|b| b.finish(None));
    let seconds = started.elapsed().as_secs_f64();
    let rate = lines as f64 / seconds.max(1e-9);
    let stats = Stats {
        lines,
        seconds,
        rate,
    };
    match b {
        None if args.json => crate::outln!("{}", stats.json(json!({"incidents": a}))),
        None => {
            crate::out!("{}", table(&a));
            stats.print(a.len());
        }
        Some(b) => {
            let cmp = Comparison::of(a, b);
            if args.json {
                crate::outln!("{}", stats.json(cmp.json()));
            } else {
                cmp.print();
                stats.print(cmp.only_a.len() + cmp.only_b.len() + cmp.both.len());
            }
        }
    }
    ExitCode::SUCCESS
}

fn usage(message: &str) -> ExitCode {
    eprintln!("logwarden replay: {message}");
    ExitCode::from(2)
}

/// Lines read and how fast.
struct Stats {
    lines: u64,
    seconds: f64,
    rate: f64,
}

impl Stats {
    fn json(&self, rest: serde_json::Value) -> serde_json::Value {
        let mut out = json!({
            "lines": self.lines,
            "seconds": self.seconds,
            "lines_per_second": self.rate.round(),
        });
        if let (Some(out), serde_json::Value::Object(rest)) = (out.as_object_mut(), rest) {
            out.extend(rest);
        }
        out
    }

    fn print(&self, incidents: usize) {
        crate::outln!(
            "\n{incidents} incidents from {} lines in {:.2} s: {:.0} lines/s",
            self.lines,
            self.seconds,
            self.rate
        );
    }
}

/// Warnings that make a report less trustworthy, on stderr.
fn warn_about(a: &mut Evaluation, b: Option<&mut Evaluation>, readers: &[LogReader]) {
    let untimed: u64 = readers.iter().map(|r| r.untimed).sum();
    if untimed > 0 {
        eprintln!(
            "warning: {untimed} lines carried no time their source's `timestamp` format reads; each took the time of the line before it"
        );
    }
    let mut evictions = a.evictions();
    if let Some(b) = b {
        for (rule, n) in b.evictions() {
            *evictions.entry(rule).or_default() += n;
        }
    }
    for (rule, n) in evictions {
        eprintln!(
            "warning: rule {rule} reached max_keys and dropped {n} keys; it may have missed incidents"
        );
    }
}

/// How a log is read: the source whose `paths` match it (also as a rotated generation,
/// `auth.log.2.gz` for `auth.log`), else `fallback`, else the only source.
/// Without a config, the logs are one source: `--source NAME` (default `logs`) with the
/// `--timestamp` format. Rules limited to other sources do not read it.
fn implied_source(args: &ReplayArgs) -> Result<SourceConfig, String> {
    let name = args.source.clone().unwrap_or_else(|| "logs".to_string());
    let source: SourceConfig = serde_yaml::from_value(serde_yaml::Value::Mapping(
        [
            ("name".into(), name.into()),
            (
                "paths".into(),
                serde_yaml::Value::Sequence(vec!["-".into()]),
            ),
            ("timestamp".into(), args.timestamp.clone().into()),
        ]
        .into_iter()
        .collect(),
    ))
    .map_err(|e| format!("--timestamp {:?}: {e}", args.timestamp))?;
    source.time_format().validate().map_err(|e| e.to_string())?;
    Ok(source)
}

fn spec_for(
    sources: &[SourceConfig],
    origin: &str,
    log: &Path,
    fallback: Option<&str>,
) -> Result<LogSpec, String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let absolute = absolute_clean(&cwd, log);
    let source = sources
        .iter()
        .find(|s| paths_match(s, &absolute))
        .or_else(|| fallback.and_then(|name| sources.iter().find(|s| s.name == name)));
    let source = match (source, fallback) {
        (Some(s), _) => s,
        (None, Some(name)) => {
            return Err(format!("--source {name:?} is not a source of {origin}"));
        }
        (None, None) if sources.len() == 1 => &sources[0],
        (None, None) => {
            return Err(format!(
                "no source's paths match {}: say which source it is with --source NAME",
                log.display()
            ));
        }
    };
    if source.time_format() == TimestampFormat::Arrival {
        return Err(format!(
            "source {:?} reads times on arrival; a replay needs the lines' own times: set the source's `timestamp` (syslog, rfc3339, clf, epoch or a strftime pattern)",
            source.name
        ));
    }
    Ok(LogSpec {
        source: source.name.clone(),
        format: source.time_format(),
        max_line_bytes: source.max_line_bytes,
    })
}

fn paths_match(source: &SourceConfig, log: &Path) -> bool {
    let text = log.to_string_lossy();
    let name_start = text.rfind('/').map_or(0, |i| i + 1);
    // The path itself, then the path cut before each `.`, `-` or `_` of the file name.
    let mut candidates = vec![text.as_ref()];
    for (i, c) in text[name_start..].char_indices() {
        if i > 0 && matches!(c, '.' | '-' | '_') {
            candidates.push(&text[..name_start + i]);
        }
    }
    source.paths.iter().any(|pattern| {
        let Ok(glob) = GlobBuilder::new(&pattern.to_string_lossy())
            .literal_separator(true)
            .build()
        else {
            return false;
        };
        let matcher = glob.compile_matcher();
        candidates.iter().any(|c| matcher.is_match(c))
    })
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn key_text(key: &BTreeMap<String, String>) -> String {
    let fields: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", fields.join(", "))
}

/// Per rule: incidents, distinct keys, first seen and last seen.
fn table(incidents: &[Incident]) -> String {
    struct Row<'a> {
        incidents: usize,
        keys: std::collections::BTreeSet<&'a BTreeMap<String, String>>,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for i in incidents {
        let row = rows.entry(&i.rule).or_insert_with(|| Row {
            incidents: 0,
            keys: Default::default(),
            first: i.first_seen,
            last: i.last_seen,
        });
        row.incidents += 1;
        row.keys.insert(&i.key);
        row.first = row.first.min(i.first_seen);
        row.last = row.last.max(i.last_seen);
    }
    let width = rows.keys().map(|r| r.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:width$}  {:>9}  {:>6}  {:20}  {:20}\n",
        "RULE", "INCIDENTS", "KEYS", "FIRST", "LAST"
    );
    if rows.is_empty() {
        out.push_str("(no incidents)\n");
    }
    for (rule, row) in rows {
        out.push_str(&format!(
            "{rule:width$}  {:>9}  {:>6}  {:20}  {:20}\n",
            row.incidents,
            row.keys.len(),
            time(row.first),
            time(row.last)
        ));
    }
    out
}

/// "N incidents of M rules": the table below it has one row per rule.
fn count_text(incidents: &[Incident]) -> String {
    let rules: std::collections::BTreeSet<&str> =
        incidents.iter().map(|i| i.rule.as_str()).collect();
    format!(
        "{} incidents of {} rules (one row per rule)",
        incidents.len(),
        rules.len()
    )
}

/// Incidents of two rule sets over the same logs, matched by rule and key.
struct Comparison {
    only_a: Vec<Incident>,
    only_b: Vec<Incident>,
    both: Vec<(Incident, Incident)>,
}

impl Comparison {
    fn of(a: Vec<Incident>, b: Vec<Incident>) -> Self {
        let mut b_by_slot: BTreeMap<(String, BTreeMap<String, String>), Incident> = b
            .into_iter()
            .map(|i| ((i.rule.clone(), i.key.clone()), i))
            .collect();
        let mut only_a = Vec::new();
        let mut both = Vec::new();
        for i in a {
            match b_by_slot.remove(&(i.rule.clone(), i.key.clone())) {
                Some(other) => both.push((i, other)),
                None => only_a.push(i),
            }
        }
        let mut only_b: Vec<Incident> = b_by_slot.into_values().collect();
        only_b.sort_by_key(|i| Incident::number(&i.id));
        Comparison {
            only_a,
            only_b,
            both,
        }
    }

    fn json(&self) -> serde_json::Value {
        let both: Vec<serde_json::Value> = self
            .both
            .iter()
            .map(|(a, b)| json!({"a": a, "b": b}))
            .collect();
        json!({"only_in_a": self.only_a, "only_in_b": self.only_b, "in_both": both})
    }

    fn print(&self) {
        for (title, list) in [
            ("only in A (--rules)", &self.only_a),
            ("only in B (--against)", &self.only_b),
        ] {
            crate::outln!("{title}: {}", count_text(list));
            crate::out!("{}", table(list));
            for i in list {
                crate::outln!(
                    "  {} {} severity={} count={} first_seen={}",
                    i.rule,
                    key_text(&i.key),
                    i.severity,
                    i.count,
                    time(i.first_seen)
                );
            }
            crate::outln!();
        }
        let a: Vec<Incident> = self.both.iter().map(|(a, _)| a.clone()).collect();
        crate::outln!("in both: {}", count_text(&a));
        crate::out!("{}", table(&a));
        for (a, b) in &self.both {
            if (a.severity, a.count) != (b.severity, b.count) {
                crate::outln!(
                    "  {} {} A: severity={} count={}  B: severity={} count={}",
                    a.rule,
                    key_text(&a.key),
                    a.severity,
                    a.count,
                    b.severity,
                    b.count
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(paths: &[&str]) -> SourceConfig {
        serde_yaml::from_str(&format!("{{name: s, paths: {paths:?}}}")).unwrap()
    }

    #[test]
    fn a_rotated_or_compressed_generation_belongs_to_its_file_source() {
        let s = source(&["/var/log/auth.log", "/var/log/nginx/*.log"]);
        for yes in [
            "/var/log/auth.log",
            "/var/log/auth.log.1",
            "/var/log/auth.log.2.gz",
            "/var/log/auth.log-20261122.gz",
            "/var/log/nginx/access.log.3.gz",
        ] {
            assert!(paths_match(&s, Path::new(yes)), "{yes}");
        }
        for no in [
            "/var/log/syslog",
            "/tmp/auth.log",
            "/var/log/nginx/sub/access.log",
        ] {
            assert!(!paths_match(&s, Path::new(no)), "{no}");
        }
    }
}
