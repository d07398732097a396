//! Software bills of materials. [`catalog`] finds the packages in an image the way syft does —
//! dpkg's status database, Python `dist-info`/`egg-info` metadata, npm `package.json` files under
//! `node_modules`, and `Cargo.lock` files — and [`cyclonedx`] and [`spdx`] write them as
//! CycloneDX 1.5 and SPDX 2.3 JSON with syft-style package URLs.

pub mod catalog;
pub mod cyclonedx;
pub mod purl;
pub mod spdx;

use serde::{Deserialize, Serialize};

pub use catalog::{catalog_files, catalog_image, Catalog, Distro};

/// Where a package's metadata came from, which decides the vulnerability ecosystem it is
/// matched in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    Deb,
    Python,
    Npm,
    Cargo,
}

impl PackageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageKind::Deb => "deb",
            PackageKind::Python => "python",
            PackageKind::Npm => "npm",
            PackageKind::Cargo => "cargo",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub kind: PackageKind,
    pub name: String,
    pub version: String,
    pub purl: String,
    /// Debian source package and its version (OSV's Debian data is keyed by source package).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The file the package was found in (relative to `/`, or outside the image for extra sources).
    pub location: String,
    /// The dpkg package that installed this one's files, if any. Such packages carry Debian's
    /// backported fixes and are matched through the dpkg package, not their own ecosystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by_deb: Option<String>,
}
