//! `GET/POST /api/v1/silences`, `DELETE /api/v1/silences/{id}` (approver).

use super::lifecycle::{parse_body, submit};
use super::{ApiResult, AppState, Caller, require};
use crate::config::ApiRole;
use crate::lifecycle::Request;
use crate::response::silences::NewSilence;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use std::sync::Arc;

/// Every silence, newest first, each with its `state` (pending, active, expired).
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    require(&caller, ApiRole::Approver)?;
    Ok(Json(crate::response::silences::list(
        &state.store,
        chrono::Utc::now(),
    )?)
    .into_response())
}

/// Creates a silence: 201 with it, 400 when it is malformed.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Approver)?;
    let new: NewSilence = parse_body(body)?;
    let silence = submit(&state, &caller, Request::CreateSilence(new)).await?;
    Ok((StatusCode::CREATED, Json(silence)).into_response())
}

/// Expires a silence now: 200 with it, 404 when no active silence has this id.
pub async fn expire(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    require(&caller, ApiRole::Approver)?;
    let silence = submit(&state, &caller, Request::ExpireSilence(id)).await?;
    Ok(Json(silence).into_response())
}
