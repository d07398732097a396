//! The initramfs every VM boots with: the guest agent as `/init`, the directories it mounts on,
//! and — appended per VM as a second archive, which the kernel unpacks on top — the VM's secret.
//! The agent lives here rather than in the image so user images never need to contain it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use ztee_wire::BootSecret;

use crate::VmError;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// A `newc` cpio archive writer.
struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: fixed, so the archive depends only on its inputs
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.next_ino += 1;
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad(4);
        self.out.extend_from_slice(data);
        self.pad(4);
    }

    fn pad(&mut self, to: usize) {
        while self.out.len() % to != 0 {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.pad(512);
        self.out
    }
}

fn base_archive(agent: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::new();
    for dir in ["dev", "proc", "sys", "mnt", "newroot", "ztee"] {
        cpio.entry(dir, S_IFDIR | 0o755, (0, 0), &[]);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    cpio.entry("dev/console", S_IFCHR | 0o600, (5, 1), &[]);
    cpio.entry("init", S_IFREG | 0o755, (0, 0), agent);
    cpio.finish()
}

fn secret_archive(secret: &BootSecret) -> Vec<u8> {
    let mut cpio = Cpio::new();
    cpio.entry(
        "ztee/secret",
        S_IFREG | 0o400,
        (0, 0),
        secret.to_hex().as_bytes(),
    );
    cpio.finish()
}

/// Builds (once per agent binary, cached in `cache_dir`) the base archive, and returns its path.
pub fn base_for_agent(agent: &Path, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let binary = fs::read(agent).map_err(|e| VmError::io("read guest agent", agent, e))?;
    let digest = Sha256::digest(&binary);
    let key = crate::hex(&digest[..12]);
    let path = cache_dir.join(format!("initramfs-{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(cache_dir).map_err(|e| VmError::io("create cache dir", cache_dir, e))?;
    let temp = cache_dir.join(format!(".initramfs-{key}.{}.tmp", std::process::id()));
    fs::write(&temp, base_archive(&binary))
        .map_err(|e| VmError::io("write initramfs", &temp, e))?;
    fs::rename(&temp, &path).map_err(|e| VmError::io("install initramfs", &path, e))?;
    Ok(path)
}

/// Writes `base` followed by an archive holding `secret` to `dest` (mode 0600).
pub fn write_for_vm(base: &Path, secret: &BootSecret, dest: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut data = fs::read(base).map_err(|e| VmError::io("read initramfs", base, e))?;
    data.extend_from_slice(&secret_archive(secret));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| VmError::io("create initramfs", dest, e))?;
    file.write_all(&data)
        .map_err(|e| VmError::io("write initramfs", dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_well_formed_newc() {
        let archive = base_archive(b"\x7fELF-agent");
        assert_eq!(&archive[..6], b"070701");
        assert_eq!(archive.len() % 512, 0);
        let text = String::from_utf8_lossy(&archive);
        for name in ["dev/console", "init", "newroot", "TRAILER!!!"] {
            assert!(text.contains(name), "{name} missing");
        }
        // Each header is 110 bytes; check the init entry's recorded size matches its data.
        let init_at = text.find("init\0").unwrap() - 110;
        let size = u32::from_str_radix(&text[init_at + 54..init_at + 62], 16).unwrap();
        assert_eq!(size as usize, b"\x7fELF-agent".len());
    }

    #[test]
    fn secret_archive_holds_hex_secret_only() {
        let secret = BootSecret::from_bytes([0x5a; 32]);
        let archive = String::from_utf8_lossy(&secret_archive(&secret)).into_owned();
        assert!(archive.contains(&secret.to_hex()));
        assert!(archive.contains("ztee/secret"));
    }
}
