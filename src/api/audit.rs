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
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
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

/// The last signed chain head, `{"sequence", "hash", "at", "signature"}` (viewer); 404 when
/// heads are not signed (no `audit.signing_key_file`), 503 before the first one.
pub async fn head(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let anchor = anchor_of(&state)?;
    match anchor.latest() {
        Some(head) => Ok(axum::Json(head).into_response()),
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            match anchor.discrepancy() {
                Some(d) => format!(
                    "no head is signed until the audit chain discrepancy is accepted: {}",
                    d.reason
                ),
                None => "no head signed yet".to_string(),
            },
        )),
    }
}

/// Body of `POST /api/v1/audit/accept-discrepancy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    reason: String,
}

/// Accepts the audit chain discrepancy found on start (admin): an audit record of who
/// accepted what and why, `/readyz` clear again, and a new signed head (answered).
pub async fn accept_discrepancy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Admin)?;
    let body: AcceptBody = super::lifecycle::parse_body(body)?;
    let anchor = anchor_of(&state)?;
    use crate::audit::anchor::AcceptError;
    match anchor.accept(&caller.name, &body.reason).await {
        Ok(head) => {
            Ok(axum::Json(serde_json::json!({"accepted": true, "head": head})).into_response())
        }
        Err(e @ AcceptError::NothingToAccept) => Err(error(StatusCode::CONFLICT, e.to_string())),
        // A failed signing after the acceptance answers as before: the reason in a 400.
        Err(e @ (AcceptError::Invalid(_) | AcceptError::Unsigned(_))) => {
            Err(error(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e @ AcceptError::Store(_)) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

/// The daemon's signer of heads; 404 when heads are not signed.
fn anchor_of(state: &AppState) -> Result<&crate::audit::anchor::Anchor, super::ApiError> {
    state.anchor.as_deref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "chain heads are not signed: set audit.signing_key_file in the config",
        )
    })
}
