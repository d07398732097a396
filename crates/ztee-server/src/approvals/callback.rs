//! Signed callback links: an approve or deny URL that a webhook receiver (an n8n workflow, a
//! Slack button) can use without presenting an API key. A link is minted for one named approver
//! (the API key a webhook is configured to act for) and carries the approval id, the decision,
//! an expiry and that approver's identity, signed with HMAC-SHA-256 under a key only the gateway
//! holds; the signature is compared in constant time. `GET` on a link only shows a confirmation
//! page; a `POST` decides, in the approver's name, as if that approver had called the API.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::ActionError;

type HmacSha256 = Hmac<Sha256>;

pub struct CallbackKey(Zeroizing<Vec<u8>>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackQuery {
    /// `approve` or `deny`.
    pub decision: String,
    /// Seconds since the Unix epoch after which the link is refused.
    pub expires: u64,
    /// The approver the link acts for: an API key subject, `apikey:<id>`.
    pub approver: String,
    /// Hex HMAC-SHA-256 over the id, decision, expiry and approver (length-prefixed).
    pub sig: String,
}

impl CallbackQuery {
    pub fn approve(&self) -> bool {
        self.decision == "approve"
    }
}

fn refused(message: &str) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::Forbidden,
        "invalid_callback",
        message.to_owned(),
    )
}

/// A 32-byte key kept as 64 hex digits in `path`, created (mode 0600, written then renamed
/// into place) when the file does not exist yet.
/// 32 random bytes that live in memory only.
pub(super) fn ephemeral_key() -> Zeroizing<Vec<u8>> {
    let mut bytes = Zeroizing::new(vec![0u8; 32]);
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    bytes
}

pub(super) fn read_or_create_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .map_err(|_| format!("{}: not a hex key", path.display()))?;
            if bytes.len() != 32 {
                return Err(format!("{}: the key must be 32 bytes", path.display()));
            }
            Ok(Zeroizing::new(bytes))
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
            Ok(Zeroizing::new(bytes))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

impl CallbackKey {
    /// Reads the key file (created with 32 random bytes, mode 0600, on first start).
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        read_or_create_key(path).map(Self)
    }

    /// A key for a host that issues no links: it never leaves memory.
    pub fn ephemeral() -> Self {
        Self(ephemeral_key())
    }

    fn mac(&self, id: &str, decision: &str, expires: u64, approver: &str) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes always works.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        // A version tag, then every field length-prefixed: no two field lists sign alike, and
        // links of the earlier format (without an approver) never verify.
        mac.update(b"ztee-approval-link-v2");
        for field in [id, decision, &expires.to_string(), approver] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// The link for `approver` (an `apikey:<id>` subject, checked by [`valid_approver`]).
    pub fn url(
        &self,
        public_url: &str,
        id: &str,
        approve: bool,
        expires: u64,
        approver: &str,
    ) -> String {
        let decision = if approve { "approve" } else { "deny" };
        let sig = hex::encode(
            self.mac(id, decision, expires, approver)
                .finalize()
                .into_bytes(),
        );
        format!("{public_url}/v1/approvals/{id}/callback?decision={decision}&expires={expires}&approver={approver}&sig={sig}")
    }

    pub fn verify(&self, id: &str, q: &CallbackQuery, now: u64) -> Result<(), ActionError> {
        if q.decision != "approve" && q.decision != "deny" {
            return Err(ActionError::bad_request("decision must be approve or deny"));
        }
        if !valid_approver(&q.approver) {
            return Err(refused("the link's approver is not an API key subject"));
        }
        let sig = hex::decode(&q.sig).map_err(|_| refused("the link's signature is not valid"))?;
        // verify_slice compares in constant time.
        self.mac(id, &q.decision, q.expires, &q.approver)
            .verify_slice(&sig)
            .map_err(|_| refused("the link's signature is not valid"))?;
        if now > q.expires {
            return Err(refused("the link has expired"));
        }
        Ok(())
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What `GET` on a link answers: the approval (its request DLP-masked, as approvers see it)
/// and a form that `POST`s the same link. Showing it changes nothing, so a mail scanner or a
/// chat preview that follows the link decides nothing.
pub fn confirmation_page(record: &super::ApprovalRecord, q: &CallbackQuery) -> String {
    let verb = if q.decision == "approve" {
        "Approve"
    } else {
        "Deny"
    };
    let request = serde_json::to_string_pretty(&record.request).unwrap_or_default();
    let inputs = if record.inputs.is_empty() {
        String::new()
    } else {
        let rows: Vec<String> = record
            .inputs
            .iter()
            .map(|i| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&i.path),
                    escape(&i.digest),
                    i.size
                )
            })
            .collect();
        format!(
            "<h2>Files the command runs on (bound: a change refuses the run)</h2>\n<table>\n\
             <tr><th>path</th><th>digest</th><th>bytes</th></tr>\n{}\n</table>\n",
            rows.join("\n")
        )
    };
    let decided: Vec<String> = record
        .decisions
        .iter()
        .map(|d| format!("{} {}", d.by, if d.approve { "approved" } else { "denied" }))
        .collect();
    let form = if record.status == super::Status::Pending {
        format!(
            "<form method=\"post\" action=\"\"><button type=\"submit\">{verb} as {}</button></form>",
            escape(&q.approver)
        )
    } else {
        "<p>This approval is no longer pending; nothing can be decided.</p>".to_owned()
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ztee approval {id}</title></head><body>\n\
         <h1>{verb} approval {id}?</h1>\n\
         <p>This link acts for <b>{approver}</b>: the decision is recorded in that name. \
         Nothing has been decided yet.</p>\n\
         <table>\n<tr><th>status</th><td>{status}</td></tr>\n<tr><th>action</th><td>{action}</td></tr>\n\
         <tr><th>requester</th><td>{requester}</td></tr>\n<tr><th>tenant</th><td>{tenant}</td></tr>\n\
         <tr><th>risk</th><td>{risk}</td></tr>\n<tr><th>why</th><td>{reasons}</td></tr>\n\
         <tr><th>approvals needed</th><td>{required}</td></tr>\n<tr><th>decisions</th><td>{decided}</td></tr>\n\
         </table>\n<h2>Request (card data masked)</h2>\n<pre>{request}</pre>\n{inputs}{form}\n</body></html>\n",
        id = escape(&record.id),
        approver = escape(&q.approver),
        status = record.status.as_str(),
        action = escape(&record.action),
        requester = escape(&record.requester),
        tenant = escape(&record.tenant),
        risk = escape(&record.risk),
        reasons = escape(&record.reasons.join("; ")),
        required = record.required_approvals,
        decided = escape(&decided.join(", ")),
        request = escape(&request),
    )
}

/// Links act only for API keys (`apikey:` and 12 hex digits): the gateway can look such an
/// approver up when the link is used (tenant, role, revocation), which it cannot do for an
/// OIDC subject without its token.
pub fn valid_approver(subject: &str) -> bool {
    crate::apikey::subject_id(subject).is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = CallbackKey::load_or_create(&dir.path().join("k")).unwrap();
        let alice = "apikey:0123456789ab";
        let url = key.url("http://x", "apr_1", true, 2000, alice);
        let q: CallbackQuery = serde_urlencoded_from(url.split_once('?').unwrap().1);
        assert_eq!(q.approver, alice);
        assert!(key.verify("apr_1", &q, 1000).is_ok());
        assert!(key.verify("apr_2", &q, 1000).is_err(), "bound to the id");
        assert!(key.verify("apr_1", &q, 2001).is_err(), "expired");
        let other = CallbackQuery {
            approver: "apikey:ba9876543210".into(),
            decision: q.decision.clone(),
            expires: q.expires,
            sig: q.sig.clone(),
        };
        assert!(
            key.verify("apr_1", &other, 1000).is_err(),
            "bound to the approver"
        );
        let not_a_key = CallbackQuery {
            approver: "callback:signed-link".into(),
            ..other
        };
        assert!(key.verify("apr_1", &not_a_key, 1000).is_err());
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
            again.url("http://x", "a", false, 5, alice),
            key.url("http://x", "a", false, 5, alice)
        );
    }

    #[test]
    fn the_confirmation_page_escapes_what_it_shows() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    fn serde_urlencoded_from(query: &str) -> CallbackQuery {
        let mut decision = String::new();
        let mut expires = 0;
        let mut sig = String::new();
        let mut approver = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            match k {
                "decision" => decision = v.into(),
                "expires" => expires = v.parse().unwrap(),
                "sig" => sig = v.into(),
                "approver" => approver = v.into(),
                _ => panic!("{k}"),
            }
        }
        CallbackQuery {
            decision,
            expires,
            approver,
            sig,
        }
    }
}
