//! What runs between `fork` and `exec` of a jailed VMM. Everything here is a direct system call
//! on data prepared by the parent (no allocation, no locks): the child of a multi-threaded
//! process may only make async-signal-safe calls.
//!
//! The spawned child (the waiter) joins the VM's cgroup, unshares the mount, pid, ipc, uts and
//! net namespaces and forks. Its child is pid 1 of the new pid namespace: it builds the private
//! root, chroots into it, drops to the VM's uid and returns, so that std executes QEMU in it.
//! The waiter stays outside, waits for QEMU and exits with its status; it dies with the thread
//! that spawned it, and QEMU dies with the waiter (`PR_SET_PDEATHSIG` on both).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

/// One `mount(2)` call.
#[derive(Debug)]
pub(crate) struct MountOp {
    pub source: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
}

#[derive(Debug)]
pub(crate) struct Spawner {
    pub root: CString,
    pub mounts: Vec<MountOp>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_procs: Vec<OwnedFd>,
    /// A descriptor QEMU inherits at its own number (the sealed template RAM).
    pub inherit_fd: Option<RawFd>,
}

const NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNET;

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Spawner {
    /// Runs in the spawned child. Returns only in QEMU's process, ready to exec.
    ///
    /// # Safety
    /// Must be called only between fork and exec (from `Command::pre_exec`).
    pub(crate) unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY: system calls on descriptors and NUL-terminated strings owned by `self` or
        // this frame, made in the single-threaded child between fork and exec (the caller's
        // contract); none allocates or takes a lock.
        unsafe {
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            for procs in &self.cgroup_procs {
                // "0" names the writing process; the fork below inherits the cgroup.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::unshare(NAMESPACES))?;
            // The waiter holds the write end; QEMU's child polls the read end to learn whether the
            // waiter died before the death signal was armed.
            let mut alive = [0 as libc::c_int; 2];
            check(libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC))?;
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid > 0 {
                libc::close(alive[0]);
                wait_and_exit(pid, alive[1]);
            }
            libc::close(alive[1]);
            self.build_root()?;
            self.drop_privileges()?;
            // Armed after the uid change, which clears it.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            let mut waiter = libc::pollfd {
                fd: alive[0],
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut waiter, 1, 0) != 0 {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            libc::close(alive[0]);
            // Nothing the parent had open reaches QEMU except the descriptor it is given.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if let Some(fd) = self.inherit_fd {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            Ok(())
        }
    }

    /// Makes the jail's mounts private, mounts its private root and enters it.
    ///
    /// # Safety
    /// Only in the single-threaded child between `fork` and `exec`, in a mount namespace of its
    /// own: it mounts and changes root without regard to other threads.
    unsafe fn build_root(&self) -> io::Result<()> {
        // SAFETY: system calls on descriptors and NUL-terminated strings owned by `self` or
        // this frame, made in the single-threaded child between fork and exec (the caller's
        // contract); none allocates or takes a lock.
        unsafe {
            // Nothing mounted in the jail propagates back to the host, and nothing from the host
            // propagates in.
            check(libc::mount(
                ptr::null(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                ptr::null(),
            ))?;
            for op in &self.mounts {
                check(libc::mount(
                    op.source.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                    op.target.as_ptr(),
                    op.fstype.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                    op.flags,
                    ptr::null(),
                ))?;
            }
            check(libc::chroot(self.root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))
        }
    }

    /// Drops to the jail's uid and gid with no supplementary groups and sets `no_new_privs`.
    ///
    /// # Safety
    /// Only in the single-threaded child between `fork` and `exec`: changing ids with threads
    /// alive would leave them with the old ones.
    unsafe fn drop_privileges(&self) -> io::Result<()> {
        // SAFETY: system calls on descriptors and NUL-terminated strings owned by `self` or
        // this frame, made in the single-threaded child between fork and exec (the caller's
        // contract); none allocates or takes a lock.
        unsafe {
            check(libc::setgroups(0, ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            // From uid 0 to a non-zero uid in all three ids: the kernel clears the permitted,
            // effective and ambient capability sets.
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        }
    }
}

/// The waiter: closes everything but `keep` (in particular std's exec-status pipe, so the parent
/// learns of QEMU's exec, not the waiter's exit), waits for `child` and exits with its status.
///
/// # Safety
/// Only in the single-threaded child between `fork` and `exec`, with `child` a pid it forked: it
/// closes descriptors it does not own and never returns.
unsafe fn wait_and_exit(child: libc::pid_t, keep: libc::c_int) -> ! {
    // SAFETY: system calls on descriptors and NUL-terminated strings owned by `self` or
    // this frame, made in the single-threaded child between fork and exec (the caller's
    // contract); none allocates or takes a lock.
    unsafe {
        let keep = keep as u32;
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
        loop {
            let mut status = 0;
            let waited = libc::waitpid(child, &mut status, 0);
            if waited == child {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            } else if waited < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
    }
}
