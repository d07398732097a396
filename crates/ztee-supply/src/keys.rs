//! Signing keys: ECDSA P-256, the key type cosign generates. The private key is stored as an
//! encrypted PKCS#8 PEM (`ENCRYPTED PRIVATE KEY`, PBES2 with scrypt and AES-256-CBC), which
//! `openssl pkey` and `cosign import-key-pair` read too; the public key is a PKIX PEM
//! (`PUBLIC KEY`), the form cosign and Kyverno take.

use std::path::{Path, PathBuf};

pub use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::error::{write_atomic, Error, Result};

/// Shortest passphrase `generate` accepts; the scrypt cost slows guessing, it does not replace length.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// A passphrase, wiped from memory when dropped and never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(value: String) -> Passphrase {
        Passphrase(Zeroizing::new(value))
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// The environment variable a command reads a passphrase from before prompting for one.
pub const PASSPHRASE_ENV: &str = "ZTEE_KEY_PASSPHRASE";

/// Where `generate` put the key pair.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GeneratedKey {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    /// `sha256:` of the DER public key: a short, stable name for the key in reports and audits.
    pub key_id: String,
}

/// A stable identifier for a public key: the SHA-256 of its DER SubjectPublicKeyInfo.
pub fn key_id(key: &VerifyingKey) -> String {
    match key.to_public_key_der() {
        Ok(der) => format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes()))),
        Err(_) => "sha256:unknown".to_string(),
    }
}

pub fn public_key_pem(key: &VerifyingKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Key(format!("encoding public key: {e}")))
}

/// scrypt cost (log2 N) `generate` uses: 2^15 with r=8, p=1, the PKCS#8 default (32 MiB per try).
pub const DEFAULT_SCRYPT_LOG_N: u8 = 15;

/// Generates a key pair and writes `<out>.key` (mode 0600, encrypted) and `<out>.pub`.
/// Refuses to overwrite existing files.
pub fn generate(out: &Path, passphrase: &Passphrase) -> Result<GeneratedKey> {
    generate_with_cost(out, passphrase, DEFAULT_SCRYPT_LOG_N)
}

/// [`generate`] with another scrypt cost (at least 2^10). The cost is recorded in the key file,
/// so loading needs nothing but the passphrase; lower costs exist for tests, not for operators.
pub fn generate_with_cost(
    out: &Path,
    passphrase: &Passphrase,
    scrypt_log_n: u8,
) -> Result<GeneratedKey> {
    use rand_core::RngCore;
    if passphrase.0.chars().count() < MIN_PASSPHRASE_LEN {
        return Err(Error::Key(format!(
            "the passphrase must be at least {MIN_PASSPHRASE_LEN} characters"
        )));
    }
    if !(10..=20).contains(&scrypt_log_n) {
        return Err(Error::Key(
            "the scrypt cost must be between 2^10 and 2^20".into(),
        ));
    }
    let private_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    for p in [&private_path, &public_path] {
        if p.exists() {
            return Err(Error::Key(format!(
                "{} already exists; not overwriting a key",
                p.display()
            )));
        }
    }
    let signing = SigningKey::random(&mut OsRng);
    let der = signing
        .to_pkcs8_der()
        .map_err(|e| Error::Key(format!("encoding private key: {e}")))?;
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_bytes())
        .map_err(|e| Error::Key(format!("encoding private key: {e}")))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut iv);
    let scrypt = pkcs8::pkcs5::scrypt::Params::new(scrypt_log_n, 8, 1, 32)
        .map_err(|e| Error::Key(format!("scrypt parameters: {e}")))?;
    let params = pkcs8::pkcs5::pbes2::Parameters::scrypt_aes256cbc(scrypt, &salt, &iv)
        .map_err(|e| Error::Key(format!("encryption parameters: {e}")))?;
    let encrypted = info
        .encrypt_with_params(params, passphrase.bytes())
        .map_err(|e| Error::Key(format!("encrypting private key: {e}")))?;
    let pem = encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| Error::Key(format!("encoding private key: {e}")))?;
    write_private(&private_path, pem.as_bytes())?;
    let verifying = *signing.verifying_key();
    write_atomic(&public_path, public_key_pem(&verifying)?.as_bytes())?;
    Ok(GeneratedKey {
        private_key: private_path,
        public_key: public_path,
        key_id: key_id(&verifying),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating key file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("writing key", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming key into place", path, e.error))?;
    Ok(())
}

/// Loads an encrypted private key. A wrong passphrase and a damaged file both end here with an
/// error that names the file but says nothing about the key.
pub fn load_signing_key(path: &Path, passphrase: &Passphrase) -> Result<SigningKey> {
    let pem = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| Error::io("reading private key", path, e))?,
    );
    if !pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(Error::Key(format!(
            "{} is not an encrypted PKCS#8 private key (expected `-----BEGIN ENCRYPTED PRIVATE KEY-----`)",
            path.display()
        )));
    }
    SigningKey::from_pkcs8_encrypted_pem(&pem, passphrase.bytes()).map_err(|_| {
        Error::Key(format!(
            "cannot decrypt {}: wrong passphrase, or not an ECDSA P-256 key",
            path.display()
        ))
    })
}

/// Parses a PKIX `PUBLIC KEY` PEM.
pub fn parse_public_key(pem: &str, origin: &str) -> Result<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
        Error::Key(format!(
            "{origin}: not an ECDSA P-256 public key in PEM (PUBLIC KEY): {e}"
        ))
    })
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| Error::io("reading public key", path, e))?;
    parse_public_key(&pem, &path.display().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer, Verifier};

    #[test]
    fn generates_encrypted_key_and_rejects_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("signing");
        let pass = Passphrase::new("correct horse battery".into());
        let generated = generate_with_cost(&out, &pass, 10).unwrap();
        let text = std::fs::read_to_string(&generated.private_key).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&generated.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let key = load_signing_key(&generated.private_key, &pass).unwrap();
        let public = load_verifying_key(&generated.public_key).unwrap();
        let sig: p256::ecdsa::Signature = key.sign(b"payload");
        assert!(public.verify(b"payload", &sig).is_ok());

        let wrong = load_signing_key(
            &generated.private_key,
            &Passphrase::new("wrong passphrase".into()),
        );
        let msg = wrong.unwrap_err().to_string();
        assert!(msg.contains("wrong passphrase"), "{msg}");
        assert!(
            generate_with_cost(&out, &pass, 10).is_err(),
            "must not overwrite"
        );
        assert!(generate(&dir.path().join("short"), &Passphrase::new("short".into())).is_err());
    }
}
