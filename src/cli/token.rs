//! `logwarden token create NAME --role ROLE [--file PATH]`: a new API token in a file only its
//! owner can read, and the config line that grants it its role.
//!
//! The secret comes from the kernel's random source and is never printed: the config refers
//! to the file, and CLI users read it from there (`LOGWARDEN_TOKEN=$(cat PATH)`).

use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where token files go unless `--file` says otherwise (the unit's config refers to it).
pub const TOKEN_DIR: &str = "/etc/logwarden/tokens";
/// Random bytes in a token (hex-encoded in the file).
const TOKEN_BYTES: usize = 32;

/// `logwarden token ...`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// Token operations.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token file (mode 0600) and print the `api.tokens` entry that uses it.
    Create {
        /// Token name, recorded as the actor of everything done with it.
        name: String,
        /// What it may do.
        #[arg(long, value_parser = ["viewer", "responder", "approver", "admin"])]
        role: String,
        /// The file to write (default /etc/logwarden/tokens/NAME); an existing file is kept.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Runs a `token` subcommand: 0 created, 1 the file exists already, 2 it cannot be written.
pub fn run(args: TokenArgs) -> ExitCode {
    match args.command {
        TokenCommand::Create { name, role, file } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                eprintln!(
                    "logwarden token create: name {name:?} must be letters, digits, '-', '_' or '.'"
                );
                return ExitCode::from(2);
            }
            let path = file.unwrap_or_else(|| Path::new(TOKEN_DIR).join(&name));
            match create(&path) {
                Ok(true) => {}
                Ok(false) => {
                    eprintln!(
                        "logwarden token create: {} exists; it is kept (delete it first to replace the token)",
                        path.display()
                    );
                    return ExitCode::from(1);
                }
                Err(e) => {
                    eprintln!(
                        "logwarden token create: cannot write {}: {e}",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            }
            crate::outln!(
                "created {} (mode 0600). Grant it in the config under api.tokens:\n  - {{name: {name}, role: {role}, token_file: {}}}\nand use it from the CLI with: export LOGWARDEN_TOKEN=$(cat {})",
                path.display(),
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
    }
}

/// Writes a new random token to `path` unless it exists; `Ok(false)` when it does.
fn create(path: &Path) -> std::io::Result<bool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut secret = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())?;
    file.sync_all()?;
    Ok(true)
}
