//! Who and where user code runs: an unprivileged user inside the overlay root.

use std::sync::atomic::{AtomicU64, Ordering};

/// Root of the sandbox file system (the overlay of the image and the tmpfs scratch layer).
pub const ROOT: &str = "/newroot";
pub const UID: u32 = 1000;
pub const GID: u32 = 1000;
pub const HOME: &str = "/home/user";
pub const USER: &str = "user";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most processes the sandbox user may have at once; set by the lease.
static MAX_PROCESSES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PROCESSES);
const DEFAULT_MAX_PROCESSES: u64 = 256;

pub fn set_max_processes(limit: u32) {
    MAX_PROCESSES.store(u64::from(limit.max(1)), Ordering::SeqCst);
}

/// Resolves a path as the sandbox sees it: absolute paths stay, relative ones are taken from HOME.
pub fn in_sandbox(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{HOME}/{path}")
    }
}

/// Enters the sandbox in a freshly forked child: new session, chroot, unprivileged ids, no way
/// back to privilege. Runs between fork and exec, so it makes only async-signal-safe system calls
/// and allocates nothing; `root` and `cwd` are prepared by the parent.
pub fn enter(root: &std::ffi::CStr, cwd: &std::ffi::CStr) -> std::io::Result<()> {
    let nproc = MAX_PROCESSES.load(Ordering::SeqCst);
    fn check(ret: libc::c_int) -> std::io::Result<()> {
        if ret == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // SAFETY: each call below is a plain system call on valid, NUL-terminated strings owned by the
    // parent's stack frame (still mapped in the child), with no allocation and no locks, which
    // is what POSIX allows between fork and exec in a multithreaded process.
    unsafe {
        // The agent blocks SIGIO in every thread; user code starts with nothing blocked.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut(),
        ))?;
        // The agent shields itself from the OOM killer (-1000), and children inherit that:
        // user code must be what the kernel kills first when the VM runs out of memory.
        let adj = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if adj >= 0 {
            libc::write(adj, b"500".as_ptr().cast(), 3);
            libc::close(adj);
        }
        check(libc::setsid())?;
        check(libc::chroot(root.as_ptr()))?;
        check(libc::chdir(cwd.as_ptr()))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(GID, GID, GID))?;
        check(libc::setresuid(UID, UID, UID))?;
        // setuid binaries in the image must not hand privilege back.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
        // Counted per user across the whole VM: it caps everything user code starts.
        let processes = libc::rlimit {
            rlim_cur: nproc,
            rlim_max: nproc,
        };
        check(libc::setrlimit(libc::RLIMIT_NPROC, &processes))?;
    }
    Ok(())
}
