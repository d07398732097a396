//! Signed callback links: an approve or deny URL that a webhook receiver (an n8n workflow, a
//! Slack button) can call without an API key. The link carries the approval id, the decision
//! and an expiry, signed with HMAC-SHA-256 under a key only the gateway holds; the signature
//! is compared in constant time.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::http::StatusCode;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

pub struct CallbackKey(Zeroizing<Vec<u8>>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackQuery {
    /// `approve` or `deny`.
    pub decision: String,
    /// Seconds since the Unix epoch after which the link is refused.
    pub expires: u64,
    /// Hex HMAC-SHA-256 of `<id>\n<decision>\n<expires>`.
    pub sig: String,
}

impl CallbackQuery {
    pub fn approve(&self) -> bool {
        self.decision == "approve"
    }
}

fn refused(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_callback",
        message.to_owned(),
    )
}

impl CallbackKey {
    /// Reads the key file (created with 32 random bytes, mode 0600, on first start).
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .map_err(|_| format!("{}: not a hex key", path.display()))?;
                if bytes.len() != 32 {
                    return Err(format!("{}: the key must be 32 bytes", path.display()));
                }
                Ok(Self(Zeroizing::new(bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; 32];
                rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
                let temp = path.with_extension("key.tmp");
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&temp)?;
                    f.write_all(hex::encode(&bytes).as_bytes())?;
                    f.sync_all()?;
                    std::fs::rename(&temp, path)
                };
                write().map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Self(Zeroizing::new(bytes)))
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn mac(&self, id: &str, decision: &str, expires: u64) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes always works.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(format!("{id}\n{decision}\n{expires}").as_bytes());
        mac
    }

    pub fn url(&self, public_url: &str, id: &str, approve: bool, expires: u64) -> String {
        let decision = if approve { "approve" } else { "deny" };
        let sig = hex::encode(self.mac(id, decision, expires).finalize().into_bytes());
        format!("{public_url}/v1/approvals/{id}/callback?decision={decision}&expires={expires}&sig={sig}")
    }

    pub fn verify(&self, id: &str, q: &CallbackQuery, now: u64) -> Result<(), ApiError> {
        if q.decision != "approve" && q.decision != "deny" {
            return Err(ApiError::bad_request("decision must be approve or deny"));
        }
        let sig = hex::decode(&q.sig).map_err(|_| refused("the link's signature is not valid"))?;
        // verify_slice compares in constant time.
        self.mac(id, &q.decision, q.expires)
            .verify_slice(&sig)
            .map_err(|_| refused("the link's signature is not valid"))?;
        if now > q.expires {
            return Err(refused("the link has expired"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = CallbackKey::load_or_create(&dir.path().join("k")).unwrap();
        let url = key.url("http://x", "apr_1", true, 2000);
        let q: CallbackQuery = serde_urlencoded_from(url.split_once('?').unwrap().1);
        assert!(key.verify("apr_1", &q, 1000).is_ok());
        assert!(key.verify("apr_2", &q, 1000).is_err(), "bound to the id");
        assert!(key.verify("apr_1", &q, 2001).is_err(), "expired");
        let flipped = CallbackQuery {
            decision: "deny".into(),
            ..q
        };
        assert!(
            key.verify("apr_1", &flipped, 1000).is_err(),
            "bound to the decision"
        );
        let again = CallbackKey::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(
            again.url("http://x", "a", false, 5),
            key.url("http://x", "a", false, 5)
        );
    }

    fn serde_urlencoded_from(query: &str) -> CallbackQuery {
        let mut decision = String::new();
        let mut expires = 0;
        let mut sig = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            match k {
                "decision" => decision = v.into(),
                "expires" => expires = v.parse().unwrap(),
                "sig" => sig = v.into(),
                _ => panic!("{k}"),
            }
        }
        CallbackQuery {
            decision,
            expires,
            sig,
        }
    }
}
