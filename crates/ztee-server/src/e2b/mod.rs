//! The E2B-compatible door: the official E2B SDKs (`e2b`, `e2b-code-interpreter`, in Python and
//! JavaScript) pointed at ztee with `E2B_API_URL`, `E2B_SANDBOX_URL` and `E2B_API_KEY` run
//! unchanged, and every call they make becomes a ztee [`Action`](crate::action::Action) run by
//! [`action::execute`](crate::action::execute): the same authentication, policy, DLP, approvals
//! and audit as the REST API.
//!
//! ```text
//! control.rs      /v2/sandboxes, /sandboxes/{id}[/timeout], /v2/sandboxes/{id}/connect
//!                 (X-API-KEY: a ztee API key)
//! envd.rs         /process.Process/*, /filesystem.Filesystem/* (Connect, JSON codec),
//!                 /files, /health        (X-Access-Token: the sandbox's access token)
//! interpreter.rs  /execute, /contexts    (the code interpreter, same token)
//! connect.rs      the Connect protocol: envelopes, errors
//! access.rs       sandbox access tokens
//! ```
//!
//! The SDKs name the sandbox of an envd or interpreter call in `E2b-Sandbox-Id` (they do when
//! `E2B_SANDBOX_URL` is set), so one listener serves the control plane and every sandbox; the
//! paths do not overlap the REST API's `/v1/...`.

mod access;
mod connect;
mod control;
mod envd;
mod filesystem;
mod interpreter;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::auth::Caller;
use crate::error::ActionError;
use crate::state::AppState;

pub use access::AccessTokens;

/// The envd version ztee answers as: the SDKs enable what that version has (stdin, closing
/// stdin, octet-stream uploads) and refuse, on their side, what it lacks (file metadata).
pub const ENVD_VERSION: &str = "0.5.7";

/// What the door keeps per sandbox besides the core's state: its access-token grants and the
/// template name it was created from.
#[derive(Default)]
pub struct Door {
    pub tokens: AccessTokens,
    templates: Mutex<HashMap<String, String>>,
}

impl Door {
    fn remember_template(&self, sandbox: &str, template: &str) {
        self.templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sandbox.to_owned(), template.to_owned());
    }

    fn template(&self, sandbox: &str) -> Option<String> {
        self.templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sandbox)
            .cloned()
    }

    fn forget(&self, sandbox: &str) {
        self.tokens.forget(sandbox);
        self.templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox);
    }
}

/// The door's routes, merged into the gateway's router.
pub(crate) fn router(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    control::routes(state)
        .merge(envd::routes(state))
        .merge(interpreter::routes(state))
}

/// An error as the E2B API and envd's HTTP routes answer it: `{"code": <status>, "message"}`.
/// The request id is in the `x-request-id` header, as on every answer.
pub struct E2bError(pub ActionError);

impl From<ActionError> for E2bError {
    fn from(e: ActionError) -> Self {
        Self(e)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = crate::error::status_of(e.kind);
        let message = format!("{} ({})", e.message, e.code);
        let mut response = (
            status,
            axum::Json(serde_json::json!({"code": status.as_u16(), "message": message})),
        )
            .into_response();
        if let Some(retry) = e.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry.into());
        }
        response
    }
}

/// A caller of the control plane, authenticated by `X-API-KEY` (a ztee API key, or an OIDC
/// token) like any REST caller by its bearer token.
pub struct ApiCaller(pub Caller);

impl FromRequestParts<Arc<AppState>> for ApiCaller {
    type Rejection = E2bError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or((
                "missing_credentials",
                ActionError::unauthenticated(
                    "missing X-API-KEY header; set E2B_API_KEY to a ztee API key",
                ),
            ));
        crate::auth::authenticate(parts, state, key)
            .await
            .map(ApiCaller)
            .map_err(|rejection| E2bError(rejection.0))
    }
}

/// A caller inside one sandbox (envd, code interpreter): `E2b-Sandbox-Id` names the sandbox and
/// `X-Access-Token` is the token the create or connect answer gave that principal for it.
pub struct SandboxCaller {
    pub caller: Caller,
    pub sandbox: String,
}

/// A sandbox id as ztee makes them (`sbx_` and 32 hex digits); anything else is refused
/// before it is used.
fn valid_sandbox_id(id: &str) -> bool {
    id.strip_prefix("sbx_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl FromRequestParts<Arc<AppState>> for SandboxCaller {
    type Rejection = E2bError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let sandbox = header_value(&parts.headers, "e2b-sandbox-id").ok_or_else(|| {
            ActionError::bad_request(
                "missing E2b-Sandbox-Id header; point the SDK at ztee with E2B_SANDBOX_URL",
            )
        })?;
        if !valid_sandbox_id(sandbox) {
            return Err(ActionError::bad_request(
                "E2b-Sandbox-Id is not a sandbox id (sbx_ and 32 hex digits)",
            )
            .into());
        }
        let sandbox = sandbox.to_owned();
        // The code interpreter's context calls send the token as the traffic token.
        let principal = header_value(&parts.headers, "x-access-token")
            .or_else(|| header_value(&parts.headers, "e2b-traffic-access-token"))
            .ok_or((
                "missing_credentials",
                ActionError::unauthenticated(
                    "missing X-Access-Token header; use the token the create or connect \
                     answer gave",
                ),
            ))
            .and_then(|token| {
                state.e2b.tokens.principal(&sandbox, token).ok_or((
                    "bad_access_token",
                    ActionError::unauthenticated(
                        "X-Access-Token not accepted for this sandbox (unknown or wrong)",
                    ),
                ))
            });
        // A token lives no longer than the API key it was issued under: a revoked key's
        // tokens stop working with it.
        let principal = match principal {
            Ok(principal) if principal.method == crate::principal::AuthMethod::ApiKey => {
                let subject = principal.subject.clone();
                let current = state
                    .store
                    .run(move |s| crate::apikey::resolve(s, &subject))
                    .await
                    .map_err(|e| E2bError(ActionError::internal(e)))?;
                match current {
                    Ok(_) => Ok(principal),
                    Err(rejection) => Err((
                        rejection.as_str(),
                        ActionError::unauthenticated(
                            "X-Access-Token not accepted: the API key it was issued under is \
                             no longer valid (revoked or removed)",
                        ),
                    )),
                }
            }
            other => other,
        };
        let principal = match principal {
            Ok(principal) => principal,
            Err((reason, err)) => {
                // Counted and recorded like any refused credential.
                let rejection = crate::auth::authenticate(parts, state, Err((reason, err))).await;
                return Err(match rejection {
                    Err(rejection) => E2bError(rejection.0),
                    Ok(_) => E2bError(ActionError::internal("a refused token was accepted")),
                });
            }
        };
        if state.sandboxes.get(&sandbox).is_none() {
            // Its token was good, the sandbox is gone (killed, expired): what envd's proxy
            // answers for a sandbox that no longer runs. Its grants go with it.
            state.e2b.forget(&sandbox);
            return Err(sandbox_gone(&sandbox));
        }
        let caller = crate::auth::caller_for(parts, state, principal, None)
            .map_err(|rejection| E2bError(rejection.0))?;
        Ok(SandboxCaller { caller, sandbox })
    }
}

/// The answer for a call into a sandbox that no longer runs (502, as E2B's edge answers it).
fn sandbox_gone(sandbox: &str) -> E2bError {
    E2bError(ActionError::new(
        crate::error::ErrorKind::BadGateway,
        "sandbox_not_found",
        format!("The sandbox {sandbox} was not found: it was killed or its timeout passed"),
    ))
}

/// A guest path as E2B callers give them: absolute, or relative to the sandbox user's home.
fn guest_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!(
            "{}/{}",
            crate::approvals::inputs::GUEST_HOME,
            path.trim_start_matches("./")
        )
    }
}
