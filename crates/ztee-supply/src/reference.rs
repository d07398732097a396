//! Image references: `[registry/]repository[:tag][@sha256:...]`, as docker and cosign write them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A parsed image reference. Without a registry it names an image in the local store only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reference {
    pub registry: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// `registry/repository` (or just `repository` for a local name): what a tag is relative to.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The tag, or `latest` when neither a tag nor a digest was given.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// The same repository with another tag (used for cosign's `sha256-<hex>.sig` tags).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    pub fn with_digest(&self, digest: &Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }
}

fn valid_component(c: &str) -> bool {
    // distribution's path-component grammar: lowercase alphanumerics separated by . _ __ or -
    !c.is_empty()
        && c.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::invalid("image reference", s, reason);
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the part after @ must be sha256:<64 hex>"))?,
                ),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/', so `host:5000/repo` is not a tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad(
                    "a tag is 1-128 characters of letters, digits, '.', '_' or '-'",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), remainder)
            }
            _ => (None, name),
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - separated by '/'",
            ));
        }
        if let Some(r) = &registry {
            if r.is_empty()
                || r.bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
            {
                return Err(bad("the registry host is not valid"));
            }
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Reference {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Reference> for String {
    fn from(r: Reference) -> String {
        r.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_references() {
        let r: Reference = "localhost:5000/vm/python:1".parse().unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(r.repository, "vm/python");
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r: Reference = "python".parse().unwrap();
        assert_eq!(
            (r.registry.as_deref(), r.tag_or_latest()),
            (None, Some("latest"))
        );
        let d = Digest::of(b"x");
        let r: Reference = format!("registry.example/vm/python@{d}").parse().unwrap();
        assert_eq!(r.digest.as_ref(), Some(&d));
        assert_eq!(r.tag_or_latest(), None);
        assert_eq!(r.to_string(), format!("registry.example/vm/python@{d}"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Python:1",
            "python:",
            "python:bad tag",
            "a//b",
            "python@sha256:12",
            "-x",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
