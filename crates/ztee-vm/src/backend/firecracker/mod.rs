//! Firecracker: KVM-only microVMs with a minimal device model (virtio block, vsock, entropy;
//! serial console), always started under Firecracker's own `jailer`.
//!
//! Modules, in the order a VM meets them:
//! - [`jailer`]: the jailer's command line (chroot, uid/gid, cgroups, netns, resource limits).
//! - [`model`]: the API's request bodies, as its swagger defines them.
//! - [`api`]: the HTTP client on the API socket, and Firecracker's error bodies as [`ApiError`].
//! - [`Controller`] (here): the calls that configure, start, pause, snapshot, restore and stop a
//!   VM, in the order Firecracker requires.
//! - [`vsock`]: the hybrid vsock handshake to the guest agent's port.

pub mod api;
pub mod jailer;
pub mod model;
pub mod vsock;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

pub use api::{ApiClient, ApiError};
use model::*;
pub use vsock::HandshakeError;

use crate::VmError;

/// The guest CID of every VM: each VM has its own vsock device and host socket, so CIDs never
/// meet; 3 is the first one not reserved.
pub const GUEST_CID: u32 = 3;

/// The kernel command line key that tells the agent which transport to listen on.
pub const TRANSPORT_ARG: &str = "ztee.transport=vsock";

/// The Firecracker version whose API (swagger) ztee speaks.
pub const API_VERSION: &str = "1.10";

/// How a Firecracker VM is started and limited: paths of the binaries and limits. Every field
/// has an environment variable (see [`FirecrackerConfig::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    /// The jailer builds each VM's chroot under `<chroot_base>/firecracker/<vm id>/root`.
    pub chroot_base: PathBuf,
    /// The uid and gid the VMM drops to (overridden per VM by a uid lease when available).
    pub uid: u32,
    pub gid: u32,
    /// A network namespace (`/var/run/netns/NAME`) to put every VMM in. VMs have no network
    /// device either way; the namespace keeps a compromised VMM off the host's network.
    pub netns: Option<PathBuf>,
    /// `1` or `2`.
    pub cgroup_version: u8,
    /// The cgroup under which the jailer creates one per VM.
    pub parent_cgroup: Option<String>,
    /// Most tasks in a VMM's cgroup (`pids.max`, cgroup v2).
    pub max_threads: u32,
    /// `RLIMIT_FSIZE` of the VMM.
    pub max_file_bytes: u64,
    /// `RLIMIT_NOFILE` of the VMM.
    pub max_open_files: u32,
    /// The root disk's rate limits (bytes per second, operations per second); 0 = unlimited.
    pub disk_bytes_per_sec: u64,
    pub disk_ops_per_sec: u64,
    /// The entropy device's rate limit in bytes per second; 0 = unlimited.
    pub entropy_bytes_per_sec: u64,
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        Self {
            firecracker: find_on_path("firecracker")
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/firecracker")),
            jailer: find_on_path("jailer")
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/jailer")),
            chroot_base: PathBuf::from("/srv/jailer"),
            uid: 64000,
            gid: 64000,
            netns: None,
            cgroup_version: 2,
            parent_cgroup: Some("ztee-firecracker".into()),
            max_threads: 64,
            max_file_bytes: 8 * 1024 * 1024 * 1024,
            max_open_files: 2048,
            disk_bytes_per_sec: 200 * 1024 * 1024,
            disk_ops_per_sec: 20_000,
            entropy_bytes_per_sec: 1024 * 1024,
        }
    }
}

impl FirecrackerConfig {
    /// Defaults overridden by `ZTEE_FIRECRACKER`, `ZTEE_JAILER` (binary paths),
    /// `ZTEE_FC_CHROOT_BASE`, `ZTEE_FC_NETNS`, `ZTEE_FC_CGROUP_VERSION` (1|2),
    /// `ZTEE_FC_PARENT_CGROUP`, `ZTEE_FC_DISK_BPS`, `ZTEE_FC_DISK_IOPS` and
    /// `ZTEE_FC_ENTROPY_BPS` (0 = unlimited).
    pub fn from_env() -> Result<Self, VmError> {
        let mut config = Self::default();
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(path) = var("ZTEE_FIRECRACKER") {
            config.firecracker = PathBuf::from(path);
        }
        if let Some(path) = var("ZTEE_JAILER") {
            config.jailer = PathBuf::from(path);
        }
        if let Some(path) = var("ZTEE_FC_CHROOT_BASE") {
            config.chroot_base = PathBuf::from(path);
        }
        if let Some(path) = var("ZTEE_FC_NETNS") {
            config.netns = Some(PathBuf::from(path));
        }
        if let Some(name) = var("ZTEE_FC_PARENT_CGROUP") {
            config.parent_cgroup = Some(name.to_string_lossy().into_owned());
        }
        let number = |name: &str| -> Result<Option<u64>, VmError> {
            match std::env::var(name) {
                Ok(text) if !text.is_empty() => text.parse().map(Some).map_err(|_| {
                    VmError::InvalidSpec(format!("{name} must be a whole number, got {text:?}"))
                }),
                _ => Ok(None),
            }
        };
        if let Some(version) = number("ZTEE_FC_CGROUP_VERSION")? {
            config.cgroup_version = match version {
                1 => 1,
                2 => 2,
                other => {
                    return Err(VmError::InvalidSpec(format!(
                        "ZTEE_FC_CGROUP_VERSION must be 1 or 2, got {other}"
                    )))
                }
            };
        }
        if let Some(bps) = number("ZTEE_FC_DISK_BPS")? {
            config.disk_bytes_per_sec = bps;
        }
        if let Some(iops) = number("ZTEE_FC_DISK_IOPS")? {
            config.disk_ops_per_sec = iops;
        }
        if let Some(bps) = number("ZTEE_FC_ENTROPY_BPS")? {
            config.entropy_bytes_per_sec = bps;
        }
        if !config.chroot_base.is_absolute() {
            return Err(VmError::InvalidSpec(format!(
                "ZTEE_FC_CHROOT_BASE must be an absolute path, got {}",
                config.chroot_base.display()
            )));
        }
        Ok(config)
    }

    fn disk_rate_limiter(&self) -> Option<RateLimiter> {
        rate_limiter(self.disk_bytes_per_sec, self.disk_ops_per_sec)
    }

    fn entropy_rate_limiter(&self) -> Option<RateLimiter> {
        rate_limiter(self.entropy_bytes_per_sec, 0)
    }
}

/// Token buckets refilled every second; `None` when both are unlimited.
fn rate_limiter(bytes_per_sec: u64, ops_per_sec: u64) -> Option<RateLimiter> {
    let bucket = |size: u64| {
        (size > 0).then_some(TokenBucket {
            size,
            refill_time: 1000,
        })
    };
    let limiter = RateLimiter {
        bandwidth: bucket(bytes_per_sec),
        ops: bucket(ops_per_sec),
    };
    (limiter.bandwidth.is_some() || limiter.ops.is_some()).then_some(limiter)
}

pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

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

/// One VM's chroot, made before the jailer runs (so the guest's files are in place) and removed
/// with everything in it when the VM is gone.
#[derive(Debug)]
pub struct Chroot {
    /// `<chroot base>/firecracker/<id>`: the jailer's directory for this VM.
    vm_dir: PathBuf,
    root: PathBuf,
}

impl Chroot {
    pub fn create(config: &FirecrackerConfig, id: &str) -> Result<Self, VmError> {
        let root = jailer::chroot_root(config, id);
        let vm_dir = root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.clone());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(|e| VmError::io("create Firecracker chroot", &root, e))?;
        Ok(Self { vm_dir, root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<chroot base>/firecracker/<id>`, removed with the VM.
    pub fn vm_dir(&self) -> &Path {
        &self.vm_dir
    }

    /// The host path of `inside`, a path as the jailed Firecracker names it.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Puts `source` into the chroot as `/name`, readable by the VMM's uid: a hard link when
    /// `source` is on the same file system and readable by everyone (assets and snapshots,
    /// never modified in place), else a private copy owned by `uid`.
    pub fn provide(&self, source: &Path, name: &str, uid: u32) -> Result<String, VmError> {
        use std::os::unix::fs::PermissionsExt;
        // The file itself, not a symlink to it: a link to a symlink would point outside the
        // chroot (guest directories hold symlinks into the cache).
        let source = &fs::canonicalize(source).map_err(|e| VmError::io("resolve", source, e))?;
        let target = self.root.join(name);
        let world_readable = fs::metadata(source)
            .map(|m| m.permissions().mode() & 0o004 != 0)
            .unwrap_or(false);
        if !(world_readable && fs::hard_link(source, &target).is_ok()) {
            let mut from = fs::File::open(source)
                .map_err(|e| VmError::io("open for the chroot", source, e))?;
            let mut to = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&target)
                .map_err(|e| VmError::io("copy into the chroot", &target, e))?;
            std::io::copy(&mut from, &mut to)
                .map_err(|e| VmError::io("copy into the chroot", &target, e))?;
            std::os::unix::fs::chown(&target, Some(uid), Some(uid))
                .map_err(|e| VmError::io("chown", &target, e))?;
        }
        Ok(format!("/{name}"))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.vm_dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.vm_dir.display(), %err, "cannot remove Firecracker chroot");
            }
        }
    }
}

/// Starts the jailer for VM `id` with `uid`; Firecracker's serial console (its stdout) goes to
/// `console_log`. The child is killed when dropped and when the spawning thread dies.
pub(crate) fn spawn_jailed(
    config: &FirecrackerConfig,
    id: &str,
    uid: u32,
    limits: jailer::VmLimits,
    console_log: &Path,
) -> Result<Child, VmError> {
    let console = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(console_log)
        .map_err(|e| VmError::io("open console log", console_log, e))?;
    let per_vm = FirecrackerConfig {
        uid,
        gid: uid,
        ..config.clone()
    };
    let mut command = Command::new(&config.jailer);
    command
        .args(jailer::arguments(&per_vm, id, limits))
        .stdin(Stdio::null())
        .stdout(Stdio::from(console))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| VmError::VmmSpawn {
        program: config.jailer.display().to_string(),
        source,
    })
}

/// Connects to the agent's vsock port through the VM's hybrid vsock socket.
pub async fn connect_agent(uds: &Path, deadline: Instant) -> Result<UnixStream, VmError> {
    vsock::connect(uds, ztee_wire::VSOCK_PORT, deadline)
        .await
        .map_err(|err| VmError::Firecracker(err.to_string()))
}

/// `firecracker --version`, first line.
pub fn version(binary: &Path) -> Option<String> {
    first_line_of(binary, "--version")
}

/// `jailer --version`, first line.
pub fn jailer_version(binary: &Path) -> Option<String> {
    first_line_of(binary, "--version")
}

fn first_line_of(binary: &Path, arg: &str) -> Option<String> {
    let output = std::process::Command::new(binary)
        .arg(OsString::from(arg))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .filter(|line| !line.is_empty())
}
