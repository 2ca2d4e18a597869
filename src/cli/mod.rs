//! Command-line entry: parses arguments and maps results to the documented exit codes
//! (0 success, 1 a finding, 2 usage or I/O error).
//!
//! Everything a person types lives under this folder, the top of the flow: argument parsing
//! here, the HTTP API client in [`client`], one file per client subcommand group. Nothing
//! below imports from here.

pub mod audit;
pub mod check;
pub mod client;
pub mod containments;
pub mod drill;
pub mod incidents;
pub mod notifications;
pub mod silences;
pub mod token;
pub mod tools;

use crate::config::DEFAULT_CONFIG_PATH;
use crate::runtime::daemon::{self, RunError};
use clap::{CommandFactory, Parser, Subcommand};
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
        #[arg(long, value_enum, default_value_t = check::CheckFormat::Text)]
        format: check::CheckFormat,
    },
    /// Dead letters: list them, re-send one (client of the HTTP API).
    Notifications(notifications::NotificationsArgs),
    /// Incidents: list, show, and work them through their lifecycle (client of the HTTP API).
    Incidents(incidents::IncidentsArgs),
    /// Containments: addresses banned by containment actions (client of the HTTP API).
    Containments(containments::ContainmentsArgs),
    /// Silences: approved exceptions to notification (client of the HTTP API).
    Silences(silences::SilencesArgs),
    /// The audit log: verify its hash chain, export evidence (offline, on a stopped store).
    Audit(audit::AuditArgs),
    /// Send a drill incident for a rule through the live response path (client of the API).
    Drill(drill::DrillArgs),
    /// Run rule test files: input lines and the incidents they must open.
    Test(crate::cli::tools::test::TestArgs),
    /// Evaluate historical logs by their own timestamps, with no store and no notifications.
    Replay(crate::cli::tools::replay::ReplayArgs),
    /// Show which rules match a line, their captures, exclusions and key.
    Explain(crate::cli::tools::explain::ExplainArgs),
    /// API tokens: create one (a random secret in a file only its owner can read).
    Token(token::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `logwarden man | man -l -`.
    Man,
}

/// Runs the CLI: parses the arguments (usage errors exit 2, `--help` exits 0) and runs the
/// subcommand, whose outcome is the exit code.
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
            Err(e) => {
                eprintln!("logwarden: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { config, format } => check::run(&config, format),
        Command::Notifications(args) => notifications::run(args),
        Command::Incidents(args) => incidents::run(args),
        Command::Silences(args) => silences::run(args),
        Command::Containments(args) => containments::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Drill(args) => drill::drill(args),
        Command::Test(args) => crate::cli::tools::test::run(args),
        Command::Replay(args) => crate::cli::tools::replay::run(args),
        Command::Explain(args) => crate::cli::tools::explain::run(args),
        Command::Token(args) => token::run(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "logwarden", &mut script);
            crate::base::output::print(&String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Man => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => {
                    crate::base::output::print(&String::from_utf8_lossy(&page));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("logwarden man: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn init_tracing() {
    crate::base::logging::init();
}
