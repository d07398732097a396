//! Per-VM user ids. Each jailed VMM runs as a uid (and gid of the same number) that no other live
//! VM on this host holds, so one compromised VMM cannot signal, trace or read another.
//!
//! A uid is held by an exclusive `flock` on `<lock dir>/<uid>`. The kernel releases the lock when
//! the holding process dies, so a crashed engine never leaks uids, and engines in different
//! processes (CLI supervisors, the server) never hand out the same one.

use std::fs::{self, File, OpenOptions};
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::VmError;

#[derive(Debug)]
pub(crate) struct UidLease {
    uid: u32,
    // Holds the flock; closing it (on drop) frees the uid.
    _lock: File,
}

impl UidLease {
    pub(crate) fn acquire(lock_dir: &Path, range: &RangeInclusive<u32>) -> Result<Self, VmError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(lock_dir)
            .map_err(|e| VmError::io("create uid lock dir", lock_dir, e))?;
        let count = range.end().saturating_sub(*range.start()) as u64 + 1;
        // Start at a random place so that uids are not reused in a predictable order.
        let offset = u64::from(u32::from_le_bytes(crate::random_bytes()?)) % count;
        for step in 0..count {
            let uid = range.start() + ((offset + step) % count) as u32;
            let path = lock_dir.join(uid.to_string());
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| VmError::io("open uid lock", &path, e))?;
            // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
            let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if locked == 0 {
                return Ok(Self { uid, _lock: file });
            }
        }
        Err(VmError::Jail(format!(
            "every uid in {}-{} is held by a live VM; widen ZTEE_JAIL_UIDS or run fewer VMs",
            range.start(),
            range.end()
        )))
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_leases_never_share_a_uid_and_released_ones_return() {
        let dir = tempfile::tempdir().unwrap();
        let range = 70000..=70002;
        let a = UidLease::acquire(dir.path(), &range).unwrap();
        let b = UidLease::acquire(dir.path(), &range).unwrap();
        let c = UidLease::acquire(dir.path(), &range).unwrap();
        let mut uids = vec![a.uid(), b.uid(), c.uid()];
        uids.sort();
        assert_eq!(uids, vec![70000, 70001, 70002]);
        let err = UidLease::acquire(dir.path(), &range).unwrap_err();
        assert!(err.to_string().contains("70000-70002"), "{err}");
        let freed = b.uid();
        drop(b);
        assert_eq!(UidLease::acquire(dir.path(), &range).unwrap().uid(), freed);
    }
}
