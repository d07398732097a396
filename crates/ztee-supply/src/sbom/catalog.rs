//! Package catalogers: what is installed in a root filesystem, read from package managers'
//! own metadata (never guessed from file names).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layers;
use crate::sbom::{purl, Package, PackageKind};
use crate::store::Store;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distro {
    /// `ID` from os-release, e.g. `debian`.
    pub id: String,
    /// `VERSION_ID`, e.g. `12`.
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
}

/// Everything found in one image (plus any extra sources such as the guest agent's Cargo.lock).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub subject: String,
    pub digest: Option<Digest>,
    pub distro: Option<Distro>,
    pub packages: Vec<Package>,
}

impl Catalog {
    /// Adds the crates of a `Cargo.lock` outside the image (for instance the guest agent's,
    /// which the VM engine puts into the initramfs rather than the image). `root` limits them
    /// to one package's dependency closure. Returns how many were added.
    pub fn add_cargo_lock(&mut self, path: &Path, root: Option<&str>) -> Result<usize> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let location = match root {
            Some(r) => format!("{}#{r}", path.display()),
            None => path.display().to_string(),
        };
        let found = cargo_lock_packages(&text, &location, root)?;
        let n = found.len();
        self.packages.extend(found);
        Ok(n)
    }

    pub fn count(&self, kind: PackageKind) -> usize {
        self.packages.iter().filter(|p| p.kind == kind).count()
    }
}

/// True for the files the catalogers read.
pub fn is_metadata_file(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s == "etc/os-release"
        || s == "usr/lib/os-release"
        || s == "var/lib/dpkg/status"
        || s.starts_with("var/lib/dpkg/status.d/")
        || (s.starts_with("var/lib/dpkg/info/") && s.ends_with(".list"))
        || (s.ends_with("/METADATA")
            && path
                .parent()
                .is_some_and(|p| p.to_string_lossy().ends_with(".dist-info")))
        || (s.ends_with("/PKG-INFO")
            && path
                .parent()
                .is_some_and(|p| p.to_string_lossy().ends_with(".egg-info")))
        || (s.ends_with("/package.json") && s.contains("node_modules/"))
        || s.ends_with("/Cargo.lock")
}

/// Catalogs an image in the store by reading its metadata files through the layer stack.
pub fn catalog_image(store: &Store, subject: &str, digest: &Digest) -> Result<Catalog> {
    let (manifest, _) = store.manifest(digest)?;
    let files = layers::read_files(store, &manifest, is_metadata_file)?;
    let mut catalog = catalog_files(&files)?;
    catalog.subject = subject.to_string();
    catalog.digest = Some(digest.clone());
    Ok(catalog)
}

fn parse_os_release(text: &str) -> Distro {
    let mut fields = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    Distro {
        id: fields.remove("ID").unwrap_or_else(|| "linux".into()),
        version_id: fields.remove("VERSION_ID"),
        pretty_name: fields.remove("PRETTY_NAME"),
    }
}

/// RFC 822-style paragraphs as dpkg writes them; continuation lines are folded into the field.
fn paragraphs(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            last_key = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(value) = last_key.as_ref().and_then(|k| current.get_mut(k)) {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.insert(k.trim().to_string(), v.trim().to_string());
            last_key = Some(k.trim().to_string());
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn dpkg_packages(status: &str, location: &str, distro: &Distro) -> Vec<Package> {
    let mut out = Vec::new();
    for p in paragraphs(status) {
        // Only installed packages: `deinstall ok config-files` leaves no code behind.
        if p.get("Status").is_some_and(|s| !s.ends_with(" installed")) {
            continue;
        }
        let (Some(name), Some(version)) = (p.get("Package"), p.get("Version")) else {
            continue;
        };
        let arch = p.get("Architecture").cloned();
        // `Source: name` or `Source: name (version)` when the source version differs.
        let source = match p.get("Source") {
            Some(s) => match s.split_once(' ') {
                Some((n, v)) => (
                    n.to_string(),
                    v.trim()
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .to_string(),
                ),
                None => (s.clone(), version.clone()),
            },
            None => (name.clone(), version.clone()),
        };
        let purl = purl::deb(
            &distro.id,
            distro.version_id.as_deref(),
            name,
            version,
            arch.as_deref(),
            Some((&source.0, &source.1)),
        );
        out.push(Package {
            kind: PackageKind::Deb,
            name: name.clone(),
            version: version.clone(),
            purl,
            source: Some(source),
            arch,
            license: None,
            location: location.to_string(),
            owned_by_deb: None,
        });
    }
    out
}

fn python_package(text: &str, location: &str) -> Option<Package> {
    let mut name = None;
    let mut version = None;
    let mut license = None;
    for line in text.lines() {
        if line.is_empty() {
            break; // headers end at the first blank line; the long description follows
        }
        if let Some((k, v)) = line.split_once(':') {
            match k {
                "Name" => name = Some(v.trim().to_string()),
                "Version" => version = Some(v.trim().to_string()),
                "License-Expression" => license = Some(v.trim().to_string()),
                "License" if license.is_none() && !v.trim().is_empty() && v.trim() != "UNKNOWN" => {
                    license = Some(v.trim().lines().next().unwrap_or_default().to_string())
                }
                _ => {}
            }
        }
    }
    Some(Package::language(
        PackageKind::Python,
        &name?,
        &version?,
        location,
        license,
    ))
}

fn npm_package(bytes: &[u8], location: &str) -> Option<Package> {
    #[derive(Deserialize)]
    struct PackageJson {
        name: Option<String>,
        version: Option<String>,
        license: Option<serde_json::Value>,
        private: Option<bool>,
    }
    let pj: PackageJson = serde_json::from_slice(bytes).ok()?;
    if pj.private == Some(true) {
        return None;
    }
    let license = match pj.license {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Object(o)) => {
            o.get("type").and_then(|t| t.as_str()).map(str::to_string)
        }
        _ => None,
    };
    Some(Package::language(
        PackageKind::Npm,
        &pj.name?,
        &pj.version?,
        location,
        license,
    ))
}

/// The registry crates of a `Cargo.lock`. With `root`, only that package's dependency closure
/// (e.g. `ztee-agent` out of a workspace lock file); workspace and path crates are first-party
/// and left out.
pub fn cargo_lock_packages(text: &str, location: &str, root: Option<&str>) -> Result<Vec<Package>> {
    #[derive(Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<LockPackage>,
    }
    #[derive(Deserialize)]
    struct LockPackage {
        name: String,
        version: String,
        source: Option<String>,
        #[serde(default)]
        dependencies: Vec<String>,
    }
    let lock: Lock = toml::from_str(text).map_err(|e| Error::malformed(location.to_string(), e))?;
    let index_of = |dep: &str| -> Option<usize> {
        let mut parts = dep.split(' ');
        let name = parts.next()?;
        let version = parts.next();
        lock.package
            .iter()
            .position(|p| p.name == name && version.is_none_or(|v| p.version == v))
    };
    let selected: Vec<usize> = match root {
        None => (0..lock.package.len()).collect(),
        Some(root) => {
            let start = lock
                .package
                .iter()
                .position(|p| p.name == root)
                .ok_or_else(|| {
                    Error::malformed(location.to_string(), format!("no package named {root:?}"))
                })?;
            let mut seen = BTreeSet::new();
            let mut pending = vec![start];
            while let Some(i) = pending.pop() {
                if seen.insert(i) {
                    pending.extend(
                        lock.package[i]
                            .dependencies
                            .iter()
                            .filter_map(|d| index_of(d)),
                    );
                }
            }
            seen.into_iter().collect()
        }
    };
    Ok(selected
        .into_iter()
        .map(|i| &lock.package[i])
        .filter(|p| {
            p.source
                .as_deref()
                .is_some_and(|s| s.starts_with("registry+"))
        })
        .map(|p| Package::language(PackageKind::Cargo, &p.name, &p.version, location, None))
        .collect())
}

/// Catalogs from a set of metadata files (paths relative to `/`).
pub fn catalog_files(files: &BTreeMap<PathBuf, Vec<u8>>) -> Result<Catalog> {
    let text = |p: &PathBuf| String::from_utf8_lossy(&files[p]).into_owned();
    let distro = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .map(PathBuf::from)
        .find(|p| files.contains_key(p))
        .map(|p| parse_os_release(&text(&p)));
    let deb_distro = distro.clone().unwrap_or_default();

    // Which dpkg package owns which path: from the `.list` files.
    let mut owner: HashMap<String, String> = HashMap::new();
    for path in files.keys().filter(|p| p.starts_with("var/lib/dpkg/info")) {
        let pkg = path
            .file_stem()
            .map(|s| {
                s.to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default();
        for line in text(path).lines() {
            let owned = line.trim().trim_start_matches('/');
            if owned.contains(".dist-info")
                || owned.contains(".egg-info")
                || owned.contains("node_modules")
            {
                owner.insert(owned.to_string(), pkg.clone());
            }
        }
    }

    let mut packages = Vec::new();
    for (path, bytes) in files {
        let location = path.to_string_lossy().into_owned();
        let s = location.as_str();
        if s == "var/lib/dpkg/status" || s.starts_with("var/lib/dpkg/status.d/") {
            packages.extend(dpkg_packages(
                &String::from_utf8_lossy(bytes),
                s,
                &deb_distro,
            ));
        } else if s.ends_with("/METADATA") || s.ends_with("/PKG-INFO") {
            if let Some(mut p) = python_package(&String::from_utf8_lossy(bytes), s) {
                let dir = path
                    .parent()
                    .map(|d| d.to_string_lossy().into_owned())
                    .unwrap_or_default();
                p.owned_by_deb = owner
                    .get(&dir)
                    .or_else(|| owner.get(s))
                    .cloned()
                    // Debian's python3-* packages install to /usr/lib/python3/dist-packages,
                    // pip never does; trust that convention when the .list files are gone.
                    .or_else(|| {
                        s.starts_with("usr/lib/python3/dist-packages/")
                            .then(|| "dpkg".to_string())
                    });
                packages.push(p);
            }
        } else if s.ends_with("/package.json") {
            if let Some(mut p) = npm_package(bytes, s) {
                p.owned_by_deb = owner.get(s).cloned();
                packages.push(p);
            }
        } else if s.ends_with("/Cargo.lock") {
            match cargo_lock_packages(&String::from_utf8_lossy(bytes), s, None) {
                Ok(found) => packages.extend(found),
                Err(e) => tracing::warn!(path = s, error = %e, "unreadable Cargo.lock skipped"),
            }
        }
    }
    packages.sort_by(|a, b| {
        (a.kind, &a.name, &a.version, &a.location).cmp(&(b.kind, &b.name, &b.version, &b.location))
    });
    Ok(Catalog {
        subject: String::new(),
        digest: None,
        distro,
        packages,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cargo_lock_closure_keeps_only_the_roots_registry_crates() {
        let lock = r#"
version = 4
[[package]]
name = "agent"
version = "0.1.0"
dependencies = ["wire", "libc"]
[[package]]
name = "wire"
version = "0.1.0"
dependencies = ["serde 1.0.200"]
[[package]]
name = "serde"
version = "1.0.200"
source = "registry+https://github.com/rust-lang/crates.io-index"
[[package]]
name = "libc"
version = "0.2.150"
source = "registry+https://github.com/rust-lang/crates.io-index"
[[package]]
name = "tokio"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;
        let pkgs = cargo_lock_packages(lock, "Cargo.lock", Some("agent")).unwrap();
        let names: BTreeSet<_> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["libc", "serde"].into_iter().collect());
        assert_eq!(
            cargo_lock_packages(lock, "Cargo.lock", None).unwrap().len(),
            3
        );
        assert!(cargo_lock_packages(lock, "Cargo.lock", Some("nope")).is_err());
    }
}
