//! `logwarden audit verify|export --state-dir DIR`: offline checks and evidence export,
//! working on a stopped daemon's store or a copy of it.

use super::{ExportFormat, Verdict};
use crate::store::Store;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `logwarden audit ...`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Audit operations.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain: OK with the record count (exit 0), or the first broken record
    /// (exit 1).
    Verify {
        /// The daemon's `state_dir` (stopped, or a copy).
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Print the records with the SOC 2 controls each is evidence for.
    Export {
        /// The daemon's `state_dir` (stopped, or a copy); while it runs, use
        /// `GET /api/v1/audit` instead.
        #[arg(long)]
        state_dir: PathBuf,
        /// `jsonl` or `csv`.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only records at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
    },
}

/// Runs an `audit` subcommand: 0 intact / exported, 1 a broken chain, 2 usage or I/O.
pub fn run(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::Verify { state_dir } => {
            let store = match open(&state_dir) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            match super::verify(&store) {
                Ok(Verdict::Intact { count, head }) => {
                    crate::outln!("OK: {count} audit records, chain intact (head {head})");
                    ExitCode::SUCCESS
                }
                Ok(Verdict::Broken {
                    position,
                    seq,
                    reason,
                }) => {
                    let seq = seq.map_or_else(|| "?".into(), |s| s.to_string());
                    crate::outln!("BROKEN: record {position} (seq {seq}): {reason}");
                    ExitCode::from(1)
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        AuditCommand::Export {
            state_dir,
            format,
            since,
            until,
        } => {
            let parse = |t: Option<String>| t.as_deref().map(super::parse_time).transpose();
            let (since, until) = match (parse(since), parse(until)) {
                (Ok(s), Ok(u)) => (s, u),
                (Err(e), _) | (_, Err(e)) => return fail(&e),
            };
            let store = match open(&state_dir) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            let exported = super::records(&store, since, until).and_then(|records| {
                let uids = crate::incidents::stored::uids(
                    &store,
                    records.iter().filter_map(|r| r.incident.as_deref()),
                )?;
                Ok(super::render(&records, &uids, format))
            });
            match exported {
                Ok(text) => {
                    crate::output::print(&text);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

/// Opens an existing store; never creates one (a typo'd directory is an error, not an
/// empty, "intact" chain). A running daemon's store is refused with a clear message.
fn open(dir: &Path) -> Result<Store, String> {
    if !dir.join("db").exists() {
        return Err(format!("{} holds no logwarden store", dir.display()));
    }
    Store::open(dir).map_err(|e| e.to_string())
}

fn fail(message: &str) -> ExitCode {
    eprintln!("logwarden: {message}");
    ExitCode::from(2)
}
