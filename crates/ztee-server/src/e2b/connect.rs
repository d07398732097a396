//! The Connect protocol (connectrpc.com/docs/protocol), JSON codec only, as the E2B SDKs speak
//! it to a sandbox's `envd`: unary calls are `application/json` request and response bodies;
//! server-streaming calls send one enveloped request and receive enveloped messages, then an
//! end-of-stream envelope that carries the error if there was one.
//!
//! An envelope is one flag byte (0 for a message, 2 for the end of a stream; bit 0 would mean
//! compressed, which ztee does not accept), a 4-byte big-endian length and that many bytes of
//! JSON. Every frame is bounded: a request larger than the door's limit is refused before it
//! is parsed.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ActionError, ErrorKind};

/// Flag of an end-of-stream envelope.
const END_STREAM: u8 = 0x02;
/// Flag bit of a compressed message.
const COMPRESSED: u8 = 0x01;

/// A Connect error: one of the protocol's codes and a message.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
}

/// The Connect error codes ztee answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unimplemented,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::FailedPrecondition => "failed_precondition",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status of a unary error with this code (the protocol's mapping).
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl From<ActionError> for ConnectError {
    fn from(e: ActionError) -> Self {
        let code = match e.kind {
            ErrorKind::BadRequest | ErrorKind::UnsupportedInput | ErrorKind::Unprocessable => {
                Code::InvalidArgument
            }
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            // A hold is a refusal here: a process call cannot wait for a human.
            ErrorKind::Forbidden | ErrorKind::Held => Code::PermissionDenied,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Conflict => Code::FailedPrecondition,
            ErrorKind::TooLarge | ErrorKind::RateLimited => Code::ResourceExhausted,
            ErrorKind::BadGateway | ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
        };
        let message = match &e.request_id {
            Some(id) => format!("{} ({}; request {id})", e.message, e.code),
            None => format!("{} ({})", e.message, e.code),
        };
        Self { code, message }
    }
}

/// A unary error response.
impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        (
            self.code.status(),
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .unwrap_or("")
}

fn parse_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ConnectError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ConnectError::invalid(format!("{what} is not a valid message: {e}")))
}

/// The request of a unary call.
pub fn unary_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ConnectError> {
    match content_type(headers) {
        "application/json" => parse_json("the request body", body),
        "application/proto" => Err(ConnectError::new(
            Code::Unimplemented,
            "ztee speaks the Connect protocol with the JSON codec only; \
             send Content-Type: application/json",
        )),
        other => Err(ConnectError::invalid(format!(
            "Content-Type {other:?} is not a Connect unary type; send application/json"
        ))),
    }
}

/// The one request message of a server-streaming call.
pub fn stream_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ConnectError> {
    match content_type(headers) {
        "application/connect+json" => {}
        "application/connect+proto" => {
            return Err(ConnectError::new(
                Code::Unimplemented,
                "ztee speaks the Connect protocol with the JSON codec only; \
                 send Content-Type: application/connect+json",
            ))
        }
        other => {
            return Err(ConnectError::invalid(format!(
                "Content-Type {other:?} is not a Connect streaming type; send \
                 application/connect+json"
            )))
        }
    }
    let (flags, message, rest) = envelope(body)?;
    if flags & COMPRESSED != 0 {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "compressed messages are not accepted; send them uncompressed",
        ));
    }
    if flags != 0 {
        return Err(ConnectError::invalid(format!(
            "the request envelope has flags {flags:#04x}; a request message has 0"
        )));
    }
    if !rest.is_empty() {
        return Err(ConnectError::invalid(
            "a server-streaming call takes exactly one request message; more bytes follow it",
        ));
    }
    parse_json("the request message", message)
}

/// Splits one envelope off `body`: its flags, its message and what follows.
fn envelope(body: &[u8]) -> Result<(u8, &[u8], &[u8]), ConnectError> {
    if body.len() < 5 {
        return Err(ConnectError::invalid(format!(
            "the request holds {} bytes; an envelope is at least 5 (flags and length)",
            body.len()
        )));
    }
    let flags = body[0];
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[5..];
    if rest.len() < length {
        return Err(ConnectError::invalid(format!(
            "the envelope announces {length} bytes but {} follow",
            rest.len()
        )));
    }
    Ok((flags, &rest[..length], &rest[length..]))
}

/// A unary success response.
pub fn unary_response<T: Serialize>(message: &T) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(message).unwrap_or_else(|_| "{}".into()),
    )
        .into_response()
}

fn frame(flags: u8, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + json.len());
    out.put_u8(flags);
    out.put_u32(json.len() as u32);
    out.put_slice(json);
    out.freeze()
}

/// One message of a server stream.
pub fn message_frame<T: Serialize>(message: &T) -> Bytes {
    frame(
        0,
        &serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// The end of a server stream, with its error if it failed.
pub fn end_frame(error: Option<&ConnectError>) -> Bytes {
    let body = match error {
        Some(e) => serde_json::json!({"error": e.body()}),
        None => serde_json::json!({}),
    };
    frame(END_STREAM, body.to_string().as_bytes())
}

/// A server-streaming response whose frames come from `frames` (built with [`message_frame`]
/// and ending with [`end_frame`]). Streams answer 200 even when they fail: the error travels
/// in the end-of-stream frame.
pub fn stream_response(frames: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(frames, |mut frames| async move {
        let frame = frames.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), frames))
    });
    (
        [(header::CONTENT_TYPE, "application/connect+json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A server stream that starts with `first`, then sends the frames `frames` makes of each item
/// of `items` (given `None` once `items` ends), and `keepalive` whenever `interval` passes
/// without an item. `frames` also says whether the stream is over (its last frame then an
/// [`end_frame`]); it is over anyway once `items` ends. A caller that goes away ends it.
pub fn keepalive_stream<T: Send + 'static>(
    first: Bytes,
    mut items: tokio::sync::mpsc::Receiver<T>,
    interval: std::time::Duration,
    keepalive: Bytes,
    mut frames: impl FnMut(Option<T>) -> (Vec<Bytes>, bool) + Send + 'static,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                next = items.recv() => next,
                _ = tokio::time::sleep(interval) => {
                    if tx.send(keepalive.clone()).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let ended = next.is_none();
            let (out, over) = frames(next);
            for frame in out {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            if over || ended {
                return;
            }
        }
    });
    stream_response(rx)
}

/// A server stream that failed before its first message.
pub fn stream_error(error: ConnectError) -> Response {
    (
        [(header::CONTENT_TYPE, "application/connect+json")],
        end_frame(Some(&error)),
    )
        .into_response()
}

/// How often a process stream sends a keep-alive when the caller asks for none.
const KEEPALIVE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);

/// Parses a unary call's request, runs `call`, and answers its message or error.
pub async fn unary<T, F, Fut>(headers: &HeaderMap, body: &[u8], call: F) -> Response
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ConnectError>>,
{
    let request = match unary_request(headers, body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    match call(request).await {
        Ok(message) => unary_response(&message),
        Err(e) => e.into_response(),
    }
}

/// The keep-alive interval the caller asked for (`Keepalive-Ping-Interval`, seconds), within
/// 1 s to 5 min.
pub fn keepalive(headers: &HeaderMap) -> std::time::Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| std::time::Duration::from_secs(s.clamp(1, 300)))
        .unwrap_or(KEEPALIVE_DEFAULT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn a_streaming_request_is_one_uncompressed_envelope() {
        let body = frame(0, br#"{"a":1}"#);
        let v: serde_json::Value =
            stream_request(&headers("application/connect+json"), &body).unwrap();
        assert_eq!(v["a"], 1);

        let compressed = frame(COMPRESSED, br#"{"a":1}"#);
        let e =
            stream_request::<serde_json::Value>(&headers("application/connect+json"), &compressed)
                .unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);

        let mut two = body.to_vec();
        two.extend_from_slice(&body);
        let e = stream_request::<serde_json::Value>(&headers("application/connect+json"), &two)
            .unwrap_err();
        assert!(e.message.contains("exactly one"), "{}", e.message);

        let short = [0u8, 0, 0, 0, 9, b'{'];
        let e = stream_request::<serde_json::Value>(&headers("application/connect+json"), &short)
            .unwrap_err();
        assert!(e.message.contains("announces 9 bytes"), "{}", e.message);

        let e = stream_request::<serde_json::Value>(&headers("application/connect+json"), &[0, 0])
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);

        let e = stream_request::<serde_json::Value>(&headers("application/connect+proto"), &body)
            .unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
    }

    #[test]
    fn frames_carry_flags_length_and_json() {
        let f = message_frame(&serde_json::json!({"x": true}));
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        let end = end_frame(Some(&ConnectError::new(Code::NotFound, "gone")));
        assert_eq!(end[0], END_STREAM);
        let body: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(end_frame(None)[5..], *b"{}");
    }

    #[test]
    fn unary_requests_are_json() {
        let v: serde_json::Value =
            unary_request(&headers("application/json; charset=utf-8"), b"{\"a\":2}").unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(
            unary_request::<serde_json::Value>(&headers("application/proto"), b"")
                .unwrap_err()
                .code,
            Code::Unimplemented
        );
        assert_eq!(
            unary_request::<serde_json::Value>(&headers("application/json"), b"{")
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
    }
}
