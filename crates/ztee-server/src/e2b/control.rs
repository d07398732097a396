//! The E2B control plane: create, connect, list, show, set the timeout of and kill sandboxes.
//! Each call is one action of the core; this module only translates E2B's JSON to it and back.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::{ApiCaller, E2bError, ENVD_VERSION};
use crate::action::{self, Action, ActionError, CreateSandbox, Delivery, Outcome, SandboxView};
use crate::auth::Caller;
use crate::state::AppState;

/// Most sandboxes one list page holds.
const PAGE_LIMIT: usize = 100;

pub(super) fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let limit = state.config.limits.max_json_body_bytes;
    Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(show))
        .route("/sandboxes/{id}", delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}

/// `POST /v2/sandboxes`. Fields ztee cannot honour and that would change what the caller gets
/// (auto-pause, MCP, volumes) are refused rather than ignored; network settings are ignored,
/// because a ztee sandbox has no network unless its policy grants egress.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    auto_pause: Option<bool>,
    #[serde(default)]
    mcp: Option<serde_json::Value>,
    #[serde(default)]
    volume_mounts: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct Timeout {
    timeout: Option<u64>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, E2bError> {
    serde_json::from_slice(body).map_err(|e| {
        E2bError(ActionError::bad_request(format!(
            "the request body is not valid JSON of the expected shape: {e}"
        )))
    })
}

/// What an E2B client is told about a sandbox, in the shape of E2B's `Sandbox`,
/// `SandboxDetail` and `ListedSandbox` (a superset of their required fields).
fn describe(state: &AppState, view: &SandboxView, token: Option<&str>) -> serde_json::Value {
    let template = state
        .e2b
        .template(&view.id)
        .unwrap_or_else(|| view.image.clone());
    let ends_at = view
        .expires_at
        .clone()
        .unwrap_or_else(|| view.created_at.clone());
    serde_json::json!({
        "templateID": template,
        "alias": template,
        "sandboxID": view.id,
        "clientID": "ztee",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": token,
        // The code interpreter's context calls carry only this one: the same token.
        "trafficAccessToken": token,
        "domain": null,
        "startedAt": view.created_at,
        "endAt": ends_at,
        "cpuCount": view.vcpus,
        "memoryMB": view.memory_mib,
        "diskSizeMB": 0,
        "state": "running",
        "metadata": view.metadata,
    })
}

fn grant(state: &AppState, caller: &Caller, sandbox: &str) -> Result<String, E2bError> {
    state
        .e2b
        .tokens
        .issue(sandbox, &caller.principal)
        .ok_or_else(|| {
            E2bError(ActionError::quota_exceeded(
                format!("sandbox {sandbox} already has the most principals connected to it"),
                60,
            ))
        })
}

async fn create(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    body: Bytes,
) -> Result<Response, E2bError> {
    let request: NewSandbox = parse(&body)?;
    if request.auto_pause == Some(true) {
        return Err(ActionError::bad_request(
            "autoPause is not supported: a ztee sandbox ends at its timeout",
        )
        .into());
    }
    if request.mcp.as_ref().is_some_and(|m| !m.is_null()) {
        return Err(ActionError::bad_request(
            "mcp is not supported here; use ztee's MCP gateway (/v1/mcp)",
        )
        .into());
    }
    if request
        .volume_mounts
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ActionError::bad_request("volumeMounts are not supported").into());
    }
    let image = state.config.e2b.image_for(&request.template_id);
    let action = Action::CreateSandbox(CreateSandbox {
        image,
        timeout_s: request.timeout,
        memory_mib: None,
        vcpus: None,
        env: request.env_vars.unwrap_or_default(),
        metadata: request.metadata.unwrap_or_default(),
        egress: Vec::new(),
        secrets: Vec::new(),
    });
    match action::execute(&state, &caller, action, Delivery::Whole, None).await? {
        Outcome::Created(view) => {
            state.e2b.remember_template(&view.id, &request.template_id);
            let token = grant(&state, &caller, &view.id)?;
            Ok((
                StatusCode::CREATED,
                Json(describe(&state, &view, Some(&token))),
            )
                .into_response())
        }
        Outcome::Held(ticket) => Err(ActionError::new(
            crate::error::ErrorKind::Forbidden,
            "approval_required",
            format!(
                "creating this sandbox needs a human approval ({}); once it is approved, {} \
                 names the sandbox, and Sandbox.connect(sandbox_id) reaches it",
                ticket.record.id, ticket.link
            ),
        )
        .into()),
        _ => Err(ActionError::internal("sandbox creation answered with something else").into()),
    }
}

async fn view_of(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<SandboxView, E2bError> {
    let action = Action::ShowSandbox {
        sandbox: id.to_owned(),
    };
    match action::execute(state, caller, action, Delivery::Whole, None).await? {
        Outcome::Sandbox(view) if view.vm.is_some() => Ok(view),
        Outcome::Sandbox(_) => {
            Err(ActionError::not_found(format!("sandbox {id} is no longer running")).into())
        }
        _ => Err(ActionError::internal("showing a sandbox answered with something else").into()),
    }
}

async fn show(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> Result<Response, E2bError> {
    let view = view_of(&state, &caller, &id).await?;
    Ok(Json(describe(&state, &view, None)).into_response())
}

async fn connect(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, E2bError> {
    let request: Timeout = if body.is_empty() {
        Timeout::default()
    } else {
        parse(&body)?
    };
    view_of(&state, &caller, &id).await?;
    if let Some(timeout_s) = request.timeout {
        let action = Action::SetTimeout {
            sandbox: id.clone(),
            timeout_s,
        };
        action::execute(&state, &caller, action, Delivery::Whole, None).await?;
    }
    let view = view_of(&state, &caller, &id).await?;
    let token = grant(&state, &caller, &view.id)?;
    Ok(Json(describe(&state, &view, Some(&token))).into_response())
}

async fn set_timeout(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, E2bError> {
    let request: Timeout = parse(&body)?;
    let timeout_s = request
        .timeout
        .ok_or_else(|| ActionError::bad_request("timeout (seconds) is required"))?;
    let action = Action::SetTimeout {
        sandbox: id,
        timeout_s,
    };
    action::execute(&state, &caller, action, Delivery::Whole, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn kill(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> Result<Response, E2bError> {
    let action = Action::DeleteSandbox {
        sandbox: id.clone(),
    };
    action::execute(&state, &caller, action, Delivery::Whole, None).await?;
    state.e2b.forget(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    /// `key=value` pairs joined with `&`, URL-encoded as one parameter.
    metadata: Option<String>,
    /// `running`, `paused`, or both joined with a comma.
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    ApiCaller(caller): ApiCaller,
    Query(query): Query<ListQuery>,
) -> Result<Response, E2bError> {
    let limit = query.limit.unwrap_or(PAGE_LIMIT);
    if limit == 0 || limit > PAGE_LIMIT {
        return Err(ActionError::bad_request(format!(
            "limit = {limit} is out of range; allowed: 1 to {PAGE_LIMIT}"
        ))
        .into());
    }
    let wanted: Vec<(String, String)> = match &query.metadata {
        Some(filter) => form_urlencoded::parse(filter.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        None => Vec::new(),
    };
    // ztee sandboxes are never paused: a filter without `running` matches none.
    let running_wanted = query
        .state
        .as_deref()
        .is_none_or(|s| s.split(',').any(|s| s.trim() == "running"));
    let views = match action::execute(
        &state,
        &caller,
        Action::ListSandboxes,
        Delivery::Whole,
        None,
    )
    .await?
    {
        Outcome::Sandboxes(views) => views,
        _ => {
            return Err(
                ActionError::internal("listing sandboxes answered with something else").into(),
            )
        }
    };
    let mut views: Vec<SandboxView> = views
        .into_iter()
        .filter(|v| running_wanted && v.vm.is_some())
        .filter(|v| {
            wanted
                .iter()
                .all(|(k, want)| v.metadata.get(k).and_then(|x| x.as_str()) == Some(want.as_str()))
        })
        .collect();
    views.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(after) = &query.next_token {
        views.retain(|v| v.id.as_str() > after.as_str());
    }
    let more = views.len() > limit;
    views.truncate(limit);
    let body: Vec<serde_json::Value> = views.iter().map(|v| describe(&state, v, None)).collect();
    let mut response = Json(body).into_response();
    if more {
        if let Some(last) = views.last() {
            if let Ok(value) = HeaderValue::from_str(&last.id) {
                response.headers_mut().insert("x-next-token", value);
            }
        }
    }
    Ok(response)
}
