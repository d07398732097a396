//! Host end of Firecracker's hybrid vsock (docs/vsock.md): the guest's vsock device is backed by
//! a Unix socket on the host. To reach a port the guest listens on, the host connects to that
//! socket, writes `CONNECT <port>\n` and reads `OK <host port>\n`; from then on the stream is
//! the guest connection. Anything else (no listener in the guest, a garbled or missing answer)
//! closes or fails the handshake, and the caller retries until its deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// `OK ` plus a u32 and a newline fits in this; a longer line is not Firecracker's answer.
const MAX_ANSWER: usize = 32;

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
    #[error("guest vsock port {port} behind {path} did not accept a connection in time: {last}")]
    Timeout {
        path: PathBuf,
        port: u32,
        last: String,
    },
}

/// Connects to guest `port` through the hybrid vsock socket at `uds`, once. Returns the stream
/// and the host-side port Firecracker assigned.
pub async fn connect_once(uds: &Path, port: u32) -> Result<(UnixStream, u32), HandshakeError> {
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
            answer: crate::error::sanitize_guest_text(&text),
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
    loop {
        let error = match connect_once(uds, port).await {
            Ok((stream, _)) => return Ok(stream),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(HandshakeError::Timeout {
                path: uds.to_path_buf(),
                port,
                last: error.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
