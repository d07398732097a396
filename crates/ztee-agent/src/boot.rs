//! From kernel hand-off to a ready sandbox file system:
//!
//! ```text
//! initramfs (agent, per-VM secret)      /newroot (what user code sees)
//!   /mnt/image  <- /dev/vda, read-only    overlay: lower = /mnt/image, upper = /mnt/scratch
//!   /mnt/scratch <- tmpfs (size limit)    + proc, a minimal /dev, devpts, /dev/shm,
//!                                          /run/secrets (0700, sandbox user)
//! ```
//! Nothing writable is backed by a disk, so nothing survives the VM.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::ExitCode;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use ztee_wire::BootSecret;

use crate::sandbox;

/// Where the host puts the per-VM secret inside the initramfs (a second cpio archive).
const SECRET_PATH: &str = "/ztee/secret";
const IMAGE_DEVICE: &str = "/dev/vda";
const DEFAULT_SCRATCH_MIB: u64 = 256;

pub fn boot() -> Result<BootSecret, String> {
    mount_pseudo(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_pseudo("proc", "/proc", "proc", hardened(), None)?;
    mount_pseudo("sysfs", "/sys", "sysfs", hardened(), None)?;

    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let scratch_mib = kernel_arg(&cmdline, "ztee.scratch_mib")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SCRATCH_MIB);

    let secret_text = fs::read_to_string(SECRET_PATH).map_err(|e| format!("{SECRET_PATH}: {e}"))?;
    let secret = BootSecret::from_hex(&secret_text)
        .ok_or_else(|| format!("{SECRET_PATH} does not hold 64 hex digits"))?;
    // The initramfs stays reachable to the agent only; removing the file is hygiene, not a boundary.
    let _ = fs::remove_file(SECRET_PATH);

    // User code may exhaust the VM's memory; the kernel must kill it, never the agent.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    mount_image()?;
    mount_scratch(scratch_mib)?;
    mount_overlay()?;
    populate_root()?;
    bring_up_loopback();
    Ok(secret)
}

fn hardened() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

fn kernel_arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

fn mount_pseudo(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn mount_image() -> Result<(), String> {
    fs::create_dir_all("/mnt/image").map_err(|e| format!("mkdir /mnt/image: {e}"))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    let mut errors = Vec::new();
    for fstype in ["erofs", "ext4"] {
        match mount(
            Some(IMAGE_DEVICE),
            "/mnt/image",
            Some(fstype),
            flags,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(err) => errors.push(format!("{fstype}: {err}")),
        }
    }
    Err(format!("mount image {IMAGE_DEVICE}: {}", errors.join(", ")))
}

fn mount_scratch(size_mib: u64) -> Result<(), String> {
    let opts = format!("size={size_mib}m,mode=0755");
    mount_pseudo(
        "scratch",
        "/mnt/scratch",
        "tmpfs",
        MsFlags::MS_NODEV,
        Some(&opts),
    )?;
    for dir in [
        "/mnt/scratch/upper",
        "/mnt/scratch/work",
        "/mnt/scratch/shm",
    ] {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    Ok(())
}

fn mount_overlay() -> Result<(), String> {
    let opts = "lowerdir=/mnt/image,upperdir=/mnt/scratch/upper,workdir=/mnt/scratch/work";
    mount_pseudo(
        "overlay",
        sandbox::ROOT,
        "overlay",
        MsFlags::MS_NODEV,
        Some(opts),
    )
}

/// Gives user code what a normal process expects, and nothing of the VM's own devices.
fn populate_root() -> Result<(), String> {
    let root = sandbox::ROOT;
    mount_pseudo("proc", &format!("{root}/proc"), "proc", hardened(), None)?;
    let dev = format!("{root}/dev");
    mount_pseudo(
        "dev",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    let char_dev = SFlag::S_IFCHR;
    let rw_all = Mode::from_bits_truncate(0o666);
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = format!("{dev}/{name}");
        mknod(path.as_str(), char_dev, rw_all, makedev(major, minor))
            .map_err(|e| format!("mknod {path}: {e}"))?;
        // mknod honours the umask; make the mode exact.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .map_err(|e| format!("chmod {path}: {e}"))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(target, format!("{dev}/{link}"))
            .map_err(|e| format!("symlink {dev}/{link}: {e}"))?;
    }
    mount_pseudo(
        "devpts",
        &format!("{dev}/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    // /dev/shm lives in the scratch tmpfs, so it shares the sandbox's one disk budget.
    let shm = format!("{dev}/shm");
    fs::create_dir_all(&shm).map_err(|e| format!("mkdir {shm}: {e}"))?;
    fs::set_permissions("/mnt/scratch/shm", fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod /mnt/scratch/shm: {e}"))?;
    mount(
        Some("/mnt/scratch/shm"),
        shm.as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {shm}: {e}"))?;
    // The image is expected to carry the user's home; make sure it exists and is theirs.
    let home = format!("{root}{}", sandbox::HOME);
    fs::create_dir_all(&home).map_err(|e| format!("mkdir {home}: {e}"))?;
    nix::unistd::chown(
        home.as_str(),
        Some(nix::unistd::Uid::from_raw(sandbox::UID)),
        Some(nix::unistd::Gid::from_raw(sandbox::GID)),
    )
    .map_err(|e| format!("chown {home}: {e}"))?;
    // Injected secrets land here: on the scratch tmpfs (never a disk), and only the sandbox
    // user may enter the directory; the host writes each file 0400.
    let secrets = format!("{root}/run/secrets");
    fs::create_dir_all(&secrets).map_err(|e| format!("mkdir {secrets}: {e}"))?;
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {secrets}: {e}"))?;
    nix::unistd::chown(
        secrets.as_str(),
        Some(nix::unistd::Uid::from_raw(sandbox::UID)),
        Some(nix::unistd::Gid::from_raw(sandbox::GID)),
    )
    .map_err(|e| format!("chown {secrets}: {e}"))?;
    let tmp = format!("{root}/tmp");
    fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {tmp}: {e}"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod {tmp}: {e}"))?;
    Ok(())
}

/// Loopback only: the VM has no network device, but programs may talk to themselves.
fn bring_up_loopback() {
    // SAFETY: a datagram socket is opened and closed here; the ioctls get a properly sized,
    // zero-initialised `ifreq` whose name is NUL-terminated.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}

/// Ends the VM. With `reboot=t` on the kernel command line and QEMU's `-no-reboot`, a reboot
/// request exits the VMM, which is what the host waits for.
pub fn power_off() -> ExitCode {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // PID 1 must never exit (the kernel would panic); reboot(2) does not return on success.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
