//! Command-line entry: parses arguments and maps results to the documented exit codes
//! (0 success, 1 a finding, 2 usage or I/O error).

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::daemon::{self, RunError};
use crate::rules::RuleSet;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// logwarden: turns host logs into classified, escalated, evidenced incidents.
#[derive(Parser, Debug)]
#[command(name = "logwarden", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Config file.
        #[arg(long, env = "LOGWARDEN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the config and every rule file.
    Check {
        /// Config file.
        #[arg(long, env = "LOGWARDEN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// `text` (one `path:line:col: message` per line) or `json` (one object, for tools).
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Dead letters: list them, re-send one (client of the HTTP API).
    Notifications(crate::notification::cli::NotificationsArgs),
    /// Incidents: list, show, and work them through their lifecycle (client of the HTTP API).
    Incidents(crate::lifecycle::cli::IncidentsArgs),
    /// Silences: approved exceptions to notification (client of the HTTP API).
    Silences(crate::silences::cli::SilencesArgs),
    /// The audit log: verify its hash chain, export evidence (offline, on a stopped store).
    Audit(crate::audit::cli::AuditArgs),
    /// Send a drill incident for a rule through the live response path (client of the API).
    Drill(crate::lifecycle::cli::DrillArgs),
    /// Run rule test files: input lines and the incidents they must open.
    Test(crate::tools::test::TestArgs),
    /// Evaluate historical logs by their own timestamps, with no store and no notifications.
    Replay(crate::tools::replay::ReplayArgs),
    /// Show which rules match a line, their captures, exclusions and key.
    Explain(crate::tools::explain::ExplainArgs),
}

/// Output of `check`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFormat {
    /// Lines for people.
    Text,
    /// One JSON object for tools.
    Json,
}

/// Runs the CLI.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    match cli.command {
        Command::Run { config } => match daemon::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(RunError::Invalid(problems)) => {
                for p in problems {
                    eprintln!("{p}");
                }
                ExitCode::from(1)
            }
            Err(RunError::Io(e)) => {
                eprintln!("logwarden: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { config, format } => check(&config, format),
        Command::Notifications(args) => crate::notification::cli::run(args),
        Command::Incidents(args) => crate::lifecycle::cli::run(args),
        Command::Silences(args) => crate::silences::cli::run(args),
        Command::Audit(args) => crate::audit::cli::run(args),
        Command::Drill(args) => crate::lifecycle::cli::drill(args),
        Command::Test(args) => crate::tools::test::run(args),
        Command::Replay(args) => crate::tools::replay::run(args),
        Command::Explain(args) => crate::tools::explain::run(args),
    }
}

fn check(path: &std::path::Path, format: CheckFormat) -> ExitCode {
    let config = Config::load(path);
    let loaded = config
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|config| RuleSet::load(&config.rules, &daemon::rule_context(config)));
    let (errors, mut warnings) = match &loaded {
        Ok(rules) => (Vec::new(), rules.warnings.clone()),
        Err(problems) => (problems.clone(), Vec::new()),
    };
    if let Ok(config) = &config {
        warnings.extend(crate::sources::journal::unreadable(config));
    }
    if format == CheckFormat::Json {
        let rules = loaded.as_ref().ok();
        let report = serde_json::json!({
            "ok": errors.is_empty(),
            "rules": rules.map(|r| r.rules.len()),
            "files": rules.map(|r| r.files.len()),
            "version": rules.map(|r| r.version.clone()),
            "errors": errors,
            "warnings": warnings,
        });
        println!("{report}");
    } else {
        for p in &errors {
            println!("{p}");
        }
        for w in &warnings {
            println!("warning: {w}");
        }
        if let Ok(rules) = &loaded {
            println!(
                "ok: {} rules in {} files",
                rules.rules.len(),
                rules.files.len()
            );
        }
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Log lines carry text from untrusted logs: no ANSI unless a person is watching.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
