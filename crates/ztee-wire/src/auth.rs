//! Session establishment.
//!
//! ```text
//! host  -> guest  Hello    { version, host_nonce }
//! guest -> host   HelloAck { version, guest_nonce, proof = HMAC(secret, "agent" | hn | gn) }
//! host  -> guest  Confirm  { proof = HMAC(secret, "host" | gn | hn) }
//! both            keys = HKDF-SHA256(secret, salt = hn | gn) -> one key per direction
//! ```
//! Fresh nonces on both sides make every session's keys unique, so frames recorded from one
//! session are useless in another.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub type Nonce = [u8; 32];

/// The per-VM secret both ends prove knowledge of. Never printed.
#[derive(Clone)]
pub struct BootSecret([u8; 32]);

impl BootSecret {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 64-hex-digit form the host hands the guest.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, label: &[u8], a: &Nonce, b: &Nonce) -> [u8; 32] {
        // HMAC accepts keys of any length, so construction cannot fail for a 32-byte key.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        mac.update(a);
        mac.update(b);
        mac.finalize().into_bytes().into()
    }

    /// What the agent sends to prove it holds the secret.
    pub fn agent_proof(&self, host_nonce: &Nonce, guest_nonce: &Nonce) -> [u8; 32] {
        self.mac(b"ztee-wire/1 agent", host_nonce, guest_nonce)
    }

    /// What the host sends to prove it holds the secret.
    pub fn host_proof(&self, host_nonce: &Nonce, guest_nonce: &Nonce) -> [u8; 32] {
        self.mac(b"ztee-wire/1 host", guest_nonce, host_nonce)
    }
}

impl std::fmt::Debug for BootSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootSecret(<redacted>)")
    }
}

/// Constant-time comparison of two proofs.
pub fn proofs_match(expected: &[u8; 32], got: &[u8; 32]) -> bool {
    expected.ct_eq(got).into()
}

/// One MAC key per direction, derived per session.
pub struct SessionKeys {
    pub host_to_guest: [u8; 32],
    pub guest_to_host: [u8; 32],
}

impl SessionKeys {
    pub fn derive(secret: &BootSecret, host_nonce: &Nonce, guest_nonce: &Nonce) -> Self {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(host_nonce);
        salt[32..].copy_from_slice(guest_nonce);
        let hk = Hkdf::<Sha256>::new(Some(&salt), &secret.0);
        let mut okm = [0u8; 64];
        // 64 bytes is far below HKDF-SHA256's 8160-byte output limit.
        hk.expand(b"ztee-wire/1 session keys", &mut okm)
            .unwrap_or_else(|_| unreachable!("64 bytes is a valid HKDF output length"));
        let mut keys = Self {
            host_to_guest: [0; 32],
            guest_to_host: [0; 32],
        };
        keys.host_to_guest.copy_from_slice(&okm[..32]);
        keys.guest_to_host.copy_from_slice(&okm[32..]);
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_differ_by_role_and_secret() {
        let s = BootSecret::from_bytes([1; 32]);
        let other = BootSecret::from_bytes([2; 32]);
        let (hn, gn) = ([3; 32], [4; 32]);
        assert_ne!(s.agent_proof(&hn, &gn), s.host_proof(&hn, &gn));
        assert!(!proofs_match(
            &s.agent_proof(&hn, &gn),
            &other.agent_proof(&hn, &gn)
        ));
        assert!(proofs_match(
            &s.agent_proof(&hn, &gn),
            &s.agent_proof(&hn, &gn)
        ));
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let s = BootSecret::from_bytes([0xab; 32]);
        let parsed = BootSecret::from_hex(&s.to_hex()).unwrap();
        assert_eq!(parsed.to_hex(), s.to_hex());
        assert!(BootSecret::from_hex("abc").is_none());
        assert!(BootSecret::from_hex(&"zz".repeat(32)).is_none());
        assert_eq!(format!("{s:?}"), "BootSecret(<redacted>)");
    }

    #[test]
    fn session_keys_depend_on_nonces() {
        let s = BootSecret::from_bytes([1; 32]);
        let a = SessionKeys::derive(&s, &[1; 32], &[2; 32]);
        let b = SessionKeys::derive(&s, &[1; 32], &[3; 32]);
        assert_ne!(a.host_to_guest, b.host_to_guest);
        assert_ne!(a.host_to_guest, a.guest_to_host);
    }
}
