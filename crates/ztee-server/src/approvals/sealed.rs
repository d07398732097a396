//! Held requests that outlive the process that parked them, sealed.
//!
//! A parked request (its code, env, files: possibly card data) is stored next to its approval
//! record, encrypted with AES-256-GCM under the seal key, with the approval id as associated
//! data: the state database alone never yields the content, and a sealed request cannot be moved
//! to another approval's row. The key lives in its own file (`[approvals] seal_key_file`,
//! default `approvals-seal.key` in the data directory), so a copy of the database (a backup, a
//! replica) holds nothing readable. A gateway that restarts, or another gateway with the same key,
//! opens the rows of pending approvals and can run them once approved.

use std::net::IpAddr;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::inputs::Bound;
use crate::action::{Action, CreateSandbox, HeldAction, OneShotRun, RunCommand};
use crate::auth::Caller;
use crate::principal::Principal;
use crate::store::{Store, StoreError};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS approval_held (
    id TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
);";

/// Which format a sealed row is in; bumped when [`Sealed`] changes incompatibly.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The key held requests are sealed under.
pub struct SealKey(Zeroizing<Vec<u8>>);

impl SealKey {
    /// Reads the key (64 hex digits), or creates it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        super::callback::read_or_create_key(path).map(Self)
    }

    /// A key for a host that seals nothing: it never leaves memory.
    pub fn ephemeral() -> Self {
        Self(super::callback::ephemeral_key())
    }

    fn cipher(&self) -> Aes256Gcm {
        // The key is 32 bytes by construction (read_or_create_key checks it).
        Aes256Gcm::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("an AES-256 key is 32 bytes"))
    }

    /// Seals `held` for approval `id`: version, nonce, ciphertext.
    pub fn seal(&self, id: &str, held: &Sealed) -> Result<Vec<u8>, String> {
        let plain = Zeroizing::new(
            serde_json::to_vec(held).map_err(|e| format!("encoding a held request: {e}"))?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(id),
                },
            )
            .map_err(|_| "sealing a held request failed".to_owned())?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`SealKey::seal`] sealed for approval `id`. Fails on another key, another
    /// approval's row, or any change to the bytes.
    pub fn open(&self, id: &str, sealed: &[u8]) -> Result<Sealed, String> {
        let (version, rest) = sealed
            .split_first()
            .ok_or_else(|| "the sealed request is empty".to_owned())?;
        if *version != VERSION || rest.len() < NONCE_LEN {
            return Err(format!(
                "the sealed request is in an unknown format (version {version})"
            ));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| "the sealed request's nonce is cut short".to_owned())?;
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad(id),
                    },
                )
                .map_err(|_| {
                    "the sealed request does not open with this gateway's seal key (another key, \
                     another approval's row, or changed bytes)"
                        .to_owned()
                })?,
        );
        serde_json::from_slice(&plain).map_err(|e| format!("decoding a held request: {e}"))
    }
}

fn aad(id: &str) -> Vec<u8> {
    let mut aad = b"ztee-held-request-v1:".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// The actions a gateway parks, in the form they are sealed in.
#[derive(Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum ParkedAction {
    Run(OneShotRun),
    CreateSandbox(CreateSandbox),
    Exec {
        sandbox: String,
        command: RunCommand,
    },
    PinMcpTools(crate::action::McpToolSet),
}

/// Everything needed to run a held request later: who asked (looked up again before it runs),
/// from where, and the typed action with the files it was bound to.
#[derive(Serialize, Deserialize)]
pub struct Sealed {
    principal: Principal,
    request_id: String,
    origin_ip: Option<IpAddr>,
    credential_expires_at: Option<u64>,
    action: ParkedAction,
    bound: Vec<Bound>,
}

impl Sealed {
    /// The sealable form of a parked action; `None` for an action no door parks.
    pub fn of(caller: &Caller, held: &HeldAction) -> Option<Self> {
        let action = match &held.action {
            Action::Run(run) => ParkedAction::Run(run.clone()),
            Action::CreateSandbox(create) => ParkedAction::CreateSandbox(create.clone()),
            Action::Exec { sandbox, command } => ParkedAction::Exec {
                sandbox: sandbox.clone(),
                command: command.clone(),
            },
            Action::PinMcpTools(set) => ParkedAction::PinMcpTools(set.clone()),
            _ => return None,
        };
        Some(Self {
            principal: caller.principal.clone(),
            request_id: caller.request_id.as_str().to_owned(),
            origin_ip: caller.origin_ip,
            credential_expires_at: caller.credential_expires_at,
            action,
            bound: held.bound.clone(),
        })
    }

    /// The caller and the held action, as they were when the request was parked.
    pub fn restore(
        self,
        audit: std::sync::Arc<dyn crate::audit::AuditSink>,
    ) -> (Caller, HeldAction) {
        let caller = Caller::restored(
            self.principal,
            &self.request_id,
            self.origin_ip,
            self.credential_expires_at,
            audit,
        );
        let action = match self.action {
            ParkedAction::Run(run) => Action::Run(run),
            ParkedAction::CreateSandbox(create) => Action::CreateSandbox(create),
            ParkedAction::Exec { sandbox, command } => Action::Exec { sandbox, command },
            ParkedAction::PinMcpTools(set) => Action::PinMcpTools(set),
        };
        (
            caller,
            HeldAction {
                action,
                bound: self.bound,
            },
        )
    }
}

pub fn create_table(store: &Store) -> Result<(), StoreError> {
    store.with_connection(|c| c.execute_batch(TABLE))
}

pub fn put(store: &Store, id: &str, sealed: &[u8]) -> Result<(), StoreError> {
    store.with_connection(|c| {
        c.execute(
            "INSERT INTO approval_held (id, sealed) VALUES (?1, ?2)",
            params![id, sealed],
        )
        .map(|_| ())
    })
}

pub fn get(store: &Store, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    store.with_connection(|c| {
        c.query_row(
            "SELECT sealed FROM approval_held WHERE id = ?1",
            params![id],
            |row| row.get(0),
        )
        .optional()
    })
}

pub fn remove(store: &Store, id: &str) -> Result<(), StoreError> {
    store.with_connection(|c| {
        c.execute("DELETE FROM approval_held WHERE id = ?1", params![id])
            .map(|_| ())
    })
}

/// Removes the sealed requests of approvals that are no longer pending or approved (decided,
/// expired or failed while no process held them): nothing is kept longer than it can run.
pub fn remove_ended(store: &Store) -> Result<usize, StoreError> {
    store.with_connection(|c| {
        c.execute(
            "DELETE FROM approval_held WHERE id NOT IN \
             (SELECT id FROM approvals WHERE status IN ('pending', 'approved'))",
            [],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Cmd, RunCommand};
    use crate::principal::AuthMethod;

    /// The denial trail of a restored caller, unused here.
    struct Nowhere;

    #[async_trait::async_trait]
    impl crate::audit::AuditSink for Nowhere {
        async fn append(&self, _: ztee_audit::AuditEvent) -> Result<(), String> {
            Ok(())
        }
    }

    fn key(dir: &Path, name: &str) -> SealKey {
        SealKey::load_or_create(&dir.join(name)).unwrap()
    }

    fn held() -> (Caller, HeldAction) {
        let caller = Caller::local(Principal::new(
            "apikey:k1".into(),
            "acme".into(),
            vec!["agent".into()],
            AuthMethod::ApiKey,
        ));
        let action = Action::Exec {
            sandbox: "sbx_1".into(),
            command: RunCommand {
                cmd: Cmd::Shell("echo 4111111111111111".into()),
                stdin: None,
                env: Default::default(),
                cwd: None,
                timeout_s: Some(5),
            },
        };
        (
            caller,
            HeldAction {
                action,
                bound: Vec::new(),
            },
        )
    }

    #[test]
    fn a_sealed_request_opens_only_for_its_approval_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let seal = key(dir.path(), "a.key");
        let (caller, held) = held();
        let sealed = seal
            .seal("apr_1", &Sealed::of(&caller, &held).unwrap())
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&sealed).contains("4111111111111111"),
            "sealed bytes hold the card number"
        );
        let opened = seal.open("apr_1", &sealed).unwrap();
        let audit: std::sync::Arc<dyn crate::audit::AuditSink> = std::sync::Arc::new(Nowhere);
        let (again, restored) = opened.restore(audit);
        assert_eq!(again.principal.subject, "apikey:k1");
        assert_eq!(again.request_id.as_str(), caller.request_id.as_str());
        match restored.action {
            Action::Exec { sandbox, command } => {
                assert_eq!(sandbox, "sbx_1");
                assert!(matches!(command.cmd, Cmd::Shell(s) if s == "echo 4111111111111111"));
            }
            _ => panic!("another action came back"),
        }
        // Another approval's row, another key, a changed byte, an unknown format: refused.
        assert!(seal.open("apr_2", &sealed).is_err());
        assert!(key(dir.path(), "b.key").open("apr_1", &sealed).is_err());
        let mut changed = sealed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(seal.open("apr_1", &changed).is_err());
        let mut version = sealed;
        version[0] = 9;
        assert!(matches!(seal.open("apr_1", &version), Err(e) if e.contains("format")));
        assert!(seal.open("apr_1", &[]).is_err());
    }

    #[test]
    fn only_the_actions_doors_park_are_sealed() {
        let (caller, _) = held();
        let list = HeldAction {
            action: Action::ListSandboxes,
            bound: Vec::new(),
        };
        assert!(Sealed::of(&caller, &list).is_none());
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let (caller, held) = held();
        let sealed = SealKey::load_or_create(&path)
            .unwrap()
            .seal("apr_1", &Sealed::of(&caller, &held).unwrap())
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(SealKey::load_or_create(&path)
            .unwrap()
            .open("apr_1", &sealed)
            .is_ok());
        std::fs::write(&path, "not hex").unwrap();
        assert!(SealKey::load_or_create(&path).is_err());
    }
}
