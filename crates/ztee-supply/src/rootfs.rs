//! Building an image's root filesystem in a jailed helper process.
//!
//! Unpacking layers parses untrusted tar streams and writes a tree shaped by them; `mkfs.erofs`
//! then reads that tree. Neither runs in the caller's process: [`RootfsBuilder`] starts a helper
//! (a program that calls [`helper_main`], e.g. `ztee __build-rootfs`) that does both, jailed:
//!
//! - in a new user namespace. When the caller is root, uid and gid 0..65535 inside map to an
//!   unprivileged host range ([`DEFAULT_UNPACK_IDS`], `ZTEE_UNPACK_UIDS`), so the image's owners
//!   are kept inside (and `mkfs.erofs`, run in the same namespace, records them), while on the
//!   host every file the helper makes belongs to that range and the helper has no capability
//!   over host files. Otherwise only the caller's own uid and gid map to 0;
//! - in a new mount namespace where every mount is read-only and nosuid, except a bind
//!   mount of the build's work directory at `/mnt`, which it reaches through a descriptor (the
//!   data directory itself is read-only there, and closed to it where its parents are);
//! - in new network and IPC namespaces (no network, no shared memory with the host);
//! - with no supplementary groups, `no_new_privs`, no inherited descriptors but the ones it is
//!   handed (the work directory and each layer blob, opened read-only by the caller), a clean
//!   environment, and a wall-time limit past which it is killed.
//!
//! The helper reports on its standard error, in one line, either what its jail looked like or
//! the precise error (a refused layer entry stays [`Error::UnsafeLayerEntry`]). The caller then
//! copies the image out of the work directory into a file of its own (never trusting a link or
//! a file the helper may still change) and hashes the copy.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{write_atomic, Error, Result};
use crate::layers::{self, UnpackLimits};
use crate::store::Store;

/// The first argument that tells a program to act as the helper (`ztee __build-rootfs`).
pub const HELPER_ARG: &str = "__build-rootfs";

/// Host uids and gids that ids 0..65535 of an unpack helper map to when ztee runs as root.
/// Far from regular users, system ids and the VMM jail's default `ZTEE_JAIL_UIDS`
/// (64000-64999); override with `ZTEE_UNPACK_UIDS=FIRST-LAST` (exactly 65536 ids).
pub const DEFAULT_UNPACK_IDS: RangeInclusive<u32> =
    RangeInclusive::new(1_000_000_000, 1_000_065_535);

/// How long a helper may run (unpacking up to [`layers::MAX_UNPACKED_BYTES`] and building the
/// image) before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Ids a helper maps (0..ID_COUNT inside).
const ID_COUNT: u32 = 65536;
/// The prefix of the helper's one report line on its standard error.
const REPORT_PREFIX: &str = "ztee-rootfs-report: ";
/// The tail of the helper's standard error the caller keeps (the report is its last line).
const STDERR_LIMIT: usize = 64 * 1024;
/// How long the caller waits for the end of the helper's standard error once the helper exited.
const STDERR_GRACE: Duration = Duration::from_secs(2);
/// The largest image the caller copies out of the work directory.
const MAX_IMAGE_BYTES: u64 = 2 * layers::MAX_UNPACKED_BYTES;
/// Where the helper's `mkfs.erofs` is looked up; the environment is otherwise empty.
const HELPER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to start the unpack helper: a program (and leading arguments) that hands
/// [`HELPER_ARG`] and what follows it to [`helper_main`]. The `ztee` binary passes itself.
#[derive(Clone, Debug)]
pub struct RootfsBuilder {
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
    host_ids: RangeInclusive<u32>,
}

impl RootfsBuilder {
    /// A builder starting `program` (no arguments before [`HELPER_ARG`]), with the default
    /// host id range and time limit.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        RootfsBuilder {
            program: program.into(),
            args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            host_ids: DEFAULT_UNPACK_IDS,
        }
    }

    /// [`RootfsBuilder::new`] with the host id range from `ZTEE_UNPACK_UIDS` if set.
    pub fn from_env(program: impl Into<PathBuf>) -> Result<Self> {
        let builder = Self::new(program);
        match std::env::var("ZTEE_UNPACK_UIDS") {
            Ok(text) if !text.is_empty() => builder.host_ids(parse_id_range(&text)?),
            _ => Ok(builder),
        }
    }

    /// An argument placed before [`HELPER_ARG`].
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// How long the helper may run before it is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The host ids that ids 0..65535 inside the helper map to (when the caller is root).
    pub fn host_ids(mut self, ids: RangeInclusive<u32>) -> Result<Self> {
        check_id_range(&ids, &format!("{}-{}", ids.start(), ids.end()))?;
        self.host_ids = ids;
        Ok(self)
    }

    /// The erofs image for `digest`, built once (in the helper) and cached as
    /// `<data_dir>/rootfs/<hex>.erofs` with its SHA-256 beside it; a cached image whose hash no
    /// longer matches is rebuilt.
    pub fn build(
        &self,
        store: &Store,
        data_dir: &Path,
        digest: &Digest,
    ) -> Result<(PathBuf, String)> {
        let dir = data_dir.join("rootfs");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let image = dir.join(format!("{}.erofs", digest.hex()));
        let sum_path = dir.join(format!("{}.erofs.sha256", digest.hex()));
        if let (true, Ok(expected)) = (image.is_file(), std::fs::read_to_string(&sum_path)) {
            let actual = file_sha256(&image)?;
            if actual == expected.trim() {
                return Ok((image, actual));
            }
            tracing::warn!(image = %image.display(), "cached root filesystem changed on disk; rebuilding");
        }
        let (manifest, _) = store.manifest(digest)?;
        // Made 0700 by tempfile, so only its owner (the helper's host uid) and root reach it.
        let work = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&dir)
            .map_err(|e| Error::io("creating temp dir in", &dir, e))?;
        let mut layer_files = Vec::new();
        for layer in &manifest.layers {
            let path = store.blob_path(&layer.digest);
            let file =
                std::fs::File::open(&path).map_err(|e| Error::io("opening layer", &path, e))?;
            layer_files.push((layer.digest.clone(), file));
        }
        let report = self.run_helper(work.path(), &layer_files)?;
        tracing::debug!(
            %digest,
            helper_uid_map = ?report.uid_map.trim(),
            helper_gid_map = ?report.gid_map.trim(),
            helper_status_uid = ?report.status_uid,
            helper_mnt_ns = %report.mnt_ns,
            helper_user_ns = %report.user_ns,
            helper_tmp_write = ?report.tmp_write,
            caller_mnt_ns = %ns_link("mnt"),
            "root filesystem built by the jailed helper"
        );
        let sum = copy_out(&work.path().join("image.erofs"), &dir, &image)?;
        write_atomic(&sum_path, sum.as_bytes())?;
        Ok((image, sum))
    }

    /// Starts the helper on `work` (which it may change) and `layers`, waits for it within the
    /// time limit, and returns its report or its error.
    fn run_helper(&self, work: &Path, layers: &[(Digest, std::fs::File)]) -> Result<JailReport> {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            // The helper's root owns its work directory, and nothing else on the host.
            std::os::unix::fs::chown(
                work,
                Some(*self.host_ids.start()),
                Some(*self.host_ids.start()),
            )
            .map_err(|e| Error::io("handing the work directory to the unpack uid", work, e))?;
        }
        // A descriptor number the child turns into the work directory; reserved here so that
        // replacing it in the child cannot clobber a descriptor anything else uses.
        let reserved =
            std::fs::File::open("/dev/null").map_err(|e| Error::io("opening", "/dev/null", e))?;
        let request = Request {
            work_fd: reserved.as_raw_fd(),
            layers: layers
                .iter()
                .map(|(digest, file)| LayerFd {
                    digest: digest.clone(),
                    fd: file.as_raw_fd(),
                })
                .collect(),
        };
        let request_json = serde_json::to_string(&request)
            .map_err(|e| Error::Build(format!("encoding the helper request: {e}")))?;
        let child_setup = ChildSetup {
            work: CString::new(work.as_os_str().as_bytes()).map_err(|_| {
                Error::Build("the work directory's path contains a NUL byte".into())
            })?,
            work_fd: reserved.as_raw_fd(),
            layer_fds: layers.iter().map(|(_, f)| f.as_raw_fd()).collect(),
            drop_groups: root,
        };
        let (to_parent_r, to_parent_w) = pipe()?;
        let (to_child_r, to_child_w) = pipe()?;
        let maps = if root {
            let line = format!("0 {} {ID_COUNT}\n", self.host_ids.start());
            IdMaps {
                uid: line.clone(),
                gid: line,
                deny_setgroups: false,
            }
        } else {
            // SAFETY: geteuid(2) and getegid(2) cannot fail and touch no memory.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            IdMaps {
                uid: format!("0 {uid} 1\n"),
                gid: format!("0 {gid} 1\n"),
                deny_setgroups: true,
            }
        };
        let mapper = std::thread::spawn(move || map_ids(to_parent_r, to_child_w, &maps));

        // Started through a descriptor opened here: the helper's uid may not be able to look the
        // program up by its path (a build tree under /root, say), but may execute the file.
        let program = std::fs::File::open(&self.program)
            .map_err(|e| Error::io("opening the unpack helper program", &self.program, e))?;
        let mut command = Command::new(format!("/proc/self/fd/{}", program.as_raw_fd()));
        command
            .arg0(&self.program)
            .args(&self.args)
            .arg(HELPER_ARG)
            .arg(&request_json)
            .env_clear()
            .env("PATH", HELPER_PATH)
            .env("LC_ALL", "C")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so whatever it leaves behind there is killed with it.
            .process_group(0);
        let to_parent_fd = to_parent_w.as_raw_fd();
        let to_child_fd = to_child_r.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // on memory prepared before the fork (no allocation, no locks), as `pre_exec` requires.
        unsafe {
            command.pre_exec(move || child_setup.enter(to_parent_fd, to_child_fd));
        }
        let spawned = command.spawn();
        // The child's copies are its own now; without ours, the mapper sees the end of the pipe
        // once the child has exec'd or died.
        drop(to_parent_w);
        drop(to_child_r);
        let mapped = mapper
            .join()
            .map_err(|_| Error::Build("the unpack helper's id-mapping thread panicked".into()))?;
        drop(reserved);
        drop(program);
        let mut child = match (spawned, mapped) {
            (Ok(child), Ok(None)) => child,
            (Ok(mut child), Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            (Ok(mut child), Ok(Some(failure))) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failure);
            }
            (Err(_), Ok(Some(failure))) | (Err(_), Err(failure)) => return Err(failure),
            (Err(e), Ok(None)) => {
                return Err(Error::Build(format!(
                    "starting the unpack helper {}: {e}",
                    self.program.display()
                )))
            }
        };
        tracing::debug!(pid = child.id(), program = %self.program.display(), "jailed unpack helper started");
        let tail = Arc::new(Tail::default());
        let reader = {
            let tail = Arc::clone(&tail);
            let stderr = child.stderr.take();
            std::thread::spawn(move || tail.read_from(stderr, STDERR_LIMIT))
        };
        let deadline = Instant::now() + self.timeout;
        let group = child.id();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    kill_group(group);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Build(format!(
                        "the unpack helper ran past its limit of {}s and was killed",
                        self.timeout.as_secs()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(Error::io("waiting for the unpack helper", &self.program, e)),
            }
        };
        // Whatever the helper left running in its process group goes with it; one that left the
        // group may keep its standard error open, so the report is waited for only briefly.
        kill_group(group);
        let grace = Instant::now() + STDERR_GRACE;
        while !reader.is_finished() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stderr = tail.take();
        let text = String::from_utf8_lossy(&stderr);
        let report = text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(REPORT_PREFIX))
            .and_then(|json| serde_json::from_str::<Report>(json).ok());
        match report {
            Some(Report::Ok(jail)) if status.success() => Ok(jail),
            Some(Report::Failed(e)) => {
                let e = Error::from(e);
                tracing::debug!(%status, error = %e, "the jailed unpack helper refused the image");
                Err(e)
            }
            _ => {
                let tail: String = text
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("no output")
                    .chars()
                    .take(1000)
                    .collect();
                Err(Error::Build(format!(
                    "the unpack helper failed ({status}) without a report: {tail}"
                )))
            }
        }
    }
}

/// `FIRST-LAST`, exactly [`ID_COUNT`] ids, all above the ids of regular users.
fn parse_id_range(text: &str) -> Result<RangeInclusive<u32>> {
    let invalid = || {
        Error::invalid(
            "ZTEE_UNPACK_UIDS",
            text,
            "must be FIRST-LAST, e.g. 1000000000-1000065535",
        )
    };
    let (first, last) = text.split_once('-').ok_or_else(invalid)?;
    let first: u32 = first.trim().parse().map_err(|_| invalid())?;
    let last: u32 = last.trim().parse().map_err(|_| invalid())?;
    let ids = first..=last;
    check_id_range(&ids, text)?;
    Ok(ids)
}

fn check_id_range(ids: &RangeInclusive<u32>, text: &str) -> Result<()> {
    let count = u64::from(*ids.end()) + 1 - u64::from(*ids.start());
    if ids.start() > ids.end() || count != u64::from(ID_COUNT) {
        return Err(Error::invalid(
            "ZTEE_UNPACK_UIDS",
            text,
            "must span exactly 65536 ids (0..65535 inside the helper)",
        ));
    }
    if *ids.start() < 100_000 || *ids.end() >= u32::MAX - 1 {
        return Err(Error::invalid(
            "ZTEE_UNPACK_UIDS",
            text,
            "must lie above 100000 (clear of regular users and the VMM jail's uids) and below 4294967294",
        ));
    }
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io("reading", path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Copies the helper's image into a new file of the caller's, hashing what it copies. The
/// source is opened without following a link and must be a regular file: the helper owns it
/// and could have made it anything, or could still be changing it.
fn copy_out(source: &Path, dir: &Path, image: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(source)
        .map_err(|e| Error::io("opening the helper's image", source, e))?;
    let meta = from
        .metadata()
        .map_err(|e| Error::io("reading", source, e))?;
    if !meta.is_file() {
        return Err(Error::Build(
            "the unpack helper's image is not a regular file".into(),
        ));
    }
    let mut to = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("creating temp file in", dir, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = from
            .read(&mut buf)
            .map_err(|e| Error::io("reading", source, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_IMAGE_BYTES {
            return Err(Error::Build(format!(
                "the unpack helper's image is larger than {MAX_IMAGE_BYTES} bytes"
            )));
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])
            .map_err(|e| Error::io("writing", to.path().to_path_buf(), e))?;
    }
    // World-readable, as mkfs.erofs would have left it: the jailed VMM's uid attaches it.
    use std::os::unix::fs::PermissionsExt;
    to.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| to.as_file().sync_all())
        .map_err(|e| Error::io("writing", to.path().to_path_buf(), e))?;
    to.persist(image)
        .map_err(|e| Error::io("moving root filesystem into place", image, e.error))?;
    Ok(hex::encode(hasher.finalize()))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array it is given, which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io(
            "creating a pipe to the unpack helper",
            "pipe2",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The namespace links of this process, for the debug line.
fn ns_link(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The last bytes the helper wrote to its standard error, shared with the thread reading it.
#[derive(Default)]
struct Tail(Mutex<Vec<u8>>);

impl Tail {
    /// Reads `from` to its end, keeping at most the last `limit` bytes.
    fn read_from(&self, from: Option<std::process::ChildStderr>, limit: usize) {
        let Some(mut from) = from else {
            return;
        };
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > limit {
                        let excess = kept.len() - limit;
                        kept.drain(..excess);
                    }
                }
            }
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Kills what is left in the helper's process group (the helper leads it).
fn kill_group(leader: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(leader) {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entering the jail (the forked child, before exec) and mapping its ids (a caller thread)

/// The steps of entering the jail, named in errors.
const STEPS: &[&str] = &[
    "",
    "marking inherited descriptors close-on-exec (close_range(2), Linux 5.11 or later)",
    "creating the user, mount, network and IPC namespaces (unshare(2))",
    "waiting for the id maps",
    "making the mounts private",
    "bind-mounting the work directory at /mnt (which must exist)",
    "making every mount read-only (mount_setattr(2), Linux 5.12 or later)",
    "making the work directory writable",
    "opening the work directory",
    "dropping supplementary groups",
    "switching to the namespace's root gid",
    "switching to the namespace's root uid",
    "passing the layer descriptors",
    "setting no_new_privs",
    "setting the parent-death signal",
];
const STEP_READY: u8 = 0;

/// Where the helper's mount namespace shows the work directory (the only writable mount).
const WORK_MOUNT: &std::ffi::CStr = c"/mnt";

/// What the child needs, prepared before the fork.
struct ChildSetup {
    work: CString,
    work_fd: RawFd,
    layer_fds: Vec<RawFd>,
    drop_groups: bool,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl ChildSetup {
    /// Runs in the forked child. Every failure is sent to the caller as (step, errno) before
    /// the child gives up, so the caller can say which step failed and why.
    fn enter(&self, to_parent: RawFd, to_child: RawFd) -> std::io::Result<()> {
        let fail = |step: u8, code: i32| -> std::io::Result<()> {
            send(to_parent, step, code as u32);
            Err(std::io::Error::from_raw_os_error(code))
        };
        // SAFETY: plain system calls on descriptors this child holds and on memory (`self`,
        // locals) that lives across each call; none allocates or takes a lock.
        unsafe {
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                return fail(1, errno());
            }
            let flags =
                libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC;
            if libc::unshare(flags) != 0 {
                return fail(2, errno());
            }
            send(to_parent, STEP_READY, libc::getpid() as u32);
            let mut go = [0u8; 1];
            if libc::read(to_child, go.as_mut_ptr().cast(), 1) != 1 || go[0] != 1 {
                return fail(3, libc::EPERM);
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail(4, errno());
            }
            // The work directory is shown at WORK_MOUNT, whose parents any uid may traverse:
            // its real parents (a data directory under /root, say) may be closed to the
            // helper's uid, and mkfs.erofs resolves its source with realpath(3).
            let work = WORK_MOUNT.as_ptr();
            if libc::mount(
                self.work.as_ptr(),
                work,
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return fail(5, errno());
            }
            let mut attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            let size = std::mem::size_of::<MountAttr>();
            if libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                root.as_ptr(),
                AT_RECURSIVE,
                &mut attr as *mut MountAttr,
                size,
            ) != 0
            {
                return fail(6, errno());
            }
            attr.attr_set = 0;
            attr.attr_clr = MOUNT_ATTR_RDONLY;
            if libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                work,
                0u32,
                &mut attr as *mut MountAttr,
                size,
            ) != 0
            {
                return fail(7, errno());
            }
            // Opened through the new bind mount, so it is the one writable place; `..` from
            // it leads onto read-only mounts.
            let opened = libc::open(work, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
            if opened < 0 {
                return fail(8, errno());
            }
            // Replaces the caller's reserved number (without close-on-exec) with the directory.
            if libc::dup3(opened, self.work_fd, 0) < 0 {
                return fail(8, errno());
            }
            libc::close(opened);
            if self.drop_groups && libc::setgroups(0, std::ptr::null()) != 0 {
                return fail(9, errno());
            }
            if libc::setresgid(0, 0, 0) != 0 {
                return fail(10, errno());
            }
            if libc::setresuid(0, 0, 0) != 0 {
                return fail(11, errno());
            }
            for &fd in &self.layer_fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return fail(12, errno());
                }
            }
            // Set after the id switch, which clears it: the helper dies with the thread that
            // waits for it.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return fail(14, errno());
            }
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return fail(13, errno());
            }
        }
        Ok(())
    }
}

/// One message from the child: a step and a number (its pid when ready, else an errno).
fn send(fd: RawFd, step: u8, value: u32) {
    let v = value.to_le_bytes();
    let message = [step, v[0], v[1], v[2], v[3]];
    // SAFETY: write(2) of a local array; a failed write leaves the caller with no message,
    // which it reports as such.
    unsafe {
        libc::write(fd, message.as_ptr().cast(), message.len());
    }
}

struct IdMaps {
    uid: String,
    gid: String,
    deny_setgroups: bool,
}

/// The caller's side of entering the jail: once the child has its user namespace, writes its
/// id maps and lets it go on; then collects a failure the child reports. `Ok(None)` when the
/// child went all the way to exec (or died without saying why).
fn map_ids(from_child: OwnedFd, to_child: OwnedFd, maps: &IdMaps) -> Result<Option<Error>> {
    let mut from_child = std::fs::File::from(from_child);
    let mut to_child = std::fs::File::from(to_child);
    let mut failure = None;
    let mut message = [0u8; 5];
    while from_child.read_exact(&mut message).is_ok() {
        let value = u32::from_le_bytes([message[1], message[2], message[3], message[4]]);
        if message[0] == STEP_READY {
            let go = write_maps(value, maps);
            let answer = if go.is_ok() { [1u8] } else { [0u8] };
            let _ = to_child.write_all(&answer);
            if let Err(e) = go {
                failure = Some(e);
            }
            continue;
        }
        if failure.is_none() {
            let step = STEPS
                .get(usize::from(message[0]))
                .copied()
                .unwrap_or("entering the jail");
            let code = i32::try_from(value).unwrap_or(libc::EIO);
            failure = Some(jail_error(
                step,
                message[0],
                std::io::Error::from_raw_os_error(code),
            ));
        }
    }
    Ok(failure)
}

fn write_maps(pid: u32, maps: &IdMaps) -> Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let write = |name: &str, text: &str| -> Result<()> {
        let path = proc.join(name);
        std::fs::write(&path, text).map_err(|e| {
            Error::Build(format!(
                "cannot jail the unpack helper: writing {} ({:?}): {e} (the ids must be mapped in \
                 ztee's own user namespace: in a container, set ZTEE_UNPACK_UIDS to a range it \
                 has)",
                path.display(),
                text.trim()
            ))
        })
    };
    if maps.deny_setgroups {
        write("setgroups", "deny")?;
    }
    write("uid_map", &maps.uid)?;
    write("gid_map", &maps.gid)
}

fn jail_error(step: &str, number: u8, e: std::io::Error) -> Error {
    let hint = if number == 2 {
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::ENOSPC) | Some(libc::EUSERS) => {
                ": user namespaces are disabled or exhausted here (check sysctl user.max_user_namespaces > 0, \
                 kernel.unprivileged_userns_clone = 1 on Debian kernels when not root, \
                 kernel.apparmor_restrict_unprivileged_userns, and seccomp filters of a surrounding container); \
                 ztee never unpacks images outside the helper's namespaces"
            }
            Some(libc::EINVAL) => ": this kernel lacks user, mount, network or IPC namespaces (CONFIG_USER_NS and friends)",
            _ => "",
        }
    } else {
        ""
    };
    Error::Build(format!("cannot jail the unpack helper: {step}: {e}{hint}"))
}

// ---------------------------------------------------------------------------------------------
// The protocol between caller and helper

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The work directory: the helper makes `root/` (the tree) and `image.erofs` in it.
    work_fd: RawFd,
    /// Layer blobs in stack order, open read-only.
    layers: Vec<LayerFd>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerFd {
    digest: Digest,
    fd: RawFd,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Report {
    Ok(JailReport),
    Failed(HelperError),
}

/// What the helper saw of its own jail (kernel-reported, for the caller's debug log).
#[derive(Debug, Serialize, Deserialize)]
struct JailReport {
    uid_map: String,
    gid_map: String,
    status_uid: String,
    mnt_ns: String,
    user_ns: String,
    /// What creating a file in `/tmp` (world-writable on the host) gave: a read-only error
    /// shows the mount jail holds.
    tmp_write: String,
}

/// An error of the helper, carried to the caller with its kind.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum HelperError {
    UnsafeLayerEntry {
        layer: String,
        path: String,
        reason: String,
    },
    LayerLimit {
        layer: String,
        path: String,
        reason: String,
    },
    DigestMismatch {
        expected: String,
        actual: String,
    },
    Malformed {
        what: String,
        reason: String,
    },
    Other {
        message: String,
    },
}

impl From<Error> for HelperError {
    fn from(e: Error) -> Self {
        match e {
            Error::UnsafeLayerEntry {
                layer,
                path,
                reason,
            } => HelperError::UnsafeLayerEntry {
                layer,
                path,
                reason,
            },
            Error::LayerLimit {
                layer,
                path,
                reason,
            } => HelperError::LayerLimit {
                layer,
                path,
                reason,
            },
            Error::DigestMismatch { expected, actual } => {
                HelperError::DigestMismatch { expected, actual }
            }
            Error::Malformed { what, reason } => HelperError::Malformed { what, reason },
            other => HelperError::Other {
                message: other.to_string(),
            },
        }
    }
}

impl From<HelperError> for Error {
    fn from(e: HelperError) -> Self {
        match e {
            HelperError::UnsafeLayerEntry {
                layer,
                path,
                reason,
            } => Error::UnsafeLayerEntry {
                layer,
                path,
                reason,
            },
            HelperError::LayerLimit {
                layer,
                path,
                reason,
            } => Error::LayerLimit {
                layer,
                path,
                reason,
            },
            HelperError::DigestMismatch { expected, actual } => {
                Error::DigestMismatch { expected, actual }
            }
            HelperError::Malformed { what, reason } => Error::Malformed { what, reason },
            HelperError::Other { message } => Error::Build(format!("unpack helper: {message}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The helper

/// The helper's entry point: `args` are the process's arguments from [`HELPER_ARG`] on (or
/// all of them; everything up to [`HELPER_ARG`] is skipped). Unpacks the layers it was handed
/// into the work directory, builds `image.erofs` there with `mkfs.erofs`, writes its report
/// line to standard error and returns the process exit code.
pub fn helper_main(args: impl IntoIterator<Item = OsString>) -> i32 {
    // Nothing else running as this uid may trace or read this process.
    // SAFETY: prctl(2) with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    let report = match run(args) {
        Ok(jail) => Report::Ok(jail),
        Err(e) => Report::Failed(e.into()),
    };
    let code = i32::from(!matches!(report, Report::Ok(_)));
    let line = serde_json::to_string(&report).unwrap_or_else(|_| {
        r#"{"failed":{"kind":"other","message":"encoding the report failed"}}"#.to_string()
    });
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{REPORT_PREFIX}{line}");
    let _ = stderr.flush();
    code
}

fn run(args: impl IntoIterator<Item = OsString>) -> Result<JailReport> {
    let mut args = args.into_iter().skip_while(|a| a != OsStr::new(HELPER_ARG));
    let (Some(_), Some(request)) = (args.next(), args.next()) else {
        return Err(Error::Build(format!("usage: {HELPER_ARG} <request>")));
    };
    let request: Request = serde_json::from_slice(request.as_bytes())
        .map_err(|e| Error::malformed("helper request", e))?;
    let work = PathBuf::from(format!("/proc/self/fd/{}", request.work_fd));
    let mut layer_files = Vec::new();
    for layer in request.layers {
        // SAFETY: the caller opened this descriptor for this process and nothing else here
        // owns it; it is taken once.
        let file = unsafe { std::fs::File::from_raw_fd(layer.fd) };
        layer_files.push((layer.digest, file));
    }
    let tree = work.join("root");
    std::fs::create_dir(&tree).map_err(|e| Error::io("creating", &tree, e))?;
    layers::unpack_files(layer_files, &tree, UnpackLimits::default())?;
    let image = work.join("image.erofs");
    // Fixed timestamp and UUID so the same layers give the same bytes.
    let output = Command::new("mkfs.erofs")
        .arg("-T0")
        .arg("-U00000000-0000-0000-0000-000000000000")
        .arg(&image)
        .arg(&tree)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Build(format!("running mkfs.erofs (install erofs-utils): {e}")))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let tail: String = text
            .trim()
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::Build(format!("mkfs.erofs failed: {tail}")));
    }
    let read =
        |path: &str| std::fs::read_to_string(path).unwrap_or_else(|e| format!("unknown ({e})"));
    let status_uid = read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    Ok(JailReport {
        uid_map: read("/proc/self/uid_map")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        gid_map: read("/proc/self/gid_map")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        status_uid,
        mnt_ns: ns_link("mnt"),
        user_ns: ns_link("user"),
        tmp_write: tmp_write_probe(),
    })
}

/// Tries to create a file in `/tmp`, which is writable by every uid on the host, and says
/// what happened (removing the file if the jail did not stop it).
fn tmp_write_probe() -> String {
    let path = format!("/tmp/.ztee-unpack-probe-{}", std::process::id());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            "created".to_string()
        }
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unpack_id_ranges_are_checked() {
        assert_eq!(
            parse_id_range("1000000000-1000065535").unwrap(),
            DEFAULT_UNPACK_IDS
        );
        assert_eq!(parse_id_range("200000-265535").unwrap(), 200_000..=265_535);
        // Not exactly 65536 ids, overlapping regular users and the VMM jail, or malformed.
        assert!(parse_id_range("200000-265534").is_err());
        assert!(parse_id_range("0-65535").is_err());
        assert!(parse_id_range("64000-129535").is_err());
        assert!(parse_id_range("4294901760-4294967295").is_err());
        assert!(parse_id_range("200000").is_err());
        check_id_range(&DEFAULT_UNPACK_IDS, "default").unwrap();
    }

    #[test]
    fn a_namespace_failure_says_what_is_missing() {
        let e = jail_error(STEPS[2], 2, std::io::Error::from_raw_os_error(libc::ENOSPC));
        let text = e.to_string();
        assert!(
            text.contains("creating the user, mount, network and IPC namespaces"),
            "{text}"
        );
        assert!(text.contains("user.max_user_namespaces"), "{text}");
        assert!(text.contains("kernel.unprivileged_userns_clone"), "{text}");
        assert!(text.contains("never unpacks images outside"), "{text}");
        let e = jail_error(STEPS[6], 6, std::io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(
            e.to_string().contains("mount_setattr(2), Linux 5.12"),
            "{e}"
        );
    }

    #[test]
    fn helper_errors_keep_their_kind() {
        let e = Error::UnsafeLayerEntry {
            layer: "sha256:00".into(),
            path: "escape/.wh.keep".into(),
            reason: "its path goes through a symbolic link".into(),
        };
        let text = e.to_string();
        let json = serde_json::to_string(&Report::Failed(e.into())).unwrap();
        let Report::Failed(back) = serde_json::from_str(&json).unwrap() else {
            panic!("{json}")
        };
        let back = Error::from(back);
        assert!(matches!(back, Error::UnsafeLayerEntry { .. }), "{back:?}");
        assert_eq!(back.to_string(), text);
    }
}
