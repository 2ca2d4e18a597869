//! The `audit:` block: the key that signs published chain heads, how often a head is
//! published, and where the daemon keeps its own copy of the last one outside the state
//! directory.

use super::Config;
use super::EventKind;
use crate::base::diag::{Diagnostic, YamlLocator};
use crate::base::duration::HumanDuration;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bounds of `anchor_every`: often enough that a cut is caught within a working day, seldom
/// enough that each publication (a flush and, per subscribed receiver, a delivery) is cheap.
pub const ANCHOR_MIN: Duration = Duration::from_secs(1);
/// Longest `anchor_every`, a day: a head published less often would let a cut chain go
/// unnoticed for longer than a working day (see [`ANCHOR_MIN`]).
pub const ANCHOR_MAX: Duration = Duration::from_secs(24 * 3600);

/// `audit: {signing_key_file, anchor_every, head_file}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`), outside
    /// the state directory: whoever can write the state directory must not be able to sign.
    pub signing_key_file: PathBuf,
    /// How often the chain head is signed and published (also at shutdown).
    #[serde(default = "default_anchor_every")]
    pub anchor_every: HumanDuration,
    /// Where the last signed head is also written, outside the state directory (default:
    /// `<signing_key_file>.head.json`, beside the key). On start the daemon compares its
    /// chain with the newer of this copy and the one in the store, so editing the state
    /// directory alone cannot roll the expected head back.
    #[serde(default)]
    pub head_file: Option<PathBuf>,
}

fn default_anchor_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl AuditConfig {
    /// The copy of the last signed head kept outside the state directory.
    pub fn head_path(&self) -> PathBuf {
        self.head_file.clone().unwrap_or_else(|| {
            let mut name = self.signing_key_file.as_os_str().to_owned();
            name.push(".head.json");
            PathBuf::from(name)
        })
    }

    pub(crate) fn resolve_paths(&mut self, resolve: impl Fn(&mut PathBuf)) {
        resolve(&mut self.signing_key_file);
        self.head_file.iter_mut().for_each(resolve);
    }
}

/// Checks the block: the interval's range, both files outside the state directory, and
/// the key itself (loaded here so `logwarden check` and the start-up refuse a bad key
/// with the same message; the message names the file, never its contents).
pub(crate) fn validate(config: &Config, path: &Path, loc: &YamlLocator) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let Some(audit) = &config.audit else {
        for (i, receiver) in config.receivers.iter().enumerate() {
            if receiver.events().contains(&EventKind::AuditHead) {
                problems.push(Diagnostic::at(
                    path,
                    loc.key_in_block(loc.item("receivers", i), "events"),
                    format!(
                        "receiver {:?} asks for audit_head, but no audit.signing_key_file is configured to sign heads",
                        receiver.name()
                    ),
                ));
            }
        }
        return problems;
    };
    let at = loc.top_key("audit");
    let mut fail = |key: &str, message: String| {
        problems.push(Diagnostic::at(path, loc.key_in_block(at, key), message));
    };
    let every = audit.anchor_every.0;
    if !(ANCHOR_MIN..=ANCHOR_MAX).contains(&every) {
        fail(
            "anchor_every",
            format!(
                "audit: anchor_every ({}) must be between 1s and 24h",
                audit.anchor_every
            ),
        );
    }
    for (key, file) in [
        ("signing_key_file", audit.signing_key_file.clone()),
        ("head_file", audit.head_path()),
    ] {
        if file.starts_with(&config.state_dir) {
            fail(
                key,
                format!(
                    "audit: {} is inside state_dir; keep it elsewhere, so that whoever can edit the state directory cannot also sign or roll back heads",
                    file.display()
                ),
            );
        }
    }
    let head_dir = audit.head_path().parent().map(Path::to_path_buf);
    if head_dir.as_ref().is_some_and(|d| !d.is_dir()) {
        fail(
            "head_file",
            format!(
                "audit: the directory of the head file {} does not exist (set head_file to a writable place outside state_dir)",
                audit.head_path().display()
            ),
        );
    }
    if let Err(e) = crate::base::signing::HeadSigner::load(&audit.signing_key_file) {
        fail("signing_key_file", format!("audit: {e}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 test 1's secret key in PKCS#8 PEM.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
        -----END PRIVATE KEY-----\n";

    fn parse(dir: &Path, audit: &str, extra: &str) -> Result<Config, Vec<Diagnostic>> {
        Config::parse(
            &dir.join("logwarden.yaml"),
            &format!("state_dir: state\naudit: {audit}\n{extra}"),
        )
    }

    fn messages(errs: Vec<Diagnostic>) -> Vec<String> {
        errs.into_iter().map(|d| d.message).collect()
    }

    #[test]
    fn the_key_and_the_interval_are_checked_and_the_head_file_defaults_beside_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit.key"), KEY_PEM).unwrap();
        let c = parse(dir.path(), "{signing_key_file: audit.key}", "").unwrap();
        let audit = c.audit.unwrap();
        assert_eq!(audit.anchor_every.0, Duration::from_secs(300));
        assert_eq!(audit.head_path(), dir.path().join("audit.key.head.json"));

        for (block, says) in [
            (
                "{signing_key_file: audit.key, anchor_every: 500ms}",
                "between 1s and 24h",
            ),
            (
                "{signing_key_file: audit.key, anchor_every: 2d}",
                "between 1s and 24h",
            ),
            (
                "{signing_key_file: missing.key}",
                "cannot read the audit signing key",
            ),
            ("{signing_key_file: state/audit.key}", "inside state_dir"),
            (
                "{signing_key_file: audit.key, head_file: state/head.json}",
                "inside state_dir",
            ),
            ("{signing_key_file: audit.key, anchor: 5m}", "unknown field"),
            (
                "{signing_key_file: audit.key, head_file: nowhere/head.json}",
                "does not exist",
            ),
        ] {
            let errs = messages(parse(dir.path(), block, "").unwrap_err());
            assert!(errs.iter().any(|e| e.contains(says)), "{block}: {errs:?}");
        }
        // A file that is not a key is named, and nothing of its contents is shown.
        std::fs::write(dir.path().join("bad.key"), "not-a-key SECRET-TEXT").unwrap();
        let errs = messages(parse(dir.path(), "{signing_key_file: bad.key}", "").unwrap_err());
        assert!(
            errs[0].contains("bad.key is not an Ed25519 private key"),
            "{errs:?}"
        );
        assert!(!errs[0].contains("SECRET-TEXT"), "{errs:?}");
    }

    #[test]
    fn audit_head_goes_only_to_receivers_that_carry_it_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit.key"), KEY_PEM).unwrap();
        let receiver = |body: &str| {
            format!(
                "receivers:\n  - {{name: r, type: webhook, url: 'http://127.0.0.1:1/', {body}, events: [audit_head]}}\n"
            )
        };
        assert!(
            parse(
                dir.path(),
                "{signing_key_file: audit.key}",
                &receiver("format: json")
            )
            .is_ok()
        );
        let errs = messages(
            parse(
                dir.path(),
                "{signing_key_file: audit.key}",
                &receiver("format: slack"),
            )
            .unwrap_err(),
        );
        assert!(
            errs[0].contains("audit_head goes to format json"),
            "{errs:?}"
        );
        let errs = messages(
            Config::parse(
                &dir.path().join("logwarden.yaml"),
                &format!("state_dir: state\n{}", receiver("format: json")),
            )
            .unwrap_err(),
        );
        assert!(errs[0].contains("no audit.signing_key_file"), "{errs:?}");
    }
}
