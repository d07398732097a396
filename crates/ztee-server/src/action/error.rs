//! Why an action was refused or failed, in terms every door can render.
//!
//! The core never speaks HTTP: a door maps [`ErrorKind`] to its own protocol (the REST API to
//! a status code, the E2B API to its `{"code", "message"}` body, the CLI to an exit code).
//! Messages name what was wrong and where, but never echo secrets, tokens or request bodies
//! (which may hold card data).

/// What kind of refusal or failure an [`ActionError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The action is malformed or out of bounds.
    BadRequest,
    /// No credential, or one that does not authenticate.
    Unauthenticated,
    /// The principal may not do this (a permission or a policy denial).
    Forbidden,
    /// No such object, or one of another tenant (whose existence is not revealed).
    NotFound,
    /// The object is in a state that forbids the action (held for approval, already decided).
    Conflict,
    /// An input is larger than the gateway accepts.
    TooLarge,
    /// An input of a kind the gateway cannot inspect (and so will not pass).
    UnsupportedInput,
    /// Well-formed but refused on its content (DLP, unbindable approval inputs).
    Unprocessable,
    /// A rate limit or quota: try again after `retry_after_s`.
    RateLimited,
    /// Parked for a human decision: not a failure, but not done either.
    Held,
    /// A service ztee relies on answered badly.
    BadGateway,
    /// ztee cannot do it now (shutting down, a dependency down): try again later.
    Unavailable,
    /// A fault on our side; the detail is in the server log.
    Internal,
}

/// A refused or failed action: its kind, a stable machine-readable code and a message for the
/// caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ActionError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    /// Seconds the caller should wait before retrying (rate limits and unavailability only).
    pub retry_after_s: Option<u64>,
    /// Filled in by the door that answers, so the answer names the request it answers.
    pub request_id: Option<String>,
}

impl ActionError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            retry_after_s: None,
            request_id: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, "bad_request", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "forbidden", message)
    }

    /// Also used for objects of another tenant: their existence is not revealed.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self::new(ErrorKind::RateLimited, "rate_limited", message).retry_after(retry_after_s)
    }

    pub fn quota_exceeded(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self::new(ErrorKind::RateLimited, "quota_exceeded", message).retry_after(retry_after_s)
    }

    pub fn policy_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "policy_denied", message)
    }

    pub fn approval_required(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Held, "approval_required", message)
    }

    pub fn dlp_blocked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unprocessable, "dlp_blocked", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "unavailable", message).retry_after(5)
    }

    /// A fault on our side. The detail goes to the log; the caller gets the request id to quote.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal",
            "internal error; the server log has details under this request id",
        )
    }

    /// Asks the caller to wait at least a second before trying again.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_owned());
        self
    }
}
