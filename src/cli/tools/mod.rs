//! Tools for the people who tune rules: `test` (assertions on rule files), `replay`
//! (historical logs by their own timestamps) and `explain` (why a line counts or not).
//!
//! `test` and `replay` evaluate through [`eval::Evaluation`], which drives the daemon's own
//! detector and incident book with the lines' times as the clock: what they report is what
//! the daemon would have done, with no store and no notifications.

pub mod chunks;
pub mod eval;
pub mod explain;
pub mod input;
pub mod progress;
pub mod replay;
pub mod test;

use crate::base::diag::Diagnostic;
use crate::config::Config;
use crate::rules::RuleSet;
use crate::runtime::daemon::rule_context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Prints diagnostics one per line on stderr and gives the "finding" exit code, the way
/// `check` and `run` report invalid files.
fn invalid(problems: &[Diagnostic]) -> ExitCode {
    for p in problems {
        eprintln!("{p}");
    }
    ExitCode::from(1)
}

/// Loads the config and a rule set: `rules` when given (files or directories), else the
/// config's own. With `rules` given, a config file that does not exist is no error: the tools
/// then run on the rules alone (no source or policy names to check them against). Problems
/// are printed; the error is the exit code to end with (1 invalid files, 2 unreadable config).
fn load_config_and_rules(
    tool: &str,
    config: &Path,
    rules: &[PathBuf],
) -> Result<(Option<Config>, Arc<RuleSet>), ExitCode> {
    if !rules.is_empty() && !config.exists() {
        let rules = RuleSet::load(rules, &Default::default())
            .map(Arc::new)
            .map_err(|p| invalid(&p))?;
        return Ok((None, rules));
    }
    if let Err(e) = std::fs::metadata(config) {
        eprintln!(
            "logwarden {tool}: cannot read config {}: {e} (give --config FILE, or --rules PATH to use rule files alone)",
            config.display()
        );
        return Err(ExitCode::from(2));
    }
    let config = Config::load(config).map_err(|p| invalid(&p))?;
    let rules = load_rules(Some(&config), rules)?;
    Ok((Some(config), rules))
}

/// Loads a rule set under the config's names (sources, escalation policies), if any.
fn load_rules(config: Option<&Config>, rules: &[PathBuf]) -> Result<Arc<RuleSet>, ExitCode> {
    let (paths, ctx) = match config {
        Some(config) if rules.is_empty() => (config.rules.clone(), rule_context(config)),
        Some(config) => (rules.to_vec(), rule_context(config)),
        None => (rules.to_vec(), Default::default()),
    };
    RuleSet::load(&paths, &ctx)
        .map(Arc::new)
        .map_err(|p| invalid(&p))
}
