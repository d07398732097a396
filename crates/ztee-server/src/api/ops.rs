//! Health, readiness, metrics, the OpenAPI document and audit reads.
//!
//! `/healthz`, `/readyz` and `/openapi.json` need no credentials and reveal nothing about tenants
//! or the host; `/metrics` needs `metrics:read`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ztee_audit::{EventType, Outcome};

use super::types::AuditQuery;
use crate::audit;
use crate::auth::Caller;
use crate::error::ActionError;
use crate::principal::Permission;
use crate::state::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the state database answers. Unauthenticated, so it says `ready` and nothing else:
/// the engine and its host paths are in the start-up log and `ztee doctor`.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.run(|s| s.active_api_key_count()).await {
        Ok(_) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: state database not available");
            ActionError::unavailable("state database not available").into_response()
        }
    }
}

/// `GET /metrics`: counts for every tenant, so for callers with `metrics:read` (a scraper's API
/// key with role `metrics`, or a platform admin).
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ActionError> {
    caller.require(Permission::MetricsRead)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

/// Middleware for routers mounted from other crates: authentication and rate limit only.
pub async fn require_caller(
    caller: Caller,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _ = caller;
    next.run(request).await
}

pub async fn not_found() -> ActionError {
    ActionError::not_found("no such route; the API is described at /openapi.json")
}

/// `GET /v1/audit`: the caller's tenant's events, newest last. Reading is itself audited.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ActionError> {
    caller.require(Permission::AuditRead)?;
    let Query(q) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    let tenant = match q.tenant {
        Some(t) if t != caller.principal.tenant => {
            caller.require(Permission::PlatformAdmin)?;
            t
        }
        _ => caller.principal.tenant.clone(),
    };
    let since = q
        .since
        .as_deref()
        .map(humantime::parse_rfc3339_weak)
        .transpose()
        .map_err(|e| {
            ActionError::bad_request(format!("since: {e}; expected e.g. 2026-01-31T00:00:00Z"))
        })?;
    let event_type = q
        .event_type
        .as_deref()
        .map(str::parse::<EventType>)
        .transpose()
        .map_err(|e| ActionError::bad_request(format!("type: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ActionError::bad_request(format!(
            "limit = {limit} is out of range; allowed: 1 to 1000"
        )));
    }
    let event = audit::event(
        EventType::AuditAccess,
        Outcome::Success,
        audit::audit_principal(&caller.principal),
        caller.request_id.as_str(),
        caller.origin_ip,
        Some(&format!("audit/tenant/{tenant}")),
    );
    state.pipeline.record(event).await?;

    let query = ztee_audit::Query {
        request_id: q.request_id,
        principal: q.principal,
        tenant: Some(tenant),
        event_type,
        since,
        include_checkpoints: false,
    };
    let dir = state.audit_dir.clone();
    let records = tokio::task::spawn_blocking(move || {
        let mut out = std::collections::VecDeque::new();
        ztee_audit::read_records(&dir, &query, |r| {
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(r);
        })
        .map(|()| out)
    })
    .await
    .map_err(ActionError::internal)?
    .map_err(ActionError::internal)?;
    let records: Vec<_> = records.into_iter().collect();
    Ok((StatusCode::OK, Json(serde_json::json!({"events": records}))).into_response())
}
