//! Secret and environment variable names, parsed at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SecretError;

/// A secret's name: 1-128 characters of `A-Z a-z 0-9 _ . -`, starting with a letter or `_`.
/// Names become file names under `/run/secrets/` and rule ids in DLP findings, so nothing that
/// could be a path or need quoting is allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(name: &str) -> Result<Self, SecretError> {
        let invalid = |reason| SecretError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > 128 {
            return Err(invalid("it is longer than 128 characters"));
        }
        let first = name.as_bytes()[0];
        if !(first.is_ascii_alphabetic() || first == b'_') {
            return Err(invalid("it must start with a letter or `_`"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(invalid(
                "only letters, digits, `_`, `.` and `-` are allowed",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SecretName {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvVarName(String);

impl EnvVarName {
    pub fn parse(name: &str) -> Result<Self, SecretError> {
        let invalid = |reason| SecretError::InvalidEnvVar {
            name: name.chars().take(64).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > 128 {
            return Err(invalid("it is longer than 128 characters"));
        }
        if name.as_bytes()[0].is_ascii_digit() {
            return Err(invalid("it must not start with a digit"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid("only letters, digits and `_` are allowed"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvVarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One secret a sandbox asks for: always the file `/run/secrets/NAME`, and the environment
/// variable `env` of its commands when given. Written `NAME` or `NAME=ENVVAR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRequest {
    pub name: SecretName,
    pub env: Option<EnvVarName>,
}

/// Where injected secrets appear in the guest (a tmpfs, readable by the sandbox user only).
pub const GUEST_SECRETS_DIR: &str = "/run/secrets";

impl SecretRequest {
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        match text.split_once('=') {
            Some((name, env)) => Ok(Self {
                name: SecretName::parse(name)?,
                env: Some(EnvVarName::parse(env)?),
            }),
            None => Ok(Self {
                name: SecretName::parse(text)?,
                env: None,
            }),
        }
    }

    /// The file the value is written to inside the guest.
    pub fn guest_path(&self) -> String {
        format!("{GUEST_SECRETS_DIR}/{}", self.name)
    }
}

/// The written form, `NAME` or `NAME=ENVVAR`, which [`SecretRequest::parse`] reads back.
impl fmt::Display for SecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(var) => write!(f, "{}={var}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl FromStr for SecretRequest {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for SecretRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_written_as_they_are_read() {
        for text in ["DB_PASSWORD", "DB_PASSWORD=PGPASSWORD"] {
            assert_eq!(SecretRequest::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn names_are_path_safe() {
        for ok in ["DB_PASSWORD", "stripe.live-key", "_x", "a1"] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "1abc",
            "a b",
            "x\0",
            "é",
            &"a".repeat(129),
        ] {
            assert!(SecretName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_parse_name_and_env() {
        let r = SecretRequest::parse("DB_PASSWORD=PGPASSWORD").unwrap();
        assert_eq!(r.name.as_str(), "DB_PASSWORD");
        assert_eq!(r.env.unwrap().as_str(), "PGPASSWORD");
        assert_eq!(
            SecretRequest::parse("K").unwrap().guest_path(),
            "/run/secrets/K"
        );
        assert!(SecretRequest::parse("K=").is_err());
        assert!(SecretRequest::parse("K=A-B").is_err());
        assert!(SecretRequest::parse("=A").is_err());
    }
}
