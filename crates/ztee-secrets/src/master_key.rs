//! The master key that encrypts the built-in store: 32 bytes, from a file, an environment
//! variable or a KMS-style command that prints it (e.g. `aws kms decrypt ...`, `vault read ...`).

use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::SecretError;

/// Where the master key comes from. The key text is 64 hex digits or the base64 of 32 bytes;
/// surrounding whitespace is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MasterKeySource {
    /// A file readable by the gateway only (mode 0600 or stricter is required).
    File(PathBuf),
    /// An environment variable holding the key text.
    Env(String),
    /// A program and its arguments; its standard output is the key text.
    Command(Vec<String>),
}

/// A loaded master key. Zeroed on drop; only its key id (a hash prefix) is ever shown.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {})", self.key_id())
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        Self::from_bytes(bytes)
    }

    /// The key as text (hex), for writing a new key file.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.bytes))
    }

    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let decoded: Zeroizing<Vec<u8>> =
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                Zeroizing::new(hex::decode(text).map_err(|_| bad_format())?)
            } else {
                Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|_| bad_format())?,
                )
            };
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| bad_format())?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn load(source: &MasterKeySource) -> Result<Self, SecretError> {
        match source {
            MasterKeySource::File(path) => {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(path).map_err(|e| {
                    SecretError::MasterKey(format!("key file {}: {e}", path.display()))
                })?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(SecretError::MasterKey(format!(
                        "key file {} is readable by group or others (mode {:o}); chmod 600 it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    )));
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    SecretError::MasterKey(format!("key file {}: {e}", path.display()))
                })?);
                Self::parse(&text).map_err(|e| within(e, &format!("key file {}", path.display())))
            }
            MasterKeySource::Env(var) => {
                let text = Zeroizing::new(std::env::var(var).map_err(|_| {
                    SecretError::MasterKey(format!("environment variable {var} is not set"))
                })?);
                Self::parse(&text).map_err(|e| within(e, &format!("environment variable {var}")))
            }
            MasterKeySource::Command(argv) => {
                let (program, args) = argv
                    .split_first()
                    .ok_or_else(|| SecretError::MasterKey("the key command is empty".into()))?;
                let out = std::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| SecretError::MasterKey(format!("key command {program}: {e}")))?;
                let stdout = Zeroizing::new(out.stdout);
                if !out.status.success() {
                    return Err(SecretError::MasterKey(format!(
                        "key command {program} failed ({})",
                        out.status
                    )));
                }
                let text = std::str::from_utf8(&stdout).map_err(|_| {
                    SecretError::MasterKey(format!(
                        "key command {program} printed non-UTF-8 output"
                    ))
                })?;
                Self::parse(text).map_err(|e| within(e, &format!("key command {program}")))
            }
        }
    }

    /// A short public identifier of the key (not reversible), stored next to the ciphertexts so
    /// a wrong key is reported as such instead of as corruption.
    pub fn key_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"ztee-secrets master key id v1\0");
        h.update(*self.bytes);
        hex::encode(&h.finalize()[..8])
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

fn bad_format() -> SecretError {
    SecretError::MasterKey(
        "not a 256-bit key: give 64 hex digits or the base64 of 32 bytes (`ztee secret keygen` makes one)"
            .into(),
    )
}

fn within(e: SecretError, place: &str) -> SecretError {
    match e {
        SecretError::MasterKey(m) => SecretError::MasterKey(format!("{place}: {m}")),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_forms_give_the_same_key() {
        let key = MasterKey::generate();
        let hex_text = key.to_text();
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.bytes());
        assert_eq!(MasterKey::parse(&hex_text).unwrap().key_id(), key.key_id());
        assert_eq!(
            MasterKey::parse(&format!(" {b64}\n")).unwrap().key_id(),
            key.key_id()
        );
        assert!(MasterKey::parse("abcd").is_err());
        assert!(MasterKey::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn command_source_reads_stdout_and_reports_failures() {
        let key = MasterKey::generate();
        let cmd = MasterKeySource::Command(vec!["echo".into(), key.to_text().to_string()]);
        assert_eq!(MasterKey::load(&cmd).unwrap().key_id(), key.key_id());
        let failing = MasterKeySource::Command(vec!["false".into()]);
        let err = MasterKey::load(&failing).unwrap_err().to_string();
        assert!(err.contains("key command false failed"), "{err}");
    }
}
