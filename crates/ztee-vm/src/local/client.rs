//! The command line's side of a CLI-held sandbox's control socket.

use std::time::Duration;

use tokio::net::UnixStream;
use ztee_wire::message::ExecRequest;
use ztee_wire::{ExitKind, GuestMessage, HostMessage, MAX_DATA_CHUNK};

use super::registry::{LocalRecord, Registry};
use super::supervisor::Conn;
use crate::exec::failure;
use crate::{ExecEvent, ExecSpec, ExitStatus, VmError};

pub struct LocalClient {
    registry: Registry,
    record: LocalRecord,
}

/// A command running in a CLI-held sandbox.
pub struct LocalExecution {
    conn: Conn,
    finished: bool,
}

impl LocalClient {
    pub fn open(registry: Registry, id: &str) -> Result<Self, VmError> {
        let record = registry.get(id)?;
        Ok(Self { registry, record })
    }

    pub fn record(&self) -> &LocalRecord {
        &self.record
    }

    async fn connect(&self) -> Result<Conn, VmError> {
        let socket = self.registry.control_socket(&self.record.id);
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(|e| VmError::io("connect to sandbox supervisor", &socket, e))?;
        Ok(Conn::new(stream))
    }

    pub async fn exec(&self, spec: ExecSpec) -> Result<LocalExecution, VmError> {
        let mut conn = self.connect().await?;
        let program = spec.argv.first().cloned().unwrap_or_default();
        conn.send(&HostMessage::Exec(ExecRequest {
            id: 1,
            argv: spec.argv,
            env: spec.env,
            cwd: spec.cwd,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            max_output_bytes: spec.max_output_bytes,
            stdin: spec.stdin,
        }))
        .await?;
        match conn.recv::<GuestMessage>().await? {
            Some(GuestMessage::Started { .. }) => Ok(LocalExecution {
                conn,
                finished: false,
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
        match conn.recv::<GuestMessage>().await? {
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
            match conn.recv::<GuestMessage>().await? {
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
        let _ = conn.recv::<GuestMessage>().await;
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

impl crate::exec::CommandStream for LocalExecution {
    async fn next_event(&mut self) -> Result<Option<ExecEvent>, VmError> {
        if self.finished {
            return Ok(None);
        }
        match self.conn.recv::<GuestMessage>().await? {
            Some(GuestMessage::Stdout { data, .. }) => Ok(Some(ExecEvent::Stdout(data))),
            Some(GuestMessage::Stderr { data, .. }) => Ok(Some(ExecEvent::Stderr(data))),
            Some(GuestMessage::Exited { status, .. }) => {
                self.finished = true;
                Ok(Some(ExecEvent::Exit(match status {
                    ExitKind::Code(c) => ExitStatus::Code(c),
                    ExitKind::Signal(s) => ExitStatus::Signal(s),
                    ExitKind::TimedOut => ExitStatus::TimedOut,
                    ExitKind::OutputLimit => ExitStatus::OutputLimit,
                })))
            }
            Some(GuestMessage::Failed { message, .. }) => {
                self.finished = true;
                Err(VmError::Guest(crate::error::sanitize_guest_text(&message)))
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
