//! Supply-chain security for ztee images: a local OCI image layout store and a registry client,
//! rootfs image builds, SBOMs (CycloneDX, SPDX), offline vulnerability scans against OSV data,
//! cosign-compatible signatures and DSSE in-toto attestations, and the admission check that turns
//! an image reference into the only handle the VM engine boots: [`admission::VerifiedImage`].
//!
//! Everything here works offline; no transparency log or online service is contacted.

pub mod admission;
pub mod build;
pub mod digest;
pub mod dsse;
mod error;
pub mod keys;
pub mod layers;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod sbom;
pub mod sign;
pub mod store;
pub mod vuln;

pub use digest::Digest;
pub use error::{Error, Result};
pub use reference::Reference;
pub use store::Store;
pub use time::{Date, OffsetDateTime};

/// The current UTC time, for admission and scan dates.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
