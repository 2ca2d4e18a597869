//! `logwarden audit verify|export|pack --state-dir DIR`: offline checks, evidence export and
//! evidence packs, working on a stopped daemon's store or a copy of it.

use super::{ExportFormat, Verdict};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
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
        /// `jsonl` or `csv` (audit records), or `population` (one CSV row per incident
        /// opened in the period, with lifecycle times, actors and SLA outcomes).
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Config file: its `slas:` judge the population export (read for that format only).
        #[arg(long, env = "LOGWARDEN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only records at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
    },
    /// Write one incident's evidence pack: a ZIP of its record, timeline, evidence lines and
    /// audit records, with a manifest of their SHA-256 sums and the chain head, signed with
    /// `audit.signing_key_file` (see README, "Evidence packs", to verify one).
    Pack {
        /// The incident's id (`INC-7`) or uid (`web1/INC-7`).
        id: String,
        /// Where to write the ZIP.
        #[arg(long)]
        out: PathBuf,
        /// The daemon's `state_dir` (stopped, or a copy).
        #[arg(long)]
        state_dir: PathBuf,
        /// Config file: its `audit.signing_key_file` signs the manifest.
        #[arg(long, env = "LOGWARDEN_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
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
            config,
            since,
            until,
        } => {
            let parse = |t: Option<String>| t.as_deref().map(super::parse_time).transpose();
            let (since, until) = match (parse(since), parse(until)) {
                (Ok(s), Ok(u)) => (s, u),
                (Err(e), _) | (_, Err(e)) => return fail(&e),
            };
            let slas = match format {
                ExportFormat::Population => match load_config(&config) {
                    Ok(config) => config.slas,
                    Err(e) => return fail(&e),
                },
                _ => Default::default(),
            };
            let store = match open(&state_dir) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            match super::export(&store, since, until, format, &slas, chrono::Utc::now()) {
                Ok(text) => {
                    crate::output::print(&text);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        AuditCommand::Pack {
            id,
            out,
            state_dir,
            config,
        } => pack(&id, &out, &state_dir, &config),
    }
}

/// `audit pack`: loads the key before touching the store, writes the ZIP next to `out`
/// and renames it into place, so a failed run leaves no half-written pack.
fn pack(id: &str, out: &Path, state_dir: &Path, config: &Path) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let Some(key_file) = &config.audit.signing_key_file else {
        return fail(&format!(
            "{} sets no audit.signing_key_file: an evidence pack must be signed \
             (make a key with `openssl genpkey -algorithm ed25519 -out FILE`)",
            config.path.display()
        ));
    };
    let signer = match super::signing::HeadSigner::load(key_file) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let store = match open(state_dir) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let bytes = match super::pack::build(&store, id, &signer, chrono::Utc::now()) {
        Ok(b) => b,
        Err(e @ super::pack::PackError::BrokenChain { .. }) => {
            eprintln!("logwarden: {e}");
            return ExitCode::from(1);
        }
        Err(e) => return fail(&e.to_string()),
    };
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = std::fs::write(&partial, &bytes).and_then(|()| std::fs::rename(&partial, out));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return fail(&format!("cannot write {}: {e}", out.display()));
    }
    crate::outln!(
        "wrote {} ({} bytes), signed by public key {}",
        out.display(),
        bytes.len(),
        signer.public_key_base64()
    );
    ExitCode::SUCCESS
}

/// Reads the config, its problems as one message.
fn load_config(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        lines.join("\n")
    })
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
