//! The built-in store: one JSON file of AES-256-GCM ciphertexts under the master key.
//!
//! Each value has its own random 96-bit nonce and is bound to its name as associated data, so a
//! ciphertext moved to another name fails to decrypt. The file records the master key's id,
//! so a wrong key is reported as a wrong key. Every change is written to a temporary file
//! (mode 0600), synced and renamed over the store, under an exclusive lock on `<store>.lock`:
//! a crash or a concurrent writer never leaves a half-written or mixed store.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{MasterKey, SecretError, SecretName, SecretValue};

const FORMAT: &str = "ztee-secrets/v1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: String,
    key_id: String,
    secrets: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    nonce: String,
    ciphertext: String,
    /// Seconds since the Unix epoch of the last `put`.
    updated_at: u64,
}

/// What `ls` shows about a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredSecret {
    pub name: String,
    pub updated_at: u64,
}

pub struct LocalStore {
    path: PathBuf,
    key: MasterKey,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.path)
            .field("key", &self.key)
            .finish()
    }
}

impl LocalStore {
    /// Opens the store at `path` (created on the first `put`). Fails at once when the file
    /// exists and was written under another master key.
    pub fn open(path: impl Into<PathBuf>, key: MasterKey) -> Result<Self, SecretError> {
        let store = Self {
            path: path.into(),
            key,
        };
        store.read()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_id(&self) -> String {
        self.key.key_id()
    }

    pub fn put(&self, name: &SecretName, value: &SecretValue) -> Result<(), SecretError> {
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let entry = seal(&self.key, name.as_str(), value.expose())?;
        file.secrets.insert(name.as_str().to_owned(), entry);
        self.write(&file)
    }

    pub fn get(&self, name: &SecretName) -> Result<SecretValue, SecretError> {
        let file = self.read()?;
        let entry = file
            .secrets
            .get(name.as_str())
            .ok_or_else(|| SecretError::NotFound(name.to_string()))?;
        self.open_entry(name.as_str(), entry)
    }

    pub fn contains(&self, name: &SecretName) -> Result<bool, SecretError> {
        Ok(self.read()?.secrets.contains_key(name.as_str()))
    }

    pub fn list(&self) -> Result<Vec<StoredSecret>, SecretError> {
        Ok(self
            .read()?
            .secrets
            .iter()
            .map(|(name, e)| StoredSecret {
                name: name.clone(),
                updated_at: e.updated_at,
            })
            .collect())
    }

    /// Removes a secret; fails with `NotFound` when there is none of that name.
    pub fn remove(&self, name: &SecretName) -> Result<(), SecretError> {
        let _lock = self.lock()?;
        let mut file = self.read()?;
        if file.secrets.remove(name.as_str()).is_none() {
            return Err(SecretError::NotFound(name.to_string()));
        }
        self.write(&file)
    }

    /// Re-encrypts every secret under `new_key` in one atomic replacement of the store file,
    /// and returns the store opened with the new key. Nothing changes when any value fails to
    /// decrypt under the current key. Returns the number of secrets re-encrypted.
    pub fn rotate_key(self, new_key: MasterKey) -> Result<(Self, usize), SecretError> {
        let count;
        {
            let _lock = self.lock()?;
            let file = self.read()?;
            let mut rotated = StoreFile {
                format: FORMAT.into(),
                key_id: new_key.key_id(),
                secrets: BTreeMap::new(),
            };
            for (name, entry) in &file.secrets {
                let value = self.open_entry(name, entry)?;
                let mut sealed = seal(&new_key, name, value.expose())?;
                sealed.updated_at = entry.updated_at;
                rotated.secrets.insert(name.clone(), sealed);
            }
            count = rotated.secrets.len();
            self.write(&rotated)?;
        }
        Ok((
            Self {
                path: self.path,
                key: new_key,
            },
            count,
        ))
    }

    fn open_entry(&self, name: &str, entry: &Entry) -> Result<SecretValue, SecretError> {
        let corrupt = || SecretError::Decrypt {
            name: name.to_owned(),
            path: self.path.clone(),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.decode(&entry.nonce).map_err(|_| corrupt())?;
        let ciphertext = b64.decode(&entry.ciphertext).map_err(|_| corrupt())?;
        let nonce: [u8; 12] = nonce.as_slice().try_into().map_err(|_| corrupt())?;
        let cipher = Aes256Gcm::new_from_slice(self.key.bytes()).map_err(|_| corrupt())?;
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad(name),
                },
            )
            .map_err(|_| corrupt())?;
        SecretValue::new(plain)
    }

    fn read(&self) -> Result<StoreFile, SecretError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StoreFile {
                    format: FORMAT.into(),
                    key_id: self.key.key_id(),
                    secrets: BTreeMap::new(),
                })
            }
            Err(source) => {
                return Err(SecretError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| SecretError::Store {
            path: self.path.clone(),
            message: format!("not a ztee secret store: {e}"),
        })?;
        if file.format != FORMAT {
            return Err(SecretError::Store {
                path: self.path.clone(),
                message: format!("unknown format {:?} (expected {FORMAT})", file.format),
            });
        }
        if file.key_id != self.key.key_id() {
            return Err(SecretError::WrongMasterKey {
                path: self.path.clone(),
                store_key_id: file.key_id,
                given_key_id: self.key.key_id(),
            });
        }
        Ok(file)
    }

    fn write(&self, file: &StoreFile) -> Result<(), SecretError> {
        let io = |source| SecretError::Io {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(file).map_err(|e| SecretError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let temp = dir.join(format!(
            ".{}.tmp-{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            // Make the rename itself durable.
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(io)
    }

    /// An exclusive advisory lock held for one read-modify-write.
    fn lock(&self) -> Result<StoreLock, SecretError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SecretError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| SecretError::Io {
                path: lock_path.clone(),
                source,
            })?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns; it is released when `file`
        // is closed (when the returned guard drops).
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(SecretError::Io {
                path: lock_path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(StoreLock { _file: file })
    }
}

struct StoreLock {
    _file: std::fs::File,
}

fn aad(name: &str) -> Vec<u8> {
    let mut aad = FORMAT.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

fn seal(key: &MasterKey, name: &str, plain: &[u8]) -> Result<Entry, SecretError> {
    let cipher = Aes256Gcm::new_from_slice(key.bytes())
        .map_err(|_| SecretError::MasterKey("not a 256-bit key".into()))?;
    let mut nonce = [0u8; 12];
    rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain,
                aad: &aad(name),
            },
        )
        .map_err(|_| SecretError::MasterKey("encryption failed".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Entry {
        nonce: b64.encode(nonce),
        ciphertext: b64.encode(ciphertext),
        updated_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}
