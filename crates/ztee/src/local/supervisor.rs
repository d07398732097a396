//! The process that owns one CLI-held sandbox and serves its control socket.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use ztee_vm::runtime::process_start_time;
use ztee_vm::{Engine, ExecEvent, ExecSpec, Sandbox, SandboxSpec, VmError};
use ztee_wire::message::FailureKind;
use ztee_wire::{FrameDecoder, GuestMessage, HostMessage, Opener, Sealer, MAX_DATA_CHUNK};

use super::io_error;
use super::registry::{LocalRecord, Registry};
use super::secrets::{redaction_failed, LocalSecrets};

/// Largest upload accepted through the control socket.
const MAX_UPLOAD: usize = 1024 * 1024 * 1024;

/// What a CLI-held sandbox is given beyond its VM.
#[derive(Default)]
pub struct Grants {
    pub egress: Option<LocalEgress>,
    pub secrets: Option<LocalSecrets>,
}

/// Egress for a CLI-held sandbox: the proxy and the destinations the sandbox may reach. Every
/// connection is logged (target `ztee::egress`) in the supervisor's log.
pub struct LocalEgress {
    pub proxy: Arc<ztee_egress::EgressProxy>,
    pub allowlist: ztee_egress::Allowlist,
}

/// Boots the sandbox, grants its egress and writes its secrets, reports its id (or the failure)
/// through `ready`, then serves requests until the sandbox is removed, its lifetime passes or its
/// VM stops.
pub async fn supervise(
    engine: Engine,
    spec: SandboxSpec,
    lifetime: Duration,
    registry: Registry,
    grants: Grants,
    ready: impl FnOnce(Result<&LocalRecord, &VmError>),
) -> Result<(), VmError> {
    let Grants { egress, secrets } = grants;
    let granted: Vec<String> = egress
        .as_ref()
        .map(|e| {
            e.allowlist
                .rules()
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let names = secrets
        .as_ref()
        .map(|s| s.names.clone())
        .unwrap_or_default();
    let sandbox = match start(&engine, &spec, lifetime, &registry, granted, names).await {
        Ok(started) => started,
        Err(err) => {
            ready(Err(&err));
            return Err(err);
        }
    };
    let (sandbox, record, listener) = sandbox;
    if let Some(egress) = egress {
        let grant = ztee_egress::EgressGrant {
            sandbox: record.id.clone(),
            allowlist: egress.allowlist,
            audit: Arc::new(ztee_egress::EgressTracing),
        };
        if let Err(err) = sandbox.enable_egress(egress.proxy, grant).await {
            ready(Err(&err));
            registry.remove(&record.id);
            let _ = sandbox.destroy().await;
            return Err(err);
        }
    }
    if let Some(secrets) = &secrets {
        for (path, value) in &secrets.files {
            if let Err(err) = sandbox.write_file(path, value, 0o400).await {
                ready(Err(&err));
                registry.remove(&record.id);
                let _ = sandbox.destroy().await;
                return Err(err);
            }
        }
    }
    ready(Ok(&record));
    let sandbox = Arc::new(sandbox);
    let secrets = secrets.map(Arc::new);
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(1);
    let expiry = tokio::time::sleep(lifetime);
    tokio::pin!(expiry);
    let mut liveness = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !same_user(&stream) {
                    continue;
                }
                let sandbox = sandbox.clone();
                let stop = stop_tx.clone();
                let secrets = secrets.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_client(stream, &sandbox, secrets.as_deref(), stop).await {
                        tracing::debug!(%err, "control client failed");
                    }
                });
            }
            _ = stop_rx.recv() => break,
            _ = &mut expiry => {
                tracing::info!(id = %record.id, "sandbox lifetime passed");
                break;
            }
            _ = liveness.tick() => {
                if !sandbox.is_alive() {
                    tracing::warn!(id = %record.id, "the sandbox's VM stopped");
                    break;
                }
            }
        }
    }
    // Let in-flight replies (e.g. the acknowledgement of `rm`) reach their clients.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let destroyed = match Arc::try_unwrap(sandbox) {
        Ok(sandbox) => sandbox.destroy().await,
        // Clients still hold it; dropping our reference and exiting kills the VMM anyway.
        Err(_) => Ok(()),
    };
    // Last: `sandbox rm` waits for the record to go, so by then the VM is gone too.
    registry.remove(&record.id);
    destroyed
}

async fn start(
    engine: &Engine,
    spec: &SandboxSpec,
    lifetime: Duration,
    registry: &Registry,
    egress: Vec<String>,
    secrets: Vec<String>,
) -> Result<(Sandbox, LocalRecord, UnixListener), VmError> {
    let sandbox = engine.create(spec.clone()).await?;
    let id = sandbox.id().to_string();
    let dir = registry.create_dir(&id)?;
    let socket = registry.control_socket(&id);
    let listener =
        UnixListener::bind(&socket).map_err(|e| io_error("bind control socket", &socket, e))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error("chmod control socket", &socket, e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let me = std::process::id();
    let record = LocalRecord {
        id: id.clone(),
        supervisor_pid: me,
        supervisor_start: process_start_time(me).unwrap_or(0),
        expires_at: now + lifetime.as_secs(),
        vm: sandbox.info().into(),
        egress,
        secrets,
    };
    if let Err(err) = registry.write(&record) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(err);
    }
    Ok((sandbox, record, listener))
}

fn same_user(stream: &UnixStream) -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    stream.peer_cred().map(|c| c.uid() == me).unwrap_or(false)
}

/// One framed connection carrying one request.
pub(crate) struct Conn {
    stream: UnixStream,
    decoder: FrameDecoder,
    opener: Opener,
    sealer: Sealer,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(),
            opener: Opener::unauthenticated(),
            sealer: Sealer::unauthenticated(),
            buf: vec![0u8; 64 * 1024],
        }
    }

    pub(crate) async fn send<M: serde::Serialize>(&mut self, message: &M) -> Result<(), VmError> {
        let frame = self.sealer.seal(message)?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|_| VmError::ChannelClosed)
    }

    /// The next message, or `None` at a clean end of stream.
    pub(crate) async fn recv<M: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<M>, VmError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(self.opener.open(&frame)?));
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .await
                .map_err(|_| VmError::ChannelClosed)?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

async fn serve_client(
    stream: UnixStream,
    sandbox: &Sandbox,
    secrets: Option<&LocalSecrets>,
    stop: tokio::sync::mpsc::Sender<()>,
) -> Result<(), VmError> {
    let mut conn = Conn::new(stream);
    let Some(request) = conn.recv::<HostMessage>().await? else {
        return Ok(());
    };
    match request {
        HostMessage::Exec(request) => serve_exec(&mut conn, sandbox, secrets, request).await,
        HostMessage::WriteFile { id, path, mode } => {
            let mut data = Vec::new();
            loop {
                match conn.recv::<HostMessage>().await? {
                    Some(HostMessage::FileChunk { data: chunk, .. }) => {
                        if data.len() + chunk.len() > MAX_UPLOAD {
                            let err = VmError::FileTooLarge {
                                size: (data.len() + chunk.len()) as u64,
                                limit: MAX_UPLOAD as u64,
                            };
                            return conn.send(&failed(id, &err)).await;
                        }
                        data.extend_from_slice(&chunk);
                    }
                    Some(HostMessage::FileEnd { .. }) => break,
                    // An upload that does not end explicitly is abandoned, never written.
                    _ => return Ok(()),
                }
            }
            let reply = match sandbox.write_file(&path, &data, mode).await {
                Ok(()) => GuestMessage::Done { id },
                Err(err) => failed(id, &err),
            };
            conn.send(&reply).await
        }
        HostMessage::ReadFile { id, path } => {
            let read = sandbox.read_file(&path, ztee_vm::DEFAULT_READ_LIMIT).await;
            let read = match (read, secrets) {
                (Ok(data), Some(secrets)) => secrets.redact_file(data),
                (read, _) => read,
            };
            match read {
                Ok(data) => {
                    for chunk in data.chunks(MAX_DATA_CHUNK) {
                        conn.send(&GuestMessage::FileChunk {
                            id,
                            data: chunk.to_vec(),
                        })
                        .await?;
                    }
                    conn.send(&GuestMessage::FileEnd { id }).await
                }
                Err(err) => conn.send(&failed(id, &err)).await,
            }
        }
        HostMessage::PowerOff => {
            conn.send(&GuestMessage::Done { id: 0 }).await?;
            let _ = stop.send(()).await;
            Ok(())
        }
        other => {
            let err = VmError::InvalidRequest(format!("{} is not a control request", other.name()));
            conn.send(&failed(0, &err)).await
        }
    }
}

async fn serve_exec(
    conn: &mut Conn,
    sandbox: &Sandbox,
    secrets: Option<&LocalSecrets>,
    request: ztee_wire::message::ExecRequest,
) -> Result<(), VmError> {
    let id = request.id;
    // The secrets' variables first: the command's own entries come later and win.
    let mut env = secrets.map(|s| s.env.clone()).unwrap_or_default();
    env.extend(request.env);
    let mut redactors = secrets.map(LocalSecrets::streams);
    let spec = ExecSpec {
        argv: request.argv,
        env,
        cwd: request.cwd,
        timeout: request.timeout_ms.map(Duration::from_millis),
        max_output_bytes: request.max_output_bytes,
        stdin: request.stdin,
        pty: request.pty,
    };
    let mut execution = match sandbox.exec(spec).await {
        Ok(execution) => execution,
        Err(err) => return conn.send(&failed(id, &err)).await,
    };
    conn.send(&GuestMessage::Started {
        id,
        pid: execution.pid(),
    })
    .await?;
    let mut client_open = true;
    loop {
        tokio::select! {
            event = execution.next_event() => {
                let message = match event {
                    Ok(Some(ExecEvent::Stdout(data))) => match redactors.as_mut() {
                        Some((out, _)) => GuestMessage::Stdout {
                            id,
                            data: out.feed_bytes(&data).map_err(redaction_failed)?.into_bytes(),
                        },
                        None => GuestMessage::Stdout { id, data },
                    },
                    Ok(Some(ExecEvent::Stderr(data))) => match redactors.as_mut() {
                        Some((_, err)) => GuestMessage::Stderr {
                            id,
                            data: err.feed_bytes(&data).map_err(redaction_failed)?.into_bytes(),
                        },
                        None => GuestMessage::Stderr { id, data },
                    },
                    Ok(Some(ExecEvent::Exit(status))) => {
                        // What the redactors held back goes out before the exit.
                        if let Some((out, err)) = redactors.as_mut() {
                            let tail = out.finish().map_err(redaction_failed)?;
                            if !tail.is_empty() {
                                conn.send(&GuestMessage::Stdout { id, data: tail.into_bytes() }).await?;
                            }
                            let tail = err.finish().map_err(redaction_failed)?;
                            if !tail.is_empty() {
                                conn.send(&GuestMessage::Stderr { id, data: tail.into_bytes() }).await?;
                            }
                        }
                        return conn.send(&GuestMessage::Exited { id, status: status.into() }).await;
                    }
                    Ok(None) => return Ok(()),
                    Err(err) => return conn.send(&failed(id, &err)).await,
                };
                // A redactor may hold a whole chunk back.
                if let GuestMessage::Stdout { data, .. } | GuestMessage::Stderr { data, .. } = &message {
                    if data.is_empty() {
                        continue;
                    }
                }
                conn.send(&message).await?;
            }
            incoming = conn.recv::<HostMessage>(), if client_open => match incoming {
                Ok(Some(HostMessage::Stdin { data, .. })) => execution.write_stdin(&data).await?,
                Ok(Some(HostMessage::CloseStdin { .. })) => execution.close_stdin().await?,
                Ok(Some(HostMessage::Signal { signal, .. })) => execution.signal(signal).await?,
                Ok(Some(HostMessage::Resize { size, .. })) => execution.control().resize(size).await?,
                Ok(Some(_)) => {}
                // The client went away (e.g. Ctrl-C): stop the command it started.
                Ok(None) | Err(_) => {
                    client_open = false;
                    execution.signal(libc::SIGKILL).await?;
                }
            },
        }
    }
}

/// A failure reply carrying the error's kind and its text.
fn failed(id: u32, err: &VmError) -> GuestMessage {
    let kind = match err {
        VmError::CommandNotFound(_) | VmError::FileNotFound(_) => FailureKind::NotFound,
        VmError::PermissionDenied(_) => FailureKind::PermissionDenied,
        VmError::InvalidRequest(_) | VmError::FileTooLarge { .. } => FailureKind::InvalidRequest,
        _ => FailureKind::Io,
    };
    // The client wraps the text in the same error variant again, so send the inner text.
    let message = match err {
        VmError::CommandNotFound(name) => format!("command not found: {name}"),
        VmError::FileNotFound(text)
        | VmError::PermissionDenied(text)
        | VmError::InvalidRequest(text) => text.clone(),
        other => other.to_string(),
    };
    GuestMessage::Failed { id, kind, message }
}
