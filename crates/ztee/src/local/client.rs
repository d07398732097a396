//! The command line's side of a CLI-held sandbox's control socket.

use std::time::Duration;

use tokio::net::UnixStream;
use ztee_wire::message::{ExecRequest, FailureKind};
use ztee_wire::{GuestMessage, HostMessage, MAX_DATA_CHUNK};

use ztee_vm::exec::failure;
use ztee_vm::{CommandStream, ExecEvent, ExecSpec, VmError};

use super::registry::{LocalRecord, Registry};
use super::supervisor::Conn;

pub struct LocalClient {
    registry: Registry,
    record: LocalRecord,
}

/// How much longer than the supervisor's own bound on the guest the command line waits for the
/// supervisor: it answers within its bound (with the guest's answer or an error), so silence past
/// this means the supervisor itself is stuck.
const SUPERVISOR_MARGIN: Duration = Duration::from_secs(15);

/// A command running in a CLI-held sandbox.
pub struct LocalExecution {
    conn: Conn,
    finished: bool,
    /// When the command line stops waiting for the exit: the command's limit, the engine's grace
    /// and [`SUPERVISOR_MARGIN`]. `None` for a command without a limit.
    deadline: Option<tokio::time::Instant>,
}

/// The supervisor's next message, or an error once `deadline` passes.
async fn recv_before(
    conn: &mut Conn,
    deadline: Option<tokio::time::Instant>,
    what: &'static str,
) -> Result<Option<GuestMessage>, VmError> {
    let Some(deadline) = deadline else {
        return conn.recv::<GuestMessage>().await;
    };
    let started = tokio::time::Instant::now();
    tokio::time::timeout_at(deadline, conn.recv::<GuestMessage>())
        .await
        .map_err(|_| VmError::GuestUnresponsive {
            what,
            waited: deadline.saturating_duration_since(started),
        })?
}

/// The deadline for an answer the guest owes promptly, relayed by the supervisor.
fn reply_deadline() -> Option<tokio::time::Instant> {
    Some(tokio::time::Instant::now() + ztee_vm::REPLY_TIMEOUT + SUPERVISOR_MARGIN)
}

impl LocalClient {
    pub fn open(registry: Registry, id: &str) -> Result<Self, VmError> {
        let record = registry.get(id)?;
        Ok(Self { registry, record })
    }

    async fn connect(&self) -> Result<Conn, VmError> {
        let socket = self.registry.control_socket(&self.record.id);
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(|e| super::io_error("connect to sandbox supervisor", &socket, e))?;
        Ok(Conn::new(stream))
    }

    pub async fn exec(&self, spec: ExecSpec) -> Result<LocalExecution, VmError> {
        let mut conn = self.connect().await?;
        let program = spec.argv.first().cloned().unwrap_or_default();
        let deadline = spec.timeout.map(|limit| {
            tokio::time::Instant::now()
                + limit.saturating_add(ztee_vm::exec::EXIT_GRACE + SUPERVISOR_MARGIN)
        });
        conn.send(&HostMessage::Exec(ExecRequest {
            id: 1,
            argv: spec.argv,
            env: spec.env,
            cwd: spec.cwd,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            max_output_bytes: spec.max_output_bytes,
            stdin: spec.stdin,
            pty: spec.pty,
        }))
        .await?;
        match recv_before(&mut conn, reply_deadline(), "start a command").await? {
            Some(GuestMessage::Started { .. }) => Ok(LocalExecution {
                conn,
                finished: false,
                deadline,
            }),
            Some(GuestMessage::Failed { kind, message, .. }) => {
                Err(failure(kind, &message, &program))
            }
            _ => Err(VmError::ChannelClosed),
        }
    }

    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), VmError> {
        let mut conn = self.connect().await?;
        conn.send(&HostMessage::WriteFile {
            id: 1,
            path: path.to_string(),
            mode,
        })
        .await?;
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            conn.send(&HostMessage::FileChunk {
                id: 1,
                data: chunk.to_vec(),
            })
            .await?;
        }
        conn.send(&HostMessage::FileEnd { id: 1 }).await?;
        match recv_before(&mut conn, reply_deadline(), "finish a file write").await? {
            Some(GuestMessage::Done { .. }) => Ok(()),
            Some(GuestMessage::Failed { kind, message, .. }) => Err(failure(kind, &message, path)),
            _ => Err(VmError::ChannelClosed),
        }
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, VmError> {
        let mut conn = self.connect().await?;
        conn.send(&HostMessage::ReadFile {
            id: 1,
            path: path.to_string(),
        })
        .await?;
        let mut data = Vec::new();
        loop {
            match recv_before(&mut conn, reply_deadline(), "send a file's next chunk").await? {
                Some(GuestMessage::FileChunk { data: chunk, .. }) => data.extend_from_slice(&chunk),
                Some(GuestMessage::FileEnd { .. }) => return Ok(data),
                Some(GuestMessage::Failed { kind, message, .. }) => {
                    return Err(failure(kind, &message, path))
                }
                _ => return Err(VmError::ChannelClosed),
            }
        }
    }

    /// Destroys the sandbox and waits (briefly) for its supervisor to finish.
    pub async fn remove(self) -> Result<(), VmError> {
        let mut conn = self.connect().await?;
        conn.send(&HostMessage::PowerOff).await?;
        let _ = recv_before(&mut conn, reply_deadline(), "stop the sandbox").await;
        for _ in 0..100 {
            if self.registry.get(&self.record.id).is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(VmError::Guest(format!(
            "sandbox {} did not stop within 5 s",
            self.record.id
        )))
    }
}

impl CommandStream for LocalExecution {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>, VmError> {
        if self.finished {
            return Ok(None);
        }
        let next = recv_before(
            &mut self.conn,
            self.deadline,
            "end a command within its time limit",
        )
        .await;
        if next.is_err() {
            self.finished = true;
        }
        match next? {
            Some(GuestMessage::Stdout { data, .. }) => Ok(Some(ExecEvent::Stdout(data))),
            Some(GuestMessage::Stderr { data, .. }) => Ok(Some(ExecEvent::Stderr(data))),
            Some(GuestMessage::Exited { status, .. }) => {
                self.finished = true;
                Ok(Some(ExecEvent::Exit(status.into())))
            }
            Some(GuestMessage::Failed { message, .. }) => {
                self.finished = true;
                // A command that failed after it started is a guest error whatever its kind, as
                // in the engine's own stream; `failure` sanitizes the guest's text the same way.
                Err(failure(FailureKind::Io, &message, ""))
            }
            _ => {
                self.finished = true;
                Err(VmError::ChannelClosed)
            }
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), VmError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.conn
                .send(&HostMessage::Stdin {
                    id: 1,
                    data: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    async fn close_stdin(&mut self) -> Result<(), VmError> {
        self.conn.send(&HostMessage::CloseStdin { id: 1 }).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A supervisor that accepted the request and went silent does not hold the command line
    /// past the bound.
    #[tokio::test(start_paused = true)]
    async fn a_silent_supervisor_fails_the_wait_at_its_bound() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(ours);
        let started = tokio::time::Instant::now();
        let err = recv_before(&mut conn, reply_deadline(), "start a command")
            .await
            .unwrap_err();
        assert!(matches!(err, VmError::GuestUnresponsive { .. }), "{err}");
        assert_eq!(
            started.elapsed(),
            ztee_vm::REPLY_TIMEOUT + SUPERVISOR_MARGIN
        );
    }
}
