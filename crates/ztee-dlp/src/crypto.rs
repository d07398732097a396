//! Keyed hashing (PCI DSS 3.5.1.1: a hash of a PAN must be keyed) and authenticated encryption for
//! the `hash` and `encrypt` operators. Key material is zeroized on drop and never printed.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::DlpError;

const MIN_HMAC_KEY: usize = 16;
const NONCE_LEN: usize = 12;

/// HMAC-SHA-256 with a secret key: the same value always gives the same digest, and nobody
/// without the key can test guesses (a 16-digit PAN has too little entropy for a plain hash).
#[derive(Clone)]
pub struct KeyedHasher {
    /// Keyed once at construction; cloned per digest.
    mac: Hmac<Sha256>,
}

impl KeyedHasher {
    pub fn new(key: &[u8]) -> Result<KeyedHasher, DlpError> {
        if key.len() < MIN_HMAC_KEY {
            return Err(DlpError::InvalidKey {
                operator: "hash",
                reason: format!("{} bytes, at least {MIN_HMAC_KEY} needed", key.len()),
            });
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| DlpError::InvalidKey {
            operator: "hash",
            reason: "rejected by HMAC".to_string(),
        })?;
        Ok(KeyedHasher { mac })
    }

    fn mac(&self) -> Hmac<Sha256> {
        self.mac.clone()
    }

    /// Lower-case hex HMAC-SHA-256 of `data`.
    pub fn hash_hex(&self, data: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The keyed hash of a PAN as written anywhere: only its digits count, so `4111 1111 ...`
    /// and `4111111...` hash alike.
    pub fn hash_pan(&self, pan: &str) -> String {
        self.hash_hex(digits_of(pan).as_bytes())
    }

    /// Constant-time check that `hex_digest` is the keyed hash of `data`.
    pub fn verify(&self, data: &[u8], hex_digest: &str) -> bool {
        let Ok(expected) = hex::decode(hex_digest) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(data);
        mac.verify_slice(&expected).is_ok()
    }
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHasher([key redacted])")
    }
}

/// Digits of a card number as written (decimal digits of any script), in ASCII.
pub(crate) fn digits_of(s: &str) -> String {
    s.chars()
        .filter_map(decimal_value)
        .filter_map(|d| char::from_digit(d, 10))
        .collect()
}

/// The value of a decimal digit of any script (ASCII, full-width, Arabic-Indic...): the same
/// digits the detector reads a card number from.
pub(crate) fn decimal_value(c: char) -> Option<u32> {
    crate::detect::chars::nd_value(c).map(u32::from)
}

/// An AES-GCM key (128 or 256 bit). Ciphertexts are URL-safe base64 of nonce || ciphertext || tag.
#[derive(Clone)]
pub struct EncryptionKey {
    key: Zeroizing<Vec<u8>>,
}

impl EncryptionKey {
    pub fn new(key: &[u8]) -> Result<EncryptionKey, DlpError> {
        if key.len() != 16 && key.len() != 32 {
            return Err(DlpError::InvalidKey {
                operator: "encrypt",
                reason: format!("{} bytes; AES-GCM needs 16 or 32", key.len()),
            });
        }
        Ok(EncryptionKey {
            key: Zeroizing::new(key.to_vec()),
        })
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<String, DlpError> {
        let fail = || DlpError::InvalidKey {
            operator: "encrypt",
            reason: "encryption failed".to_string(),
        };
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = if self.key.len() == 32 {
            Aes256Gcm::new_from_slice(&self.key)
                .map_err(|_| fail())?
                .encrypt(&nonce, plaintext.as_bytes())
        } else {
            Aes128Gcm::new_from_slice(&self.key)
                .map_err(|_| fail())?
                .encrypt(&nonce, plaintext.as_bytes())
        }
        .map_err(|_| fail())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// `None` when `encoded` is not a ciphertext made with this key (tampered, truncated, other
    /// key): the caller reports where.
    pub fn decrypt(&self, encoded: &str) -> Option<String> {
        let raw = URL_SAFE_NO_PAD.decode(encoded.trim()).ok()?;
        if raw.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).ok()?);
        let nonce = &nonce;
        let plain = if self.key.len() == 32 {
            Aes256Gcm::new_from_slice(&self.key)
                .ok()?
                .decrypt(nonce, ciphertext)
        } else {
            Aes128Gcm::new_from_slice(&self.key)
                .ok()?
                .decrypt(nonce, ciphertext)
        }
        .ok()?;
        String::from_utf8(plain).ok()
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([key redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hash_is_stable_keyed_and_ignores_separators() {
        let h = KeyedHasher::new(b"0123456789abcdef").unwrap_or_else(|e| panic!("{e}"));
        let other = KeyedHasher::new(b"fedcba9876543210").unwrap_or_else(|e| panic!("{e}"));
        let a = h.hash_pan("4111 1111 1111 1111");
        assert_eq!(a, h.hash_pan("4111-1111-1111-1111"));
        assert_ne!(a, other.hash_pan("4111 1111 1111 1111"));
        assert_eq!(a.len(), 64);
        assert!(h.verify(b"4111111111111111", &a));
        assert!(!h.verify(b"4111111111111112", &a));
        assert!(KeyedHasher::new(b"short").is_err());
        assert!(!format!("{h:?}").contains("0123"));
    }

    #[test]
    fn encryption_round_trips_and_detects_tampering() {
        for len in [16, 32] {
            let k = EncryptionKey::new(&vec![7u8; len]).unwrap_or_else(|e| panic!("{e}"));
            let c = k
                .encrypt("4111111111111111")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.contains("4111"));
            assert_eq!(k.decrypt(&c).as_deref(), Some("4111111111111111"));
            let mut bad = c.clone().into_bytes();
            bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
            assert_eq!(k.decrypt(&String::from_utf8_lossy(&bad)), None);
        }
        assert!(EncryptionKey::new(&[0u8; 24]).is_err());
    }
}
