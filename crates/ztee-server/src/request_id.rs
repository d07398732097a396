//! `X-Request-ID` on every response, and error bodies that name it.
//!
//! The id comes from the caller's `X-Request-ID` header when it is a sane token (so a caller can
//! tie its own logs to ours), and is generated otherwise. Ids from callers are limited in length
//! and character set because they end up in logs and the audit trail, and an id that looks like a
//! card number (a run of 13 or more digits) or holds anything the DLP engine finds is replaced by
//! a generated one: it is neither echoed, logged nor recorded.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::dlp::DlpEngine;
use crate::error::ActionError;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// The id of the request being served; handlers find it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Accepts a caller-supplied id made of `[A-Za-z0-9._:-]`, 1 to 128 characters, without a
    /// run of 13 or more digits (the length of a card number).
    pub fn from_caller(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
            && !crate::audit::has_pan_like_digits(value);
        ok.then(|| Self(value.to_owned()))
    }

    /// [`RequestId::from_caller`], and refused when the DLP engine finds anything in it (a card
    /// number written with separators, a secret).
    pub fn from_caller_scanned(value: &str, dlp: &dyn DlpEngine) -> Option<Self> {
        Self::from_caller(value).filter(|id| !crate::audit::has_sensitive_data(dlp, id.as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Middleware: assigns the id, then makes sure every error response carries the JSON error body
/// with that id, whichever layer produced it.
pub async fn layer(
    State(dlp): State<Arc<dyn DlpEngine>>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| RequestId::from_caller_scanned(v, dlp.as_ref()))
        .unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(id.clone());

    let response = next.run(request).await;
    let mut response = finish_error(response, &id).await;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

async fn finish_error(mut response: Response, id: &RequestId) -> Response {
    if let Some(err) = response.extensions_mut().remove::<ActionError>() {
        let mut rendered = crate::error::render(&err.with_request_id(id.as_str()));
        copy_auth_headers(&response, &mut rendered);
        return rendered;
    }
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Foreign error bodies are short plain text (axum rejections); cap what we read anyway.
    let limited = http_body_util::Limited::new(body, 4096);
    let text = match limited.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let mut rendered = crate::error::render_foreign(parts.status, &text, id.as_str());
    for (name, value) in parts.headers.iter() {
        if name == header::ALLOW || name == header::WWW_AUTHENTICATE {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}

fn copy_auth_headers(from: &Response, to: &mut Response) {
    for (name, value) in from.headers().iter() {
        if name == header::WWW_AUTHENTICATE || name == header::ALLOW {
            to.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::RequestId;

    #[test]
    fn caller_ids_that_look_like_card_numbers_are_refused() {
        let dlp = crate::dlp_engine::ZteeDlp::new(Default::default()).unwrap();
        let ok = |v: &str| RequestId::from_caller_scanned(v, &dlp).is_some();
        assert!(ok("trace-42"));
        assert!(ok("550e8400-e29b-41d4-a716-446655440000"));
        assert!(ok("node-10.0.0.5"));
        assert!(!ok("4111111111111111"));
        assert!(!ok("1234567890123456"));
        assert!(!ok("4111-1111-1111-1111"));
        assert!(!ok("ref:5500000000000004"));
        assert!(!ok(""));
        assert!(!ok("a b"));
    }
}
