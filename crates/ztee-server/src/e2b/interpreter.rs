//! The code interpreter (E2B's port 49999): `POST /execute` streams a run's events as NDJSON,
//! and `/contexts` manages the code contexts that keep state between runs. Each call is an
//! action of the core (`action::code`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::{guest_path, E2bError, SandboxCaller};
use crate::action::code::{Language, RunCode};
use crate::action::{self, Action, ActionError, Delivery, Outcome};
use crate::state::AppState;

pub(super) fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let limit = state.config.limits.max_json_body_bytes;
    Router::new()
        .route("/execute", post(execute))
        .route("/contexts", get(list).post(create))
        .route("/contexts/{id}", delete(remove))
        .route("/contexts/{id}/restart", post(restart))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}

#[derive(Debug, Deserialize)]
struct ExecuteRequest {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct ContextRequest {
    language: Option<String>,
    cwd: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, E2bError> {
    serde_json::from_slice(body).map_err(|e| {
        E2bError(ActionError::bad_request(format!(
            "the request body is not valid JSON of the expected shape: {e}"
        )))
    })
}

fn unexpected() -> E2bError {
    E2bError(ActionError::internal(
        "the action answered with something else",
    ))
}

/// `POST /execute`: the run's events, one JSON object per line, as they happen.
async fn execute(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    body: Bytes,
) -> Result<Response, E2bError> {
    let request: ExecuteRequest = parse(&body)?;
    if request.context_id.is_some() && request.language.is_some() {
        return Err(ActionError::bad_request("give context_id or language, not both").into());
    }
    let language = Language::parse(request.language.as_deref())?;
    let action = Action::RunCode {
        sandbox: access.sandbox,
        run: RunCode {
            code: request.code,
            context: request.context_id,
            language,
            env: request.env_vars.unwrap_or_default(),
            timeout_s: None,
        },
    };
    match action::execute(&state, &access.caller, action, Delivery::Stream, None).await? {
        Outcome::CodeRun(events) => {
            let stream = futures_util::stream::unfold(events, |mut events| async move {
                let event = events.recv().await?;
                let mut line = serde_json::to_string(&event).unwrap_or_default();
                line.push('\n');
                Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), events))
            });
            Ok((
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(stream),
            )
                .into_response())
        }
        _ => Err(unexpected()),
    }
}

async fn create(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    body: Bytes,
) -> Result<Response, E2bError> {
    let request: ContextRequest = parse(&body)?;
    let action = Action::CreateContext {
        sandbox: access.sandbox,
        language: Language::parse(request.language.as_deref())?,
        cwd: request.cwd.as_deref().map(guest_path),
    };
    match action::execute(&state, &access.caller, action, Delivery::Whole, None).await? {
        Outcome::Context(context) => Ok(Json(context).into_response()),
        _ => Err(unexpected()),
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
) -> Result<Response, E2bError> {
    let action = Action::ListContexts {
        sandbox: access.sandbox,
    };
    match action::execute(&state, &access.caller, action, Delivery::Whole, None).await? {
        Outcome::Contexts(contexts) => Ok(Json(contexts).into_response()),
        _ => Err(unexpected()),
    }
}

async fn remove(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    Path(context): Path<String>,
) -> Result<Response, E2bError> {
    let action = Action::RemoveContext {
        sandbox: access.sandbox,
        context,
    };
    action::execute(&state, &access.caller, action, Delivery::Whole, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restart(
    State(state): State<Arc<AppState>>,
    access: SandboxCaller,
    Path(context): Path<String>,
) -> Result<Response, E2bError> {
    let action = Action::RestartContext {
        sandbox: access.sandbox,
        context,
    };
    action::execute(&state, &access.caller, action, Delivery::Whole, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
