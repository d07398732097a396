//! `/v1/approvals`: requests held by policy for a human, their decisions and results.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, Extensions, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::approvals::{self, callback::CallbackQuery, Approver, Status};
use crate::auth::Caller;
use crate::error::ActionError;
use crate::state::AppState;

/// Longest long-poll, in seconds.
const MAX_WAIT_S: u64 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `approved`, `executed`, `failed`, `denied` or `expired`.
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Seconds to wait for a final status (long-poll), at most 60.
    wait: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    comment: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ActionError> {
    let Query(q) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                ActionError::bad_request(format!(
                    "status {s:?} is not one of pending, approved, executed, failed, denied, expired"
                ))
            })
        })
        .transpose()?;
    let records = state.approvals.list_visible(&caller, status).await?;
    Ok(Json(serde_json::json!({ "approvals": records })).into_response())
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Response, ActionError> {
    let Query(q) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    let record = match q.wait {
        Some(w) if w > MAX_WAIT_S => {
            return Err(ActionError::bad_request(format!(
                "wait = {w} is out of range; allowed: 0 to {MAX_WAIT_S}"
            )))
        }
        Some(w) => {
            state
                .approvals
                .wait(&caller, &id, Duration::from_secs(w))
                .await?
        }
        None => state.approvals.get_visible(&caller, &id).await?,
    };
    Ok(Json(record).into_response())
}

async fn decide(
    state: Arc<AppState>,
    caller: Caller,
    id: String,
    body: axum::body::Bytes,
    approve: bool,
) -> Result<Response, ActionError> {
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ActionError::new(
                crate::error::ErrorKind::Unprocessable,
                "invalid_body",
                format!("expected {{\"comment\": \"...\"}} or no body: {e}"),
            )
        })?
    };
    let record = approvals::decide(
        &state,
        Approver::Caller(&caller),
        &id,
        approve,
        body.comment,
    )
    .await?;
    Ok(Json(record).into_response())
}

/// `POST /v1/approvals/{id}/approve` with an optional `{"comment": "..."}`.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ActionError> {
    decide(state, caller, id, body, true).await
}

pub async fn deny(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ActionError> {
    decide(state, caller, id, body, false).await
}

/// `GET|POST /v1/approvals/{id}/callback?decision=...&expires=...&approver=...&sig=...`: the
/// signed link names its approver (an API key) and is that approver's credential for this one
/// approval; a bad or expired signature, or an approver key that is gone, is a 403. `GET` only
/// answers a confirmation page (HTML, nothing decided: mail scanners and chat previews follow
/// links); `POST` decides in the approver's name.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    method: Method,
    extensions: Extensions,
    Path(id): Path<String>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Result<Response, ActionError> {
    let Query(q) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    if method != Method::POST {
        let page = approvals::callback_page(&state, &id, &q).await?;
        return Ok((
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // The URL is a credential: not cached, not sent on as a referrer, not framed.
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
                ),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            page,
        )
            .into_response());
    }
    let record = approvals::decide_by_callback(&state, &id, &q, &extensions).await?;
    Ok(Json(serde_json::json!({
        "id": record.id,
        "status": record.status,
        "by": q.approver,
        "decisions": record.decisions.len(),
        "required_approvals": record.required_approvals,
    }))
    .into_response())
}
