//! Making a VM unique before its one sandbox uses it. Every VM restored from one snapshot starts
//! with the same kernel RNG state and identifiers; the host's lease hands fresh entropy and ids.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;

use crate::sandbox;

// From <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

pub fn apply(
    entropy: &[u8],
    hostname: &str,
    machine_id: &str,
    unix_time_ns: u64,
) -> Result<(), String> {
    if entropy.len() < 32 || entropy.len() > 4096 {
        return Err(format!(
            "lease entropy must be 32..=4096 bytes, got {}",
            entropy.len()
        ));
    }
    if hostname.is_empty()
        || hostname.len() > 63
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("lease hostname must be 1-63 letters, digits or '-'".into());
    }
    if machine_id.len() != 32 || !machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("lease machine id must be 32 hex digits".into());
    }
    reseed(entropy)?;
    set_clock(unix_time_ns)?;
    nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
    // Minimal images may have no /etc; the id lands in the scratch layer either way.
    let etc = format!("{}/etc", sandbox::ROOT);
    fs::create_dir_all(&etc).map_err(|e| format!("mkdir {etc}: {e}"))?;
    let path = format!("{etc}/machine-id");
    let _ = fs::remove_file(&path);
    fs::write(&path, format!("{}\n", machine_id.to_ascii_lowercase()))
        .map_err(|e| format!("write {path}: {e}"))
}

fn set_clock(unix_time_ns: u64) -> Result<(), String> {
    let now = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime(2) reads one properly initialised timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) } != 0 {
        return Err(format!(
            "clock_settime: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Mixes `entropy` into the kernel pool, credited, and forces the CRNG to reseed from it now.
fn reseed(entropy: &[u8]) -> Result<(), String> {
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("open /dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut request = Vec::with_capacity(8 + entropy.len());
    request.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    request.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    request.extend_from_slice(entropy);
    // u32 alignment for the kernel's view of `buf`.
    while request.len() % 4 != 0 {
        request.push(0);
    }
    // SAFETY: `request` is a correctly laid out rand_pool_info whose buf_size matches the bytes
    // that follow; the kernel only reads from it. RNDRESEEDCRNG takes no argument.
    unsafe {
        if libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, request.as_ptr()) != 0 {
            return Err(format!(
                "RNDADDENTROPY: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) != 0 {
            return Err(format!(
                "RNDRESEEDCRNG: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
