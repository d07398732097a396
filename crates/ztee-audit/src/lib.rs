//! ztee's tamper-evident audit trail.
//!
//! Events are appended as hash-chained JSON lines to `<data-dir>/audit/audit-NNNNNN.jsonl`; every
//! so often the writer appends a checkpoint signed with the node's Ed25519 key and copies it to
//! `head.json`, so an edit, deletion, reordering or truncation is detected by [`verify()`], which
//! names the first bad record.
//!
//! ```no_run
//! # async fn example() -> Result<(), ztee_audit::AuditError> {
//! use ztee_audit::{AuditConfig, AuditEvent, AuditLog, EventType, NodeKey, Outcome, Principal, PrincipalKind};
//!
//! let data_dir = std::path::Path::new("/var/lib/ztee");
//! let log = AuditLog::open(AuditConfig::new(data_dir), NodeKey::load_or_generate(data_dir)?)?;
//! let who = Principal::new(PrincipalKind::User, "alice", "acme")?;
//! let event = AuditEvent::new(EventType::SandboxExec, Outcome::Success, who)
//!     .with_request_id("req-123")?
//!     .with_code(b"python3 main.py");
//! let receipt = log.append(event).await?; // durable (fsynced) when this returns
//! # let _ = receipt; Ok(()) }
//! ```

mod content;
mod error;
mod event;
mod key;
mod read;
mod record;
mod segment;
mod verify;
mod writer;

pub use content::{ContentHasher, ContentKey};
pub use error::AuditError;
pub use event::{
    ApprovalGrant, AuditEvent, ConnectionPhase, DecisionKind, DecisionRecord, EventType,
    NetworkRecord, Outcome, Principal, PrincipalKind, Sha256Digest,
};
pub use key::{NodeKey, PublicKey, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};
pub use read::{parse_since, read_records, Query};
pub use record::{Checkpoint, Payload, Record};
pub use verify::{
    verify, verify_with, ExportedHead, Problem, VerifyFailure, VerifyOptions, VerifyReport,
};
pub use writer::{AuditConfig, AuditLog, Receipt, WITNESS_ENV};

/// Formats a timestamp the way the log stores it (RFC 3339, UTC, microseconds).
pub fn format_time(time: std::time::SystemTime) -> String {
    event::rfc3339::format(time)
}
