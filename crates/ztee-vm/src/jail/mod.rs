//! The jailer: every VMM runs in new mount, pid, ipc, uts and net namespaces, chrooted into a
//! private root holding only what it needs, as a uid of its own, in a cgroup of its own with
//! memory, pids and CPU limits, with no capabilities, `no_new_privs` and QEMU's seccomp filter.
//! See `docs/jail.md` for what the root holds and why.
//!
//! - [`ids`]: per-VM uids; [`cgroup`]: per-VM cgroups (v1 and v2); [`ram`]: sealed template
//!   RAM; [`spawn`]: what runs between fork and exec.

mod cgroup;
mod ids;
mod ram;
mod spawn;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::types::{Accelerator, JailPaths, LaunchPlan, MemoryBacking};
use crate::VmError;

pub(crate) use cgroup::remove as remove_cgroups;
pub(crate) use ids::UidLease;
pub(crate) use ram::SealedRam;
pub(crate) use spawn::Spawner;

/// Whether VMMs are jailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JailMode {
    /// Jailed when ztee runs as root (euid 0), unjailed otherwise.
    Auto,
    /// Always jailed; starting the engine without root is an error.
    On,
    /// Never jailed.
    Off,
}

impl std::str::FromStr for JailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("ZTEE_JAIL must be auto, on or off, got {other:?}")),
        }
    }
}

/// How VMMs are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    pub mode: JailMode,
    /// Each live VM gets one of these uids (and the gid of the same number) to itself.
    pub uids: RangeInclusive<u32>,
    /// Memory the VMM may use beyond guest RAM (QEMU itself, its I/O buffers).
    pub memory_overhead_mib: u32,
    /// More on top under TCG, for its translation cache (QEMU 7.2 reserves up to 1 GiB for it
    /// and fills it as the guest runs code).
    pub tcg_overhead_mib: u32,
    /// Most tasks (processes and threads) in a VMM's cgroup.
    pub pids_max: u32,
    /// Where uid leases are held (host-wide, so engines in different processes never collide).
    pub lock_dir: PathBuf,
}

impl Default for JailConfig {
    fn default() -> Self {
        Self {
            mode: JailMode::Auto,
            uids: 64000..=64999,
            memory_overhead_mib: 128,
            tcg_overhead_mib: 384,
            pids_max: 64,
            lock_dir: PathBuf::from("/run/ztee/uids"),
        }
    }
}

impl JailConfig {
    /// Defaults overridden by `ZTEE_JAIL` (`auto`|`on`|`off`) and `ZTEE_JAIL_UIDS`
    /// (`FIRST-LAST`, e.g. `64000-64999`).
    pub fn from_env() -> Result<Self, VmError> {
        let mut config = Self::default();
        if let Ok(mode) = std::env::var("ZTEE_JAIL") {
            if !mode.is_empty() {
                config.mode = mode.parse().map_err(VmError::InvalidSpec)?;
            }
        }
        if let Ok(range) = std::env::var("ZTEE_JAIL_UIDS") {
            if !range.is_empty() {
                config.uids = parse_uid_range(&range)?;
            }
        }
        Ok(config)
    }

    /// Whether VMMs will be jailed; an error for `on` without root.
    pub fn enabled(&self) -> Result<bool, VmError> {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        match self.mode {
            JailMode::Off => Ok(false),
            JailMode::Auto => Ok(root),
            JailMode::On if root => Ok(true),
            JailMode::On => Err(VmError::Jail(
                "ZTEE_JAIL=on needs root (namespaces, chroot, per-VM uids and cgroups); run ztee as root or set ZTEE_JAIL=auto".into(),
            )),
        }
    }
}

impl JailConfig {
    /// One line for an operator: whether VMMs will be jailed here, and why.
    pub fn describe(&self) -> String {
        match self.enabled() {
            Ok(true) => format!(
                "on: each VMM in its own namespaces, private root, uid ({}-{}) and cgroup",
                self.uids.start(),
                self.uids.end()
            ),
            Ok(false) if self.mode == JailMode::Off => {
                "OFF: ZTEE_JAIL=off, VMMs run unjailed".to_string()
            }
            Ok(false) => {
                "OFF: ztee is not running as root, VMMs run unjailed (run as root to jail them)"
                    .to_string()
            }
            Err(err) => err.to_string(),
        }
    }
}

fn parse_uid_range(text: &str) -> Result<RangeInclusive<u32>, VmError> {
    let invalid = || {
        VmError::InvalidSpec(format!(
            "ZTEE_JAIL_UIDS must be FIRST-LAST with 1000 <= FIRST <= LAST (e.g. 64000-64999), got {text:?}"
        ))
    };
    let (first, last) = text.split_once('-').ok_or_else(invalid)?;
    let first: u32 = first.trim().parse().map_err(|_| invalid())?;
    let last: u32 = last.trim().parse().map_err(|_| invalid())?;
    if first < 1000 || first > last || last >= u32::MAX - 1 {
        return Err(invalid());
    }
    Ok(first..=last)
}

/// What an operator checks about a jailed VMM (`ztee sandbox inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailInfo {
    /// Host pid of QEMU (pid 1 of its own pid namespace).
    pub vmm_pid: u32,
    /// Host pid of the waiter that spawned QEMU and exits with it.
    pub waiter_pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroups: Vec<PathBuf>,
    /// `mnt`, `pid`, `ipc`, `uts`, `net`: the `/proc/<pid>/ns/*` link targets, e.g. `net:[4026532345]`.
    pub namespaces: BTreeMap<String, String>,
    /// The private root, as seen from the host.
    pub root: PathBuf,
}

pub const NAMESPACE_KINDS: [&str; 5] = ["mnt", "pid", "ipc", "uts", "net"];

/// The namespace ids of process `pid`.
pub fn namespaces_of(pid: u32) -> BTreeMap<String, String> {
    NAMESPACE_KINDS
        .iter()
        .map(|kind| {
            let target = fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            (kind.to_string(), target)
        })
        .collect()
}

/// One VM's jail on the host side: its uid, cgroup and root directory. Dropping it removes the
/// cgroup (killing what is left in it) and then frees the uid.
#[derive(Debug)]
pub(crate) struct VmJail {
    root: PathBuf,
    cgroup: cgroup::Cgroup,
    uid: ids::UidLease,
}

/// Where QEMU's writable files (sockets, console log) live inside the jail.
pub(crate) const RUN_DIR: &str = "/run";

impl VmJail {
    /// Takes a uid, creates the cgroup and the skeleton of the root at `root`, whose `run`
    /// subdirectory must already exist (the runtime directory makes it).
    pub(crate) fn create(
        config: &JailConfig,
        name: &str,
        root: &Path,
        memory_mib: u32,
        vcpus: u8,
        accelerator: Accelerator,
    ) -> Result<Self, VmError> {
        let uid = ids::UidLease::acquire(&config.lock_dir, &config.uids)?;
        let overhead = match accelerator {
            Accelerator::Kvm => config.memory_overhead_mib,
            Accelerator::Tcg => config.memory_overhead_mib + config.tcg_overhead_mib,
        };
        let limits = cgroup::Limits {
            memory_bytes: (u64::from(memory_mib) + u64::from(overhead)) << 20,
            pids: config.pids_max,
            cpu_percent: u32::from(vcpus) * 100,
        };
        let cgroup = cgroup::Cgroup::create(name, &limits)?;
        let jail = Self {
            root: root.to_path_buf(),
            cgroup,
            uid,
        };
        let run = root.join(&RUN_DIR[1..]);
        chown(&run, jail.uid())?;
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700))
            .map_err(|e| VmError::io("chmod", &run, e))?;
        Ok(jail)
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid.uid()
    }

    /// Lines for the runtime directory's `jail` record (read back by the orphan reaper).
    pub(crate) fn record(&self) -> String {
        let mut text = format!("uid {}\n", self.uid());
        for path in self.cgroup.paths() {
            text.push_str(&format!("cgroup {}\n", path.display()));
        }
        text
    }

    /// What `inspect` shows; `waiter_pid` is the spawned process.
    pub(crate) fn info(&self, waiter_pid: u32) -> JailInfo {
        let vmm_pid = self
            .cgroup
            .pids()
            .into_iter()
            .find(|&pid| pid != waiter_pid)
            .unwrap_or(0);
        JailInfo {
            vmm_pid,
            waiter_pid,
            uid: self.uid(),
            gid: self.uid(),
            cgroups: self.cgroup.paths().to_vec(),
            namespaces: namespaces_of(vmm_pid),
            root: self.root.clone(),
        }
    }

    /// Lays out the root for `plan` and returns the paths QEMU is given plus the pre-exec step.
    /// `sealed_ram` is required for a [`MemoryBacking::PrivateFile`] plan.
    pub(crate) fn prepare(
        &self,
        plan: &LaunchPlan,
        sealed_ram: Option<RawFd>,
    ) -> Result<(JailPaths, Spawner), VmError> {
        let mut mounts = Vec::new();
        let root = &self.root;
        let bind = |host: &Path, inside: &Path, writable: bool, device: bool| {
            let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
            let mut remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
            if !writable {
                remount |= libc::MS_RDONLY;
            }
            if !device {
                remount |= libc::MS_NODEV;
            }
            Ok::<_, VmError>([
                spawn::MountOp {
                    source: Some(cstring(host)?),
                    target: cstring(&target)?,
                    fstype: None,
                    flags: libc::MS_BIND,
                },
                spawn::MountOp {
                    source: None,
                    target: cstring(&target)?,
                    fstype: None,
                    flags: remount,
                },
            ])
        };
        // The root: a bind of the skeleton onto itself (so it is a mount point), read-only once
        // everything is mounted in it.
        mounts.push(spawn::MountOp {
            source: Some(cstring(root)?),
            target: cstring(root)?,
            fstype: None,
            flags: libc::MS_BIND,
        });
        // The dynamic loader, libraries and QEMU's own data (firmware, keymaps) live in /usr;
        // /lib and /lib64 are symlinks into it on merged-/usr systems, directories otherwise.
        self.skeleton_dir("usr")?;
        mounts.extend(bind(Path::new("/usr"), Path::new("/usr"), false, false)?);
        for dir in ["lib", "lib64"] {
            let host = Path::new("/").join(dir);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target =
                        fs::read_link(&host).map_err(|e| VmError::io("read link", &host, e))?;
                    let link = root.join(dir);
                    if fs::symlink_metadata(&link).is_err() {
                        std::os::unix::fs::symlink(&target, &link)
                            .map_err(|e| VmError::io("create link", &link, e))?;
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    self.skeleton_dir(dir)?;
                    mounts.extend(bind(&host, &host, false, false)?);
                }
                _ => {}
            }
        }
        // The loader's cache: without it every library is searched for along default paths.
        let ld_cache = Path::new("/etc/ld.so.cache");
        if ld_cache.is_file() {
            self.skeleton_file("etc/ld.so.cache")?;
            mounts.extend(bind(ld_cache, ld_cache, false, false)?);
        }
        // /dev/null: QEMU's stdin; /dev/urandom: the virtio-rng backend.
        for device in ["/dev/null", "/dev/urandom"] {
            self.skeleton_file(&device[1..])?;
            mounts.extend(bind(
                Path::new(device),
                Path::new(device),
                device == "/dev/null",
                true,
            )?);
        }
        if plan.accelerator == Accelerator::Kvm {
            self.kvm_node()?;
        }
        self.skeleton_dir("proc")?;
        mounts.push(spawn::MountOp {
            source: Some(CString::from(c"proc")),
            target: cstring(&root.join("proc"))?,
            fstype: Some(CString::from(c"proc")),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        });
        // Guest assets, read-only.
        self.skeleton_dir("vm")?;
        let kernel = Path::new("/vm/vmlinux");
        let initramfs = Path::new("/vm/initrd.img");
        let rootfs = Path::new("/vm/rootfs.img");
        for (host, inside) in [
            (&plan.kernel, kernel),
            (&plan.initramfs, initramfs),
            (&plan.rootfs, rootfs),
        ] {
            self.readable(host)?;
            self.skeleton_file(&inside.to_string_lossy()[1..])?;
            mounts.extend(bind(host, inside, false, false)?);
        }
        let mem_path = match &plan.memory {
            MemoryBacking::Anonymous => None,
            // The template VM writes its RAM to a fresh file of its own.
            MemoryBacking::SharedFile(host) => {
                let inside = Path::new("/vm/ram");
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(host)
                    .map_err(|e| VmError::io("create template RAM", host, e))?;
                chown(host, self.uid())?;
                self.skeleton_file("vm/ram")?;
                mounts.extend(bind(host, inside, true, false)?);
                Some(inside.to_path_buf())
            }
            MemoryBacking::PrivateFile(host) => {
                let fd = sealed_ram.ok_or_else(|| {
                    VmError::Jail(format!(
                        "a jailed restore needs the sealed copy of {}",
                        host.display()
                    ))
                })?;
                Some(PathBuf::from(format!("/proc/self/fd/{fd}")))
            }
        };
        // The writable directory: sockets and the console log, owned by the VM's uid.
        let run = root.join(&RUN_DIR[1..]);
        mounts.push(spawn::MountOp {
            source: Some(cstring(&run)?),
            target: cstring(&run)?,
            fstype: None,
            flags: libc::MS_BIND,
        });
        mounts.push(spawn::MountOp {
            source: None,
            target: cstring(&run)?,
            fstype: None,
            flags: libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
        });
        // The root itself goes read-only last. It keeps device nodes working (only the ones made
        // here exist in it: /dev/kvm under KVM).
        mounts.push(spawn::MountOp {
            source: None,
            target: cstring(root)?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
        });
        let inside_run =
            |host: &Path| Path::new(RUN_DIR).join(host.file_name().unwrap_or(host.as_os_str()));
        let paths = JailPaths {
            kernel: kernel.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            agent_socket: inside_run(&plan.agent_socket),
            console_log: inside_run(&plan.console_log),
            qmp_socket: plan.qmp_socket.as_deref().map(inside_run),
            mem_path,
        };
        let spawner = Spawner {
            root: cstring(root)?,
            mounts,
            uid: self.uid(),
            gid: self.uid(),
            cgroup_procs: self.cgroup.open_procs()?,
            inherit_fd: sealed_ram,
        };
        Ok((paths, spawner))
    }

    fn skeleton_dir(&self, relative: &str) -> Result<(), VmError> {
        let dir = self.root.join(relative);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| VmError::io("create jail dir", &dir, e))
    }

    fn skeleton_file(&self, relative: &str) -> Result<(), VmError> {
        let file = self.root.join(relative);
        if let Some(parent) = Path::new(relative).parent().and_then(Path::to_str) {
            if !parent.is_empty() {
                self.skeleton_dir(parent)?;
            }
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map(drop)
            .map_err(|e| VmError::io("create jail mount point", &file, e))
    }

    /// The host's /dev/kvm is usually root:kvm 0660, and the VM's uid must not join the host's
    /// kvm group: the jail gets its own node, owned by the VM's uid.
    fn kvm_node(&self) -> Result<(), VmError> {
        self.skeleton_dir("dev")?;
        let host = fs::metadata("/dev/kvm").map_err(|e| VmError::io("stat", "/dev/kvm", e))?;
        let node = self.root.join("dev/kvm");
        let path = cstring(&node)?;
        // SAFETY: mknod(2) with a NUL-terminated path that outlives the call.
        if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, host.rdev()) } != 0 {
            return Err(VmError::io(
                "create",
                &node,
                std::io::Error::last_os_error(),
            ));
        }
        chown(&node, self.uid())
    }

    /// A read-only input must be readable by the VM's uid: per-VM files (this VM's initramfs)
    /// are handed to it; anything else must already be world-readable.
    fn readable(&self, host: &Path) -> Result<(), VmError> {
        let meta = fs::metadata(host).map_err(|e| VmError::io("stat", host, e))?;
        if meta.mode() & 0o004 != 0 || meta.uid() == self.uid() {
            return Ok(());
        }
        if meta.uid() == 0 && meta.mode() & 0o077 == 0 {
            return chown(host, self.uid());
        }
        Err(VmError::Jail(format!(
            "{} is not readable by the jailed VMM (uid {}); make it world-readable (chmod a+r)",
            host.display(),
            self.uid()
        )))
    }
}

fn chown(path: &Path, uid: u32) -> Result<(), VmError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|e| VmError::io("chown", path, e))
}

fn cstring(path: &Path) -> Result<CString, VmError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| VmError::Jail(format!("path {} contains a NUL byte", path.display())))
}

/// Removes the cgroups named in a runtime directory's `jail` record (for the orphan reaper).
pub(crate) fn reap_record(record: &str) {
    let cgroups: Vec<PathBuf> = record
        .lines()
        .filter_map(|l| l.strip_prefix("cgroup "))
        .map(PathBuf::from)
        .collect();
    remove_cgroups(&cgroups);
}

/// Limits for tests that need a real cgroup.
#[cfg(test)]
pub(crate) fn cgroup_limits_for_test() -> cgroup::Limits {
    cgroup::Limits {
        memory_bytes: 64 << 20,
        pids: 8,
        cpu_percent: 100,
    }
}

/// Creates a real VM cgroup and leaves it for the caller to remove (its paths are returned).
#[cfg(test)]
pub(crate) fn test_cgroup(name: &str, limits: &cgroup::Limits) -> Vec<PathBuf> {
    let cgroup = cgroup::Cgroup::create(name, limits).unwrap();
    let paths = cgroup.paths().to_vec();
    std::mem::forget(cgroup);
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_jails_and_auto_jails_exactly_as_root() {
        let off = JailConfig {
            mode: JailMode::Off,
            ..JailConfig::default()
        };
        assert!(!off.enabled().unwrap());
        assert!(off.describe().starts_with("OFF"));
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(JailConfig::default().enabled().unwrap(), root);
        let on = JailConfig {
            mode: JailMode::On,
            ..JailConfig::default()
        };
        assert_eq!(on.enabled().is_ok(), root);
    }

    #[test]
    fn modes_and_uid_ranges_parse_with_clear_errors() {
        assert_eq!("on".parse::<JailMode>(), Ok(JailMode::On));
        assert!("yes"
            .parse::<JailMode>()
            .unwrap_err()
            .contains("auto, on or off"));
        assert_eq!(parse_uid_range("64000-64999").unwrap(), 64000..=64999);
        assert!(parse_uid_range("0-10").is_err());
        assert!(parse_uid_range("65000-64000").is_err());
        assert!(parse_uid_range("64000").is_err());
    }
}
