//! API keys for service accounts.
//!
//! A key looks like `ztee_<id>_<secret>`: the id (12 hex digits) finds the record, the secret
//! (256 random bits, base64url) proves possession. Only SHA-256 of the secret is stored; a plain
//! hash is enough because the secret is uniformly random, so there is nothing to brute-force.
//! Comparison is constant-time.

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::principal::{role_permissions, validate_tenant, AuthMethod, Principal};
use crate::store::{now_rfc3339, ApiKeyRecord, Store, StoreError};

const PREFIX: &str = "ztee_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("{0}")]
    InvalidTenant(String),
    #[error("role {role:?} is not known; use one of: {known}")]
    UnknownRole { role: String, known: String },
    #[error("no active API key has id {0:?} (unknown, or already revoked)")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the key is revoked, but recording the expiry of its pending approvals failed: {0}")]
    Audit(#[from] crate::audit_outbox::OutboxError),
}

/// A key just created: the only moment the full key exists outside the caller's hands.
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    /// The full key to hand to the service account. Never logged, never stored.
    pub key: String,
}

pub fn create(
    store: &Store,
    tenant: &str,
    role: &str,
    description: &str,
) -> Result<NewApiKey, ApiKeyError> {
    validate_tenant(tenant).map_err(ApiKeyError::InvalidTenant)?;
    if role_permissions(role).is_none() {
        return Err(ApiKeyError::UnknownRole {
            role: role.to_owned(),
            known: crate::principal::known_role_names().join(", "),
        });
    }
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let record = ApiKeyRecord {
        id: id.clone(),
        tenant: tenant.to_owned(),
        role: role.to_owned(),
        description: description.to_owned(),
        created_at: now_rfc3339(),
        revoked_at: None,
        secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
    };
    store.insert_api_key(&record)?;
    Ok(NewApiKey {
        record,
        key: format!("{PREFIX}{id}_{secret}"),
    })
}

/// Revokes a key and expires every approval still pending for a request it made (so nothing
/// held for it runs once approved); each expiry is queued for the audit trail.
pub fn revoke(store: &Store, id: &str) -> Result<(), ApiKeyError> {
    if !store.revoke_api_key(id)? {
        return Err(ApiKeyError::NotFound(id.to_owned()));
    }
    let subject = format!("apikey:{id}");
    let expired = crate::approvals::record::expire_pending_of(
        store,
        &subject,
        &format!("the requester's API key {subject} was revoked while the request waited"),
    )?;
    for record in expired {
        crate::audit_outbox::queue(
            store,
            &crate::approvals::requester_gone_event(&record, "apikey.revoked"),
        )?;
    }
    Ok(())
}

/// The principal an API key subject (`apikey:<id>`) stands for now, from the store: refused
/// when the key is unknown or revoked. For principals that act without presenting the key
/// (the named approver of a signed approval link, the requester of a held request when it
/// runs).
pub fn resolve(
    store: &Store,
    subject: &str,
) -> Result<Result<Principal, KeyRejection>, StoreError> {
    let Some(id) = subject_id(subject) else {
        return Ok(Err(KeyRejection::Malformed));
    };
    let Some(record) = store.api_key(id)? else {
        return Ok(Err(KeyRejection::Unknown));
    };
    if record.revoked_at.is_some() {
        return Ok(Err(KeyRejection::Revoked));
    }
    Ok(Ok(Principal::new(
        subject.to_owned(),
        record.tenant,
        vec![record.role],
        AuthMethod::ApiKey,
    )))
}

/// The key id of an API key subject (`apikey:` and 12 hex digits), or `None` for any other
/// subject.
pub fn subject_id(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("apikey:")
        .filter(|id| id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// True when a bearer token has the API-key shape (so it is not sent to the JWT validator).
pub fn looks_like_api_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Why a presented key was refused. Callers see one generic message; the reason goes to the audit
/// trail and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    Malformed,
    Unknown,
    Revoked,
    WrongSecret,
}

impl KeyRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_api_key",
            Self::Unknown => "unknown_api_key",
            Self::Revoked => "revoked_api_key",
            Self::WrongSecret => "wrong_api_key_secret",
        }
    }
}

/// Checks a presented key against the store.
pub fn authenticate(
    store: &Store,
    presented: &str,
) -> Result<Result<Principal, KeyRejection>, StoreError> {
    let Some((id, secret)) = split(presented) else {
        return Ok(Err(KeyRejection::Malformed));
    };
    let Some(record) = store.api_key(id)? else {
        // Hash anyway so an unknown id costs about the same as a wrong secret.
        let _ = Sha256::digest(secret.as_bytes());
        return Ok(Err(KeyRejection::Unknown));
    };
    let digest = Sha256::digest(secret.as_bytes());
    let matches: bool = digest[..].ct_eq(&record.secret_sha256).into();
    if !matches {
        return Ok(Err(KeyRejection::WrongSecret));
    }
    if record.revoked_at.is_some() {
        return Ok(Err(KeyRejection::Revoked));
    }
    Ok(Ok(Principal::new(
        format!("apikey:{}", record.id),
        record.tenant,
        vec![record.role],
        AuthMethod::ApiKey,
    )))
}

fn split(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let new = create(&store, "acme", "agent", "ci runner").unwrap();
        assert!(looks_like_api_key(&new.key));
        // The stored record holds no trace of the secret text.
        let stored = store.api_key(&new.record.id).unwrap().unwrap();
        let secret = new.key.rsplit_once('_').map(|(_, s)| s).unwrap();
        assert!(!String::from_utf8_lossy(&stored.secret_sha256).contains(secret));

        let p = authenticate(&store, &new.key).unwrap().unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.subject, format!("apikey:{}", new.record.id));

        // One character changed in the secret.
        let mut wrong = new.key.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            authenticate(&store, &wrong).unwrap().unwrap_err(),
            KeyRejection::WrongSecret
        );
        assert_eq!(
            authenticate(&store, "ztee_zz").unwrap().unwrap_err(),
            KeyRejection::Malformed
        );
        let unknown = format!("ztee_000000000000_{}", &new.key[18..]);
        assert_eq!(
            authenticate(&store, &unknown).unwrap().unwrap_err(),
            KeyRejection::Unknown
        );

        let subject = format!("apikey:{}", new.record.id);
        assert_eq!(resolve(&store, &subject).unwrap().unwrap().tenant, "acme");
        assert_eq!(
            resolve(&store, "apikey:000000000000").unwrap().unwrap_err(),
            KeyRejection::Unknown
        );
        assert_eq!(
            resolve(&store, "oidc:alice").unwrap().unwrap_err(),
            KeyRejection::Malformed
        );

        revoke(&store, &new.record.id).unwrap();
        assert_eq!(
            authenticate(&store, &new.key).unwrap().unwrap_err(),
            KeyRejection::Revoked
        );
        assert_eq!(
            resolve(&store, &subject).unwrap().unwrap_err(),
            KeyRejection::Revoked
        );
        assert!(matches!(
            revoke(&store, &new.record.id),
            Err(ApiKeyError::NotFound(_))
        ));
    }

    #[test]
    fn bad_tenant_and_role_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        assert!(matches!(
            create(&store, "a b", "agent", ""),
            Err(ApiKeyError::InvalidTenant(_))
        ));
        let err = create(&store, "acme", "root", "").err().unwrap();
        assert!(err.to_string().contains("agent"), "{err}");
        assert_eq!(store.api_keys().unwrap().len(), 0);
    }
}
