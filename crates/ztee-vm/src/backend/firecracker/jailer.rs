//! Starting Firecracker under its own `jailer` (docs/jailer.md): the jailer, run as root,
//! creates `<chroot base>/<exec file name>/<id>/root`, pivots into it, joins the network
//! namespace, puts the process in its own cgroup with the given limits, sets resource limits,
//! drops to the VM's uid and gid and execs Firecracker. The jailer execs in place (no
//! `--daemonize`, no `--new-pid-ns`), so the process ztee spawned *is* the VMM and its exit is
//! the VM's end.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::FirecrackerConfig;

/// Where Firecracker puts its API socket inside the chroot (its default, made explicit).
pub const API_SOCKET: &str = "/run/firecracker.socket";

/// The cgroup limits of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLimits {
    pub memory_mib: u32,
    pub vcpus: u8,
}

/// Room for Firecracker's own memory on top of the guest's.
const VMM_OVERHEAD_MIB: u64 = 64;

/// The chroot the jailer builds for VM `id`: `<base>/<exec file name>/<id>/root`.
pub fn chroot_root(config: &FirecrackerConfig, id: &str) -> PathBuf {
    config
        .chroot_base
        .join(exec_file_name(&config.firecracker))
        .join(id)
        .join("root")
}

fn exec_file_name(binary: &Path) -> OsString {
    binary
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("firecracker"))
}

/// The jailer's command line for VM `id`.
pub fn arguments(config: &FirecrackerConfig, id: &str, limits: VmLimits) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |a: &str, b: OsString| {
        args.push(a.into());
        args.push(b);
    };
    push("--id", id.into());
    push("--exec-file", config.firecracker.clone().into_os_string());
    push("--uid", config.uid.to_string().into());
    push("--gid", config.gid.to_string().into());
    push(
        "--chroot-base-dir",
        config.chroot_base.clone().into_os_string(),
    );
    push("--cgroup-version", config.cgroup_version.to_string().into());
    if let Some(parent) = &config.parent_cgroup {
        push("--parent-cgroup", parent.into());
    }
    let memory_bytes = (u64::from(limits.memory_mib) + VMM_OVERHEAD_MIB) * 1024 * 1024;
    let cpu_period = 100_000u64;
    let cpu_quota = u64::from(limits.vcpus) * cpu_period;
    match config.cgroup_version {
        1 => {
            push(
                "--cgroup",
                format!("memory.limit_in_bytes={memory_bytes}").into(),
            );
            push("--cgroup", format!("cpu.cfs_period_us={cpu_period}").into());
            push("--cgroup", format!("cpu.cfs_quota_us={cpu_quota}").into());
        }
        _ => {
            push("--cgroup", format!("memory.max={memory_bytes}").into());
            push("--cgroup", "memory.swap.max=0".into());
            push(
                "--cgroup",
                format!("cpu.max={cpu_quota} {cpu_period}").into(),
            );
            push(
                "--cgroup",
                format!("pids.max={}", config.max_threads).into(),
            );
        }
    }
    if let Some(netns) = &config.netns {
        push("--netns", netns.clone().into_os_string());
    }
    push(
        "--resource-limit",
        format!("fsize={}", config.max_file_bytes).into(),
    );
    push(
        "--resource-limit",
        format!("no-file={}", config.max_open_files).into(),
    );
    // Everything after `--` goes to Firecracker itself.
    for arg in ["--", "--api-sock", API_SOCKET, "--level", "Warning"] {
        args.push(arg.into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jailer_arguments_carry_configured_paths_and_limits() {
        let config = FirecrackerConfig {
            firecracker: PathBuf::from("/opt/fc/firecracker"),
            jailer: PathBuf::from("/opt/fc/jailer"),
            chroot_base: PathBuf::from("/srv/jailer"),
            uid: 123,
            gid: 456,
            netns: Some(PathBuf::from("/var/run/netns/ztee")),
            parent_cgroup: Some("ztee".into()),
            ..FirecrackerConfig::default()
        };
        let args: Vec<String> = arguments(
            &config,
            "sbx-0123456789abcdef",
            VmLimits {
                memory_mib: 256,
                vcpus: 2,
            },
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("--id sbx-0123456789abcdef --exec-file /opt/fc/firecracker --uid 123 --gid 456 --chroot-base-dir /srv/jailer --cgroup-version 2 --parent-cgroup ztee"), "{joined}");
        assert!(joined.contains(&format!("--cgroup memory.max={}", 320 * 1024 * 1024)));
        assert!(
            args.contains(&"cpu.max=200000 100000".to_string()),
            "{joined}"
        );
        assert!(joined.contains("--netns /var/run/netns/ztee"));
        assert!(joined.ends_with("-- --api-sock /run/firecracker.socket --level Warning"));
        assert_eq!(
            chroot_root(&config, "sbx-0123456789abcdef"),
            PathBuf::from("/srv/jailer/firecracker/sbx-0123456789abcdef/root")
        );
    }
}
