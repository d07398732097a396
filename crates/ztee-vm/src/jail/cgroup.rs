//! One cgroup per VM, `ztee/<vm name>`, with memory, pids and CPU limits, on cgroup v2 (the
//! unified hierarchy, production hosts) or v1 (one hierarchy per controller).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::VmError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The CFS period; the quota is a multiple of it.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    pub pids: u32,
    /// CPU time per period, in hundredths of one CPU (200 = two full CPUs).
    pub cpu_percent: u32,
}

#[derive(Debug)]
pub(crate) struct Cgroup {
    /// One directory on v2; one per controller (memory, pids, cpu) on v1.
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates `ztee/<name>` with `limits` written.
    pub(crate) fn create(name: &str, limits: &Limits) -> Result<Self, VmError> {
        let root = Path::new(CGROUP_ROOT);
        let cpu_max_us = u64::from(limits.cpu_percent) * CPU_PERIOD_US / 100;
        if root.join("cgroup.controllers").exists() {
            let parent = root.join("ztee");
            enable_controllers(root)?;
            make_dir(&parent)?;
            enable_controllers(&parent)?;
            let dir = parent.join(name);
            make_dir(&dir)?;
            let cgroup = Self {
                dirs: vec![dir.clone()],
            };
            write(&dir, "memory.max", &limits.memory_bytes.to_string())?;
            write_if_present(&dir, "memory.swap.max", "0")?;
            write(&dir, "pids.max", &limits.pids.to_string())?;
            write(&dir, "cpu.max", &format!("{cpu_max_us} {CPU_PERIOD_US}"))?;
            return Ok(cgroup);
        }
        let mut cgroup = Self { dirs: Vec::new() };
        for controller in ["memory", "pids", "cpu"] {
            let hierarchy = root.join(controller);
            if !hierarchy.join("cgroup.procs").exists() {
                return Err(VmError::Jail(format!(
                    "no cgroup {controller} controller at {} (neither cgroup v2 nor v1 is mounted there)",
                    hierarchy.display()
                )));
            }
            let parent = hierarchy.join("ztee");
            make_dir(&parent)?;
            let dir = parent.join(name);
            make_dir(&dir)?;
            // Pushed before the limits are written, so that a failure removes it again.
            cgroup.dirs.push(dir.clone());
            match controller {
                "memory" => {
                    write(
                        &dir,
                        "memory.limit_in_bytes",
                        &limits.memory_bytes.to_string(),
                    )?;
                    // With swap accounting, memory+swap gets the same cap: no swapping around it.
                    write_if_present(
                        &dir,
                        "memory.memsw.limit_in_bytes",
                        &limits.memory_bytes.to_string(),
                    )?;
                }
                "pids" => write(&dir, "pids.max", &limits.pids.to_string())?,
                _ => {
                    write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", &cpu_max_us.to_string())?;
                }
            }
        }
        Ok(cgroup)
    }

    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `cgroup.procs` of every directory, opened for writing: the VMM's child writes `0` (itself)
    /// to each before it executes QEMU.
    pub(crate) fn open_procs(&self) -> Result<Vec<OwnedFd>, VmError> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| VmError::io("open", &path, e))
            })
            .collect()
    }

    /// Host pids of the processes in the cgroup.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.dirs
            .first()
            .map(|dir| member_pids(dir))
            .unwrap_or_default()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove(&self.dirs);
    }
}

/// Kills whatever is left in `dirs` and removes them, waiting (at most two seconds) for killed
/// processes to leave. Only paths of the form `/sys/fs/cgroup/.../ztee/<name>` are touched.
pub(crate) fn remove(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for dir in dirs.iter().filter(|d| is_vm_cgroup(d)) {
        loop {
            for pid in member_pids(dir) {
                // SAFETY: kill(2) on a pid listed in this VM's own cgroup: it is one of the VM's
                // processes (nothing else is ever placed there). No memory is involved.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(err) if Instant::now() > deadline => {
                    tracing::warn!(cgroup = %dir.display(), %err, "cannot remove VM cgroup");
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

fn is_vm_cgroup(dir: &Path) -> bool {
    dir.starts_with(CGROUP_ROOT)
        && dir.parent().and_then(Path::file_name) == Some("ztee".as_ref())
        && !dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

fn member_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn make_dir(dir: &Path) -> Result<(), VmError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(VmError::io("create cgroup", dir, e))
        }
        _ => Ok(()),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), VmError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| VmError::io("write cgroup limit", &path, e))
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> Result<(), VmError> {
    if dir.join(file).exists() {
        write(dir, file, value)?;
    }
    Ok(())
}

/// v2: a child cgroup gets a controller only when its parent delegates it.
fn enable_controllers(dir: &Path) -> Result<(), VmError> {
    let wanted = ["memory", "pids", "cpu"];
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for controller in wanted {
        if !enabled.split_whitespace().any(|c| c == controller) {
            write(dir, "cgroup.subtree_control", &format!("+{controller}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vm_cgroups_are_ever_removed() {
        assert!(is_vm_cgroup(Path::new("/sys/fs/cgroup/memory/ztee/sbx-1")));
        assert!(is_vm_cgroup(Path::new("/sys/fs/cgroup/ztee/sbx-1")));
        assert!(!is_vm_cgroup(Path::new("/sys/fs/cgroup/memory")));
        assert!(!is_vm_cgroup(Path::new(
            "/sys/fs/cgroup/ztee/../system.slice"
        )));
        assert!(!is_vm_cgroup(Path::new("/home/ztee/x")));
    }
}
