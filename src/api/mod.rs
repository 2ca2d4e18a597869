//! The HTTP server: `/metrics`, `/healthz`, `/readyz` and the authenticated `/api/v1`.
//!
//! HTTP is this module's concern alone: the handlers for lifecycle, silences, the audit
//! export and dead letters live in its submodules and call the domain modules, which never
//! depend on the API.

pub mod audit;
pub mod dead_letters;
pub mod http;
pub mod lifecycle;
pub mod refusals;
pub mod silences;

use crate::config::{ApiRole, TokenConfig};
use crate::incidents::Incident;
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::store::Store;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::{Arc, RwLock};

use crate::base::health::Health;

/// A configured token whose secret could be read; tokens whose secret is missing are left
/// out at start, so they can never authenticate.
pub struct ApiToken {
    /// The token's configured name: the actor recorded in timelines and the audit log for
    /// its calls.
    pub name: String,
    /// The most the token may do; each role includes the ones below it.
    pub role: ApiRole,
    secret: Vec<u8>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Reads the configured tokens from their files or variables. A token whose secret is
/// missing or empty is left out with a warning naming it (never its value).
pub fn load_tokens(configs: &[TokenConfig]) -> Vec<ApiToken> {
    let mut tokens = Vec::new();
    for cfg in configs {
        let secret =
            crate::config::read_secret(cfg.token_file.as_deref(), cfg.token_env.as_deref());
        match secret {
            Ok(s) => tokens.push(ApiToken {
                name: cfg.name.clone(),
                role: cfg.role,
                secret: s.into_bytes(),
            }),
            Err(e) => {
                tracing::warn!(token = %cfg.name, reason = %e, "API token unavailable; it is disabled")
            }
        }
    }
    if tokens.is_empty() {
        tracing::warn!("no usable API token: every /api/v1 call will be refused with 401");
    }
    tokens
}

/// Shared state of the HTTP handlers.
pub struct AppState {
    /// The store incidents are read from.
    pub store: Store,
    /// The daemon's metrics, rendered by `/metrics`; the API also counts refused calls in them.
    pub metrics: Arc<Metrics>,
    /// The readiness flags `/readyz` answers from (503 with the reason while not ready).
    pub health: Arc<Health>,
    /// The rules in force for `/api/v1/rules`, swapped by a rule reload.
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    /// Tokens accepted for `/api/v1` (compared in constant time); empty refuses every call.
    pub tokens: Vec<ApiToken>,
    /// Notifications: dead letters listed and re-sent through the API.
    pub outbox: crate::notification::Outbox,
    /// Lifecycle and silence changes go to the pipeline thread, the only writer.
    pub commands: tokio::sync::mpsc::Sender<crate::lifecycle::Command>,
    /// Where refused calls are recorded.
    pub audit: crate::audit::AuditLog,
    /// Refused calls of the current minute, recorded per client once the minute is over.
    pub refusals: refusals::Refusals,
    /// Signed chain heads, when `audit.signing_key_file` is configured.
    pub anchor: Option<Arc<crate::audit::anchor::Anchor>>,
    /// Response SLAs, judged in the population export.
    pub slas: crate::incidents::sla::Slas,
}

impl AppState {
    /// Writes the refusal records of minutes that are over.
    pub fn record_due_refusals(&self) {
        let due = self.refusals.due(chrono::Utc::now());
        self.record_refusals(&due);
    }

    fn record_refusals(&self, records: &[crate::audit::Entry]) {
        if records.is_empty() {
            return;
        }
        for r in records {
            tracing::warn!(actor = %r.actor, details = %r.details, "API calls refused");
        }
        self.audit.record(records);
    }
}

/// The identity a request was made with.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Name of the token presented: the actor recorded for what the call does.
    pub name: String,
    /// The token's role, checked by [`require`] against what each call needs.
    pub role: ApiRole,
}

type Shared = Arc<AppState>;

/// Where the authenticated API is mounted.
const API_PREFIX: &str = "/api/v1";

/// Builds the router: the open `/metrics`, `/healthz` and `/readyz`, and `/api/v1` behind
/// token authentication, with request bodies capped at 64 KiB.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/incidents", get(list_incidents))
        .route("/incidents/{id}", get(get_incident))
        .route("/rules", get(list_rules))
        .route("/notifications/dead", get(dead_letters::list_dead))
        .route(
            "/notifications/dead/{id}/resend",
            axum::routing::post(dead_letters::resend),
        )
        .route("/incidents/{id}/ack", post(lifecycle::ack))
        .route("/incidents/{id}/transition", post(lifecycle::transition))
        .route("/incidents/{id}/note", post(lifecycle::note))
        .route("/incidents/{id}/review", post(lifecycle::review))
        .route("/incidents/{id}/approve", post(lifecycle::approve))
        .route("/incidents/{id}/resolve", post(lifecycle::resolve))
        .route("/incidents/{id}/release", post(lifecycle::release))
        .route("/containments", get(list_containments))
        .route("/silences", get(silences::list).post(silences::create))
        .route("/silences/{id}", delete(silences::expire))
        .route("/audit", get(audit::export))
        .route("/audit/head", get(audit::head))
        .route("/audit/accept-discrepancy", post(audit::accept_discrepancy))
        .route("/drills", post(lifecycle::drill))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .nest(API_PREFIX, api)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// An API failure, answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    /// The status answered (4xx for the caller's mistakes, 5xx for the daemon's).
    pub status: StatusCode,
    /// Why, in words the caller can act on; sent as the body's `error`.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// An [`ApiError`] with this status and message, for handlers to return with `?`.
pub fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// What API handlers return: a response, or an [`ApiError`] answered as JSON.
pub type ApiResult = Result<Response, ApiError>;

/// Compares a presented token with a secret in time that depends only on the presented
/// token's length: every byte of both is looked at, whatever matches.
fn constant_time_eq(secret: &[u8], presented: &[u8]) -> bool {
    let mut differ = u64::from(secret.len() != presented.len());
    for (i, p) in presented.iter().enumerate() {
        let s = secret.get(i).copied().unwrap_or(0);
        differ |= u64::from(s ^ p);
    }
    std::hint::black_box(differ) == 0
}

/// The token of an `Authorization: Bearer TOKEN` header, exactly: one space after the
/// scheme, a token of visible ASCII (RFC 6750 token68 and more), nothing before or after.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let token = value.strip_prefix(b"Bearer ")?;
    (!token.is_empty() && token.iter().all(|b| b.is_ascii_graphic())).then_some(token)
}

async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    // Inside `nest` the URI has lost its prefix.
    let call = format!("{} {API_PREFIX}{}", req.method(), req.uri().path());
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.ip().to_string());
    let deny = |actor: &str, status: StatusCode, reason: &'static str| {
        deny(&state, &client, actor, &call, status, reason)
    };
    let Some(presented) = presented else {
        deny("-", StatusCode::UNAUTHORIZED, "missing bearer token");
        return error(StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    let Some(token) = state
        .tokens
        .iter()
        .find(|t| constant_time_eq(&t.secret, presented))
    else {
        deny("-", StatusCode::UNAUTHORIZED, "unknown token");
        return error(StatusCode::UNAUTHORIZED, "unknown token").into_response();
    };
    req.extensions_mut().insert(Caller {
        name: token.name.clone(),
        role: token.role,
    });
    let response = next.run(req).await;
    if response.status() == StatusCode::FORBIDDEN {
        deny(&token.name, StatusCode::FORBIDDEN, "role too small");
    }
    response
}

/// Counts a refused call (`logwarden_api_refused_total`) and tallies it for the audit log
/// (CC6.1 evidence): one record per client, actor, status and minute.
fn deny(
    state: &AppState,
    client: &str,
    actor: &str,
    call: &str,
    status: StatusCode,
    reason: &'static str,
) {
    state
        .metrics
        .api_refused
        .with_label_values(&[status.as_str()])
        .inc();
    let due = state.refusals.refuse(
        client,
        actor,
        call,
        status.as_u16(),
        reason,
        chrono::Utc::now(),
    );
    state.record_refusals(&due);
}

/// A role as the config spells it.
fn role_name(role: ApiRole) -> String {
    format!("{role:?}").to_lowercase()
}

/// Refuses a call whose token role is below `needed`.
pub fn require(caller: &Caller, needed: ApiRole) -> Result<(), ApiError> {
    if caller.role >= needed {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} has role {}; this call needs {}",
                caller.name,
                role_name(caller.role),
                role_name(needed)
            ),
        ))
    }
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<Shared>) -> Response {
    match state.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Most incidents one page of `GET /api/v1/incidents` holds when `limit` is not given.
pub const DEFAULT_PAGE: usize = 1000;
/// Most incidents one page may hold.
pub const MAX_PAGE: usize = 10_000;

/// Filters of `GET /api/v1/incidents`, and the page: at most `limit` incidents after the
/// incident `after`, oldest first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentFilter {
    state: Option<String>,
    severity: Option<String>,
    rule: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// One page of incidents, oldest first. With tens of thousands of incidents a request reads
/// one page from the store, not all of them; a `Link: <…>; rel="next"` header names the
/// next page when there is one. Store reads run on the blocking pool, off the workers
/// that answer `/healthz` and `/metrics`.
async fn list_incidents(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(filter): Query<IncidentFilter>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let states = crate::incidents::State::ALL.map(|k| k.as_str());
    let severities = crate::rules::Severity::ALL.map(|k| k.as_str());
    for (what, value, known) in [
        ("state", &filter.state, &states[..]),
        ("severity", &filter.severity, &severities[..]),
    ] {
        if let Some(value) = value.as_deref()
            && !known.contains(&value)
        {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("unknown {what} {value:?}; one of: {}", known.join(", ")),
            ));
        }
    }
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let after = match &filter.after {
        Some(id) => Some(Incident::number(id).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("after must be an incident id like INC-7, not {id:?}"),
            )
        })?),
        None => None,
    };
    let store = state.store.clone();
    let (page, next) = tokio::task::spawn_blocking(move || {
        let (page, more) = crate::incidents::stored::page(&store, after, limit, |i| {
            filter
                .state
                .as_deref()
                .is_none_or(|s| s == i.state.as_str())
                && filter
                    .severity
                    .as_deref()
                    .is_none_or(|s| s == i.severity.as_str())
                && filter.rule.as_deref().is_none_or(|r| r == i.rule)
        })?;
        let next = more.then(|| page.last().map(|i| i.id.clone())).flatten();
        Ok::<_, crate::store::StoreError>((page, next))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut response = Json(page).into_response();
    if let Some(last) = next {
        let link = format!("</api/v1/incidents?after={last}&limit={limit}>; rel=\"next\"");
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

async fn get_incident(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let missing = || error(StatusCode::NOT_FOUND, format!("no incident {id}"));
    let number = Incident::handle_number(&id).ok_or_else(missing)?;
    let store = state.store.clone();
    let handle = id.clone();
    let record = tokio::task::spawn_blocking(move || {
        match crate::incidents::stored::read(&store, number)? {
            Some(i) if i.is_named_by(&handle) => {
                crate::response::containment::incident_record(&store, &i).map(Some)
            }
            _ => Ok::<_, crate::store::StoreError>(None),
        }
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(record.ok_or_else(missing)?).into_response())
}

/// `GET /api/v1/containments` (viewer): every containment, by incident; `?status=active`
/// (or another status) keeps those in that status.
async fn list_containments(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::extract::Query(query): axum::extract::Query<ContainmentQuery>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let wanted = match &query.status {
        Some(s) => Some(
            serde_json::from_value::<crate::response::containment::Status>(serde_json::json!(s))
                .map_err(|_| {
                    error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown status {s:?} (held, pending, active, releasing, released, refused, failed, dry_run)"),
                    )
                })?,
        ),
        None => None,
    };
    let store = state.store.clone();
    let all = tokio::task::spawn_blocking(move || crate::response::containment::all(&store))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let list: Vec<_> = all
        .into_iter()
        .filter(|c| wanted.is_none_or(|w| c.status == w))
        .collect();
    Ok(Json(list).into_response())
}

/// `GET /api/v1/containments` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainmentQuery {
    status: Option<String>,
}

async fn list_rules(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult {
    require(&caller, ApiRole::Viewer)?;
    let rules = state.rules.read().expect("rules lock").clone();
    let list: Vec<serde_json::Value> = rules
        .rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id(),
                "file": r.file,
                "hash": r.hash,
                "definition": r.def,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "version": rules.version, "rules": list })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_syntax_is_exact_and_the_comparison_covers_every_byte() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        for bad in [
            &b"Bearer abc "[..],
            b"Bearer  abc",
            b"Bearer abc\t",
            b"bearer abc",
            b"Bearer ",
            b"Basic abc",
            b" Bearer abc",
        ] {
            assert_eq!(
                bearer_token(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secrex"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
