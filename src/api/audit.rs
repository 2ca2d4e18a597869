//! `GET /api/v1/audit?since=&until=&format=jsonl|csv` (viewer): the export of
//! `logwarden audit export` while the daemon runs.

use super::{ApiResult, AppState, Caller, error, require};
use crate::audit::ExportFormat;
use crate::config::ApiRole;
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use std::sync::Arc;

/// Query of the audit export.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    since: Option<String>,
    until: Option<String>,
    format: Option<ExportFormat>,
}

/// Exports audit records as JSON lines (`application/x-ndjson`) or CSV (`text/csv`).
pub async fn export(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ExportQuery>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let parse = |t: &Option<String>| {
        t.as_deref()
            .map(crate::audit::parse_time)
            .transpose()
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))
    };
    let (since, until) = (parse(&query.since)?, parse(&query.until)?);
    let format = query.format.unwrap_or(ExportFormat::Jsonl);
    let records = crate::audit::records(&state.store, since, until)?;
    let uids = crate::incidents::stored::uids(
        &state.store,
        records.iter().filter_map(|r| r.incident.as_deref()),
    )?;
    let content_type = match format {
        ExportFormat::Jsonl => "application/x-ndjson",
        ExportFormat::Csv => "text/csv; charset=utf-8",
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        crate::audit::render(&records, &uids, format),
    )
        .into_response())
}
