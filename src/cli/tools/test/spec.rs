//! A rule test file as written: the YAML a `logwarden test` file holds, read into checked
//! values. Apart from the runner ([`super`]) because the file's grammar (a line as text or
//! as `{line, at | after, repeat, every}`, key values as scalars) is enforced while it is
//! read, so the runner only ever sees well-formed cases.

use crate::base::duration::HumanDuration;
use crate::detection::Key;
use crate::rules::Severity;
use crate::sources::timestamp::TimestampFormat;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestFile {
    pub(super) rule_files: Vec<PathBuf>,
    #[serde(default)]
    pub(super) timestamp: Option<TimestampFormat>,
    #[serde(default)]
    pub(super) year: Option<i32>,
    #[serde(default)]
    pub(super) source: Option<String>,
    pub(super) tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestCase {
    pub(super) name: String,
    #[serde(default)]
    pub(super) timestamp: Option<TimestampFormat>,
    #[serde(default)]
    pub(super) year: Option<i32>,
    #[serde(default)]
    pub(super) source: Option<String>,
    #[serde(default)]
    pub(super) start: Option<String>,
    #[serde(default)]
    pub(super) lines: Vec<LineSpec>,
    #[serde(default)]
    pub(super) until: Option<String>,
    pub(super) expect: Vec<Expected>,
}

/// A line as written: its text, or `{line, at | after, repeat, every}`.
#[derive(Debug)]
pub(super) struct LineSpec {
    pub(super) text: String,
    pub(super) at: Option<HumanDuration>,
    pub(super) after: Option<HumanDuration>,
    pub(super) repeat: u32,
    pub(super) every: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimedLine {
    line: String,
    #[serde(default)]
    at: Option<HumanDuration>,
    #[serde(default)]
    after: Option<HumanDuration>,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    every: Option<HumanDuration>,
}

impl<'de> Deserialize<'de> for LineSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_yaml::Value::deserialize(d)?;
        let timed: TimedLine = match value {
            serde_yaml::Value::String(text) => {
                return Ok(LineSpec {
                    text,
                    at: None,
                    after: None,
                    repeat: 1,
                    every: None,
                });
            }
            serde_yaml::Value::Mapping(_) => serde_yaml::from_value(value)
                .map_err(|e| D::Error::custom(format!("in a line: {e}")))?,
            _ => {
                return Err(D::Error::custom(
                    "a line is a string, or {line: TEXT, at: DURATION | after: DURATION, repeat: N, every: DURATION}",
                ));
            }
        };
        if timed.at.is_some() && timed.after.is_some() {
            return Err(D::Error::custom("a line takes `at` or `after`, not both"));
        }
        if timed.repeat == Some(0) {
            return Err(D::Error::custom("repeat must be at least 1"));
        }
        Ok(LineSpec {
            text: timed.line,
            at: timed.at,
            after: timed.after,
            repeat: timed.repeat.unwrap_or(1),
            every: timed.every,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Expected {
    pub(super) rule: String,
    #[serde(default, deserialize_with = "scalar_map")]
    pub(super) key: Key,
    #[serde(default)]
    pub(super) severity: Option<Severity>,
    #[serde(default)]
    pub(super) count: Option<u64>,
    #[serde(default)]
    pub(super) opened_at: Option<String>,
    #[serde(default)]
    pub(super) summary: Option<String>,
}

/// Key values as text whatever YAML made of them (`port: 22` is the capture "22").
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
    use serde::de::Error;
    let raw = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            serde_yaml::Value::String(s) => Ok((k, s)),
            serde_yaml::Value::Number(n) => Ok((k, n.to_string())),
            serde_yaml::Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(D::Error::custom(format!(
                "key value of {k:?} must be a scalar"
            ))),
        })
        .collect()
}
