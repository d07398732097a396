//! Per-VM runtime directories and crash safety.
//!
//! Every VM gets a private directory (mode 0700) under `<data dir>/run/vms/` holding its agent
//! socket, its initramfs (with the VM secret) and its console log, plus an `owner` record naming
//! the supervising process and the VMM process. The VMM dies with its supervisor through
//! `PR_SET_PDEATHSIG`; should anything survive (a SIGKILL racing the spawn, a VMM that ignored
//! it), the next engine start finds records whose owner is gone, kills their VMM if it is still
//! the same process, and removes the directory.
//!
//! A jailed VM's directory also holds its private root (`root/`, see [`crate::jail`]); the
//! files QEMU writes (sockets, console log) are then in `root/run/`, which the VM's uid owns, and
//! a `jail` record names its uid and cgroups so that the reaper can remove them too.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::jail::VmJail;
use crate::VmError;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    /// Where the files QEMU writes live: `path` itself, or the jail's `root/run`.
    vmm_dir: PathBuf,
    // Dropped after the directory is removed: removes the cgroup, then frees the uid.
    jail: Option<VmJail>,
    // What a backend's VM holds outside this directory (a Firecracker VM's chroot and uid),
    // likewise dropped after the directory.
    held: Option<Box<dyn std::fmt::Debug + Send + Sync>>,
}

impl RuntimeDir {
    /// A directory for VM `vm_id`; `jailed` lays it out for a private root.
    pub fn create(root: &Path, vm_id: &str, jailed: bool) -> Result<Self, VmError> {
        let vms = root.join("vms");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vms)
            .map_err(|e| VmError::io("create runtime dir", &vms, e))?;
        let path = vms.join(vm_id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| VmError::io("create VM runtime dir", &path, e))?;
        let vmm_dir = if jailed {
            let run = path.join("root").join(&crate::jail::RUN_DIR[1..]);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&run)
                .map_err(|e| VmError::io("create VM root", &run, e))?;
            run
        } else {
            path.clone()
        };
        let dir = Self {
            path,
            vmm_dir,
            jail: None,
            held: None,
        };
        let socket = dir.agent_socket();
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmError::InvalidSpec(format!(
                "the data directory path is too long for a unix socket ({}); use a shorter --data-dir",
                socket.display()
            )));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The VM's name: its directory's name (the sandbox id for sandbox VMs).
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// The jail's private root (`None` when the VM is not jailed).
    pub fn jail_root(&self) -> Option<PathBuf> {
        self.jail.as_ref().map(|_| self.path.join("root"))
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.vmm_dir.join("qmp.sock")
    }

    /// Where snapshot state streams to (template) or from (restore).
    pub fn migration_socket(&self) -> PathBuf {
        self.vmm_dir.join("migrate.sock")
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.vmm_dir.join("agent.sock")
    }

    /// `host`, a file in the VMM's directory, as the VMM names it (inside its jail, if any).
    pub fn vmm_view(&self, host: &Path) -> PathBuf {
        match (&self.jail, host.file_name()) {
            (Some(_), Some(name)) => Path::new(crate::jail::RUN_DIR).join(name),
            _ => host.to_path_buf(),
        }
    }

    /// Gives a file the host created in the VMM's directory to the jailed VMM's uid.
    pub fn hand_to_vmm(&self, host: &Path) -> Result<(), VmError> {
        if let Some(jail) = &self.jail {
            std::os::unix::fs::chown(host, Some(jail.uid()), Some(jail.uid()))
                .map_err(|e| VmError::io("chown", host, e))?;
        }
        Ok(())
    }

    pub(crate) fn jail(&self) -> Option<&VmJail> {
        self.jail.as_ref()
    }

    /// Attaches the VM's jail and records its uid and cgroups for the orphan reaper.
    pub(crate) fn set_jail(&mut self, jail: VmJail) -> Result<(), VmError> {
        let record = jail.record();
        self.jail = Some(jail);
        let path = self.path.join("jail");
        let temp = self.path.join("jail.tmp");
        fs::write(&temp, record).map_err(|e| VmError::io("write jail record", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| VmError::io("write jail record", &path, e))
    }

    /// Attaches what a VM holds outside this directory (`hold`, dropped after the directory is
    /// removed), and records its `chroot` directory for the orphan reaper.
    pub(crate) fn set_chroot(
        &mut self,
        chroot: &Path,
        hold: Box<dyn std::fmt::Debug + Send + Sync>,
    ) -> Result<(), VmError> {
        let record = chroot.as_os_str().as_encoded_bytes().to_vec();
        self.held = Some(hold);
        let path = self.path.join("chroot");
        let temp = self.path.join("chroot.tmp");
        fs::write(&temp, record).map_err(|e| VmError::io("write chroot record", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| VmError::io("write chroot record", &path, e))
    }

    pub fn initramfs(&self) -> PathBuf {
        self.path.join("initrd.img")
    }

    pub fn console_log(&self) -> PathBuf {
        self.vmm_dir.join("console.log")
    }

    /// Records who owns the VM, so a later start can tell whether it was orphaned.
    pub fn record_owner(&self, vmm_pid: u32) -> Result<(), VmError> {
        let me = std::process::id();
        let record = format!(
            "{me} {} {vmm_pid} {}\n",
            process_start_time(me).unwrap_or(0),
            process_start_time(vmm_pid).unwrap_or(0)
        );
        let path = self.path.join("owner");
        let temp = self.path.join("owner.tmp");
        fs::write(&temp, record).map_err(|e| VmError::io("write owner record", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| VmError::io("write owner record", &path, e))
    }

    /// The last part of the console log, for error messages about failed boots.
    pub fn console_tail(&self) -> String {
        let text = fs::read(self.console_log()).unwrap_or_default();
        let start = text.len().saturating_sub(600);
        crate::error::sanitize_guest_text(&String::from_utf8_lossy(&text[start..]))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), %err, "cannot remove VM runtime dir");
            }
        }
    }
}

/// Kills VMMs left behind by supervisors that no longer exist and removes their directories.
/// Returns how many VMs were reaped.
pub fn reap_orphans(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root.join("vms")) else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let record = fs::read_to_string(dir.join("owner")).unwrap_or_default();
        let fields: Vec<u64> = record
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let orphaned = match fields.as_slice() {
            [owner, owner_start, vmm, vmm_start] => {
                if alive(*owner as u32, *owner_start) {
                    false
                } else {
                    if alive(*vmm as u32, *vmm_start) {
                        // SAFETY: kill(2) on a pid whose start time matches the recorded VMM, so
                        // it is that process and not a recycled pid; no memory involved.
                        unsafe { libc::kill(*vmm as i32, libc::SIGKILL) };
                    }
                    true
                }
            }
            // No record: a VM whose spawn never completed. Reap it only once it is stale, so a
            // VM being created right now by another process is left alone.
            _ => older_than(&dir, std::time::Duration::from_secs(120)),
        };
        if orphaned {
            if let Ok(record) = fs::read_to_string(dir.join("jail")) {
                crate::jail::reap_record(&record);
            }
            if let Ok(record) = fs::read_to_string(dir.join("chroot")) {
                reap_chroot(&dir, Path::new(&record));
            }
        }
        if orphaned && fs::remove_dir_all(&dir).is_ok() {
            tracing::info!(dir = %dir.display(), "reaped an orphaned VM");
            reaped += 1;
        }
    }
    reaped
}

/// Removes the jailer's directory of an orphaned Firecracker VM, named in its runtime dir's
/// `chroot` record: only an absolute path whose last component is that VM's id, so a damaged
/// record cannot point the reaper elsewhere.
fn reap_chroot(runtime_dir: &Path, chroot: &Path) {
    let matches_vm = chroot.is_absolute()
        && chroot.file_name().is_some()
        && chroot.file_name() == runtime_dir.file_name()
        && !chroot
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if matches_vm {
        let _ = fs::remove_dir_all(chroot);
    } else {
        tracing::warn!(record = %chroot.display(), "ignoring a chroot record that does not name its VM");
    }
}

/// Whether the process `pid` that started at `start_time` still runs (not a recycled pid).
pub(crate) fn alive(pid: u32, start_time: u64) -> bool {
    pid != 0 && process_start_time(pid) == Some(start_time)
}

/// Whether `path` was last modified more than `age` ago.
pub(crate) fn older_than(path: &Path, age: std::time::Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot. Together with the pid it
/// names one process, unlike the pid alone. `None` for a process that does not exist or has
/// already exited (a zombie waiting to be reaped).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the
    // last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id();
        let a = process_start_time(me).unwrap();
        assert_eq!(Some(a), process_start_time(me));
    }

    #[test]
    fn reaps_dir_of_dead_owner_and_keeps_live_one() {
        let root = tempfile::tempdir().unwrap();
        let dead = RuntimeDir::create(root.path(), "dead", false).unwrap();
        // A record naming a pid/start-time pair that cannot be alive.
        fs::write(dead.path().join("owner"), "999999999 1 999999998 1\n").unwrap();
        let live = RuntimeDir::create(root.path(), "live", false).unwrap();
        live.record_owner(std::process::id()).unwrap();
        assert_eq!(reap_orphans(root.path()), 1);
        assert!(!dead.path().exists());
        assert!(live.path().exists());
    }

    #[test]
    fn reaping_an_orphan_removes_its_cgroups() {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: creating cgroups needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let name = format!(
            "reap-test-{}",
            crate::hex(&crate::random_bytes::<4>().unwrap())
        );
        let dead = RuntimeDir::create(root.path(), &name, true).unwrap();
        let limits = crate::jail::cgroup_limits_for_test();
        let cgroup = crate::jail::test_cgroup(&name, &limits);
        let paths = cgroup;
        assert!(paths.iter().all(|p| p.is_dir()));
        let record: String = paths
            .iter()
            .map(|p| format!("cgroup {}\n", p.display()))
            .collect();
        fs::write(dead.path().join("jail"), format!("uid 64000\n{record}")).unwrap();
        fs::write(dead.path().join("owner"), "999999999 1 999999998 1\n").unwrap();
        assert_eq!(reap_orphans(root.path()), 1);
        assert!(!dead.path().exists());
        for path in &paths {
            assert!(!path.exists(), "{} left behind", path.display());
        }
    }

    #[test]
    fn reaping_an_orphan_removes_its_firecracker_chroot_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let chroots = tempfile::tempdir().unwrap();
        let mut made = Vec::new();
        for name in ["sbx-00000000000000aa", "sbx-00000000000000bb"] {
            let dead = RuntimeDir::create(root.path(), name, false).unwrap();
            let chroot = chroots.path().join("firecracker").join(name);
            fs::create_dir_all(chroot.join("root/run")).unwrap();
            fs::write(dead.path().join("owner"), "999999999 1 999999998 1\n").unwrap();
            made.push((dead, chroot));
        }
        // A record naming its own VM's chroot; and a damaged one naming another directory.
        fs::write(
            made[0].0.path().join("chroot"),
            made[0].1.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        let elsewhere = chroots.path().join("keep-me");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(
            made[1].0.path().join("chroot"),
            elsewhere.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(reap_orphans(root.path()), 2);
        assert!(!made[0].1.exists(), "the orphan's chroot is left");
        assert!(made[1].1.exists() && elsewhere.exists());
        for (dead, _) in made {
            std::mem::forget(dead);
        }
    }
}
