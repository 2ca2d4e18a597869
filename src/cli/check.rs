//! `logwarden check`: every problem of the config and all its rule files in one run, each at
//! its `path:line:col`, plus warnings about this host (log files that match nothing, token and
//! secret files that are missing) that do not stop the daemon from starting.

use crate::base::diag::{Diagnostic, Position};
use crate::config::{Config, ReceiverConfig};
use crate::rules::RuleSet;
use crate::sources::discover::PathSet;
use std::path::Path;
use std::process::ExitCode;

/// How `check` prints its findings.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFormat {
    /// Lines for people.
    Text,
    /// One JSON object for tools.
    Json,
}

/// Runs `check` on a config file: exit 0 when it and its rules load, 1 otherwise.
pub fn run(path: &Path, format: CheckFormat) -> ExitCode {
    let (config, mut errors) = Config::load_all(path);
    let mut warnings = Vec::new();
    let mut rules = None;
    // A config with errors still names its rule files: check them in the same run.
    if let Some(config) = &config {
        match RuleSet::load(&config.rules, &crate::runtime::daemon::rule_context(config)) {
            Ok(set) => {
                warnings.extend(set.warnings.iter().cloned());
                errors.extend(crate::config::never_contain_lists(config, &set.lists));
                rules = Some(set);
            }
            Err(problems) => errors.extend(problems.into_iter().map(|p| at_rules_entry(config, p))),
        }
        warnings.extend(host_warnings(config));
        warnings.extend(crate::sources::journal::unreadable(config));
    }
    if format == CheckFormat::Json {
        let report = serde_json::json!({
            "ok": errors.is_empty(),
            "rules": rules.as_ref().map(|r| r.rules.len()),
            "files": rules.as_ref().map(|r| r.files.len()),
            "version": rules.as_ref().map(|r| r.version.clone()),
            "errors": errors,
            "warnings": warnings,
        });
        crate::base::output::print(&format!("{report}\n"));
    } else {
        let mut out = String::new();
        for p in &errors {
            out.push_str(&format!("{p}\n"));
        }
        for w in &warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if let (Some(rules), true) = (&rules, errors.is_empty()) {
            out.push_str(&format!(
                "ok: {} rules in {} files\n",
                rules.rules.len(),
                rules.files.len()
            ));
        }
        crate::base::output::print(&out);
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A rules path that cannot be read is the config's mistake: placed at its `rules:` entry.
fn at_rules_entry(config: &Config, problem: Diagnostic) -> Diagnostic {
    let Some(i) = config.rules.iter().position(|r| *r == problem.path) else {
        return problem;
    };
    if problem.line != 0 {
        return problem;
    }
    let at = std::fs::read(&config.path)
        .ok()
        .and_then(|b| crate::base::yaml::parse(&b).ok())
        .and_then(|root| root.get("rules").map(|r| r.items().get(i).unwrap_or(r).at))
        .unwrap_or(Position { line: 1, col: 1 });
    Diagnostic::at(
        &config.path,
        at,
        format!("{}: {}", problem.path.display(), problem.message),
    )
}

/// What is valid but will not work on this host as it is now: sources whose paths match no
/// file, token and secret files that cannot be read, environment variables that are unset.
pub fn host_warnings(config: &Config) -> Vec<Diagnostic> {
    let root = std::fs::read(&config.path)
        .ok()
        .and_then(|bytes| crate::base::yaml::parse(&bytes).ok());
    // The place of `section[i].key` (or of its `j`-th item), else of the item, else 1:1.
    let place = |section: &[&str], i: usize, key: &str, j: Option<usize>| -> Position {
        let mut node = root.as_ref();
        for s in section {
            node = node.and_then(|n| n.get(s));
        }
        let item = node.and_then(|n| n.items().get(i));
        let value = item.and_then(|n| n.get(key));
        let at = match j {
            Some(j) => value.and_then(|v| v.items().get(j)),
            None => value,
        };
        at.or(value)
            .or(item)
            .map_or(Position { line: 1, col: 1 }, |n| n.at)
    };
    let path = config.path.as_path();
    let mut out = Vec::new();
    for (i, source) in config.sources.iter().enumerate() {
        for (j, pattern) in source.paths.iter().enumerate() {
            if pattern.as_os_str() == "-" {
                continue;
            }
            let Ok(set) = PathSet::new(std::slice::from_ref(pattern), &source.exclude) else {
                continue;
            };
            if set.expand().is_empty() {
                out.push(Diagnostic::at(
                    path,
                    place(&["sources"], i, "paths", Some(j)),
                    format!(
                        "source {:?}: no file matches {} on this host",
                        source.name,
                        pattern.display()
                    ),
                ));
            }
        }
    }
    let mut secret = |at: Position, what: String, file: Option<&Path>, env: Option<&str>| {
        if let Some(file) = file
            && let Err(e) = std::fs::metadata(file).and_then(|_| std::fs::File::open(file))
        {
            out.push(Diagnostic::at(
                path,
                at,
                format!("{what}: cannot read {}: {e}", file.display()),
            ));
        }
        if let Some(var) = env
            && std::env::var_os(var).is_none()
        {
            out.push(Diagnostic::at(
                path,
                at,
                format!("{what}: environment variable {var} is not set"),
            ));
        }
    };
    for (i, token) in config.api.tokens.iter().enumerate() {
        let key = if token.token_file.is_some() {
            "token_file"
        } else {
            "token_env"
        };
        secret(
            place(&["api", "tokens"], i, key, None),
            format!("token {:?}", token.name),
            token.token_file.as_deref(),
            token.token_env.as_deref(),
        );
    }
    for (i, receiver) in config.receivers.iter().enumerate() {
        let ReceiverConfig::Webhook(w) = receiver else {
            continue;
        };
        for (file_key, env_key, file, env) in [
            ("secret_file", "secret_env", &w.secret_file, &w.secret_env),
            (
                "routing_key_file",
                "routing_key_env",
                &w.routing_key_file,
                &w.routing_key_env,
            ),
        ] {
            let key = if file.is_some() { file_key } else { env_key };
            secret(
                place(&["receivers"], i, key, None),
                format!("receiver {:?}", w.name),
                file.as_deref(),
                env.as_deref(),
            );
        }
    }
    out
}
