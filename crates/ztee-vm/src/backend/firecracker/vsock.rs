//! Host end of Firecracker's hybrid vsock (docs/vsock.md): the guest's vsock device is backed by
//! a Unix socket on the host. To reach a port the guest listens on, the host connects to that
//! socket, writes `CONNECT <port>\n` and reads `OK <host port>\n`; from then on the stream is
//! the guest connection. Anything else (no listener in the guest, a garbled or missing answer)
//! closes or fails the handshake, and the caller retries until its deadline.
//!
//! Every attempt is bounded: a VMM can accept the connection and never answer (Firecracker
//! before the guest's vsock driver is up; vhost-device-vsock whose worker stopped), and an
//! attempt that waited on it unbounded would hang its caller past any deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// `OK ` plus a u32 and a newline fits in this; a longer line is not Firecracker's answer.
const MAX_ANSWER: usize = 32;

/// The first attempt's bound on the answer to `CONNECT`; each unanswered attempt doubles it, up to
/// [`MAX_ATTEMPT`], and no attempt outlives the caller's deadline. A live VMM answers in
/// microseconds; the growth gives a slow host room without a slow first retry.
const FIRST_ATTEMPT: Duration = Duration::from_millis(250);
const MAX_ATTEMPT: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("vsock socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock socket {path} closed the connection to guest port {port} (nothing listens there yet?)")]
    Closed { path: PathBuf, port: u32 },
    #[error("vsock socket {path} answered CONNECT {port} with {answer:?}, not `OK <port>`")]
    BadAnswer {
        path: PathBuf,
        port: u32,
        answer: String,
    },
    #[error("vsock socket {path} took CONNECT {port} but did not answer within {waited:?}")]
    NoAnswer {
        path: PathBuf,
        port: u32,
        waited: Duration,
    },
    #[error("guest vsock port {port} behind {path} did not accept a connection in time: {last}")]
    Timeout {
        path: PathBuf,
        port: u32,
        last: String,
    },
}

/// Connects to guest `port` through the hybrid vsock socket at `uds`, once, waiting at most
/// `bound` for the answer. Returns the stream and the host-side port Firecracker assigned.
pub async fn connect_once(
    uds: &Path,
    port: u32,
    bound: Duration,
) -> Result<(UnixStream, u32), HandshakeError> {
    match tokio::time::timeout(bound, attempt(uds, port)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::NoAnswer {
            path: uds.to_path_buf(),
            port,
            waited: bound,
        }),
    }
}

async fn attempt(uds: &Path, port: u32) -> Result<(UnixStream, u32), HandshakeError> {
    let io = |source| HandshakeError::Io {
        path: uds.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(uds).await.map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io)?;
    // Byte by byte: whatever follows the newline belongs to the guest connection.
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(io)?;
        if n == 0 {
            return Err(HandshakeError::Closed {
                path: uds.to_path_buf(),
                port,
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        answer.push(byte[0]);
        if answer.len() >= MAX_ANSWER {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let host_port = text
        .strip_prefix("OK ")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|_| answer.len() < MAX_ANSWER);
    match host_port {
        Some(host_port) => Ok((stream, host_port)),
        None => Err(HandshakeError::BadAnswer {
            path: uds.to_path_buf(),
            port,
            answer: crate::guest_text::sanitize_guest_text(&text),
        }),
    }
}

/// Retries [`connect_once`] until the guest accepts or `deadline` passes: after boot or a
/// restore the agent needs a moment before it listens.
pub async fn connect(
    uds: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, HandshakeError> {
    let mut bound = FIRST_ATTEMPT;
    let mut last: Option<HandshakeError> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HandshakeError::Timeout {
                path: uds.to_path_buf(),
                port,
                last: last.map_or_else(|| "no attempt was made".into(), |e| e.to_string()),
            });
        }
        let cut_by_deadline = remaining < bound;
        match connect_once(uds, port, bound.min(remaining)).await {
            Ok((stream, _)) => return Ok(stream),
            // An attempt the deadline cut short says less than the one before it.
            Err(HandshakeError::NoAnswer { .. }) if cut_by_deadline && last.is_some() => {}
            Err(err) => {
                if matches!(err, HandshakeError::NoAnswer { .. }) {
                    bound = (bound * 2).min(MAX_ATTEMPT);
                }
                last = Some(err);
            }
        }
        tokio::time::sleep(Duration::from_millis(5).min(remaining)).await;
    }
}
