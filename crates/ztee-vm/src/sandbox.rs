//! A sandbox: one booted, leased VM and the authenticated channel to its agent. A VM serves
//! exactly one sandbox and is destroyed with it.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::process::Child;
use ztee_wire::{GuestMessage, HostMessage, MAX_DATA_CHUNK};

use crate::backend::{Accelerator, Backend};
use crate::channel::Channel;
use crate::egress::EgressRelay;
use crate::exec::{failure, ExecSpec, Execution};
use crate::runtime::RuntimeDir;
use crate::{JailInfo, VmError};

pub use crate::backend::types::StartKind;

/// What an operator may want to know about a sandbox's VM.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub backend: &'static str,
    pub accelerator: Accelerator,
    /// Host pid of the VMM process (QEMU itself, also when jailed).
    pub vmm_pid: u32,
    /// The VMM's jail: uid, cgroups, namespaces. `None` when VMMs run unjailed.
    pub jail: Option<JailInfo>,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub scratch_mib: u32,
    pub guest_kernel: String,
    pub agent_version: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Where the VM came from.
    pub start: StartKind,
    /// Milliseconds from asking for the sandbox to an authenticated, leased agent.
    pub ready_ms: u64,
    /// Digest of the admitted image it booted, or `default` for the operator's guest image.
    pub image: String,
}

pub struct Sandbox {
    info: SandboxInfo,
    channel: Arc<Channel>,
    vmm: Arc<tokio::sync::Mutex<Child>>,
    /// The backend that runs the VM, which knows how to stop it.
    backend: Arc<dyn Backend>,
    /// Kills the VMM as soon as the channel is gone (the guest stopped, sent garbage, or was
    /// abandoned for not answering in time), so a broken guest never holds its VM and quota.
    watchdog: tokio::task::JoinHandle<()>,
    /// Set once egress is granted: commands started afterwards get the proxy environment.
    egress: OnceLock<ztee_egress::Allowlist>,
    // Dropped after the VMM is killed: it holds the VM's socket and secret-bearing initramfs.
    _runtime: RuntimeDir,
}

/// Largest file `read_file` returns by default.
pub const DEFAULT_READ_LIMIT: u64 = 256 * 1024 * 1024;

impl Sandbox {
    pub(crate) fn new(
        info: SandboxInfo,
        channel: Arc<Channel>,
        vmm: Child,
        runtime: RuntimeDir,
        backend: Arc<dyn Backend>,
    ) -> Self {
        let vmm = Arc::new(tokio::sync::Mutex::new(vmm));
        let watchdog = tokio::spawn({
            let (channel, vmm, backend) = (channel.clone(), vmm.clone(), backend.clone());
            async move {
                channel.closed().await;
                let _ = backend.kill(&mut *vmm.lock().await);
            }
        });
        Self {
            info,
            channel,
            vmm,
            backend,
            watchdog,
            egress: OnceLock::new(),
            _runtime: runtime,
        }
    }

    pub fn id(&self) -> &str {
        &self.info.id
    }

    pub fn info(&self) -> &SandboxInfo {
        &self.info
    }

    /// False once the VM has stopped or its channel failed.
    pub fn is_alive(&self) -> bool {
        !self.channel.is_closed()
    }

    /// Starts a command. Several may run at once. With egress granted, the command's environment
    /// names the guest's proxy (its own `env` entries win).
    pub async fn exec(&self, mut spec: ExecSpec) -> Result<Execution, VmError> {
        if self.egress.get().is_some() {
            let mut env = ztee_egress::proxy_environment();
            env.append(&mut spec.env);
            spec.env = env;
        }
        Execution::start(self.channel.clone(), spec).await
    }

    /// Grants egress to the destinations in `grant`: the agent starts its proxy on the guest's
    /// loopback, and each connection to it is served by `proxy` on the host. Once per sandbox.
    pub async fn enable_egress(
        &self,
        proxy: Arc<ztee_egress::EgressProxy>,
        grant: ztee_egress::EgressGrant,
    ) -> Result<(), VmError> {
        if grant.allowlist.is_empty() {
            return Err(VmError::InvalidRequest(
                "an egress grant needs at least one HOST:PORT".into(),
            ));
        }
        if self.egress.get().is_some() {
            return Err(VmError::InvalidRequest(
                "egress was already granted to this sandbox".into(),
            ));
        }
        let allowlist = grant.allowlist.clone();
        let relay = Arc::new(EgressRelay::new(
            proxy,
            grant,
            Arc::downgrade(&self.channel),
        ));
        self.channel.set_egress(relay);
        let (id, mut replies) = self.channel.open_request()?;
        let result = async {
            self.channel
                .send(&HostMessage::EgressStart {
                    id,
                    port: ztee_egress::GUEST_PROXY_PORT,
                })
                .await?;
            match self
                .channel
                .reply(&mut replies, "start the egress proxy")
                .await?
            {
                GuestMessage::Done { .. } => Ok(()),
                GuestMessage::Failed { kind, message, .. } => {
                    Err(failure(kind, &message, "egress proxy"))
                }
                other => Err(VmError::Guest(format!("unexpected {}", other.name()))),
            }
        }
        .await;
        self.channel.close_request(id);
        result?;
        let _ = self.egress.set(allowlist);
        Ok(())
    }

    /// The destinations this sandbox may reach, when egress was granted.
    pub fn egress(&self) -> Option<&ztee_egress::Allowlist> {
        self.egress.get()
    }

    /// Writes `data` to `path` (relative paths are under the user's home) as the sandbox user.
    /// The file appears complete or not at all.
    pub async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), VmError> {
        check_path(path)?;
        let (id, mut replies) = self.channel.open_request()?;
        let result = async {
            self.channel
                .send(&HostMessage::WriteFile {
                    id,
                    path: path.to_string(),
                    mode,
                })
                .await?;
            for chunk in data.chunks(MAX_DATA_CHUNK) {
                // A failure (e.g. permission denied) may arrive before all data is sent.
                if let Ok(GuestMessage::Failed { kind, message, .. }) = replies.try_recv() {
                    return Err(failure(kind, &message, path));
                }
                self.channel
                    .send(&HostMessage::FileChunk {
                        id,
                        data: chunk.to_vec(),
                    })
                    .await?;
            }
            self.channel.send(&HostMessage::FileEnd { id }).await?;
            match self
                .channel
                .reply(&mut replies, "finish a file write")
                .await?
            {
                GuestMessage::Done { .. } => Ok(()),
                GuestMessage::Failed { kind, message, .. } => Err(failure(kind, &message, path)),
                other => Err(VmError::Guest(format!(
                    "unexpected {} during a file write",
                    other.name()
                ))),
            }
        }
        .await;
        self.channel.close_request(id);
        result
    }

    /// Reads a file as the sandbox user, refusing files larger than `limit` bytes.
    pub async fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, VmError> {
        let mut chunks = self.read_file_chunks(path, limit).await?;
        let mut data = Vec::new();
        while let Some(chunk) = chunks.next().await? {
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// Reads a file as the sandbox user one chunk at a time, as the guest sends it (at most
    /// [`MAX_DATA_CHUNK`] bytes each), so the caller never has to hold the whole file; more than
    /// `limit` bytes in total is [`VmError::FileTooLarge`].
    pub async fn read_file_chunks(&self, path: &str, limit: u64) -> Result<FileChunks, VmError> {
        check_path(path)?;
        let (id, replies) = self.channel.open_request_with_depth(FILE_READ_DEPTH)?;
        // Built before the request is sent, so a failed send still closes the request (drop).
        let chunks = FileChunks {
            channel: self.channel.clone(),
            id,
            replies,
            path: path.to_string(),
            read: 0,
            limit,
            done: false,
        };
        chunks
            .channel
            .send(&HostMessage::ReadFile {
                id,
                path: path.to_string(),
            })
            .await?;
        Ok(chunks)
    }

    /// Round trip to the agent without starting a process.
    pub async fn ping(&self) -> Result<(), VmError> {
        let (id, mut replies) = self.channel.open_request()?;
        let result = async {
            self.channel.send(&HostMessage::Ping { id }).await?;
            match self.channel.reply(&mut replies, "answer a ping").await? {
                GuestMessage::Done { .. } => Ok(()),
                other => Err(VmError::Guest(format!("unexpected {}", other.name()))),
            }
        }
        .await;
        self.channel.close_request(id);
        result
    }

    /// Kills the VM and waits for the VMM to exit; the runtime directory goes with `self`.
    pub async fn destroy(self) -> Result<(), VmError> {
        self.watchdog.abort();
        let mut vmm = self.vmm.lock().await;
        // The VM holds nothing worth a clean shutdown: every byte of it is discarded.
        let _ = self.backend.kill(&mut vmm);
        vmm.wait()
            .await
            .map_err(|e| VmError::io("wait for VMM", self._runtime.path(), e))?;
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The watchdog holds the VMM too; without it the VMM's kill-on-drop applies.
        self.watchdog.abort();
    }
}

/// Chunks of a file read that may wait for their reader: 1 MiB. A reader slower than the guest
/// (a download to a slow client) then holds at most this much here; past it the channel's
/// reader, and so the guest, waits for it.
const FILE_READ_DEPTH: usize = 4;

/// A file being read from the guest ([`Sandbox::read_file_chunks`]). Dropping it before the end
/// closes the request; the guest's remaining chunks are then discarded by the channel.
pub struct FileChunks {
    channel: Arc<Channel>,
    id: ztee_wire::RequestId,
    replies: tokio::sync::mpsc::Receiver<GuestMessage>,
    path: String,
    read: u64,
    limit: u64,
    done: bool,
}

impl FileChunks {
    /// The next chunk, `None` at the end of the file.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, VmError> {
        if self.done {
            return Ok(None);
        }
        let message = self
            .channel
            .reply(&mut self.replies, "send a file's next chunk")
            .await;
        let result = match message {
            Ok(GuestMessage::FileChunk { data, .. }) => {
                let size = self.read + data.len() as u64;
                if size > self.limit {
                    Err(VmError::FileTooLarge {
                        size,
                        limit: self.limit,
                    })
                } else {
                    self.read = size;
                    return Ok(Some(data));
                }
            }
            Ok(GuestMessage::FileEnd { .. }) => Ok(None),
            Ok(GuestMessage::Failed { kind, message, .. }) => {
                Err(failure(kind, &message, &self.path))
            }
            Ok(other) => Err(VmError::Guest(format!(
                "unexpected {} during a file read",
                other.name()
            ))),
            Err(e) => Err(e),
        };
        // The end, or an error: nothing more comes for this request.
        self.done = true;
        self.channel.close_request(self.id);
        result
    }
}

impl Drop for FileChunks {
    fn drop(&mut self) {
        if !self.done {
            self.channel.close_request(self.id);
        }
    }
}

fn check_path(path: &str) -> Result<(), VmError> {
    if path.is_empty() || path.contains('\0') || path.len() > 4096 {
        return Err(VmError::InvalidRequest(format!(
            "invalid sandbox path {path:?}: must be 1-4096 bytes without NUL"
        )));
    }
    Ok(())
}
