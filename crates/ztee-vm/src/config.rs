//! What a sandbox looks like and how the engine is set up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::firecracker::config::FirecrackerConfig;
use crate::backend::types::{AccelChoice, VmmChoice};
use crate::{BootImage, GuestAssets, JailConfig, VmError};

/// Shape and limits of one sandbox's VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxSpec {
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Size of the tmpfs that holds every write (the "disk"). It lives in guest memory, so it
    /// must leave room for programs: at most `memory_mib - 64`.
    pub scratch_mib: u32,
    /// Most processes the sandbox user may have at once.
    pub max_processes: u32,
    /// An admitted image to boot; the operator's default guest image when `None`.
    pub image: Option<BootImage>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            vcpus: 1,
            scratch_mib: 128,
            max_processes: 256,
            image: None,
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
        let scratch_max = self.memory_mib.saturating_sub(64).max(8);
        if !(8..=scratch_max).contains(&self.scratch_mib) {
            return Err(VmError::InvalidSpec(format!(
                "scratch disk must be 8-{scratch_max} MiB for {} MiB of memory (it is held in guest memory), got {}",
                self.memory_mib, self.scratch_mib
            )));
        }
        if !(16..=65536).contains(&self.max_processes) {
            return Err(VmError::InvalidSpec(format!(
                "process limit must be 16-65536, got {}",
                self.max_processes
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
    /// Derived artifacts (initramfs, snapshots, accelerator probe results), shared by data
    /// directories.
    pub cache_dir: PathBuf,
    pub accelerator: AccelChoice,
    /// How long a VM may take from VMM start to an authenticated agent.
    pub boot_timeout: Duration,
    /// Boot each VM shape once, snapshot it, and restore new sandboxes from the snapshot.
    pub snapshots: bool,
    /// Whether and how VMMs are jailed (namespaces, private root, own uid and cgroup).
    pub jail: JailConfig,
    /// Which VMM runs guests, and how Firecracker is started when it is the one.
    pub vmm: VmmSettings,
}

/// The VMM choice and Firecracker's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmSettings {
    pub choice: VmmChoice,
    pub firecracker: FirecrackerConfig,
}

impl VmmSettings {
    /// `ZTEE_VMM` (`auto`|`qemu`|`firecracker`) and Firecracker's variables (see
    /// [`FirecrackerConfig::from_env`]).
    pub fn from_env() -> Result<Self, VmError> {
        let choice = match std::env::var("ZTEE_VMM") {
            Ok(value) if !value.is_empty() => value
                .parse()
                .map_err(|e: String| VmError::InvalidSpec(format!("ZTEE_VMM: {e}")))?,
            _ => VmmChoice::Auto,
        };
        Ok(Self {
            choice,
            firecracker: FirecrackerConfig::from_env()?,
        })
    }
}

impl EngineConfig {
    /// Defaults under `data_dir` and [`default_cache_dir`], overridden by `ZTEE_GUEST_DIR`,
    /// `ZTEE_ACCEL` (`auto`|`kvm`|`tcg`), `ZTEE_BOOT_TIMEOUT` (seconds), `ZTEE_SNAPSHOTS`
    /// (`0` boots every VM from scratch), `ZTEE_JAIL` (`auto`|`on`|`off`), `ZTEE_JAIL_UIDS`,
    /// `ZTEE_VMM` and Firecracker's variables (see [`VmmSettings::from_env`]).
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
        let snapshots = match std::env::var("ZTEE_SNAPSHOTS").as_deref() {
            Ok("0") | Ok("false") | Ok("off") => false,
            Ok("1") | Ok("true") | Ok("on") | Ok("") | Err(_) => true,
            Ok(other) => {
                return Err(VmError::InvalidSpec(format!(
                    "ZTEE_SNAPSHOTS must be 1 or 0, got {other:?}"
                )))
            }
        };
        Ok(Self {
            assets: GuestAssets::locate(data_dir)?,
            runtime_dir: data_dir.join("run"),
            cache_dir: default_cache_dir(),
            accelerator,
            boot_timeout,
            snapshots,
            jail: JailConfig::from_env()?,
            vmm: VmmSettings::from_env()?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
