//! `POST /api/v1/incidents/{id}/ack|transition|note|review|approve|resolve|release`: lifecycle changes,
//! answered once the pipeline has stored them durably.

use super::{ApiError, ApiResult, AppState, Caller, error, require};
use crate::config::ApiRole;
use crate::incidents::State as IncidentState;
use crate::lifecycle::{Action, Command, Refusal, Request};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What `POST …/transition` accepts. Unknown fields are refused, so a misspelled `note`
/// is an error rather than a change recorded without its reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    /// Target state.
    to: IncidentState,
    /// Free text.
    #[serde(default)]
    note: Option<String>,
}

/// What `ack`, `approve`, `resolve` and `release` accept: an optional note, so an empty
/// body is a valid request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteOnlyBody {
    /// Free text.
    #[serde(default)]
    note: Option<String>,
}

/// What `POST …/note` accepts: the note is the point of the call, so it is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    /// The note.
    text: String,
}

/// What `POST …/review` accepts: every part of the post-incident review, since the
/// close gate rests on it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    /// Why it happened.
    root_cause: String,
    /// What was learned.
    lessons_learned: String,
    /// Follow-up actions.
    actions: Vec<String>,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound(m) => error(StatusCode::NOT_FOUND, m),
            Refusal::Conflict(m) => error(StatusCode::CONFLICT, m),
            Refusal::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
            Refusal::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// Parses a JSON body (unknown fields refused). Errors, including a body over the size
/// limit (413), are JSON.
pub fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| error(r.status(), r.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {}", body_error(&e)),
        )
    })
}

/// serde's reason in words the caller wrote: no position inside a JSON text they did not
/// see as lines ("at line 1 column 28"), and "did you mean" for a near miss.
fn body_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    crate::base::yaml::de::explain(text)
}

/// [`parse_body`] for bodies whose fields are all optional: an empty body is the default.
pub fn parse_optional_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        other => parse_body(other),
    }
}

/// Sends a request to the pipeline and waits for the durable answer.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    request: Request,
) -> Result<serde_json::Value, ApiError> {
    let (reply, answer) = oneshot::channel();
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        )
    };
    state
        .commands
        .send(Command {
            actor: caller.name.clone(),
            request,
            reply,
        })
        .await
        .map_err(|_| unavailable())?;
    Ok(answer.await.map_err(|_| unavailable())??)
}

async fn act(state: &AppState, caller: &Caller, id: String, action: Action) -> ApiResult {
    let incident = submit(state, caller, Request::Incident { id, action }).await?;
    Ok(Json(incident).into_response())
}

/// `POST .../ack` `{"note"?}` (responder): moves the incident to `acknowledged`, which
/// stops the time-to-acknowledge clock; the note goes on the timeline.
pub async fn ack(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: NoteOnlyBody = parse_optional_body(body)?;
    act(&state, &caller, id, Action::Ack { note: body.note }).await
}

/// `POST .../transition` `{"to", "note"?}` (responder).
pub async fn transition(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: TransitionBody = parse_body(body)?;
    let action = Action::Transition {
        to: body.to,
        note: body.note,
    };
    act(&state, &caller, id, action).await
}

/// `POST .../note` `{"text"}` (responder): adds a timeline note without changing the
/// state; blank text is refused.
pub async fn note(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: NoteBody = parse_body(body)?;
    act(&state, &caller, id, Action::Note { text: body.text }).await
}

/// `POST .../review` `{"root_cause", "lessons_learned", "actions"}` (responder).
pub async fn review(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: ReviewBody = parse_body(body)?;
    let action = Action::Review {
        root_cause: body.root_cause,
        lessons_learned: body.lessons_learned,
        actions: body.actions,
    };
    act(&state, &caller, id, action).await
}

/// `POST .../approve` `{"note"?}` (approver): external roles may now be notified.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Approver)?;
    let body: NoteOnlyBody = parse_optional_body(body)?;
    act(&state, &caller, id, Action::Approve { note: body.note }).await
}

/// `POST .../resolve` `{"note"?}` (responder): to closed in one recorded step where the
/// rules of closing allow it.
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: NoteOnlyBody = parse_optional_body(body)?;
    act(&state, &caller, id, Action::Resolve { note: body.note }).await
}

/// `POST .../release` `{"note"?}` (responder): lifts the incident's containments now.
pub async fn release(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: NoteOnlyBody = parse_optional_body(body)?;
    act(&state, &caller, id, Action::Release { note: body.note }).await
}

/// `POST /api/v1/drills` `{"rule"}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    /// Rule whose response path is exercised.
    pub rule: String,
}

/// `POST /api/v1/drills` (responder): opens a drill incident for a rule, sent through the
/// live escalation and receivers; answers 201 with the incident once it is durable.
pub async fn drill(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    require(&caller, ApiRole::Responder)?;
    let body: DrillBody = parse_body(body)?;
    let incident = submit(&state, &caller, Request::Drill { rule: body.rule }).await?;
    Ok((StatusCode::CREATED, Json(incident)).into_response())
}
