//! VMM backends. [`Vmm`] names the two; [`VmmChoice`] is what an operator asks for, resolved
//! once per engine (see [`crate::select`]) into one [`Backend`]. Above the backends (template
//! cache, lease, sandbox, pool, exec) all is backend-independent and talks to `dyn Backend`;
//! each backend provides the same steps its own way:
//!
//! | step | [`qemu`] ([`qemu::QemuBackend`]) | [`firecracker`] ([`firecracker::FirecrackerBackend`]) |
//! |---|---|---|
//! | launch | `qemu::launch` in ztee's own jail ([`crate::jail`]) | `jailer` ([`firecracker::jailer`]) |
//! | configure | the command line ([`qemu::arguments`]) | API calls ([`firecracker::Controller::configure`]) |
//! | pause, snapshot, restore | QMP, migration streams | [`firecracker::Controller`] `pause`/`snapshot`/`load` |
//! | shutdown | kill | kill ([`firecracker::shutdown`], Ctrl-Alt-Del then kill, is there for callers that want it) |
//! | agent transport | virtio-serial port behind a Unix socket | vsock behind a hybrid vsock socket ([`firecracker::vsock`]) |
//!
//! The guest kernel and agent are the same on both: the agent picks its transport from the kernel
//! command line. A third backend is one more module implementing [`Backend`], and one more arm in
//! [`crate::select`].

pub mod firecracker;
pub mod qemu;
pub mod types;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::process::Child;
use ztee_wire::BootSecret;

use crate::channel::Channel;
use crate::config::{EngineConfig, SandboxSpec};
use crate::runtime::RuntimeDir;
use crate::snapshot::{Template, TemplateState};
use crate::VmError;

pub use types::{
    AccelChoice, AccelDecision, Accelerator, JailPaths, LaunchPlan, MemoryBacking, StartKind, Vmm,
    VmmChoice, VmmDecision,
};

/// A boxed future, so that [`Backend`] stays usable as `dyn Backend`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the engine lends every backend: its settings, whether VMMs run jailed, and the agent's
/// initramfs (without a VM secret) that each VM's own initramfs is made from.
pub(crate) struct Host {
    pub config: EngineConfig,
    pub jailed: bool,
    pub base_initramfs: PathBuf,
}

impl Host {
    /// A runtime directory for a new VM, laid out for ztee's jail when VMMs are jailed.
    pub fn runtime_dir(&self, name: &str) -> Result<RuntimeDir, VmError> {
        RuntimeDir::create(&self.config.runtime_dir, name, self.jailed)
    }

    /// The root file system `spec` boots: its admitted image, or the operator's default.
    pub fn rootfs(&self, spec: &SandboxSpec) -> PathBuf {
        spec.image
            .as_ref()
            .map(|image| image.rootfs().to_path_buf())
            .unwrap_or_else(|| self.config.assets.rootfs.clone())
    }
}

/// A running VM whose agent is authenticated but which no sandbox has yet.
pub(crate) struct Booted {
    pub runtime: RuntimeDir,
    pub vmm: Child,
    pub channel: Arc<Channel>,
    pub accelerator: Accelerator,
    pub kind: StartKind,
    pub backend: Vmm,
}

/// What, besides the guest assets (kernel, agent, root file system) and the VM shape, a
/// backend's templates depend on; the template cache's key covers all of it.
pub(crate) struct TemplateInputs {
    /// Bumped when the backend's snapshot layout or the way it makes templates changes.
    pub format: &'static str,
    /// The VMM binary, by identity: a new VMM may not load an old one's snapshots.
    pub vmm_binary: PathBuf,
    /// Appended to the shape, e.g. QEMU's accelerator.
    pub shape_suffix: String,
}

/// Everything that differs between VMMs. One is chosen per engine ([`crate::select`]); the
/// engine, the template cache ([`crate::templates`]), the pool and sandboxes use it only as
/// `dyn Backend`.
pub(crate) trait Backend: Send + Sync {
    fn vmm(&self) -> Vmm;

    /// One line for the start-up log and the doctor: the VMM, its binary, the accelerator.
    fn describe(&self) -> String;

    /// What this backend's templates depend on besides the guest assets and the shape.
    fn template_inputs(&self) -> Result<TemplateInputs, VmError>;

    /// Boots a new VM of shape `spec` from the kernel and authenticates its agent.
    fn boot<'a>(
        &'a self,
        host: &'a Host,
        spec: &'a SandboxSpec,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Booted, VmError>>;

    /// Boots a template VM from `dir/initrd.img` (which holds the template's secret), waits
    /// for its agent to listen, and saves it into `dir`.
    fn save_template<'a>(
        &'a self,
        host: &'a Host,
        spec: &'a SandboxSpec,
        dir: &'a Path,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), VmError>>;

    /// This backend's part of the template saved in `dir`, ready for restores; `None` when its
    /// files are missing (the template is then made again).
    fn load_template(&self, host: &Host, dir: &Path) -> Result<Option<TemplateState>, VmError>;

    /// A new VM in `template`'s state, with an authenticated agent channel.
    fn restore<'a>(
        &'a self,
        host: &'a Host,
        template: &'a Template,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Booted, VmError>>;

    /// Connects to the agent behind the VM's host-side `socket` and authenticates it.
    fn connect_agent<'a>(
        &'a self,
        socket: &'a Path,
        secret: &'a BootSecret,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Channel, VmError>>;

    /// Stops a VM for good. Nothing in a VM is worth a clean shutdown: every byte of it is
    /// discarded.
    fn kill(&self, vmm: &mut Child) -> std::io::Result<()> {
        vmm.start_kill()
    }
}

/// Connects to the agent through `backend`, unless the VMM exits first (then its stderr and the
/// console say why).
pub(crate) async fn connect_or_exit(
    backend: &dyn Backend,
    vmm: &mut Child,
    runtime: &RuntimeDir,
    socket: &Path,
    secret: &BootSecret,
    deadline: Instant,
) -> Result<Channel, VmError> {
    tokio::select! {
        connected = backend.connect_agent(socket, secret, deadline) => connected,
        status = vmm.wait() => Err(vmm_exited(vmm, runtime, status).await),
    }
}

/// The error for a VMM that exited early: its status, the start of its stderr, and the end of
/// the guest console.
pub(crate) async fn vmm_exited(
    vmm: &mut Child,
    runtime: &RuntimeDir,
    status: std::io::Result<std::process::ExitStatus>,
) -> VmError {
    let mut stderr = String::new();
    if let Some(pipe) = vmm.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = pipe.take(2048).read_to_string(&mut stderr).await;
    }
    VmError::VmmExited {
        status: status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string()),
        console: format!(
            "{} {}",
            crate::error::sanitize_guest_text(stderr.trim()),
            runtime.console_tail()
        ),
    }
}

/// The first line `binary --version` prints, or `None` when it does not run or prints nothing.
pub(crate) fn version_line(binary: &std::path::Path) -> Option<String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .filter(|line| !line.is_empty())
}
