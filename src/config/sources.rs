//! Input settings: what each source reads (files, syslog, journal), how its lines carry
//! their time, and how far that time is trusted.
//!
//! Here, in the config stage, because these are plain settings: the inputs and the
//! pipeline read them, and the config must not reach up into the inputs to define them.
//! How a time is parsed and judged stays with the inputs (`sources::timestamp`,
//! `sources::line_time`).

use super::DEFAULT_MAX_LINE_BYTES;
use crate::base::diag::{Diagnostic, YamlLocator};
use crate::base::duration::HumanDuration;
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether a file seen for the first time is read from its start or only for new lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only lines written after the daemon first saw the file.
    #[default]
    End,
    /// The whole file.
    Beginning,
}

/// One log input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name rules refer to in `sources:` and metrics carry as a label.
    pub name: String,
    /// Files or globs; `-` is stdin.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Or: receive syslog over the network instead of reading files.
    #[serde(default)]
    pub syslog: Option<SyslogListen>,
    /// Or: read the systemd journal.
    #[serde(default)]
    pub journal: Option<JournalConfig>,
    /// Glob patterns of files to leave out (matched against the file name and the full path).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in a file (or journal) seen for the first time; checkpoints (the
    /// journal cursor) win afterwards.
    #[serde(default)]
    pub start_at: StartAt,
    /// How to read each line's own time (default `arrival`, `syslog` for syslog sources).
    #[serde(default)]
    pub timestamp: Option<TimestampFormat>,
    /// Longest line kept; the rest of a longer line is dropped and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_max_line_bytes() -> usize {
    DEFAULT_MAX_LINE_BYTES
}

impl SourceConfig {
    /// The time format in force: as configured, else what the kind of source implies.
    /// Journal lines start with the entry's RFC 3339 time (the daemon takes the time from
    /// the entry itself; the format serves `replay` of saved journal lines).
    pub fn time_format(&self) -> TimestampFormat {
        match (&self.timestamp, &self.syslog, &self.journal) {
            (Some(format), _, _) => format.clone(),
            (None, Some(_), _) => TimestampFormat::Syslog,
            (None, None, Some(_)) => TimestampFormat::Rfc3339,
            (None, None, None) => TimestampFormat::Arrival,
        }
    }
}

/// Which journal a journal source reads, and which of its entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// A directory of journal files (`journalctl --directory`); default: the system journal.
    pub directory: Option<PathBuf>,
    /// A journal namespace (`journalctl --namespace`).
    pub namespace: Option<String>,
    /// Field matches as journalctl takes them (`SYSLOG_IDENTIFIER=sshd`): matches of one
    /// field are ORed, of different fields ANDed, and `+` ORs the groups on either side.
    #[serde(default)]
    pub matches: Vec<String>,
}

impl JournalConfig {
    /// Problems with the settings, in words an operator can act on.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.directory.is_some() && self.namespace.is_some() {
            problems.push("journal takes a directory or a namespace, not both".to_string());
        }
        if let Some(ns) = &self.namespace
            && (ns.is_empty() || ns.starts_with('-') || ns.contains('/'))
        {
            problems.push(format!("journal namespace {ns:?} is not a namespace name"));
        }
        for (i, m) in self.matches.iter().enumerate() {
            let separator = m == "+";
            if separator && (i == 0 || i + 1 == self.matches.len()) {
                problems.push("journal match \"+\" must stand between two matches".to_string());
            } else if !separator && !is_journal_match(m) {
                problems.push(format!(
                    "journal match {m:?} is not FIELD=VALUE (FIELD of A-Z, 0-9 and _, not starting with a digit) or \"+\""
                ));
            }
        }
        problems
    }
}

/// `FIELD=VALUE` with a field name journald accepts.
fn is_journal_match(m: &str) -> bool {
    let Some((field, _)) = m.split_once('=') else {
        return false;
    };
    !field.is_empty()
        && field.len() <= 64
        && !field.starts_with(|c: char| c.is_ascii_digit())
        && field
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Where a syslog source listens (RFC 3164 and RFC 5424; TCP octet-counted or
/// newline-framed), so one logwarden can receive from rsyslog on other hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogListen {
    /// UDP address to listen on, e.g. `127.0.0.1:5514`; at least one of `udp` and `tcp` is
    /// given.
    pub udp: Option<String>,
    /// TCP address to listen on, e.g. `127.0.0.1:5514`; octet-counted and newline-framed
    /// messages are both read.
    pub tcp: Option<String>,
    /// Most TCP connections served at once; more are refused and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A TCP connection that sends nothing for this long is closed and counted, so idle
    /// sockets cannot hold every connection slot.
    #[serde(default = "default_syslog_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// A TCP frame must arrive whole within this long of its first byte, else the
    /// connection is closed and counted (a sender trickling a frame holds no slot forever).
    #[serde(default = "default_syslog_frame_timeout")]
    pub frame_timeout: HumanDuration,
    /// The UDP socket's kernel receive buffer (`SO_RCVBUF`) in bytes; default: the kernel's.
    /// Datagrams that arrive while it is full are dropped by the kernel and counted in
    /// `logwarden_syslog_udp_kernel_drops_total`.
    #[serde(default)]
    pub udp_buffer_bytes: Option<usize>,
}

fn default_max_connections() -> usize {
    256
}

fn default_syslog_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_syslog_frame_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Largest `udp_buffer_bytes` accepted (the kernel caps it further at `net.core.rmem_max`).
const MAX_UDP_BUFFER_BYTES: usize = 1 << 30;

impl SyslogListen {
    /// Problems with the settings of syslog source `name`, in words an operator can act on.
    fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.udp.is_none() && self.tcp.is_none() {
            problems.push(format!("syslog source {name:?} needs udp or tcp"));
        }
        if self.max_connections == 0 {
            problems.push(format!(
                "syslog source {name:?}: max_connections must be at least 1"
            ));
        }
        if self
            .udp_buffer_bytes
            .is_some_and(|b| b == 0 || b > MAX_UDP_BUFFER_BYTES)
        {
            problems.push(format!(
                "syslog source {name:?}: udp_buffer_bytes must be 1 to {MAX_UDP_BUFFER_BYTES}"
            ));
        }
        for addr in self.udp.iter().chain(&self.tcp) {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!("syslog address {addr:?} is not host:port"));
            }
        }
        problems
    }
}

/// How a source's lines carry their time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimestampFormat {
    /// No time in the line: the time it was read.
    #[default]
    Arrival,
    /// `Nov 22 10:00:01` (RFC 3164, local time, year inferred) or an RFC 3339 time at the
    /// start of the line (rsyslog's high-precision format, RFC 5424).
    Syslog,
    /// An RFC 3339 time as the line's first field.
    Rfc3339,
    /// Common/combined log format: `[22/Nov/2026:10:00:01 +0000]`.
    Clf,
    /// Seconds since the epoch (fraction allowed) as the first field.
    Epoch,
    /// A strftime pattern matched at the start of the line; local time unless it has `%z`.
    Pattern(String),
}

impl<'de> Deserialize<'de> for TimestampFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.as_str() {
            "arrival" => TimestampFormat::Arrival,
            "syslog" => TimestampFormat::Syslog,
            "rfc3339" => TimestampFormat::Rfc3339,
            "clf" => TimestampFormat::Clf,
            "epoch" => TimestampFormat::Epoch,
            _ => TimestampFormat::Pattern(text),
        })
    }
}

/// A `timestamp:` that is no known format and no strftime pattern able to give a time of
/// day (a date alone would put every line of a day at midnight, breaking every window).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {0:?} is neither arrival, syslog, rfc3339, clf, epoch nor a strftime pattern with a time of day"
)]
pub struct BadTimestampFormat(pub String);

impl TimestampFormat {
    /// Checks a strftime pattern once, at load time, so a typo is a config error.
    pub fn validate(&self) -> Result<(), BadTimestampFormat> {
        let TimestampFormat::Pattern(pattern) = self else {
            return Ok(());
        };
        let has_fields = pattern.contains("%H") || pattern.contains("%T") || pattern.contains("%s");
        let bad = chrono::format::StrftimeItems::new(pattern)
            .any(|item| matches!(item, chrono::format::Item::Error));
        if bad || !has_fields {
            return Err(BadTimestampFormat(pattern.clone()));
        }
        Ok(())
    }
}

/// `line_time:` in the daemon config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineTimeBounds {
    /// Most a line may be dated ahead of its arrival (clock skew of the senders).
    #[serde(default = "default_max_ahead")]
    pub max_ahead: HumanDuration,
    /// Most a line may be dated behind its arrival (a backlog older than this is
    /// implausible for a live source; `logwarden replay` is for archives).
    #[serde(default = "default_max_behind")]
    pub max_behind: HumanDuration,
}

fn default_max_ahead() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}

fn default_max_behind() -> HumanDuration {
    HumanDuration(Duration::from_secs(400 * 86_400))
}

impl Default for LineTimeBounds {
    fn default() -> Self {
        LineTimeBounds {
            max_ahead: default_max_ahead(),
            max_behind: default_max_behind(),
        }
    }
}

/// Problems of the `sources:` section, each at its source.
pub(super) fn validate(
    sources: &[SourceConfig],
    path: &Path,
    loc: &YamlLocator,
) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (i, source) in sources.iter().enumerate() {
        let at = loc.item("sources", i);
        if !names.insert(source.name.as_str()) {
            problems.push(Diagnostic::at(
                path,
                loc.key_in_block(at, "name"),
                format!("duplicate source name {:?}", source.name),
            ));
        }
        if source.name == crate::rules::DETECTION_SOURCE {
            problems.push(Diagnostic::at(
                path,
                loc.key_in_block(at, "name"),
                format!(
                    "source name {:?} is reserved for logwarden's own detections",
                    source.name
                ),
            ));
        }
        let kinds = [
            (!source.paths.is_empty()).then_some("paths"),
            source.syslog.as_ref().map(|_| "syslog"),
            source.journal.as_ref().map(|_| "journal"),
        ];
        let kinds: Vec<&str> = kinds.into_iter().flatten().collect();
        match kinds.as_slice() {
            [] => problems.push(Diagnostic::at(
                path,
                at,
                format!("source {:?} needs paths, syslog or journal", source.name),
            )),
            [_] => {}
            [_, second, ..] => problems.push(Diagnostic::at(
                path,
                loc.key_in_block(at, second),
                format!(
                    "source {:?} has both {}; use one source for each",
                    source.name,
                    kinds.join(" and ")
                ),
            )),
        }
        if let Some(listen) = &source.syslog {
            let at = loc.key_in_block(at, "syslog");
            for problem in listen.problems(&source.name) {
                problems.push(Diagnostic::at(path, at, problem));
            }
        }
        if let Some(journal) = &source.journal {
            let at = loc.key_in_block(at, "journal");
            for problem in journal.problems() {
                problems.push(Diagnostic::at(
                    path,
                    at,
                    format!("source {:?}: {problem}", source.name),
                ));
            }
            for (key, set) in [
                ("timestamp", source.timestamp.is_some()),
                ("exclude", !source.exclude.is_empty()),
            ] {
                if set {
                    problems.push(Diagnostic::at(
                        path,
                        at,
                        format!(
                            "journal source {:?} takes no {key}: each entry carries its own time and fields",
                            source.name
                        ),
                    ));
                }
            }
        }
        for pattern in &source.exclude {
            if let Err(e) = globset::Glob::new(pattern) {
                problems.push(Diagnostic::at(
                    path,
                    loc.key_in_block(at, "exclude"),
                    format!("bad exclude pattern {pattern:?}: {e}"),
                ));
            }
        }
        if let Err(e) = source.time_format().validate() {
            problems.push(Diagnostic::at(
                path,
                loc.key_in_block(at, "timestamp"),
                e.to_string(),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        Config::parse(Path::new("/etc/lw/logwarden.yaml"), text)
    }

    #[test]
    fn journal_sources_are_checked_and_their_directory_resolved() {
        let c = parse("state_dir: s\nsources:\n  - name: j\n    journal: {directory: journal, matches: [SYSLOG_IDENTIFIER=sshd, +, _COMM=sshd-session]}\n").unwrap();
        let journal = c.sources[0].journal.as_ref().unwrap();
        assert_eq!(
            journal.directory.as_deref(),
            Some(Path::new("/etc/lw/journal"))
        );
        assert_eq!(c.sources[0].time_format(), TimestampFormat::Rfc3339);
        let errs = parse("state_dir: s\nsources:\n  - name: j\n    journal: {directory: d, namespace: n, matches: [sshd, '+']}\n    timestamp: syslog\n").unwrap_err();
        let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 4, "{messages:?}");
        assert!(messages[0].contains("a directory or a namespace, not both"));
        assert!(messages[1].contains("\"sshd\" is not FIELD=VALUE"));
        assert!(messages[2].contains("\"+\" must stand between two matches"));
        assert!(messages[3].contains("takes no timestamp"));
        assert!(errs.iter().all(|e| e.line == 4), "{errs:?}");
        let both =
            parse("state_dir: s\nsources:\n  - name: j\n    paths: [a.log]\n    journal: {}\n")
                .unwrap_err();
        assert!(
            both[0].message.contains("has both paths and journal"),
            "{}",
            both[0]
        );
        assert_eq!(both[0].line, 5);
        assert!(parse("state_dir: s\nsources:\n  - name: j\n    journal: {unit: ssh}\n").is_err());
    }

    #[test]
    fn syslog_sources_need_an_address_and_sane_limits() {
        let errs = parse("state_dir: s\nsources:\n  - name: net\n    syslog: {max_connections: 0, udp_buffer_bytes: 0}\n").unwrap_err();
        let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("needs udp or tcp")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("max_connections must be at least 1")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("udp_buffer_bytes must be 1 to")),
            "{messages:?}"
        );
        assert!(errs.iter().all(|e| e.line == 4), "{errs:?}");
        let bad = parse("state_dir: s\nsources:\n  - name: net\n    syslog: {udp: 'nowhere'}\n")
            .unwrap_err();
        assert!(bad[0].message.contains("is not host:port"), "{}", bad[0]);
        let c =
            parse("state_dir: s\nsources:\n  - name: net\n    syslog: {udp: '127.0.0.1:5514'}\n")
                .unwrap();
        assert_eq!(c.sources[0].time_format(), TimestampFormat::Syslog);
    }

    #[test]
    fn a_timestamp_pattern_needs_a_time_of_day() {
        assert!(
            TimestampFormat::Pattern("%Y-%m-%d %H:%M:%S".into())
                .validate()
                .is_ok()
        );
        let e = TimestampFormat::Pattern("%Y-%m-%d".into())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("with a time of day"), "{e}");
        let f: TimestampFormat = serde_yaml::from_str("clf").unwrap();
        assert_eq!(f, TimestampFormat::Clf);
    }
}
