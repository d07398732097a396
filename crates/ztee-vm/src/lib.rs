//! The ztee microVM engine.
//!
//! [`Engine::create`] boots a VM from the guest assets, authenticates its agent over the channel
//! and leases it to one [`Sandbox`]; commands and files then go through that channel. Modules:
//!
//! - [`assets`]: kernel, root file system image and agent on disk.
//! - [`initramfs`]: the agent and the per-VM secret packed for boot.
//! - [`backend`]: VMM processes (`qemu` today) and the accelerator they use.
//! - [`accel`]: choosing KVM or TCG by actually booting a guest.
//! - [`channel`]: the authenticated agent channel, host side.
//! - [`sandbox`], [`exec`]: the API callers use.
//! - [`runtime`]: per-VM directories and reaping of orphans after a crash.

pub mod accel;
pub mod assets;
pub mod backend;
mod channel;
mod error;
pub mod exec;
pub mod initramfs;
pub mod local;
pub mod runtime;
pub mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ztee_wire::{BootSecret, GuestMessage, HostMessage};

pub use accel::{AccelChoice, AccelDecision};
pub use assets::GuestAssets;
pub use backend::Accelerator;
pub use error::VmError;
pub use exec::{CommandStream, ExecEvent, ExecSpec, Execution, ExitStatus, Output};
pub use sandbox::{Sandbox, SandboxInfo, DEFAULT_READ_LIMIT};

/// Shape and limits of one sandbox's VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Size of the tmpfs that holds every write (the "disk").
    pub scratch_mib: u32,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            vcpus: 1,
            scratch_mib: 256,
        }
    }
}

impl SandboxSpec {
    pub fn validate(&self) -> Result<(), VmError> {
        if !(64..=65536).contains(&self.memory_mib) {
            return Err(VmError::InvalidSpec(format!(
                "memory must be 64-65536 MiB, got {}",
                self.memory_mib
            )));
        }
        if !(1..=32).contains(&self.vcpus) {
            return Err(VmError::InvalidSpec(format!(
                "vcpus must be 1-32, got {}",
                self.vcpus
            )));
        }
        if !(8..=65536).contains(&self.scratch_mib) {
            return Err(VmError::InvalidSpec(format!(
                "scratch disk must be 8-65536 MiB, got {}",
                self.scratch_mib
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub assets: GuestAssets,
    /// Per-VM runtime directories live under `<runtime_dir>/vms/`.
    pub runtime_dir: PathBuf,
    /// Derived artifacts (initramfs, accelerator probe results), shared by data directories.
    pub cache_dir: PathBuf,
    pub accelerator: AccelChoice,
    /// How long a VM may take from VMM start to an authenticated agent.
    pub boot_timeout: Duration,
}

impl EngineConfig {
    /// Defaults under `data_dir` and [`default_cache_dir`], overridden by `ZTEE_GUEST_DIR`, `ZTEE_ACCEL`
    /// (`auto`|`kvm`|`tcg`) and `ZTEE_BOOT_TIMEOUT` (seconds).
    pub fn from_env_and_defaults(data_dir: &Path) -> Result<Self, VmError> {
        let accelerator = match std::env::var("ZTEE_ACCEL") {
            Ok(value) if !value.is_empty() => value.parse().map_err(VmError::InvalidSpec)?,
            _ => AccelChoice::Auto,
        };
        let boot_timeout = match std::env::var("ZTEE_BOOT_TIMEOUT") {
            Ok(value) if !value.is_empty() => Duration::from_secs(value.parse().map_err(|_| {
                VmError::InvalidSpec(format!(
                    "ZTEE_BOOT_TIMEOUT must be whole seconds, got {value:?}"
                ))
            })?),
            _ => Duration::from_secs(60),
        };
        Ok(Self {
            assets: GuestAssets::locate(data_dir)?,
            runtime_dir: data_dir.join("run"),
            cache_dir: default_cache_dir(),
            accelerator,
            boot_timeout,
        })
    }
}

/// `$ZTEE_CACHE_DIR`, else `$XDG_CACHE_HOME/ztee`, else `~/.cache/ztee`: derived artifacts that
/// any data directory on this host may share.
pub fn default_cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("ZTEE_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("ztee")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/ztee")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/ztee"))
}

/// Boots sandboxes. Cheap to clone; safe to share across tasks.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: EngineConfig,
    base_initramfs: PathBuf,
    accel: tokio::sync::OnceCell<AccelDecision>,
}

impl Engine {
    /// Checks the assets, reaps VMs orphaned by a crashed supervisor and prepares the initramfs.
    pub fn new(config: EngineConfig) -> Result<Self, VmError> {
        config.assets.check()?;
        let reaped = runtime::reap_orphans(&config.runtime_dir);
        if reaped > 0 {
            tracing::warn!(reaped, "killed VMs left behind by a previous ztee process");
        }
        let base_initramfs = initramfs::base_for_agent(&config.assets.agent, &config.cache_dir)?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                config,
                base_initramfs,
                accel: tokio::sync::OnceCell::new(),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Which accelerator VMs use and why; probes (by booting a VM under KVM) on first call.
    pub async fn accelerator(&self) -> AccelDecision {
        self.inner
            .accel
            .get_or_init(|| accel::decide(self))
            .await
            .clone()
    }

    /// Boots a fresh VM and leases it to a new sandbox.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, VmError> {
        let accelerator = self.accelerator().await.accelerator;
        self.boot(&spec, accelerator, self.inner.config.boot_timeout)
            .await
    }

    pub(crate) async fn boot(
        &self,
        spec: &SandboxSpec,
        accelerator: Accelerator,
        boot_timeout: Duration,
    ) -> Result<Sandbox, VmError> {
        spec.validate()?;
        let config = &self.inner.config;
        let started = Instant::now();
        let id = new_sandbox_id()?;
        let runtime = runtime::RuntimeDir::create(&config.runtime_dir, &id)?;
        let secret = BootSecret::from_bytes(random_bytes()?);
        initramfs::write_for_vm(&self.inner.base_initramfs, &secret, &runtime.initramfs())?;
        let plan = backend::LaunchPlan {
            name: id.clone(),
            kernel: config.assets.kernel.clone(),
            initramfs: runtime.initramfs(),
            rootfs: config.assets.rootfs.clone(),
            agent_socket: runtime.agent_socket(),
            console_log: runtime.console_log(),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            scratch_mib: spec.scratch_mib,
            accelerator,
        };
        let mut vmm = backend::qemu::launch(&plan)?;
        let vmm_pid = vmm.id().unwrap_or(0);
        runtime.record_owner(vmm_pid)?;
        let deadline = started + boot_timeout;
        let channel = tokio::select! {
            connected = channel::Channel::connect(&plan.agent_socket, &secret, deadline) => connected?,
            status = vmm.wait() => {
                let mut stderr = String::new();
                if let Some(mut pipe) = vmm.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = (&mut pipe).take(2048).read_to_string(&mut stderr).await;
                }
                return Err(VmError::VmmExited {
                    status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    console: format!("{} {}", error::sanitize_guest_text(stderr.trim()), runtime.console_tail()),
                });
            }
        };
        lease(&channel, &id).await?;
        let info = SandboxInfo {
            id,
            backend: "qemu",
            accelerator,
            vmm_pid,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            scratch_mib: spec.scratch_mib,
            guest_kernel: channel.kernel_release.clone(),
            agent_version: channel.agent_version.clone(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            boot_ms: started.elapsed().as_millis() as u64,
        };
        Ok(Sandbox::new(info, channel, vmm, runtime))
    }
}

/// Hands the VM to its sandbox: fresh entropy, hostname, machine id and channel secret.
async fn lease(channel: &channel::Channel, id: &str) -> Result<(), VmError> {
    let (request, mut replies) = channel.open_request()?;
    let entropy = random_bytes::<64>()?.to_vec();
    let machine_id: String = random_bytes::<16>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    channel
        .send(&HostMessage::Lease {
            id: request,
            entropy,
            hostname: id.replace('_', "-"),
            machine_id,
            next_secret: random_bytes()?,
        })
        .await?;
    let result = match replies.recv().await {
        Some(GuestMessage::Done { .. }) => Ok(()),
        Some(GuestMessage::Failed { message, .. }) => Err(VmError::Guest(format!(
            "lease refused: {}",
            error::sanitize_guest_text(&message)
        ))),
        Some(other) => Err(VmError::Guest(format!(
            "unexpected {} to a lease",
            other.name()
        ))),
        None => Err(VmError::ChannelClosed),
    };
    channel.close_request(request);
    result
}

fn random_bytes<const N: usize>() -> Result<[u8; N], VmError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| VmError::Guest(format!("the host has no randomness: {e}")))?;
    Ok(bytes)
}

/// `sbx-` and 16 hex digits: unguessable, and safe in paths, hostnames and URLs.
fn new_sandbox_id() -> Result<String, VmError> {
    let bytes = random_bytes::<8>()?;
    Ok(format!(
        "sbx-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Whether `text` has the shape of a sandbox id (checked before it is used in a path).
pub fn is_sandbox_id(text: &str) -> bool {
    text.len() == 20
        && text.starts_with("sbx-")
        && text[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_are_well_formed() {
        let id = new_sandbox_id().unwrap();
        assert!(is_sandbox_id(&id), "{id}");
        assert!(!is_sandbox_id("sbx-../../etc/passwd"));
        assert!(!is_sandbox_id("sbx-0123456789ABCDEF"));
    }

    #[test]
    fn spec_limits_are_enforced() {
        assert!(SandboxSpec::default().validate().is_ok());
        let tiny = SandboxSpec {
            memory_mib: 8,
            ..SandboxSpec::default()
        };
        assert!(tiny.validate().is_err());
    }
}
