//! The three files every VM boots from: kernel, root file system image, guest agent.

use std::path::{Path, PathBuf};

use crate::VmError;

/// Paths of the guest assets. Built by `make guest` (see `guest/`), which installs them into
/// `<data dir>/guest/` as `vmlinux`, `rootfs.img` and `ztee-agent`.
#[derive(Debug, Clone)]
pub struct GuestAssets {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub agent: PathBuf,
}

impl GuestAssets {
    /// The assets in `dir`, checked to exist.
    pub fn in_dir(dir: &Path) -> Result<Self, VmError> {
        let assets = Self {
            kernel: dir.join("vmlinux"),
            rootfs: dir.join("rootfs.img"),
            agent: dir.join("ztee-agent"),
        };
        assets.check()?;
        Ok(assets)
    }

    /// `$ZTEE_GUEST_DIR` when set, else `<data_dir>/guest`.
    pub fn locate(data_dir: &Path) -> Result<Self, VmError> {
        match std::env::var_os("ZTEE_GUEST_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => Self::in_dir(Path::new(&dir)),
            None => Self::in_dir(&data_dir.join("guest")),
        }
    }

    pub fn check(&self) -> Result<(), VmError> {
        for (what, path) in [
            ("guest kernel", &self.kernel),
            ("root file system image", &self.rootfs),
            ("guest agent", &self.agent),
        ] {
            if !path.is_file() {
                return Err(VmError::AssetMissing {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}
