//! QEMU `microvm`: virtio-mmio devices only, no PCI, no ACPI, no firmware, no network device,
//! QEMU's own seccomp sandbox on. The guest sees a kernel, an initramfs, one read-only disk, one
//! virtio-serial port (the agent channel) and a virtio RNG.

use std::ffi::OsString;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{Accelerator, LaunchPlan, MemoryBacking};
use crate::jail::Spawner;
use crate::VmError;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The program to run: `$ZTEE_QEMU` or `qemu-system-x86_64` from `PATH`.
pub fn binary() -> OsString {
    std::env::var_os("ZTEE_QEMU")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| QEMU_BINARY.into())
}

/// The kernel command line. `reboot=t` plus `-no-reboot` turns the agent's final reboot into a
/// QEMU exit; `panic=-1` does the same for a guest kernel panic. `tsc_early_khz` skips the PIT
/// calibration that can hang under TCG when the host is loaded.
fn kernel_cmdline(plan: &LaunchPlan) -> String {
    let mut cmdline = format!(
        "console=ttyS0 quiet loglevel=1 reboot=t panic=-1 rdinit=/init ztee.scratch_mib={}",
        plan.scratch_mib
    );
    if let Some(khz) = host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    cmdline
}

fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

pub fn arguments(plan: &LaunchPlan) -> Vec<OsString> {
    let paths = plan.vmm_paths();
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let accel = match plan.accelerator {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "tcg",
    };
    let cpu = match plan.accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    push(&["-name", &plan.name]);
    let memory_backend = match &plan.memory {
        MemoryBacking::Anonymous => "",
        MemoryBacking::SharedFile(_) | MemoryBacking::PrivateFile(_) => ",memory-backend=ram",
    };
    push(&[
        "-machine",
        &format!(
            "microvm,accel={accel},acpi=off,x-option-roms=off,rtc=on,isa-serial=on{memory_backend}"
        ),
    ]);
    push(&["-cpu", cpu]);
    push(&["-m", &format!("{}M", plan.memory_mib)]);
    push(&["-smp", &plan.vcpus.to_string()]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    // QEMU's seccomp filter: no obsolete syscalls, no privilege changes, no spawning, no
    // scheduler or resource changes.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    args.push("-kernel".into());
    args.push(paths.kernel.clone().into_os_string());
    args.push("-initrd".into());
    args.push(paths.initramfs.clone().into_os_string());
    args.push("-append".into());
    args.push(kernel_cmdline(plan).into());
    let mut drive = OsString::from("id=image,format=raw,if=none,read-only=on,file=");
    drive.push(qemu_escape(&paths.rootfs));
    args.push("-drive".into());
    args.push(drive);
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    push(&["-device", "virtio-blk-device,drive=image"]);
    push(&["-object", "rng-random,id=rng,filename=/dev/urandom"]);
    push(&["-device", "virtio-rng-device,rng=rng"]);
    push(&["-device", "virtio-serial-device,max_ports=2"]);
    let mut chardev = OsString::from("socket,id=agent,server=on,wait=off,path=");
    chardev.push(qemu_escape(&paths.agent_socket));
    args.push("-chardev".into());
    args.push(chardev);
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    push(&[
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            ztee_wire::VIRTIO_PORT_NAME
        ),
    ]);
    let share = match &plan.memory {
        MemoryBacking::SharedFile(_) => "on",
        _ => "off",
    };
    if let Some(path) = &paths.mem_path {
        let mut object = OsString::from(format!(
            "memory-backend-file,id=ram,size={}M,share={share},mem-path=",
            plan.memory_mib
        ));
        object.push(qemu_escape(path));
        args.push("-object".into());
        args.push(object);
    }
    if let Some(qmp) = &paths.qmp_socket {
        let mut value = OsString::from("unix:");
        value.push(qemu_escape(qmp));
        value.push(",server=on,wait=off");
        args.push("-qmp".into());
        args.push(value);
    }
    if plan.incoming {
        args.push("-incoming".into());
        args.push("defer".into());
    }
    let mut serial = OsString::from("file:");
    serial.push(paths.console_log.as_os_str());
    args.push("-serial".into());
    args.push(serial);
    args
}

/// QEMU option values are comma-separated; a literal comma is written twice.
fn qemu_escape(path: &std::path::Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &byte in path.as_os_str().as_bytes() {
        out.push(byte);
        if byte == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Starts QEMU for `plan`, in the jail `spawner` sets up when there is one (the returned child
/// is then the jail's waiter, see [`crate::jail`]). The process is killed when its handle is
/// dropped and when the thread that spawned it dies (`PR_SET_PDEATHSIG`), so a supervisor that is
/// killed takes its VMs along.
pub(crate) fn launch(plan: &LaunchPlan, spawner: Option<Spawner>) -> Result<Child, VmError> {
    let program = match spawner {
        Some(_) => jailed_binary()?,
        None => binary(),
    };
    let mut command = Command::new(&program);
    command
        .args(arguments(plan))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match spawner {
        // SAFETY: `Spawner::enter` makes only async-signal-safe system calls on data prepared
        // before the fork, as a pre-exec hook must.
        Some(spawner) => unsafe {
            command.pre_exec(move || spawner.enter());
        },
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        None => unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        },
    }
    command.spawn().map_err(|source| VmError::VmmSpawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })
}

/// The QEMU binary's path: `binary()` itself when it names a path, else its first match on
/// `PATH`.
pub fn binary_path() -> Option<std::path::PathBuf> {
    let program = std::path::PathBuf::from(binary());
    if program.components().count() > 1 {
        return program.is_file().then_some(program);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&program))
        .find(|candidate| candidate.is_file())
}

/// The absolute path of the VMM binary, which must be under /usr: the jail holds /usr alone.
fn jailed_binary() -> Result<OsString, VmError> {
    let resolved = binary_path()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| VmError::VmmSpawn {
            program: binary().to_string_lossy().into_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    if !resolved.starts_with("/usr") {
        return Err(VmError::Jail(format!(
            "the VMM {} is outside /usr, which is all a jailed VMM can see; install QEMU under /usr or set ZTEE_JAIL=off",
            resolved.display()
        )));
    }
    Ok(resolved.into_os_string())
}

/// `qemu-system-x86_64 --version`, first line.
pub fn version() -> Option<String> {
    super::version_line(std::path::Path::new(&binary()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn plan() -> LaunchPlan {
        LaunchPlan {
            name: "t".into(),
            kernel: PathBuf::from("/k"),
            initramfs: PathBuf::from("/i"),
            rootfs: PathBuf::from("/a,b/rootfs.img"),
            agent_socket: PathBuf::from("/s"),
            console_log: PathBuf::from("/c"),
            memory_mib: 128,
            vcpus: 1,
            scratch_mib: 64,
            accelerator: Accelerator::Tcg,
            memory: MemoryBacking::Anonymous,
            qmp_socket: None,
            incoming: false,
            jail: None,
        }
    }

    #[test]
    fn command_line_has_no_network_and_is_sandboxed() {
        let args: Vec<String> = arguments(&plan())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-nodefaults"));
        assert!(joined.contains("-sandbox on,obsolete=deny"));
        assert!(joined.contains("microvm,accel=tcg"));
        assert!(!joined.contains("netdev") && !joined.contains("-nic"));
        assert!(joined.contains("read-only=on,file=/a,,b/rootfs.img"));
        assert!(!joined.contains("-incoming") && !joined.contains("memory-backend"));
    }

    #[test]
    fn restore_maps_the_snapshot_privately_and_waits_for_state() {
        let mut restore = plan();
        restore.memory = MemoryBacking::PrivateFile(PathBuf::from("/snap/ram"));
        restore.qmp_socket = Some(PathBuf::from("/run/qmp.sock"));
        restore.incoming = true;
        let joined: Vec<String> = arguments(&restore)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        assert!(
            joined.contains("memory-backend-file,id=ram,size=128M,share=off,mem-path=/snap/ram")
        );
        assert!(joined.contains(",memory-backend=ram"));
        assert!(joined.contains("-incoming defer"));
        assert!(joined.contains("-qmp unix:/run/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn a_jailed_vmm_gets_the_paths_inside_its_root() {
        let mut restore = plan();
        restore.memory = MemoryBacking::PrivateFile(PathBuf::from("/host/snap/ram"));
        restore.qmp_socket = Some(PathBuf::from("/host/run/qmp.sock"));
        restore.jail = Some(crate::backend::JailPaths {
            kernel: PathBuf::from("/vm/vmlinux"),
            initramfs: PathBuf::from("/vm/initrd.img"),
            rootfs: PathBuf::from("/vm/rootfs.img"),
            agent_socket: PathBuf::from("/run/agent.sock"),
            console_log: PathBuf::from("/run/console.log"),
            qmp_socket: Some(PathBuf::from("/run/qmp.sock")),
            mem_path: Some(PathBuf::from("/proc/self/fd/7")),
        });
        let args: Vec<String> = arguments(&restore)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-kernel /vm/vmlinux -initrd /vm/initrd.img"));
        assert!(joined.contains("read-only=on,file=/vm/rootfs.img"));
        assert!(joined.contains("path=/run/agent.sock"));
        assert!(joined.contains("share=off,mem-path=/proc/self/fd/7"));
        assert!(joined.contains("-qmp unix:/run/qmp.sock,"));
        assert!(joined.contains("-serial file:/run/console.log"));
        assert!(!joined.contains("/host/"), "{joined}");
        assert!(joined.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
    }
}
