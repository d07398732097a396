//! Package URLs (purl), in the form syft writes them.

use crate::sbom::{Package, PackageKind};

/// Percent-encodes everything but purl's unreserved characters (so `1:1.2` becomes `1%3A1.2`,
/// as syft writes Debian epochs).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `pkg:deb/debian/NAME@VER?arch=..&distro=debian-12&upstream=SRC` (qualifiers sorted, as the
/// purl spec's canonical form wants); the upstream carries `@version` when it differs.
pub fn deb(
    distro_id: &str,
    distro_version: Option<&str>,
    name: &str,
    version: &str,
    arch: Option<&str>,
    source: Option<(&str, &str)>,
) -> String {
    let mut qualifiers = Vec::new();
    if let Some(a) = arch {
        qualifiers.push(format!("arch={}", encode(a)));
    }
    if let Some(v) = distro_version {
        qualifiers.push(format!("distro={}", encode(&format!("{distro_id}-{v}"))));
    }
    if let Some((src, src_version)) = source {
        if src != name || src_version != version {
            let upstream = if src_version == version {
                src.to_string()
            } else {
                format!("{src}@{src_version}")
            };
            qualifiers.push(format!("upstream={}", encode(&upstream)));
        }
    }
    let mut purl = format!(
        "pkg:deb/{}/{}@{}",
        encode(distro_id),
        encode(name),
        encode(version)
    );
    if !qualifiers.is_empty() {
        purl.push('?');
        purl.push_str(&qualifiers.join("&"));
    }
    purl
}

/// PyPI names are normalized per PEP 503 (lowercase, runs of `-_.` become `-`).
pub fn normalize_pypi_name(name: &str) -> String {
    let mut out = String::new();
    let mut last_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.extend(c.to_lowercase());
            last_sep = false;
        }
    }
    out
}

pub fn for_package(kind: PackageKind, name: &str, version: &str) -> String {
    match kind {
        PackageKind::Python => format!(
            "pkg:pypi/{}@{}",
            encode(&normalize_pypi_name(name)),
            encode(version)
        ),
        PackageKind::Npm => match name.split_once('/') {
            Some((scope, n)) if scope.starts_with('@') => format!(
                "pkg:npm/{}/{}@{}",
                encode(scope),
                encode(n),
                encode(version)
            ),
            _ => format!("pkg:npm/{}@{}", encode(name), encode(version)),
        },
        PackageKind::Cargo => format!("pkg:cargo/{}@{}", encode(name), encode(version)),
        PackageKind::Deb => format!("pkg:deb/debian/{}@{}", encode(name), encode(version)),
    }
}

impl Package {
    /// A package of a language ecosystem found at `location`.
    pub fn language(
        kind: PackageKind,
        name: &str,
        version: &str,
        location: &str,
        license: Option<String>,
    ) -> Package {
        Package {
            kind,
            name: name.to_string(),
            version: version.to_string(),
            purl: for_package(kind, name, version),
            source: None,
            arch: None,
            license,
            location: location.to_string(),
            owned_by_deb: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_syft_style_purls() {
        assert_eq!(
            deb(
                "debian",
                Some("12"),
                "libssl3",
                "3.0.11-1~deb12u1",
                Some("amd64"),
                Some(("openssl", "3.0.11-1~deb12u1"))
            ),
            "pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64&distro=debian-12&upstream=openssl"
        );
        assert_eq!(
            deb(
                "debian",
                Some("12"),
                "zlib1g",
                "1:1.2.13.dfsg-1",
                Some("amd64"),
                Some(("zlib", "1:1.2.13.dfsg-1"))
            ),
            "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib"
        );
        assert_eq!(
            for_package(PackageKind::Npm, "@scope/pkg", "1.0.0"),
            "pkg:npm/%40scope/pkg@1.0.0"
        );
        assert_eq!(
            for_package(PackageKind::Python, "Foo_Bar", "1.0"),
            "pkg:pypi/foo-bar@1.0"
        );
    }
}
