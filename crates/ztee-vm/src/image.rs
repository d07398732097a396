//! What a sandbox boots: the operator's default guest image, or an image that passed admission.
//!
//! [`BootImage`] has no public constructor but the conversion from
//! `ztee_supply::admission::VerifiedImage`, which only the admission check creates: a VM can boot
//! a user image only after its signature, attestations and vulnerability gate were verified, and
//! what boots is the root file system built from exactly the verified digest.

use std::path::{Path, PathBuf};

use ztee_supply::admission::VerifiedImage;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BootImage {
    digest: String,
    rootfs: PathBuf,
}

impl From<&VerifiedImage> for BootImage {
    fn from(image: &VerifiedImage) -> Self {
        Self {
            digest: image.digest().to_string(),
            rootfs: image.rootfs_image().to_path_buf(),
        }
    }
}

impl BootImage {
    /// The manifest digest that was verified.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The read-only root file system built from that digest's layers.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }
}
