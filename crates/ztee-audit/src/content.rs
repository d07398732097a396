//! Keyed digests of content the trail must not hold (code, commands, outputs, prompts).
//!
//! A plain SHA-256 of a short input is no protection: `echo 4111…` hashed without a key can be
//! found by trying every plausible card number (PCI DSS 3.5.1.1 asks for *keyed* hashes for this
//! reason). Content is therefore digested with HMAC-SHA-256 under a key derived from the node
//! key, so only a holder of that key can test a guess; the event stores the SHA-256 of that MAC.

use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Domain separation: this key is used for nothing else.
const CONTENT_KEY_INFO: &[u8] = b"ztee audit content digest v1";

/// The key content digests are made under. Derived from the node key; never stored or printed.
pub struct ContentKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

impl ContentKey {
    pub(crate) fn derive(secret: &[u8; 32]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        // A 32-byte output is far below HKDF-SHA-256's 8160-byte limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, secret).expand(CONTENT_KEY_INFO, key.as_mut());
        ContentKey { key }
    }

    /// Digest of one piece of content.
    pub fn digest(&self, content: &[u8]) -> [u8; 32] {
        let mut hasher = self.hasher();
        hasher.update(content);
        hasher.finalize()
    }

    /// For content that arrives in parts (argv, env, files; streamed output).
    pub fn hasher(&self) -> ContentHasher {
        // HMAC pads a short key with zeros to the hash's 64-byte block, so the 32-byte key
        // zero-padded is the same key, given in the infallible fixed-size form.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(self.key.as_ref());
        let mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(block.as_ref().into());
        ContentHasher { mac }
    }
}

/// An incremental keyed digest.
pub struct ContentHasher {
    mac: Hmac<Sha256>,
}

impl ContentHasher {
    pub fn update(&mut self, part: &[u8]) {
        self.mac.update(part);
    }

    pub fn finalize(self) -> [u8; 32] {
        self.mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_the_key_and_agree_in_parts() {
        let a = ContentKey::derive(&[1; 32]);
        let b = ContentKey::derive(&[2; 32]);
        let pan = b"echo 4111111111111111";
        assert_ne!(a.digest(pan), b.digest(pan));
        let mut parts = a.hasher();
        parts.update(b"echo ");
        parts.update(b"4111111111111111");
        assert_eq!(parts.finalize(), a.digest(pan));
        // Not the plain SHA-256 anyone could recompute.
        use sha2::Digest as _;
        let plain: [u8; 32] = Sha256::digest(pan).into();
        assert_ne!(a.digest(pan), plain);
        assert_eq!(format!("{a:?}"), "ContentKey(..)");
        // Same as HMAC over the 32-byte key given as a slice.
        let mut mac = Hmac::<Sha256>::new_from_slice(a.key.as_ref()).unwrap();
        mac.update(pan);
        assert_eq!(a.digest(pan), <[u8; 32]>::from(mac.finalize().into_bytes()));
    }
}
