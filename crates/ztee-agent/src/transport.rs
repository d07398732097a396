//! The byte stream to the host: a virtio-serial port named [`ztee_wire::VIRTIO_PORT_NAME`].

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PORTS_DIR: &str = "/sys/class/virtio-ports";
const PORT_WAIT: Duration = Duration::from_secs(10);
/// How long to sleep while the host end is not connected (reads return 0 then) before looking
/// again. The port raises SIGIO when the host connects, which ends the wait at once; the timeout
/// only bounds the cost of a missed signal. An idle VM therefore wakes ten times a second, not
/// hundreds: that is what lets many pooled VMs sit on one host.
const DISCONNECTED_WAIT: Duration = Duration::from_millis(100);

/// Finds and opens the agent's port, waiting briefly for the device to be probed, and asks for
/// SIGIO when the host connects.
pub fn open_virtio_port() -> Result<File, String> {
    let started = Instant::now();
    loop {
        if let Some(path) = find_port()? {
            let port = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            request_sigio(&port)?;
            // The host waits for this line on the console before it snapshots a template VM.
            eprintln!("{READY_MARKER}");
            return Ok(port);
        }
        if started.elapsed() > PORT_WAIT {
            return Err(format!(
                "no virtio-serial port named {} after {PORT_WAIT:?}",
                ztee_wire::VIRTIO_PORT_NAME
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn find_port() -> Result<Option<PathBuf>, String> {
    let entries = match fs::read_dir(PORTS_DIR) {
        Ok(entries) => entries,
        Err(_) => return Ok(None),
    };
    for entry in entries.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == ztee_wire::VIRTIO_PORT_NAME {
            return Ok(Some(PathBuf::from("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// Printed on the console once the agent listens on its port.
pub const READY_MARKER: &str = "ztee-agent: listening";

fn request_sigio(port: &File) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let fd = port.as_raw_fd();
    // SAFETY: fcntl(2) on an fd we own, with integer arguments only.
    unsafe {
        if libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == -1 {
            return Err(format!("F_SETOWN: {}", std::io::Error::last_os_error()));
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) == -1 {
            return Err(format!("O_ASYNC: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Blocks SIGIO in the calling thread. Called first thing in `main`, so every thread inherits
/// the mask and SIGIO (whose default action terminates) is only ever consumed by
/// `wait_for_host`; children get a clean mask in `sandbox::enter`.
pub fn block_sigio() {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_for_host() {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: DISCONNECTED_WAIT.as_nanos() as libc::c_long,
    };
    // SAFETY: as in `block_sigio`; sigtimedwait only reads the set and timeout.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
    }
}

/// Reads what is available; returns 0 while the host end is disconnected (after waiting for it
/// to connect, up to a short timeout), so the caller can reset its session and try again.
pub fn read_some(port: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    match port.read(buf) {
        Ok(0) => {
            wait_for_host();
            Ok(0)
        }
        other => other,
    }
}
