//! Client for Firecracker's API socket: HTTP/1.1 over a Unix socket, one request per
//! connection, JSON bodies. Firecracker answers a successful `PUT`/`PATCH` with `204 No Content`
//! and a refused one with a 4xx whose body is `{"fault_message": "..."}`; both are parsed here
//! into [`ApiError`] so callers see what Firecracker said, not raw HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest response ztee reads from the API socket (Firecracker's are a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// What went wrong talking to Firecracker's API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Firecracker API socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Firecracker refused {method} {endpoint} ({status}): {fault_message}")]
    Refused {
        method: &'static str,
        endpoint: String,
        status: u16,
        /// Firecracker's own explanation, from the `fault_message` of its error body.
        fault_message: String,
    },
    #[error("Firecracker answered {method} {endpoint} with a malformed response: {reason}")]
    Malformed {
        method: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("Firecracker's API socket {0} did not appear in time")]
    NotReady(PathBuf),
    #[error("request body for {endpoint}: {source}")]
    Encode {
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The API socket of one Firecracker process.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until Firecracker listens on its socket (it creates it a few ms after start).
    pub async fn wait_ready(&self, deadline: Instant) -> Result<(), ApiError> {
        loop {
            if UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ApiError::NotReady(self.socket.clone()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn put(&self, endpoint: &str, body: &impl Serialize) -> Result<(), ApiError> {
        self.send("PUT", endpoint, body).await
    }

    pub async fn patch(&self, endpoint: &str, body: &impl Serialize) -> Result<(), ApiError> {
        self.send("PATCH", endpoint, body).await
    }

    async fn send(
        &self,
        method: &'static str,
        endpoint: &str,
        body: &impl Serialize,
    ) -> Result<(), ApiError> {
        let json = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            endpoint: endpoint.to_string(),
            source,
        })?;
        let response = self.request(method, endpoint, &json).await?;
        match response.status {
            200..=299 => Ok(()),
            status => Err(ApiError::Refused {
                method,
                endpoint: endpoint.to_string(),
                status,
                fault_message: fault_message(&response.body),
            }),
        }
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &self,
        method: &'static str,
        endpoint: &str,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let io = |source| ApiError::Io {
            path: self.socket.clone(),
            source,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await.map_err(io)?;
            let head = format!(
                "{method} {endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            stream.write_all(body).await.map_err(io)?;
            read_response(&mut stream, method, endpoint).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
    }
}

/// Reads one HTTP/1.1 response: status line, headers, then `Content-Length` bytes of body (or
/// none, for 204).
async fn read_response(
    stream: &mut UnixStream,
    method: &'static str,
    endpoint: &str,
) -> Result<Response, ApiError> {
    let malformed = |reason: String| ApiError::Malformed {
        method,
        endpoint: endpoint.to_string(),
        reason,
    };
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(malformed("headers too long".into()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| malformed(format!("read: {e}")))?;
        if n == 0 {
            return Err(malformed(
                "connection closed before the headers ended".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end])
        .map_err(|_| malformed("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status(status_line)
        .ok_or_else(|| malformed(format!("bad status line {status_line:?}")))?;
    let mut content_length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed(format!("bad header line {line:?}")));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| malformed(format!("bad Content-Length {:?}", value.trim())))?;
        }
    }
    if content_length > MAX_RESPONSE {
        return Err(malformed(format!(
            "body of {content_length} bytes is too large"
        )));
    }
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < content_length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| malformed(format!("read: {e}")))?;
        if n == 0 {
            return Err(malformed("connection closed inside the body".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Response { status, body })
}

fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `fault_message` of an error body, or a description of the body when it has none.
pub fn fault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(fault) => crate::guest_text::sanitize_guest_text(&fault.fault_message),
        Err(_) if body.is_empty() => "(no error body)".to_string(),
        Err(_) => format!(
            "(error body without fault_message: {})",
            crate::guest_text::sanitize_guest_text(&String::from_utf8_lossy(body))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status("HTTP/1.1 400"), Some(400));
        assert_eq!(parse_status("HTTP/2 200 OK"), None);
        assert_eq!(parse_status("HTTP/1.1 abc x"), None);
        assert_eq!(parse_status("HTTP/1.1 999 x"), None);
    }

    #[test]
    fn fault_messages() {
        assert_eq!(
            fault_message(br#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#),
            "The requested operation is not supported after starting the microVM."
        );
        assert_eq!(fault_message(b""), "(no error body)");
        assert!(fault_message(b"<html>").contains("without fault_message"));
    }
}
