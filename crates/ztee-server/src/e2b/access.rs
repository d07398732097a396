//! Sandbox access tokens: what the E2B SDKs send (`X-Access-Token`) on every call into a sandbox
//! (processes, files, code), in place of the API key.
//!
//! A token names one sandbox and one principal: the one that created the sandbox, or that
//! connected to it with its own API key. It is an HMAC, under a key that lives only in this
//! process, of the sandbox id and the principal's subject, so the same principal connecting
//! again gets the same token, nothing secret is stored, and a token is worthless for any other
//! sandbox or after a restart (when every sandbox is gone anyway). Checking one compares it,
//! in constant time, with the token of each principal granted that sandbox.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::principal::Principal;

/// Most principals one sandbox grants tokens to (its creator and those who connect to it).
const MAX_GRANTS: usize = 32;

/// Tokens begin with this, so a leaked one is recognisable (secret scanners, logs).
const PREFIX: &str = "ztee_sbx_";

pub struct AccessTokens {
    key: [u8; 32],
    grants: Mutex<HashMap<String, Vec<Principal>>>,
}

impl Default for AccessTokens {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        Self {
            key,
            grants: Mutex::default(),
        }
    }
}

impl AccessTokens {
    fn token(&self, sandbox: &str, subject: &str) -> String {
        // Keyed with a 32-byte key: `new_from_slice` accepts any length for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Sandbox ids hold no NUL: the separator keeps (sandbox, subject) pairs apart.
        mac.update(b"ztee-e2b-access-v1");
        mac.update(sandbox.as_bytes());
        mac.update(&[0]);
        mac.update(subject.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The token of `principal` for `sandbox`, granting it from now on. `None` when the sandbox
    /// already grants [`MAX_GRANTS`] other principals.
    pub fn issue(&self, sandbox: &str, principal: &Principal) -> Option<String> {
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let granted = grants.entry(sandbox.to_owned()).or_default();
        match granted.iter().position(|p| p.subject == principal.subject) {
            // The principal as it authenticated now: its current roles.
            Some(i) => granted[i] = principal.clone(),
            None if granted.len() >= MAX_GRANTS => return None,
            None => granted.push(principal.clone()),
        }
        Some(self.token(sandbox, &principal.subject))
    }

    /// The principal `token` was issued to for `sandbox`, if any.
    pub fn principal(&self, sandbox: &str, token: &str) -> Option<Principal> {
        let grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        // Every candidate is compared, so the time taken does not say which one matched.
        for principal in grants.get(sandbox)? {
            let expected = self.token(sandbox, &principal.subject);
            if bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// Forgets a sandbox's grants (it is gone).
    pub fn forget(&self, sandbox: &str) {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::principal::AuthMethod;

    fn principal(subject: &str) -> Principal {
        Principal::new(
            subject.into(),
            "acme".into(),
            vec!["agent".into()],
            AuthMethod::ApiKey,
        )
    }

    #[test]
    fn a_token_opens_only_its_own_sandbox_for_its_own_principal() {
        let tokens = AccessTokens::default();
        let alice = tokens.issue("sbx_1", &principal("alice")).unwrap();
        let bob = tokens.issue("sbx_1", &principal("bob")).unwrap();
        assert_ne!(alice, bob);
        assert!(alice.starts_with(PREFIX));
        assert_eq!(tokens.principal("sbx_1", &alice).unwrap().subject, "alice");
        assert_eq!(tokens.principal("sbx_1", &bob).unwrap().subject, "bob");
        assert!(tokens.principal("sbx_2", &alice).is_none());
        assert!(tokens.principal("sbx_1", "ztee_sbx_forged").is_none());
        // The same principal connecting again gets the same token.
        assert_eq!(tokens.issue("sbx_1", &principal("alice")).unwrap(), alice);
        tokens.forget("sbx_1");
        assert!(tokens.principal("sbx_1", &alice).is_none());
    }

    #[test]
    fn tokens_do_not_survive_a_new_key() {
        let a = AccessTokens::default();
        let b = AccessTokens::default();
        let token = a.issue("sbx_1", &principal("alice")).unwrap();
        b.issue("sbx_1", &principal("alice")).unwrap();
        assert!(b.principal("sbx_1", &token).is_none());
    }

    #[test]
    fn grants_per_sandbox_are_bounded() {
        let tokens = AccessTokens::default();
        for i in 0..MAX_GRANTS {
            assert!(tokens
                .issue("sbx_1", &principal(&format!("p{i}")))
                .is_some());
        }
        assert!(tokens.issue("sbx_1", &principal("one-more")).is_none());
        assert!(tokens.issue("sbx_1", &principal("p0")).is_some());
    }
}
