//! `/v1/secrets`: the built-in secret store, global to all tenants, for platform operators
//! (`platform:admin`). Values go in and never come out: there is no endpoint that returns a value.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use ztee_audit::{EventType, Outcome};
use ztee_secrets::{SecretBroker, SecretError, SecretName, SecretValue};

use super::sandboxes::json_body;
use crate::audit;
use crate::auth::Caller;
use crate::error::ActionError;
use crate::principal::Permission;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value as UTF-8 text, or base64 with `"encoding": "base64"` for binary values.
    value: String,
    #[serde(default)]
    encoding: Option<String>,
}

impl std::fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutSecret([redacted])")
    }
}

fn broker(state: &AppState) -> Result<Arc<SecretBroker>, ActionError> {
    state.secrets.clone().ok_or_else(|| {
        ActionError::new(
            crate::error::ErrorKind::BadRequest,
            "secrets_unavailable",
            "this gateway has no secrets backend; configure [secrets] (see docs/secrets.md)",
        )
    })
}

fn parse_name(name: &str) -> Result<SecretName, ActionError> {
    SecretName::parse(name).map_err(|e| ActionError::bad_request(e.to_string()))
}

/// Runs a store operation off the async threads (file I/O under a lock).
async fn with_store<T: Send + 'static>(
    broker: Arc<SecretBroker>,
    op: impl FnOnce(&ztee_secrets::LocalStore) -> Result<T, SecretError> + Send + 'static,
) -> Result<T, ActionError> {
    let result = tokio::task::spawn_blocking(move || match broker.store() {
        Some(store) => op(store).map_err(|e| match e {
            SecretError::NotFound(_) => ActionError::not_found(e.to_string()),
            SecretError::InvalidName { .. }
            | SecretError::EmptyValue
            | SecretError::ValueTooLarge { .. } => ActionError::bad_request(e.to_string()),
            other => {
                tracing::error!(error = %other, "secret store failure");
                ActionError::unavailable("the secret store cannot be used; see the gateway log")
            }
        }),
        None => Err(ActionError::new(
            crate::error::ErrorKind::BadRequest,
            "secrets_unavailable",
            "the built-in secret store is off: set [secrets] master_key (see docs/secrets.md)",
        )),
    })
    .await;
    result.map_err(|e| ActionError::internal(e.to_string()))?
}

/// Records a change to the store (whether it succeeded), then answers with its result.
async fn audit_change<T>(
    state: &AppState,
    caller: &Caller,
    name: &str,
    result: Result<T, ActionError>,
) -> Result<T, ActionError> {
    let outcome = if result.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let event = audit::event(
        EventType::SecretChange,
        outcome,
        audit::audit_principal(&caller.principal),
        caller.request_id.as_str(),
        caller.origin_ip,
        Some(&format!("secret/{name}")),
    );
    state.pipeline.record(event).await?;
    result
}

/// `GET /v1/secrets`: names in the built-in store and names mapped to Vault; never values.
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ActionError> {
    caller.require(Permission::PlatformAdmin)?;
    let broker = broker(&state)?;
    let vault: Vec<String> = broker
        .vault()
        .map(|v| v.names().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let stored = if broker.store().is_some() {
        with_store(broker, |s| s.list()).await?
    } else {
        Vec::new()
    };
    let secrets: Vec<serde_json::Value> = stored
        .into_iter()
        .map(|s| serde_json::json!({"name": s.name, "source": "store", "updated_at": s.updated_at}))
        .chain(
            vault
                .into_iter()
                .map(|n| serde_json::json!({"name": n, "source": "vault"})),
        )
        .collect();
    Ok(Json(serde_json::json!({ "secrets": secrets })).into_response())
}

/// `PUT /v1/secrets/{name}`: stores or replaces a value in the built-in store.
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<PutSecret>, JsonRejection>,
) -> Result<Response, ActionError> {
    caller.require(Permission::PlatformAdmin)?;
    let name = parse_name(&name)?;
    let req = json_body(body)?;
    let bytes = match req.encoding.as_deref() {
        None | Some("utf-8") => req.value.into_bytes(),
        Some("base64") => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(req.value.as_bytes())
                .map_err(|_| ActionError::bad_request("value is not valid base64"))?
        }
        Some(other) => {
            return Err(ActionError::bad_request(format!(
                "encoding {other:?} is not supported; use utf-8 (default) or base64"
            )))
        }
    };
    let value = SecretValue::new(bytes).map_err(|e| ActionError::bad_request(e.to_string()))?;
    let broker = broker(&state)?;
    let stored = name.clone();
    let result = with_store(broker, move |s| s.put(&stored, &value)).await;
    audit_change(&state, &caller, name.as_str(), result).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v1/secrets/{name}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ActionError> {
    caller.require(Permission::PlatformAdmin)?;
    let name = parse_name(&name)?;
    let broker = broker(&state)?;
    let removed = name.clone();
    let result = with_store(broker, move |s| s.remove(&removed)).await;
    audit_change(&state, &caller, name.as_str(), result).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
