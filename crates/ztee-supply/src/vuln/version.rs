//! Version ordering per ecosystem: dpkg (epochs, `~`), PEP 440 for PyPI, SemVer for crates.io
//! and npm. A version that does not parse in its ecosystem compares as unknown, never as equal.

use std::cmp::Ordering;
use std::str::FromStr;

/// The ecosystems ztee matches, by OSV's `affected[].package.ecosystem` naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Dpkg,
    Pep440,
    SemVer,
}

impl Scheme {
    /// The ordering OSV uses for an ecosystem (`Debian:12` → dpkg).
    pub fn for_ecosystem(ecosystem: &str) -> Option<Scheme> {
        match ecosystem.split(':').next().unwrap_or_default() {
            "Debian" | "Ubuntu" => Some(Scheme::Dpkg),
            "PyPI" => Some(Scheme::Pep440),
            "crates.io" | "npm" => Some(Scheme::SemVer),
            _ => None,
        }
    }

    pub fn compare(self, a: &str, b: &str) -> Option<Ordering> {
        match self {
            Scheme::Dpkg => dpkg_compare(a, b),
            Scheme::Pep440 => {
                let a = pep440_rs::Version::from_str(a.trim()).ok()?;
                let b = pep440_rs::Version::from_str(b.trim()).ok()?;
                Some(a.cmp(&b))
            }
            Scheme::SemVer => Some(semver_lenient(a)?.cmp(&semver_lenient(b)?)),
        }
    }
}

/// SemVer, also accepting `1.2` and `v1.2.3` as crates.io and npm data sometimes write them.
pub fn semver_lenient(s: &str) -> Option<semver::Version> {
    let s = s.trim().trim_start_matches('v');
    if let Ok(v) = semver::Version::parse(s) {
        return Some(v);
    }
    let (core, rest) = match s.find(['-', '+']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let padded = format!(
        "{}{}",
        [parts.as_slice(), &["0", "0", "0"][..3 - parts.len()]]
            .concat()
            .join("."),
        rest
    );
    semver::Version::parse(&padded).ok()
}

struct DpkgVersion<'a> {
    epoch: u64,
    upstream: &'a str,
    revision: &'a str,
}

fn parse_dpkg(s: &str) -> Option<DpkgVersion<'_>> {
    let s = s.trim();
    let (epoch, rest) = match s.split_once(':') {
        Some((e, rest)) => (e.parse().ok()?, rest),
        None => (0, s),
    };
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, r),
        None => (rest, ""),
    };
    if upstream.is_empty() || !upstream.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b'-' | b':');
    if !upstream.bytes().all(allowed)
        || !revision
            .bytes()
            .all(|b| allowed(b) && b != b'-' && b != b':')
    {
        return None;
    }
    Some(DpkgVersion {
        epoch,
        upstream,
        revision,
    })
}

/// dpkg's character order: `~` sorts before everything (even the end), then the end of the
/// string and digits, then letters, then everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's `verrevcmp`, from `lib/dpkg/version.c`'s documented algorithm.
fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

pub fn dpkg_compare(a: &str, b: &str) -> Option<Ordering> {
    let a = parse_dpkg(a)?;
    let b = parse_dpkg(b)?;
    Some(
        a.epoch
            .cmp(&b.epoch)
            .then_with(|| verrevcmp(a.upstream, b.upstream))
            .then_with(|| verrevcmp(a.revision, b.revision)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_ordering_matches_dpkg() {
        // Cases checked against `dpkg --compare-versions`.
        let cases = [
            ("1.0", "1.0", Equal),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc1~1", Greater),
            ("3.0.11-1~deb12u1", "3.0.11-1~deb12u2", Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ("3.0.11-1", "3.0.9-1", Greater),
            ("1.2.3a", "1.2.3", Greater),
            ("1.2.3+dfsg", "1.2.3", Greater),
            ("1.2.3.dfsg-1", "1.2.3-1", Greater),
            ("1:1.2.13.dfsg-1", "1:1.2.11.dfsg-2+deb11u2", Greater),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("0", "0.1", Less),
            ("1.0-0", "1.0", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(dpkg_compare(a, b), Some(want), "{a} vs {b}");
            assert_eq!(dpkg_compare(b, a), Some(want.reverse()), "{b} vs {a}");
        }
        assert_eq!(dpkg_compare("abc", "1.0"), None);
        assert_eq!(dpkg_compare("x:1.0", "1.0"), None);
    }

    #[test]
    fn pep440_and_semver_orderings() {
        let p = Scheme::Pep440;
        assert_eq!(p.compare("2.19.0", "2.20.0"), Some(Less));
        assert_eq!(p.compare("1.26.17", "1.26.5"), Some(Greater));
        assert_eq!(p.compare("2.0.0rc1", "2.0.0"), Some(Less));
        assert_eq!(p.compare("1.0.post1", "1.0"), Some(Greater));
        assert_eq!(p.compare("1.0", "1.0.0"), Some(Equal));
        assert_eq!(p.compare("1!0.1", "2.0"), Some(Greater));
        let s = Scheme::SemVer;
        assert_eq!(s.compare("1.0.0-alpha", "1.0.0"), Some(Less));
        assert_eq!(s.compare("0.10.0", "0.9.9"), Some(Greater));
        assert_eq!(s.compare("4.17.15", "4.17.21"), Some(Less));
        assert_eq!(s.compare("1.2", "1.2.0"), Some(Equal));
        assert_eq!(s.compare("not-a-version", "1.0.0"), None);
        assert_eq!(Scheme::for_ecosystem("Debian:12"), Some(Scheme::Dpkg));
        assert_eq!(Scheme::for_ecosystem("Maven"), None);
    }
}
