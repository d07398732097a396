//! The one error type every handler returns, and how it becomes an HTTP response.
//!
//! Every error body is `{"error": {"code", "message", "request_id"}}`. Messages name what was wrong
//! and where, but never echo secrets, tokens or request bodies (which may hold card data).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::request_id::RequestId;

/// A failed request: an HTTP status, a stable machine-readable code and a message for the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds the caller should wait before retrying (429 and 503 only).
    pub retry_after_s: Option<u64>,
    /// Filled in by the request-id layer so the body names the request it answers.
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            request_id: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// Also used for objects of another tenant: their existence is not revealed.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_s: u64) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        err.retry_after_s = Some(retry_after_s.max(1));
        err
    }

    pub fn quota_exceeded(message: impl Into<String>, retry_after_s: u64) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
        err.retry_after_s = Some(retry_after_s.max(1));
        err
    }

    pub fn policy_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "policy_denied", message)
    }

    pub fn approval_required(message: impl Into<String>) -> Self {
        Self::new(StatusCode::ACCEPTED, "approval_required", message)
    }

    pub fn dlp_blocked(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "dlp_blocked", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        err.retry_after_s = Some(5);
        err
    }

    /// A fault on our side. The detail goes to the log; the caller gets the request id to quote.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has details under this request id",
        )
    }

    pub fn with_request_id(mut self, id: &RequestId) -> Self {
        self.request_id = Some(id.as_str().to_owned());
        self
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    request_id: Option<&'a str>,
}

impl ApiError {
    /// Renders the JSON body. Called by the request-id layer, which knows the request id.
    pub fn render(&self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                request_id: self.request_id.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// Turns a response that some layer produced without our error body (axum's rejections,
    /// body-limit and method errors) into an `ApiError`, keeping its status.
    pub fn from_foreign(status: StatusCode, text: &str) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            s if s.is_server_error() => "internal",
            _ => "error",
        };
        let message = if text.trim().is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text.chars().take(512).collect()
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    /// The body is rendered later by the request-id layer, which adds the request id; the error
    /// travels there in the response's extensions.
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}
