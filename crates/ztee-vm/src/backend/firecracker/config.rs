//! Firecracker's settings: where its binaries are, the jailer's chroot base, namespace and
//! cgroups, and the rate limits of the VM's devices. From configuration (environment variables);
//! nothing here is decided per request.

use std::path::PathBuf;

use super::model::{RateLimiter, TokenBucket};
use crate::VmError;

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

    pub(crate) fn disk_rate_limiter(&self) -> Option<RateLimiter> {
        rate_limiter(self.disk_bytes_per_sec, self.disk_ops_per_sec)
    }

    pub(crate) fn entropy_rate_limiter(&self) -> Option<RateLimiter> {
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

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
