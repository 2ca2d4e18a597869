//! `GET /api/v1/audit?since=&until=&format=jsonl|csv|population` (viewer): the export of
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
    let store = state.store.clone();
    let slas = state.slas.clone();
    let body = tokio::task::spawn_blocking(move || {
        crate::audit::export(&store, since, until, format, &slas, chrono::Utc::now())
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}
