//! Reading the chain out for auditors: records of a period as JSON lines or CSV, or the
//! population of incidents, for `audit export` and `GET /api/v1/audit` alike.
//!
//! It stands apart from the chain itself because it only reads: the formats, quoting and
//! time arguments change with what auditors ask for, never with how records are written.

use super::csv::csv_field;
use super::{Record, population};
use crate::store::{Space, Store, StoreError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;

/// Export formats: what auditors' tools read (JSON lines, spreadsheets, a population).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// One JSON record per line.
    Jsonl,
    /// A header line, then one row per record.
    Csv,
    /// Not records: one CSV row per incident opened in the period, with its lifecycle times,
    /// actors and SLA outcomes (see [`population`]).
    Population,
}

impl ExportFormat {
    /// The media type of the export in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "application/x-ndjson",
            ExportFormat::Csv | ExportFormat::Population => "text/csv; charset=utf-8",
        }
    }
}

/// The export in `format` of the period `since <= t < until` (records by their time, the
/// population by incidents' opening), for `audit export` and `GET /api/v1/audit` alike;
/// SLA outcomes as of `now`.
pub fn export(
    store: &Store,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    format: ExportFormat,
    slas: &crate::incidents::sla::Slas,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    if format == ExportFormat::Population {
        return population::render(store, since, until, slas, now);
    }
    let records = records(store, since, until)?;
    let uids = crate::incidents::stored::uids(
        store,
        records.iter().filter_map(|r| r.incident.as_deref()),
    )?;
    Ok(render(&records, &uids, format == ExportFormat::Csv))
}

/// Records with `since <= at < until`, in chain order (unreadable ones are skipped: run
/// `verify` for those).
pub fn records(
    store: &Store,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Record>, StoreError> {
    Ok(store
        .scan::<Record>(Space::Audit)?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| since.is_none_or(|s| r.at >= s) && until.is_none_or(|u| r.at < u))
        .collect())
}

/// Renders records for auditors: JSON lines, or (`csv`) CSV with the columns `seq, at, event,
/// controls, actor, incident, incident_uid, details, prev, hash` (controls joined by `;`,
/// details as compact JSON). `incident_uid` is the incident's fleet-unique uid from `uids`
/// (by local id): an export leaves the host, where `INC-7` names an incident on every host.
/// It is added beside the record, not part of what `hash` covers.
pub(super) fn render(
    records: &[Record],
    uids: &std::collections::HashMap<String, String>,
    csv: bool,
) -> String {
    let uid_of = |r: &Record| r.incident.as_ref().and_then(|id| uids.get(id)).cloned();
    let mut out = String::new();
    match csv {
        false => {
            for r in records {
                let mut value = serde_json::to_value(r).expect("records serialise");
                if let Some(uid) = uid_of(r) {
                    value["incident_uid"] = Value::String(uid);
                }
                out.push_str(&value.to_string());
                out.push('\n');
            }
        }
        true => {
            out.push_str("seq,at,event,controls,actor,incident,incident_uid,details,prev,hash\n");
            for r in records {
                let fields = [
                    r.seq.to_string(),
                    r.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    r.event.to_string(),
                    r.controls.join(";"),
                    r.actor.clone(),
                    r.incident.clone().unwrap_or_default(),
                    uid_of(r).unwrap_or_default(),
                    r.details.to_string(),
                    r.prev.clone(),
                    r.hash.clone(),
                ];
                let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&row.join(","));
                out.push('\n');
            }
        }
    }
    out
}

/// A `--since`/`--until` (or `?since=`) that is not a time; the message names the text and
/// the two accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time or a YYYY-MM-DD date")]
pub struct TimeError(String);

/// Parses `--since`/`--until`: RFC 3339, or a date (`2026-11-22`, midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, TimeError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| TimeError(text.to_string()))
}
