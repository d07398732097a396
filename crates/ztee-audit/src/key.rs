//! The node signing key (Ed25519) that signs audit checkpoints.
//!
//! Generated on first use as `<data-dir>/keys/node-ed25519.pem` (PKCS#8, mode 0600) with its
//! public half beside it as `node-ed25519.pub.pem` (SubjectPublicKeyInfo), so auditors can verify
//! a copied log with only the public file.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroize as _;

use crate::{AuditError, ContentKey};

pub const PRIVATE_KEY_FILE: &str = "node-ed25519.pem";
pub const PUBLIC_KEY_FILE: &str = "node-ed25519.pub.pem";

/// The node's private signing key.
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, only its public fingerprint.
        write!(f, "NodeKey({})", self.public().key_id())
    }
}

impl NodeKey {
    /// The key audit content digests are made under (see [`ContentKey`]), derived from this
    /// node key so that it needs no file of its own and changes when the node key does.
    pub fn content_key(&self) -> ContentKey {
        ContentKey::derive(self.signing.as_bytes())
    }

    /// `<data_dir>/keys`, where the key pair lives.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("keys")
    }

    /// Loads the node key from `<data_dir>/keys`, generating it (mode 0600) if it does not exist.
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, AuditError> {
        let dir = Self::dir(data_dir);
        let private_path = dir.join(PRIVATE_KEY_FILE);
        match fs::read_to_string(&private_path) {
            Ok(mut pem) => {
                let meta =
                    fs::metadata(&private_path).map_err(|e| AuditError::io(&private_path, e))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    pem.zeroize();
                    return Err(AuditError::KeyPermissions {
                        path: private_path,
                        mode: meta.permissions().mode() & 0o777,
                    });
                }
                let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| AuditError::BadKey {
                    path: private_path.clone(),
                    reason: e.to_string(),
                });
                pem.zeroize();
                let key = NodeKey { signing: signing? };
                key.write_public(&dir)?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::generate(&dir),
            Err(e) => Err(AuditError::io(&private_path, e)),
        }
    }

    fn generate(dir: &Path) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| AuditError::io(dir, e))?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| AuditError::Random(e.to_string()))?;
        let signing = SigningKey::from_bytes(&seed);
        seed.zeroize();
        let pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuditError::Random(format!("encoding the new key: {e}")))?;
        let private_path = dir.join(PRIVATE_KEY_FILE);
        write_new_file(&private_path, pem.as_bytes(), 0o600)?;
        let key = NodeKey { signing };
        key.write_public(dir)?;
        tracing::info!(key_id = %key.public().key_id(), path = %private_path.display(), "generated node signing key");
        Ok(key)
    }

    fn write_public(&self, dir: &Path) -> Result<(), AuditError> {
        let path = dir.join(PUBLIC_KEY_FILE);
        let pem = self.public().to_pem()?;
        if fs::read_to_string(&path).ok().as_deref() == Some(pem.as_str()) {
            return Ok(());
        }
        write_new_file(&path, pem.as_bytes(), 0o644)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            verifying: self.signing.verifying_key(),
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// The public half, used to verify checkpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    verifying: VerifyingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Reads a SubjectPublicKeyInfo PEM file (`node-ed25519.pub.pem`).
    pub fn from_pem_file(path: &Path) -> Result<Self, AuditError> {
        let pem = fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
        let verifying =
            VerifyingKey::from_public_key_pem(&pem).map_err(|e| AuditError::BadKey {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(PublicKey { verifying })
    }

    /// The node's public key from `<data_dir>/keys`.
    pub fn from_data_dir(data_dir: &Path) -> Result<Self, AuditError> {
        Self::from_pem_file(&NodeKey::dir(data_dir).join(PUBLIC_KEY_FILE))
    }

    pub fn to_pem(&self) -> Result<String, AuditError> {
        self.verifying
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| AuditError::Random(format!("encoding the public key: {e}")))
    }

    /// `ed25519:` and the first 16 hex digits of SHA-256 over the raw public key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.verifying.as_bytes());
        format!("ed25519:{}", hex::encode(&digest[..8]))
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.verifying.verify(message, &signature).is_ok()
    }
}

/// Writes `bytes` to `path` atomically: a temp file with `mode` in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(AuditError::io(path, e));
    }
    Ok(())
}
