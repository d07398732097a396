//! `/v1/sandboxes` and `/v1/run`: the REST door of the action core. Each handler parses its
//! request into an [`Action`], hands it to [`action::execute`] and renders the [`Outcome`];
//! who may see and use a sandbox, and every stage an action passes, live in `action/`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::{CreateSandbox, FileQuery, OneShotRun, RunCommand};
use super::wants_stream;
use crate::action::{self, Action, Delivery, FileContent, Outcome};
use crate::auth::Caller;
use crate::error::{ActionError, ErrorKind};
use crate::principal::Permission;
use crate::state::AppState;

pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ActionError> {
    body.map(|Json(v)| v).map_err(|rejection| {
        let (kind, code) = json_rejection_kind(&rejection);
        ActionError::new(kind, code, rejection.body_text())
    })
}

fn json_rejection_kind(rejection: &JsonRejection) -> (ErrorKind, &'static str) {
    match rejection {
        JsonRejection::JsonDataError(_) => (ErrorKind::Unprocessable, "invalid_body"),
        JsonRejection::JsonSyntaxError(_) => (ErrorKind::BadRequest, "malformed_json"),
        JsonRejection::MissingJsonContentType(_) => {
            (ErrorKind::UnsupportedInput, "unsupported_media_type")
        }
        JsonRejection::BytesRejection(_) => (ErrorKind::TooLarge, "payload_too_large"),
        _ => (ErrorKind::BadRequest, "bad_request"),
    }
}

fn delivery(headers: &HeaderMap) -> Delivery {
    if wants_stream(headers) {
        Delivery::Stream
    } else {
        Delivery::Whole
    }
}

/// Runs `action` and renders what it produced as this API answers it.
async fn answer(
    state: &Arc<AppState>,
    caller: &Caller,
    action: Action,
    delivery: Delivery,
) -> Result<Response, ActionError> {
    let outcome = action::execute(state, caller, action, delivery, None).await?;
    Ok(render(outcome))
}

/// The REST rendering of every outcome.
pub(crate) fn render(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Ran(result) => Json(result).into_response(),
        Outcome::Streaming(rx) => ndjson(rx),
        Outcome::Process(attachment) => {
            let mut response = ndjson(attachment.events);
            response
                .headers_mut()
                .insert("x-ztee-pid", HeaderValue::from(attachment.pid));
            response
        }
        Outcome::Processes(processes) => Json(serde_json::json!({
            "processes": processes.iter().map(|p| serde_json::json!({
                "pid": p.pid,
                "tag": p.tag,
                "cmd": p.argv,
                "cwd": p.cwd,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Outcome::Done => StatusCode::NO_CONTENT.into_response(),
        Outcome::CodeRun(events) => ndjson(events),
        Outcome::Context(context) => Json(context).into_response(),
        Outcome::Contexts(contexts) => Json(contexts).into_response(),
        Outcome::Filesystem(result) => Json(result).into_response(),
        // No REST route starts a streaming watch (the E2B door's WatchDir does) or an LLM
        // exchange (the LLM door renders its own).
        Outcome::Watch(_) => {
            ActionError::internal("a streaming watch is not served over REST").into_response()
        }
        Outcome::Llm(_) => {
            ActionError::internal("a model's answer is not served over REST").into_response()
        }
        Outcome::ToolsPinned(set) => Json(set).into_response(),
        Outcome::Held(ticket) => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, ticket.link.clone())],
            Json(ticket.summary()),
        )
            .into_response(),
        Outcome::Created(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Outcome::Deleted => StatusCode::NO_CONTENT.into_response(),
        Outcome::Sandboxes(views) => Json(serde_json::json!({"sandboxes": views})).into_response(),
        Outcome::Sandbox(view) => Json(view).into_response(),
        Outcome::Written {
            path,
            size,
            redactions,
        } => Json(serde_json::json!({
            "path": path,
            "size": size,
            "redactions": redactions,
        }))
        .into_response(),
        Outcome::File(FileContent::Whole {
            content,
            redactions,
        }) => {
            let summary: Vec<String> = redactions.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut response = (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                content,
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&summary.join(",")) {
                response.headers_mut().insert("x-ztee-redactions", v);
            }
            response
        }
        Outcome::File(FileContent::Stream(rx)) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let item = rx.recv().await?;
                Some((item, rx))
            });
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Body::from_stream(stream),
            )
                .into_response()
        }
    }
}

/// An NDJSON response: one JSON object per line, flushed as produced.
pub(crate) fn ndjson<T: serde::Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

pub async fn run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<OneShotRun>, JsonRejection>,
) -> Result<Response, ActionError> {
    let action = Action::Run(json_body(body)?);
    answer(&state, &caller, action, delivery(&headers)).await
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ActionError> {
    answer(&state, &caller, Action::ListSandboxes, Delivery::Whole).await
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sandbox): Path<String>,
) -> Result<Response, ActionError> {
    answer(
        &state,
        &caller,
        Action::ShowSandbox { sandbox },
        Delivery::Whole,
    )
    .await
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: Result<Json<CreateSandbox>, JsonRejection>,
) -> Result<Response, ActionError> {
    let action = Action::CreateSandbox(json_body(body)?);
    answer(&state, &caller, action, Delivery::Whole).await
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sandbox): Path<String>,
) -> Result<Response, ActionError> {
    answer(
        &state,
        &caller,
        Action::DeleteSandbox { sandbox },
        Delivery::Whole,
    )
    .await
}

pub async fn command(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sandbox): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RunCommand>, JsonRejection>,
) -> Result<Response, ActionError> {
    let command = json_body(body)?;
    let action = Action::Exec { sandbox, command };
    answer(&state, &caller, action, delivery(&headers)).await
}

pub async fn upload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sandbox): Path<String>,
    query: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ActionError> {
    // Refused before the body is read, which only happens once a transfer place is held, and
    // never past the limit.
    caller.require(Permission::SandboxRun)?;
    let Query(q) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    action::checks::check_guest_path("path", &q.path)?;
    let _permit = action::transfer::permit(&state, &caller)?;
    let content = read_body(body, state.config.limits.max_file_bytes).await?;
    let action = Action::WriteFile {
        sandbox,
        path: q.path,
        content,
    };
    answer(&state, &caller, action, Delivery::Whole).await
}

pub async fn download(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sandbox): Path<String>,
    query: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, ActionError> {
    let Query(q) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    let action = Action::ReadFile {
        sandbox,
        path: q.path,
    };
    answer(&state, &caller, action, Delivery::Whole).await
}

/// Reads an upload body, never past `limit` bytes (413 `payload_too_large` beyond it), so
/// parallel uploads cannot buffer more than the limit each, times the transfer limits.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ActionError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return action::transfer::too_large(limit);
            }
            source = err.source();
        }
        ActionError::bad_request("the request body could not be read")
    })
}
