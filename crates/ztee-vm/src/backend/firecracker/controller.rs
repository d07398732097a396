//! The API calls that configure, start, pause, snapshot, restore and stop one Firecracker VM,
//! with the bodies [`super::model`] defines, sent by [`super::api::ApiClient`].

use std::time::Duration;

use tokio::process::Child;

use super::api::{ApiClient, ApiError};
use super::model::*;
use super::{FirecrackerConfig, GUEST_CID, TRANSPORT_ARG};

/// What one VM boots: paths as Firecracker sees them (inside its chroot) and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub kernel: String,
    pub initramfs: String,
    pub rootfs: String,
    pub vsock_uds: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub scratch_mib: u32,
}

impl BootConfig {
    /// The guest kernel command line: the same agent and kernel as under QEMU, told to use vsock.
    /// `reboot=k` (reset through the keyboard controller, which Firecracker emulates) and
    /// `panic=1` turn the agent's final reboot or a guest panic into a Firecracker exit.
    pub fn boot_args(&self) -> String {
        format!(
            "console=ttyS0 quiet loglevel=1 reboot=k panic=1 rdinit=/init ztee.scratch_mib={} {TRANSPORT_ARG}",
            self.scratch_mib
        )
    }
}

/// A snapshot's two files, as Firecracker sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: String,
    pub memory: String,
}

/// The API calls that drive one Firecracker process, in the order its API requires: every
/// `PUT` of the configuration before `InstanceStart`; a snapshot only of a paused VM; a
/// snapshot load only into a process that has not been configured.
#[derive(Debug, Clone)]
pub struct Controller {
    api: ApiClient,
    config: FirecrackerConfig,
}

impl Controller {
    pub fn new(api: ApiClient, config: FirecrackerConfig) -> Self {
        Self { api, config }
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// Configures the machine, its boot source, root disk, vsock and entropy device.
    pub async fn configure(&self, boot: &BootConfig) -> Result<(), ApiError> {
        self.api
            .put(
                "/machine-config",
                &MachineConfiguration {
                    vcpu_count: boot.vcpus,
                    mem_size_mib: boot.memory_mib,
                    smt: false,
                    track_dirty_pages: false,
                },
            )
            .await?;
        self.api
            .put(
                "/boot-source",
                &BootSource {
                    kernel_image_path: boot.kernel.clone(),
                    boot_args: boot.boot_args(),
                    initrd_path: Some(boot.initramfs.clone()),
                },
            )
            .await?;
        self.api
            .put(
                "/drives/rootfs",
                &Drive {
                    drive_id: "rootfs".into(),
                    path_on_host: boot.rootfs.clone(),
                    // The guest boots from the initramfs; the image is an ordinary data disk
                    // (`/dev/vda`) the agent mounts read-only.
                    is_root_device: false,
                    is_read_only: true,
                    rate_limiter: self.config.disk_rate_limiter(),
                },
            )
            .await?;
        self.api
            .put(
                "/vsock",
                &Vsock {
                    guest_cid: GUEST_CID,
                    uds_path: boot.vsock_uds.clone(),
                },
            )
            .await?;
        self.api
            .put(
                "/entropy",
                &EntropyDevice {
                    rate_limiter: self.config.entropy_rate_limiter(),
                },
            )
            .await
    }

    pub async fn start(&self) -> Result<(), ApiError> {
        self.action(ActionType::InstanceStart).await
    }

    pub async fn pause(&self) -> Result<(), ApiError> {
        self.api
            .patch(
                "/vm",
                &VmState {
                    state: RunState::Paused,
                },
            )
            .await
    }

    pub async fn resume(&self) -> Result<(), ApiError> {
        self.api
            .patch(
                "/vm",
                &VmState {
                    state: RunState::Resumed,
                },
            )
            .await
    }

    /// A full snapshot of a paused VM.
    pub async fn snapshot(&self, files: &SnapshotFiles) -> Result<(), ApiError> {
        self.api
            .put(
                "/snapshot/create",
                &SnapshotCreateParams {
                    snapshot_type: SnapshotType::Full,
                    snapshot_path: files.state.clone(),
                    mem_file_path: files.memory.clone(),
                },
            )
            .await
    }

    /// Loads a snapshot into a fresh, unconfigured Firecracker and resumes it. Memory is the
    /// snapshot's file mapped privately: the clone's writes never reach the file.
    pub async fn load(&self, files: &SnapshotFiles) -> Result<(), ApiError> {
        self.api
            .put(
                "/snapshot/load",
                &SnapshotLoadParams {
                    snapshot_path: files.state.clone(),
                    mem_backend: MemoryBackend {
                        backend_type: MemoryBackendType::File,
                        backend_path: files.memory.clone(),
                    },
                    enable_diff_snapshots: false,
                    resume_vm: true,
                },
            )
            .await
    }

    /// Asks the guest to stop (a Ctrl-Alt-Del on its keyboard controller).
    pub async fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        self.api
            .put("/actions", &InstanceActionInfo { action_type })
            .await
    }
}

/// How long a guest gets to stop after Ctrl-Alt-Del before its VMM is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Stops a VM: Ctrl-Alt-Del, then `SIGKILL` if the VMM is still there after
/// [`SHUTDOWN_GRACE`].
pub async fn shutdown(controller: &Controller, vmm: &mut Child) {
    if let Err(err) = controller.send_ctrl_alt_del().await {
        tracing::debug!(%err, "Ctrl-Alt-Del not delivered; killing the VMM");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, vmm.wait())
        .await
        .is_err()
    {
        let _ = vmm.start_kill();
        let _ = vmm.wait().await;
    }
}
