//! The HTTP API: routes, and the checks every handler shares.

mod approvals;
mod ops;
pub(crate) mod sandboxes;
mod secrets;
pub mod types;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// Every route of the API. `openapi.rs` documents exactly these (a test checks it).
#[cfg(test)]
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
        .route("/v1/run", post(sandboxes::run))
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
    if state.config.e2b.enabled {
        router = router.merge(crate::e2b::router(&state));
    }
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
