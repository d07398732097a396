//! Snapshots: boot each VM shape once, save it, restore every new VM from it.
//!
//! A [`Template`] is one saved VM: a directory holding the initramfs it booted (with its agent's
//! secret), the secret itself, and the backend's saved state. How the state is saved and loaded
//! is the backend's business ([`crate::backend::Backend`]):
//!
//! - QEMU: a template VM boots with its RAM in a shared file mapping; once its agent listens, it
//!   is paused and its device state migrated (with `x-ignore-shared`, so RAM is not copied: the
//!   file already holds it). A restored VM maps that RAM file privately — copy-on-write, so
//!   untouched pages stay shared in the host page cache across every clone — and loads the device
//!   state. Files: `ram`, `state`.
//! - Firecracker: a full snapshot, memory in a file, loaded by a fresh Firecracker in each
//!   clone's chroot. Files: `state`, `memory`.
//!
//! Every clone starts with the template's RNG state, identifiers and channel secret; the lease
//! (see [`crate::engine`]) replaces all of them before any user code runs.
//!
//! Templates are cached by content under `<cache dir>/snapshots/<key>/` ([`crate::templates`]),
//! where the key covers the kernel, agent and root file system, the VMM binary, the VM shape and
//! whatever else the backend's templates depend on (QEMU's accelerator): when any of them
//! changes, a new snapshot is made.

use std::any::Any;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ztee_wire::BootSecret;

use crate::config::SandboxSpec;
use crate::runtime::RuntimeDir;
use crate::VmError;

/// A backend's own part of a template (QEMU's sealed RAM, say), opaque to everything else.
pub(crate) type TemplateState = Box<dyn Any + Send + Sync>;

/// A saved VM of one shape: its directory, the secret its agent had, and the backend's state.
pub struct Template {
    dir: PathBuf,
    secret: BootSecret,
    spec: SandboxSpec,
    state: TemplateState,
}

impl Template {
    pub(crate) fn new(
        dir: PathBuf,
        secret: BootSecret,
        spec: SandboxSpec,
        state: TemplateState,
    ) -> Self {
        Self {
            dir,
            secret,
            spec,
            state,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn secret(&self) -> &BootSecret {
        &self.secret
    }

    pub(crate) fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// The backend's state, as the type it loaded; an error for another backend's template.
    pub(crate) fn state<T: Any>(&self) -> Result<&T, VmError> {
        self.state.downcast_ref::<T>().ok_or_else(|| {
            VmError::Snapshot(format!(
                "{} was saved by another VMM backend",
                self.dir.display()
            ))
        })
    }
}

/// The secret saved with the template in `dir`, `None` when there is none.
pub(crate) fn read_secret(dir: &Path) -> Option<BootSecret> {
    std::fs::read_to_string(dir.join("secret"))
        .ok()
        .and_then(|s| BootSecret::from_hex(&s))
}

/// Saves a template's secret (readable by the owner alone), refusing to overwrite one.
pub(crate) fn write_secret(path: &Path, secret: &BootSecret) -> Result<(), VmError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| VmError::io("write snapshot secret", path, e))?;
    std::io::Write::write_all(&mut file, secret.to_hex().as_bytes())
        .map_err(|e| VmError::io("write snapshot secret", path, e))
}

/// Waits for the agent's "listening" line on the VM's console (any VMM).
pub(crate) async fn wait_for_agent_listening(
    runtime: &RuntimeDir,
    deadline: Instant,
) -> Result<(), VmError> {
    // The marker the agent prints once it waits on its port (see ztee-agent's transport).
    const MARKER: &[u8] = b"ztee-agent: listening";
    loop {
        let console = std::fs::read(runtime.console_log()).unwrap_or_default();
        if console.windows(MARKER.len()).any(|w| w == MARKER) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(VmError::BootTimeout(std::time::Duration::ZERO));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A file's identity: path, device, inode, size and modification time. Guest assets and VMM
/// binaries are written once and never modified in place, so their identity stands for their
/// content without hashing hundreds of MiB on every start.
pub(crate) fn file_identity(path: &Path) -> Result<String, VmError> {
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(path).map_err(|e| VmError::io("resolve", path, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| VmError::io("stat", path, e))?;
    Ok(format!(
        "{}:{}:{}:{}:{}.{}",
        canonical.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}
