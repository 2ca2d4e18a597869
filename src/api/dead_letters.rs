//! The dead-letter endpoints of the HTTP API, kept beside the outbox they serve.

use super::{ApiResult, AppState, Caller, error, require};
use crate::config::ApiRole;
use crate::notification::{Outbox, Resent};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use std::sync::Arc;

/// `GET /api/v1/notifications/dead` (viewer): dead letters without their bodies, oldest
/// first.
pub async fn list_dead(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let dead: Vec<_> = state
        .outbox
        .dead_letters()?
        .iter()
        .map(crate::notification::Record::summary)
        .collect();
    Ok(Json(dead).into_response())
}

/// `POST /api/v1/notifications/dead/{id}/resend` (responder): puts a dead letter back in
/// the outbox; 202 with the new record, 404 for an unknown id, 409 when its receiver is
/// no longer configured.
pub async fn resend(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    resend_in(&state, &caller, &id).await
}

async fn resend_in(state: &AppState, caller: &Caller, id: &str) -> ApiResult {
    let outbox: &Outbox = &state.outbox;
    let missing = || error(StatusCode::NOT_FOUND, format!("no dead letter {id}"));
    let number: u64 = id.parse().map_err(|_| missing())?;
    match outbox.resend(number, &caller.name).await? {
        Resent::Queued(record) => {
            tracing::info!(dead_letter = number, id = record.id, receiver = %record.receiver, key = %record.idempotency_key, "dead letter re-sent");
            Ok((StatusCode::ACCEPTED, Json(record.summary())).into_response())
        }
        Resent::NotFound => Err(missing()),
        Resent::UnknownReceiver(r) => Err(error(
            StatusCode::CONFLICT,
            format!("receiver {r:?} is no longer configured"),
        )),
    }
}
