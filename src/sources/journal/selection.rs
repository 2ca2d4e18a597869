//! Which journal a source reads (`--directory`, `--namespace`, matches) and whether it can
//! be read at all, in words an operator can act on.
//!
//! Apart from the reader because `check` uses it too, without starting a source.

use super::JOURNALCTL;
use crate::base::diag::{Diagnostic, YamlLocator};
use crate::config::JournalConfig;
use std::process::{Command, Stdio};

/// Which journal to read and which entries of it: the journalctl arguments every run of a
/// source shares.
#[derive(Debug, Clone)]
pub struct Selection {
    config: JournalConfig,
}

impl Selection {
    /// The selection of a source's `journal:` settings.
    pub fn new(config: &JournalConfig) -> Self {
        Selection {
            config: config.clone(),
        }
    }

    /// A journalctl command for this selection; `extra` goes before the matches.
    pub(super) fn command(&self, extra: &[String]) -> Command {
        let mut cmd = Command::new(JOURNALCTL);
        if let Some(dir) = &self.config.directory {
            cmd.arg("--directory").arg(dir);
        }
        if let Some(ns) = &self.config.namespace {
            cmd.arg(format!("--namespace={ns}"));
        }
        cmd.arg("--no-pager").args(extra).args(&self.config.matches);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The `path` of this selection's lines (and their evidence).
    pub(super) fn path(&self) -> String {
        match (&self.config.directory, &self.config.namespace) {
            (Some(dir), _) => format!("journal:{}", dir.display()),
            (None, Some(ns)) => format!("journal:{ns}"),
            (None, None) => "journal".to_string(),
        }
    }

    /// This selection's journal, in words.
    pub(super) fn describe(&self) -> String {
        match (&self.config.directory, &self.config.namespace) {
            (Some(dir), _) => format!("the journal directory {}", dir.display()),
            (None, Some(ns)) => format!("the journal namespace {ns}"),
            (None, None) => "the system journal".to_string(),
        }
    }
}

/// Why a journal cannot be read, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// What is wrong and what to do.
    pub reason: String,
    /// There are no journal files at all (yet): an empty journal, not a refused one.
    pub no_files: bool,
}

/// Whether the journal of a selection can be read. Used by `check` and by the source
/// before each start (shown by `/readyz`).
pub fn probe(selection: &Selection) -> Result<(), Unreadable> {
    probe_reason(selection).map_err(|problem| Unreadable {
        no_files: matches!(problem, ProbeFailure::NoFiles { .. }),
        reason: problem.to_string(),
    })
}

/// What running journalctl for one entry showed about the journal.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("{cmd} not found on PATH (it comes with systemd)", cmd = JOURNALCTL)]
    NotInstalled,
    #[error("cannot run {cmd}: {0}", cmd = JOURNALCTL)]
    CannotRun(std::io::Error),
    #[error(
        "no permission to read the journal: run logwarden in group systemd-journal or adm (SupplementaryGroups=systemd-journal adm)"
    )]
    Permission,
    /// journalctl's last line of stderr, which says why.
    #[error("{cmd} failed ({status}): {reason}", cmd = JOURNALCTL)]
    Failed {
        status: std::process::ExitStatus,
        reason: String,
    },
    /// An empty journal, not a refused one: the source waits instead of failing.
    #[error("no journal files found in {place} (not written yet, or journald has Storage=none)")]
    NoFiles { place: String },
}

/// Runs journalctl for one entry and reads what its exit and stderr say.
fn probe_reason(selection: &Selection) -> Result<(), ProbeFailure> {
    let out = selection
        .command(&["--lines=1".into(), "--output=short".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ProbeFailure::NotInstalled,
            _ => ProbeFailure::CannotRun(e),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let permission = stderr.contains("insufficient permissions")
        || stderr.contains("not seeing messages from other users");
    if permission {
        return Err(ProbeFailure::Permission);
    }
    if !out.status.success() {
        let reason = stderr.trim().lines().last().unwrap_or("").to_string();
        return Err(ProbeFailure::Failed {
            status: out.status,
            reason,
        });
    }
    if stderr.contains("No journal files were found") {
        return Err(ProbeFailure::NoFiles {
            place: selection.describe(),
        });
    }
    Ok(())
}

/// A warning for each journal source of `config` whose journal cannot be read (`check`):
/// the daemon would run, but blind for that source. Each points at the source's `journal:`.
pub fn unreadable(config: &crate::config::Config) -> Vec<Diagnostic> {
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    let loc = YamlLocator::new(&text);
    config
        .sources
        .iter()
        .enumerate()
        .filter_map(|(i, source)| {
            let journal = source.journal.as_ref()?;
            let problem = probe(&Selection::new(journal)).err()?;
            Some(Diagnostic::at(
                &config.path,
                loc.key_in_block(loc.item("sources", i), "journal"),
                format!(
                    "source {:?}: the journal cannot be read: {}",
                    source.name, problem.reason
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(directory: Option<&str>, namespace: Option<&str>) -> Selection {
        Selection::new(&JournalConfig {
            directory: directory.map(Into::into),
            namespace: namespace.map(Into::into),
            matches: vec!["SYSLOG_IDENTIFIER=sshd".into()],
        })
    }

    #[test]
    fn a_selection_names_its_journal_and_puts_matches_last() {
        let dir = selection(Some("/var/log/journal/remote"), None);
        assert_eq!(dir.path(), "journal:/var/log/journal/remote");
        assert_eq!(
            dir.describe(),
            "the journal directory /var/log/journal/remote"
        );
        let args: Vec<String> = dir
            .command(&["--lines=1".into()])
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--directory",
                "/var/log/journal/remote",
                "--no-pager",
                "--lines=1",
                "SYSLOG_IDENTIFIER=sshd"
            ]
        );
        let ns = selection(None, Some("web"));
        assert_eq!(ns.path(), "journal:web");
        assert_eq!(ns.describe(), "the journal namespace web");
        assert!(ns.command(&[]).get_args().any(|a| a == "--namespace=web"));
        assert_eq!(selection(None, None).path(), "journal");
    }

    #[test]
    fn a_probe_failure_says_what_to_do() {
        assert!(
            ProbeFailure::NotInstalled
                .to_string()
                .contains("comes with systemd")
        );
        assert!(
            ProbeFailure::Permission
                .to_string()
                .contains("systemd-journal")
        );
        let none = ProbeFailure::NoFiles {
            place: "the system journal".into(),
        };
        assert!(
            none.to_string()
                .starts_with("no journal files found in the system journal")
        );
    }
}
