//! The HTTP API: routes, and the checks every handler shares.

mod approvals;
mod ops;
mod provision;
mod run;
mod sandboxes;
mod secrets;
mod transfer;
pub mod types;

pub(crate) use run::run_approved;
pub use sandboxes::policy_input;
pub(crate) use sandboxes::{command_approved, create_approved};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the API. `openapi.rs` documents exactly these (a test checks it).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/sandboxes"),
    ("post", "/v1/sandboxes"),
    ("get", "/v1/sandboxes/{id}"),
    ("delete", "/v1/sandboxes/{id}"),
    ("post", "/v1/sandboxes/{id}/commands"),
    ("get", "/v1/sandboxes/{id}/files"),
    ("put", "/v1/sandboxes/{id}/files"),
    ("post", "/v1/run"),
    ("get", "/v1/audit"),
    ("get", "/v1/approvals"),
    ("get", "/v1/approvals/{id}"),
    ("post", "/v1/approvals/{id}/approve"),
    ("post", "/v1/approvals/{id}/deny"),
    ("get", "/v1/approvals/{id}/callback"),
    ("post", "/v1/approvals/{id}/callback"),
    ("get", "/v1/secrets"),
    ("put", "/v1/secrets/{name}"),
    ("delete", "/v1/secrets/{name}"),
];

/// The Presidio-compatible DLP API (ztee-dlp), mounted under `/v1/dlp` and documented by it.
pub const DLP_ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/dlp/analyze"),
    ("post", "/v1/dlp/anonymize"),
    ("post", "/v1/dlp/deanonymize"),
    ("get", "/v1/dlp/supportedentities"),
    ("get", "/v1/dlp/recognizers"),
    ("get", "/v1/dlp/health"),
];

pub fn router(state: Arc<AppState>) -> Router {
    let dlp = state.dlp_api.clone().map(|dlp_state| {
        // Any authenticated caller may use the DLP API; it runs nothing and stores nothing.
        ztee_dlp::http::router(dlp_state).layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::require_caller,
        ))
    });
    let json_limit = state.config.limits.max_json_body_bytes;
    let file_limit = state.config.limits.max_file_bytes;
    let files = Router::new()
        .route(
            "/v1/sandboxes/{id}/files",
            get(sandboxes::download).put(sandboxes::upload),
        )
        .layer(DefaultBodyLimit::max(file_limit));
    let mut router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route(
            "/v1/sandboxes",
            get(sandboxes::list).post(sandboxes::create),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::show).delete(sandboxes::delete),
        )
        .route("/v1/sandboxes/{id}/commands", post(sandboxes::command))
        .route("/v1/run", post(run::run))
        .route("/v1/audit", get(ops::audit))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::show))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/deny", post(approvals::deny))
        .route(
            "/v1/approvals/{id}/callback",
            get(approvals::callback).post(approvals::callback),
        )
        .route("/v1/secrets", get(secrets::list))
        .route(
            "/v1/secrets/{name}",
            axum::routing::put(secrets::put).delete(secrets::delete),
        )
        .layer(DefaultBodyLimit::max(json_limit))
        .merge(files);
    router = router.merge(crate::llm::router(state.clone()));
    // MCP tools call into the REST routes above, in process.
    let rest = router
        .clone()
        .fallback(ops::not_found)
        .with_state(state.clone());
    let mcp = Router::new()
        .nest_service("/v1/mcp", crate::mcp::service(rest))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(json_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::require_caller,
        ));
    router = router.merge(mcp).route(
        "/v1/mcp-guard/{name}",
        axum::routing::any(crate::mcp::guard::relay),
    );
    if let Some(dlp) = dlp {
        router = router.nest_service("/v1/dlp", dlp);
    }
    router.fallback(ops::not_found).with_state(state)
}

/// True when the caller asked for a stream of events rather than one JSON result.
pub(crate) fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"))
}

/// Checks a caller-supplied value against the configured ceiling.
pub(crate) fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ApiError::bad_request(format!(
            "{field} = {v} is out of range; allowed: {min} to {max}"
        )));
    }
    Ok(v)
}

pub(crate) fn timeout(
    state: &AppState,
    requested: Option<u64>,
    default: u64,
) -> Result<Duration, ApiError> {
    bounded(
        "timeout_s",
        requested,
        default,
        1,
        state.config.limits.max_timeout_s,
    )
    .map(Duration::from_secs)
}

/// Environment names are what a shell accepts; values may not hold NUL (they go to execve).
pub(crate) fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 256
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(ApiError::bad_request(format!(
                "env name {k:?} is not valid; use letters, digits and _ (not starting with a digit)"
            )));
        }
        if v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "env.{k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// Guest paths are absolute, without NUL, and of sane length.
pub(crate) fn check_guest_path(field: &str, path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "{field} {path:?} must be an absolute path (starting with /) without NUL, at most 4096 bytes"
        )));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(ApiError::bad_request(format!(
            "{field} {path:?} must not contain `..`"
        )));
    }
    Ok(())
}

pub(crate) fn check_image(image: Option<&str>) -> Result<(), ApiError> {
    if let Some(image) = image {
        let ok = !image.is_empty()
            && image.len() <= 255
            && image
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
        if !ok {
            return Err(ApiError::bad_request(format!(
                "image {image:?} is not a valid image reference"
            )));
        }
    }
    Ok(())
}
