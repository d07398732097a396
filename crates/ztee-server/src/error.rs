//! How an [`ActionError`] becomes an HTTP response of the REST API.
//!
//! Every error body is `{"error": {"code", "message", "request_id"}}`. The status comes from the
//! error's [`ErrorKind`]; nothing below the REST door knows about status codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::action::error::{ActionError, ErrorKind};

/// The REST API's status for each kind of refusal.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedInput => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Held => StatusCode::ACCEPTED,
        ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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

fn body(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&str>,
    retry_after_s: Option<u64>,
) -> Response {
    let body = Body {
        error: Inner {
            code,
            message,
            request_id,
        },
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after_s {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Renders the JSON body. Called by the request-id layer, which knows the request id.
pub fn render(err: &ActionError) -> Response {
    body(
        status_of(err.kind),
        err.code,
        &err.message,
        err.request_id.as_deref(),
        err.retry_after_s,
    )
}

/// Renders a response that some layer produced without our error body (axum's rejections,
/// body-limit and method errors) in our shape, keeping its status.
pub fn render_foreign(status: StatusCode, text: &str, request_id: &str) -> Response {
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
    let message: String = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.chars().take(512).collect()
    };
    body(status, code, &message, Some(request_id), None)
}

impl IntoResponse for ActionError {
    /// The body is rendered later by the request-id layer, which adds the request id; the error
    /// travels there in the response's extensions.
    fn into_response(self) -> Response {
        let mut response = status_of(self.kind).into_response();
        response.extensions_mut().insert(self);
        response
    }
}
