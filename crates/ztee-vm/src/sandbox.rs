//! A sandbox: one booted, leased VM and the authenticated channel to its agent. A VM serves
//! exactly one sandbox and is destroyed with it.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::process::Child;
use ztee_wire::{GuestMessage, HostMessage, MAX_DATA_CHUNK};

use crate::backend::Accelerator;
use crate::channel::Channel;
use crate::egress::EgressRelay;
use crate::exec::{failure, ExecSpec, Execution};
use crate::runtime::RuntimeDir;
use crate::{JailInfo, VmError};

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

/// How a sandbox's VM was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// Taken from the warm pool: restored earlier, never used.
    Pool,
    /// Restored from its shape's snapshot on request.
    Snapshot,
    /// Booted from the kernel.
    Cold,
}

impl std::fmt::Display for StartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pool => "pool",
            Self::Snapshot => "snapshot",
            Self::Cold => "cold",
        })
    }
}

pub struct Sandbox {
    info: SandboxInfo,
    channel: Arc<Channel>,
    vmm: Arc<tokio::sync::Mutex<Child>>,
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
    ) -> Self {
        let vmm = Arc::new(tokio::sync::Mutex::new(vmm));
        let watchdog = tokio::spawn({
            let (channel, vmm) = (channel.clone(), vmm.clone());
            async move {
                channel.closed().await;
                let _ = vmm.lock().await.start_kill();
            }
        });
        Self {
            info,
            channel,
            vmm,
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
        check_path(path)?;
        let (id, mut replies) = self.channel.open_request()?;
        let result = async {
            self.channel
                .send(&HostMessage::ReadFile {
                    id,
                    path: path.to_string(),
                })
                .await?;
            let mut data = Vec::new();
            loop {
                match self
                    .channel
                    .reply(&mut replies, "send a file's next chunk")
                    .await?
                {
                    GuestMessage::FileChunk { data: chunk, .. } => {
                        let size = (data.len() + chunk.len()) as u64;
                        if size > limit {
                            return Err(VmError::FileTooLarge { size, limit });
                        }
                        data.extend_from_slice(&chunk);
                    }
                    GuestMessage::FileEnd { .. } => return Ok(data),
                    GuestMessage::Failed { kind, message, .. } => {
                        return Err(failure(kind, &message, path))
                    }
                    other => {
                        return Err(VmError::Guest(format!(
                            "unexpected {} during a file read",
                            other.name()
                        )))
                    }
                }
            }
        }
        .await;
        self.channel.close_request(id);
        result
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
        let _ = vmm.start_kill();
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

fn check_path(path: &str) -> Result<(), VmError> {
    if path.is_empty() || path.contains('\0') || path.len() > 4096 {
        return Err(VmError::InvalidRequest(format!(
            "invalid sandbox path {path:?}: must be 1-4096 bytes without NUL"
        )));
    }
    Ok(())
}
