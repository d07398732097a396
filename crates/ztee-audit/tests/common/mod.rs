//! Setup shared by the integration tests: a log with a checkpoint every 5 events, its events,
//! and the files it writes.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ztee_audit::{
    AuditConfig, AuditEvent, AuditLog, EventType, NodeKey, Outcome, Principal, PrincipalKind,
    PublicKey,
};

/// A checkpoint after every 5 events; `witness` as given (never taken from the environment).
pub fn config(data_dir: &Path, witness: Option<&Path>) -> AuditConfig {
    AuditConfig {
        checkpoint_every: 5,
        checkpoint_interval: Duration::from_secs(3600),
        witness: witness.map(Path::to_path_buf),
        ..AuditConfig::new(data_dir)
    }
}

pub fn event(i: usize) -> AuditEvent {
    let who = Principal::new(PrincipalKind::User, format!("user-{}", i % 3), "acme")
        .unwrap_or_else(|e| panic!("{e}"));
    AuditEvent::new(EventType::SandboxExec, Outcome::Success, who)
        .with_request_id(format!("req-{i}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_code(format!("print({i})").as_bytes())
}

/// Appends events `from..to` (a final checkpoint on close) and returns the audit dir.
pub fn append(data_dir: &Path, witness: Option<&Path>, from: usize, to: usize) -> PathBuf {
    let key = NodeKey::load_or_generate(data_dir).unwrap_or_else(|e| panic!("{e}"));
    let log = AuditLog::open(config(data_dir, witness), key).unwrap_or_else(|e| panic!("{e}"));
    for i in from..to {
        log.append_blocking(event(i))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    log.close();
    data_dir.join("audit")
}

pub fn trusted_key(data_dir: &Path) -> PublicKey {
    PublicKey::from_data_dir(data_dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The first segment of the audit dir `dir`.
pub fn segment(dir: &Path) -> PathBuf {
    dir.join("audit-000001.jsonl")
}
