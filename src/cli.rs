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
    },
    /// Dead letters: list them, re-send one (client of the HTTP API).
    Notifications(crate::notification::cli::NotificationsArgs),
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
        Command::Check { config } => check(&config),
        Command::Notifications(args) => crate::notification::cli::run(args),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                println!("{p}");
            }
            return ExitCode::from(1);
        }
    };
    match RuleSet::load(&config.rules, &daemon::rule_context(&config)) {
        Ok(rules) => {
            println!(
                "ok: {} rules in {} files",
                rules.rules.len(),
                rules.files.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                println!("{p}");
            }
            ExitCode::from(1)
        }
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
