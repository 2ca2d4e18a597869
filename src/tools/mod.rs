//! Tools for the people who tune rules: `test` (assertions on rule files), `replay`
//! (historical logs by their own timestamps) and `explain` (why a line counts or not).
//!
//! `test` and `replay` evaluate through [`eval::Evaluation`], which drives the daemon's own
//! detector and incident book with the lines' times as the clock: what they report is what
//! the daemon would have done, with no store and no notifications.

pub mod eval;
pub mod explain;
pub mod input;
pub mod progress;
pub mod replay;
pub mod test;

use crate::config::Config;
use crate::daemon::rule_context;
use crate::diag::Diagnostic;
use crate::rules::RuleSet;
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
/// config's own. Problems are printed; the error is the exit code to end with.
fn load_config_and_rules(
    config: &Path,
    rules: &[PathBuf],
) -> Result<(Config, Arc<RuleSet>), ExitCode> {
    let config = Config::load(config).map_err(|p| invalid(&p))?;
    let rules = load_rules(&config, rules)?;
    Ok((config, rules))
}

/// Loads a rule set under the config's names (sources, escalation policies).
fn load_rules(config: &Config, rules: &[PathBuf]) -> Result<Arc<RuleSet>, ExitCode> {
    let paths = if rules.is_empty() {
        config.rules.clone()
    } else {
        rules.to_vec()
    };
    RuleSet::load(&paths, &rule_context(config))
        .map(Arc::new)
        .map_err(|p| invalid(&p))
}
