//! Template RAM that a jailed VMM can map but never write.
//!
//! QEMU 7.2 opens a `memory-backend-file` `mem-path` read-write even with `share=off`. Given the
//! snapshot's RAM file, a compromised VMM could write through that descriptor and corrupt the
//! template of every later clone. Instead the engine copies the file once into a memfd and seals
//! it against writes, growth and shrinking: the VMM gets `/proc/self/fd/<n>`, which it may map
//! privately (copy-on-write, as before) but cannot modify; `write(2)` and shared writable
//! mappings fail with EPERM whoever tries.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::VmError;

#[derive(Debug)]
pub(crate) struct SealedRam {
    file: File,
}

impl SealedRam {
    /// Copies the data extents of the sparse file at `path` into a sealed memfd.
    pub(crate) fn load(path: &Path) -> Result<Self, VmError> {
        let source = File::open(path).map_err(|e| VmError::io("open snapshot RAM", path, e))?;
        let size = source
            .metadata()
            .map_err(|e| VmError::io("stat snapshot RAM", path, e))?
            .len();
        // SAFETY: memfd_create(2) with a NUL-terminated name; the returned descriptor is
        // checked and then owned by `OwnedFd` alone.
        let fd = unsafe {
            libc::memfd_create(
                c"ztee-template-ram".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(VmError::io(
                "create sealed RAM (memfd) for",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let memfd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        memfd
            .set_len(size)
            .map_err(|e| VmError::io("size sealed RAM for", path, e))?;
        copy_data_extents(&source, &memfd, size)
            .map_err(|e| VmError::io("copy snapshot RAM", path, e))?;
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl(2) F_ADD_SEALS on a memfd this function owns; no memory is involved.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(VmError::io(
                "seal snapshot RAM",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { file: memfd })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The RAM file is sparse (pages the guest never touched are holes): copy only what holds data.
fn copy_data_extents(source: &File, dest: &File, size: u64) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    while offset < size {
        // SAFETY: lseek(2) on a descriptor borrowed from `source` for the duration of the call.
        let data = unsafe { libc::lseek(source.as_raw_fd(), offset as i64, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `offset`
            }
            return Err(err);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(source.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut at, end) = (data as u64, hole as u64);
        while at < end {
            let len = buffer.len().min((end - at) as usize);
            source.read_exact_at(&mut buffer[..len], at)?;
            dest.write_all_at(&buffer[..len], at)?;
            at += len as u64;
        }
        offset = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sealed_copy_has_the_data_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        let mut file = File::create(&path).unwrap();
        file.set_len(8 << 20).unwrap();
        file.seek(SeekFrom::Start(3 << 20)).unwrap();
        file.write_all(b"template page").unwrap();
        drop(file);
        let ram = SealedRam::load(&path).unwrap();
        let mut read = [0u8; 13];
        ram.file.read_exact_at(&mut read, 3 << 20).unwrap();
        assert_eq!(&read, b"template page");
        assert_eq!(ram.file.metadata().unwrap().len(), 8 << 20);
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", ram.raw_fd()))
            .unwrap();
        let err = reopened.write_at(b"corrupt", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(
            ram.file.set_len(1 << 20).is_err(),
            "shrinking must be refused"
        );
    }
}
