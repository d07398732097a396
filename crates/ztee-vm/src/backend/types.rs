//! The words the backends and the layers under them share: which VMM and accelerator, how a VM
//! was started, and the plan QEMU (and its jail, [`crate::jail`]) start a VM from. Kept apart
//! from the [`super::Backend`] trait so that [`crate::config`] and [`crate::jail`] can use them
//! without reaching the engine-facing half of [`super`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How guest instructions execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software CPU: same isolation boundary, several times slower.
    Tcg,
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub name: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub agent_socket: PathBuf,
    pub console_log: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub scratch_mib: u32,
    pub accelerator: Accelerator,
    pub memory: MemoryBacking,
    /// A QMP control socket, for pausing, snapshotting and restoring.
    pub qmp_socket: Option<PathBuf>,
    /// Start paused, waiting for an incoming migration (a snapshot restore).
    pub incoming: bool,
    /// The paths the VMM is given when it runs in a jail (the ones above are the host's view).
    pub jail: Option<JailPaths>,
}

/// File paths as a jailed VMM sees them inside its private root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub agent_socket: PathBuf,
    pub console_log: PathBuf,
    pub qmp_socket: Option<PathBuf>,
    /// The guest RAM file for file-backed memory.
    pub mem_path: Option<PathBuf>,
}

impl LaunchPlan {
    /// The paths to put on the VMM's command line: the jail's when jailed, else the host's.
    pub fn vmm_paths(&self) -> JailPaths {
        self.jail.clone().unwrap_or_else(|| JailPaths {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            rootfs: self.rootfs.clone(),
            agent_socket: self.agent_socket.clone(),
            console_log: self.console_log.clone(),
            qmp_socket: self.qmp_socket.clone(),
            mem_path: match &self.memory {
                MemoryBacking::Anonymous => None,
                MemoryBacking::SharedFile(path) | MemoryBacking::PrivateFile(path) => {
                    Some(path.clone())
                }
            },
        })
    }
}

/// Where guest RAM lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous memory: an ordinary VM.
    Anonymous,
    /// A file the VM writes through to: a template VM whose RAM becomes the snapshot.
    SharedFile(PathBuf),
    /// A copy-on-write mapping of a snapshot's RAM file: a restored VM. Pages it never writes
    /// stay shared, in the host page cache, with every other VM restored from that snapshot.
    PrivateFile(PathBuf),
}

/// A VMM ztee can run guests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    Qemu,
    Firecracker,
}

impl Vmm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which VMM an operator asks for (`--vmm`, `ZTEE_VMM`, the gateway's `sandbox_defaults.vmm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    /// Firecracker where it is installed and KVM boots guests, else QEMU.
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

impl std::str::FromStr for VmmChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "firecracker" => Ok(Self::Firecracker),
            other => Err(format!(
                "VMM must be auto, qemu or firecracker, got {other:?}"
            )),
        }
    }
}

/// The VMM in use and why, in words an operator can act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmmDecision {
    pub vmm: Vmm,
    pub reason: String,
}

/// Which accelerator an operator asks for (`ZTEE_ACCEL`); see [`crate::accel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!(
                "accelerator must be auto, kvm or tcg, got {other:?}"
            )),
        }
    }
}

/// The accelerator in use and the reason, in words an operator can act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccelDecision {
    pub accelerator: Accelerator,
    pub reason: String,
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
