//! Content digests (`sha256:<64 hex>`), the identity of every blob, manifest and image.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated SHA-256 content digest. Only `sha256` is accepted: it is what OCI registries and
/// cosign use, and accepting weaker algorithms would let an attacker pick the weakest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Digest {
            hex: hex::encode(hash),
        }
    }

    /// The 64 lowercase hex characters, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The tag cosign stores a signature (`.sig`) or attestation (`.att`) of this digest under.
    pub fn cosign_tag(&self, suffix: &str) -> String {
        format!("sha256-{}.{suffix}", self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            Error::invalid("digest", s, "expected the form sha256:<64 hex digits>")
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::invalid(
                "digest",
                s,
                "expected 64 lowercase hex digits after sha256:",
            ));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d.clone()));
        assert_eq!(
            d.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64))
            .parse::<Digest>()
            .is_err());
        assert_eq!(d.cosign_tag("sig"), format!("sha256-{}.sig", d.hex()));
    }
}
