//! A directory tree changed strictly beneath its root. Every lookup is one `openat2(2)` from a
//! descriptor of the root (or of a directory found that way) with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, and every change is made on a
//! single final component relative to the descriptor of its parent directory, never following a
//! link there either. So a symbolic link in the tree (one an earlier layer planted, say) is
//! never followed, and nothing outside the root can be reached, whatever the entry names are.
//!
//! Paths given to [`Tree`] are relative and made of normal components only: the caller has
//! already refused `..` and dropped `.` and `/`. The kernel refuses the rest (`ELOOP` for a
//! symbolic link on the way, `EXDEV` for anything leaving the root).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid,
};
use rustix::io::Errno;

/// How every path beneath the root is resolved: no symbolic links at all (also not as the last
/// component), no `/proc` magic links, no escape from the root, no crossing of mount points.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Mode of directories that a layer does not list but that its entries need as parents, as the
/// usual `mkdir -p` with umask 022 gives.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// The root of the tree being unpacked, held open.
pub(super) struct Tree {
    root: OwnedFd,
}

fn dot() -> &'static Path {
    Path::new(".")
}

/// `rel`, or `.` for the root itself.
fn or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        dot()
    } else {
        rel
    }
}

impl Tree {
    /// Opens the root. The root path itself is the caller's and trusted; only what is beneath it
    /// is resolved strictly. Fails with `ENOSYS` where the kernel has no `openat2` (before 5.6).
    pub(super) fn open(root: &Path) -> io::Result<Tree> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let tree = Tree { root };
        // Probe once so a kernel without openat2 fails here with a clear error, not per entry.
        tree.lookup_dir(Path::new(""))?;
        Ok(tree)
    }

    fn resolve(&self, dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            dir,
            or_dot(rel),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }

    /// The directory `rel` (a path handle, usable as the directory of `*at` calls).
    pub(super) fn lookup_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(self.root.as_fd(), rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// The directory `rel` opened for reading its entries.
    pub(super) fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(self.root.as_fd(), rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The directory `rel`, creating the missing ones on the way with mode 0755 (like
    /// `mkdir -p`); an existing component that is a symbolic link or not a directory is an
    /// error (`ELOOP`, `ENOTDIR`).
    pub(super) fn create_dirs(&self, rel: &Path) -> io::Result<OwnedFd> {
        match self.lookup_dir(rel) {
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            other => return other,
        }
        let mut dir = self.lookup_dir(Path::new(""))?;
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(Errno::INVAL.into());
            };
            let flags = OFlags::PATH | OFlags::DIRECTORY;
            dir = match self.resolve(dir.as_fd(), Path::new(name), flags) {
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(IMPLICIT_DIR_MODE)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.resolve(dir.as_fd(), Path::new(name), flags)?
                }
                other => other?,
            };
        }
        Ok(dir)
    }
}

/// What `name` in `dir` is, without following it if it is a link; `None` if it does not exist.
pub(super) fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `dir` if it exists: a link or file is unlinked (never its target), a
/// directory is emptied through descriptors (so links inside are removed, not followed) and
/// then removed.
pub(super) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let child = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            empty_dir(child.as_fd())?;
            drop(child);
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Removes everything in the directory `dir` (opened for reading), as [`remove_at`] does.
pub(super) fn empty_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    // Names first, then removal, so the listing is not changed while it is read.
    let mut names: Vec<CString> = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        use std::os::unix::ffi::OsStrExt;
        remove_at(dir, OsStr::from_bytes(name.as_bytes()))?;
    }
    Ok(())
}

/// Makes `name` in `dir` a directory and opens it for setting its metadata. An existing
/// directory is kept (with its content); anything else there is removed first.
pub(super) fn make_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    match kind_at(dir, name)? {
        Some(FileType::Directory) => {}
        existing => {
            if existing.is_some() {
                remove_at(dir, name)?;
            }
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
        }
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Creates `name` in `dir` as a new, empty regular file open for writing, replacing whatever
/// was there. `O_EXCL | O_NOFOLLOW`: never writes through an existing file, link or hard link.
pub(super) fn create_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    remove_at(dir, name)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Creates `name` in `dir` as a symbolic link to `target`, replacing whatever was there. The
/// target is stored as given and never resolved here.
pub(super) fn symlink_at(dir: BorrowedFd<'_>, name: &OsStr, target: &OsStr) -> io::Result<()> {
    remove_at(dir, name)?;
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// Creates `name` in `dir` as a hard link to `src_name` in `src_dir`, replacing whatever was
/// there. If the source is a symbolic link, the link itself is linked, not its target.
pub(super) fn hard_link_at(
    src_dir: BorrowedFd<'_>,
    src_name: &OsStr,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    remove_at(dir, name)?;
    Ok(rustix::fs::linkat(
        src_dir,
        src_name,
        dir,
        name,
        AtFlags::empty(),
    )?)
}

/// Sets the owner of `name` in `dir` without following it (for symbolic links).
pub(super) fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Sets the owner, then the mode (so set-id bits survive the owner change) of an open file.
pub(super) fn set_owner_and_mode(file: &File, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    rustix::fs::fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    Ok(rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?)
}

fn timestamps(mtime: i64) -> Timestamps {
    let at = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

/// Sets the access and modification times of an open file.
pub(super) fn set_mtime(file: &File, mtime: i64) -> io::Result<()> {
    Ok(rustix::fs::futimens(file, &timestamps(mtime))?)
}

/// Sets the access and modification times of `name` in `dir` without following it.
pub(super) fn set_mtime_at(dir: BorrowedFd<'_>, name: &OsStr, mtime: i64) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &timestamps(mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}
