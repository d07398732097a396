//! What is kept about an approval, and where (a table in the state database).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::HeldRequest;
use crate::dlp::DlpEngine;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for approvers.
    Pending,
    /// Approved; the request is running.
    Approved,
    /// Approved and run; `result` holds the outcome.
    Executed,
    /// Approved, but running it failed; `result` holds the error.
    Failed,
    Denied,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Executed => "executed",
            Status::Failed => "failed",
            Status::Denied => "denied",
            Status::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Status::Pending,
            Status::Approved,
            Status::Executed,
            Status::Failed,
            Status::Denied,
            Status::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Approved)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionEntry {
    /// The approver's subject, or `callback:signed-link`.
    pub by: String,
    pub approve: bool,
    pub comment: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: String,
    pub tenant: String,
    pub requester: String,
    /// The held action (`run`).
    pub action: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub expires_at: u64,
    pub risk: String,
    /// Policy rule ids that asked for the approval.
    pub rule_ids: Vec<String>,
    pub reasons: Vec<String>,
    /// 2 under the two-person rule, else 1.
    pub required_approvals: u32,
    /// The request as approvers see it: every string DLP-masked.
    pub request: serde_json::Value,
    pub decisions: Vec<DecisionEntry>,
    /// The command result (outbound-masked) or an error, once run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// The request with every string value passed through DLP redaction.
pub fn masked_view(dlp: &dyn DlpEngine, held: &HeldRequest) -> serde_json::Value {
    let mut view = match held {
        HeldRequest::Run(request) => serde_json::json!({
            "cmd": request.cmd,
            "language": request.language,
            "code": request.code,
            "files": request.files,
            "env": request.env,
            "stdin": request.stdin,
            "timeout_s": request.timeout_s,
            "image": request.image,
            "memory_mib": request.memory_mib,
            "vcpus": request.vcpus,
            "secrets": request.secrets,
            "egress": request.egress,
        }),
        HeldRequest::Command { sandbox, request } => serde_json::json!({
            "sandbox": sandbox,
            "cmd": request.cmd,
            "env": request.env,
            "cwd": request.cwd,
            "stdin": request.stdin,
            "timeout_s": request.timeout_s,
        }),
        HeldRequest::SandboxCreate(request) => serde_json::json!({
            "image": request.image,
            "timeout_s": request.timeout_s,
            "memory_mib": request.memory_mib,
            "vcpus": request.vcpus,
            "env": request.env,
            "metadata": request.metadata,
            "egress": request.egress,
            "secrets": request.secrets,
        }),
    };
    mask(dlp, &mut view);
    view
}

fn mask(dlp: &dyn DlpEngine, value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => *s = dlp.redact(s).text,
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| mask(dlp, v)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| mask(dlp, v)),
        _ => {}
    }
}

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_tenant ON approvals(tenant);
";

fn decode(text: String) -> rusqlite::Result<ApprovalRecord> {
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub fn create_table(store: &Store) -> Result<(), StoreError> {
    store.with_connection(|c| c.execute_batch(TABLE))
}

pub fn put(store: &Store, record: &ApprovalRecord) -> Result<(), StoreError> {
    let json = serde_json::to_string(record).unwrap_or_default();
    store.with_connection(|c| {
        c.execute(
            "INSERT INTO approvals (id, tenant, status, expires_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, expires_at = excluded.expires_at,
             record = excluded.record",
            params![
                record.id,
                record.tenant,
                record.status.as_str(),
                i64::try_from(record.expires_at).unwrap_or(i64::MAX),
                json
            ],
        )
        .map(|_| ())
    })
}

pub fn get(store: &Store, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    store.with_connection(|c| {
        c.query_row("SELECT record FROM approvals WHERE id = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .map(decode)
        .transpose()
    })
}

/// Newest first, at most 500.
pub fn list(store: &Store, tenant: Option<&str>) -> Result<Vec<ApprovalRecord>, StoreError> {
    store.with_connection(|c| {
        let mut stmt = c.prepare(
            "SELECT record FROM approvals WHERE (?1 IS NULL OR tenant = ?1) ORDER BY rowid DESC LIMIT 500",
        )?;
        let rows = stmt.query_map([tenant], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(decode)).collect()
    })
}

/// Pending approvals whose expiry has passed.
pub fn due(store: &Store, now: u64) -> Result<Vec<ApprovalRecord>, StoreError> {
    store.with_connection(|c| {
        let mut stmt = c.prepare(
            "SELECT record FROM approvals WHERE status = 'pending' AND expires_at <= ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(now).unwrap_or(i64::MAX)], |r| {
            r.get::<_, String>(0)
        })?;
        rows.map(|r| r.and_then(decode)).collect()
    })
}

/// At start-up: nothing pending or approved from a previous run can still run.
pub fn expire_all_pending(store: &Store, reason: &str) -> Result<Vec<String>, StoreError> {
    let stale: Vec<ApprovalRecord> = store.with_connection(|c| {
        let mut stmt =
            c.prepare("SELECT record FROM approvals WHERE status IN ('pending', 'approved')")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| r.and_then(decode)).collect()
    })?;
    for mut r in stale.iter().cloned() {
        r.status = if r.status == Status::Approved {
            Status::Failed
        } else {
            Status::Expired
        };
        r.status_reason = Some(reason.to_owned());
        put(store, &r)?;
    }
    Ok(stale.into_iter().map(|r| r.id).collect())
}
