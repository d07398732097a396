//! Starting Firecracker under its own `jailer` (docs/jailer.md): the jailer, run as root,
//! creates `<chroot base>/<exec file name>/<id>/root`, pivots into it, joins the network
//! namespace, puts the process in its own cgroup with the given limits, sets resource limits,
//! drops to the VM's uid and gid and execs Firecracker. The jailer execs in place (no
//! `--daemonize`, no `--new-pid-ns`), so the process ztee spawned *is* the VMM and its exit is
//! the VM's end.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::FirecrackerConfig;
use crate::VmError;

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
        let root = chroot_root(config, id);
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
    limits: VmLimits,
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
        .args(arguments(&per_vm, id, limits))
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
