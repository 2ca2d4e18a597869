//! `logwarden explain`: which rules a line matches, what they capture, what stopped them
//! (`ignore`, `allow.FIELD`, `only.FIELD`) and the key the line would count under.
//!
//! It reads captures and exclusions through the same functions as the detector, so what it
//! says is what the daemon does.

use crate::config::DEFAULT_CONFIG_PATH;
use crate::detection::{Key, read_match};
use crate::rules::RuleSet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

/// `logwarden explain` arguments.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// Config file naming the rules.
    #[arg(long, env = "LOGWARDEN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Rule files or directories to use instead of the config's rules.
    #[arg(long = "rules", value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Only the rules that read this source.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Print `{"matches": [...]}` (one object per line read).
    #[arg(long)]
    pub json: bool,
    /// The log line; `-` or nothing reads lines from stdin, one explanation each.
    #[arg(value_name = "LINE")]
    pub line: Option<String>,
}

/// One rule pattern that matched the line.
#[derive(Debug, Serialize, PartialEq)]
pub struct Match {
    /// Id of the rule whose pattern matched.
    pub rule: String,
    /// Sequence step (1-based) that matched; absent for other kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// Every named capture of the match, by name: what `allow`, `only` and the summary see.
    pub captures: BTreeMap<String, String>,
    /// Key the line counts under.
    pub key: Key,
    /// `ignore`, `allow.FIELD` or `only.FIELD`; `None` when the line is counted.
    pub excluded_by: Option<String>,
}

/// Every rule pattern in `rules` (of `source`, when given) that matches `line`.
pub fn explain(rules: &RuleSet, source: Option<&str>, line: &[u8]) -> Vec<Match> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        if source.is_some_and(|s| !rule.applies_to(s)) {
            continue;
        }
        let sequence = rule.def.sequence.is_some();
        for i in 0..rule.patterns.len() {
            let Some((captures, key)) = read_match(rule, i, line) else {
                continue;
            };
            out.push(Match {
                rule: rule.id().to_string(),
                step: sequence.then_some(i + 1),
                key: key.to_map(),
                excluded_by: rule
                    .excluded_by(line, |name| captures.get(name))
                    .map(|e| e.to_string()),
                captures: captures.to_map(),
            });
        }
    }
    out
}

/// Runs `explain`: exit 0 with the explanation, 1 for invalid config or rules, 2 when stdin
/// cannot be read.
pub fn run(args: ExplainArgs) -> ExitCode {
    let (_, rules) = match super::load_config_and_rules("explain", &args.config, &args.rules) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let source = args.source.as_deref();
    match args.line.as_deref() {
        Some(line) if line != "-" => print(&rules, source, line.as_bytes(), None, args.json),
        _ => {
            for (i, line) in std::io::stdin().lock().split(b'\n').enumerate() {
                match line {
                    Ok(mut line) => {
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                        print(&rules, source, &line, Some(i + 1), args.json);
                    }
                    Err(e) => {
                        eprintln!("logwarden explain: cannot read stdin: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Prints the explanation of one line; `number` (1-based) labels lines read from stdin, so
/// each explanation says which line it belongs to.
fn print(rules: &RuleSet, source: Option<&str>, line: &[u8], number: Option<usize>, json: bool) {
    let matches = explain(rules, source, line);
    if json {
        let mut report = serde_json::json!({ "matches": matches });
        if let Some(n) = number {
            report["line"] = n.into();
        }
        crate::outln!("{report}");
        return;
    }
    if let Some(n) = number {
        let text = String::from_utf8_lossy(line);
        let shown: String = text.chars().take(100).collect();
        let more = if shown.len() < text.len() { "…" } else { "" };
        crate::outln!("line {n}: {}{more}", shown.escape_debug());
    }
    if matches.is_empty() {
        crate::outln!("no rule matches this line");
        return;
    }
    for m in &matches {
        let rule = rules.rule(&m.rule).expect("matched rules exist");
        let step = m.step.map(|s| format!(" (step {s})")).unwrap_or_default();
        match &m.excluded_by {
            None if m.key.is_empty() => {
                crate::outln!(
                    "{}{step}: counted (no group_by: one key for the whole rule)",
                    m.rule
                )
            }
            None => crate::outln!("{}{step}: counted under key {}", m.rule, fields(&m.key)),
            Some(why) => crate::outln!("{}{step}: NOT counted: stopped by {why}", m.rule),
        }
        crate::outln!("  captures: {}", fields(&m.captures));
        if !rule.def.sources.is_empty() {
            crate::outln!("  reads only sources: {}", rule.def.sources.join(", "));
        }
    }
}

fn fields(map: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}
