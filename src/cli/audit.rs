//! `logwarden audit verify|export|pack --state-dir DIR`: offline checks, evidence export and
//! evidence packs, working on a stopped daemon's store or a copy of it; `audit pubkey` (the
//! signing key's public half) and `audit accept-discrepancy` (a client of the running
//! daemon's API).

use crate::audit::{ExportFormat, Verdict};
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
    /// With `--against`, also check that the chain reaches a saved signed head (not cut,
    /// not rewritten). Stored incidents whose state their audit records do not explain
    /// (closed or deleted outside the API) are reported too.
    Verify {
        /// The daemon's `state_dir` (stopped, or a copy).
        #[arg(long)]
        state_dir: PathBuf,
        /// A saved signed head: the JSON of `GET /api/v1/audit/head`, or an `audit_head`
        /// notification a receiver kept.
        #[arg(long, value_name = "HEAD_FILE")]
        against: Option<PathBuf>,
        /// The Ed25519 public key (base64, as `logwarden audit pubkey` prints it) the head
        /// must be signed with; default: the key of the config's `audit.signing_key_file`.
        #[arg(long)]
        public_key: Option<String>,
        /// Config naming the signing key (used with `--against` when no `--public-key`).
        #[arg(long, env = "LOGWARDEN_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the public key chain heads and evidence packs are signed with (base64 raw
    /// Ed25519; `--pem` for `openssl pkeyutl -verify -pubin`).
    Pubkey {
        /// Config whose `audit.signing_key_file` holds the key.
        #[arg(long, env = "LOGWARDEN_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// PEM (SubjectPublicKeyInfo) instead of base64.
        #[arg(long)]
        pem: bool,
    },
    /// Accept the audit chain discrepancy the running daemon found on start (admin; client
    /// of the HTTP API): recorded with your reason, `/readyz` clears, heads are signed again.
    AcceptDiscrepancy {
        /// Why the shorter or different chain is accepted (e.g. the incident ticket).
        #[arg(long)]
        reason: String,
        /// Where the API is and who is asking.
        #[command(flatten)]
        api: super::client::ApiArgs,
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
        AuditCommand::Verify {
            state_dir,
            against,
            public_key,
            config,
        } => verify(
            &state_dir,
            against.as_deref(),
            public_key.as_deref(),
            &config,
        ),
        AuditCommand::Pubkey { config, pem } => match signer(&config) {
            Ok(signer) => {
                let text = if pem {
                    signer.public_key_pem()
                } else {
                    format!("{}\n", signer.public_key_base64())
                };
                crate::base::output::print(&text);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        AuditCommand::AcceptDiscrepancy { reason, api } => super::client::run(
            &api,
            "POST",
            "/api/v1/audit/accept-discrepancy",
            Some(serde_json::json!({ "reason": reason })),
            |answer| {
                crate::outln!(
                    "accepted; new signed head: record {} ({})",
                    answer["head"]["sequence"],
                    answer["head"]["hash"].as_str().unwrap_or_default()
                );
            },
        ),
        AuditCommand::Export {
            state_dir,
            format,
            config,
            since,
            until,
        } => {
            let parse = |t: Option<String>| t.as_deref().map(crate::audit::parse_time).transpose();
            let (since, until) = match (parse(since), parse(until)) {
                (Ok(s), Ok(u)) => (s, u),
                (Err(e), _) | (_, Err(e)) => return fail(&e.to_string()),
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
            match crate::audit::export(&store, since, until, format, &slas, chrono::Utc::now()) {
                Ok(text) => {
                    crate::base::output::print(&text);
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

/// `audit verify`: the whole chain, then (with `against`) the saved head's signature and
/// that the chain reaches it, then the incidents' coverage. Every finding is printed.
fn verify(
    state_dir: &Path,
    against: Option<&Path>,
    public_key: Option<&str>,
    config: &Path,
) -> ExitCode {
    // Everything that is usage or I/O is settled before the store is judged.
    let signed = match against {
        None => None,
        Some(file) => {
            let head = match crate::audit::head::read_file(file) {
                Ok(Some(h)) => h,
                Ok(None) => return fail(&format!("{} does not exist", file.display())),
                Err(e) => return fail(&e.to_string()),
            };
            let public = match public_key {
                Some(text) => {
                    crate::audit::signing::parse_public_key(text).map_err(|e| e.to_string())
                }
                None => signer(config)
                    .map(|s| s.public_key())
                    .map_err(|e| format!("{e} (or give the public key with --public-key)")),
            };
            match public {
                Ok(public) => Some((head, public)),
                Err(e) => return fail(&e),
            }
        }
    };
    let store = match open(state_dir) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut findings = Vec::new();
    let chain = match crate::audit::verify(&store) {
        Ok(v) => v,
        Err(e) => return fail(&e.to_string()),
    };
    if let Verdict::Broken {
        position,
        seq,
        reason,
    } = &chain
    {
        let seq = seq.map_or_else(|| "?".into(), |s| s.to_string());
        findings.push(format!("record {position} (seq {seq}): {reason}"));
    }
    if let Some((head, public)) = &signed {
        match head.check_signature(public) {
            Err(e) => findings.push(format!("the saved head does not verify: {e}")),
            Ok(()) => match crate::audit::head::shortfall(&store, &head.head()) {
                Ok(Some(why)) => findings.push(format!(
                    "against the head signed at {}: {why}",
                    head.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )),
                Ok(None) => {}
                Err(e) => return fail(&e.to_string()),
            },
        }
    }
    match crate::audit::coverage::mismatches(&store) {
        Ok(found) => findings.extend(
            found
                .into_iter()
                .map(|m| format!("incident {}: {}", m.incident, m.reason)),
        ),
        Err(e) => return fail(&e.to_string()),
    }
    if !findings.is_empty() {
        for finding in findings {
            crate::outln!("BROKEN: {finding}");
        }
        return ExitCode::from(1);
    }
    // A broken chain was a finding above.
    let Verdict::Intact { count, head } = chain else {
        return ExitCode::from(1);
    };
    match &signed {
        Some((signed, _)) => crate::outln!(
            "OK: {count} audit records, chain intact (head {head}), reaches the signed head of {} (record {})",
            signed
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            signed.sequence
        ),
        None => crate::outln!("OK: {count} audit records, chain intact (head {head})"),
    }
    ExitCode::SUCCESS
}

/// The signing key named by a config's `audit.signing_key_file`.
fn signer(config: &Path) -> Result<crate::audit::signing::HeadSigner, String> {
    let config = load_config(config)?;
    let audit = config
        .audit
        .ok_or_else(|| format!("{} has no audit.signing_key_file", config.path.display()))?;
    crate::audit::signing::HeadSigner::load(&audit.signing_key_file).map_err(|e| e.to_string())
}

/// `audit pack`: loads the key before touching the store, writes the ZIP next to `out`
/// and renames it into place, so a failed run leaves no half-written pack.
fn pack(id: &str, out: &Path, state_dir: &Path, config: &Path) -> ExitCode {
    let signer = match signer(config) {
        Ok(s) => s,
        Err(e) => {
            return fail(&format!(
                "{e}: an evidence pack must be signed (make a key with `openssl genpkey -algorithm ed25519 -out FILE`)"
            ));
        }
    };
    let store = match open(state_dir) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let bytes =
        match crate::audit::pack::build(&store, id, &signer, chrono::Utc::now(), |incident| {
            crate::response::containment::incident_record(&store, incident)
        }) {
            Ok(b) => b,
            Err(e @ crate::audit::pack::PackError::BrokenChain { .. }) => {
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
