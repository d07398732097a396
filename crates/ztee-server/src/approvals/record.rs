//! What is kept about an approval, and where (a table in the state database).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::action::{Action, HeldAction};
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
    /// The approver's subject (`apikey:<id>` or `oidc:<sub>`), however they decided.
    pub by: String,
    pub approve: bool,
    pub comment: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// `api` or `link` (a signed link named for this approver); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
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
    /// The request as approvers see it: every string DLP-masked, env values replaced by
    /// [`ENV_VALUE_SHOWN`].
    pub request: serde_json::Value,
    /// For a held sandbox command: the files its argv names, bound by digest (the run is
    /// refused if any changed; empty: bound to no file). Paths masked like caller text.
    #[serde(default)]
    pub inputs: Vec<super::inputs::InputRecord>,
    pub decisions: Vec<DecisionEntry>,
    /// The command result (outbound-masked) or an error, once run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// What an approval shows for an env value. Env values are configuration and credentials DLP
/// often cannot recognise (a password, an internal token), and an approval record leaves the
/// gateway (webhooks, link pages, other approvers): only the names are shown. `[set]` rather
/// than a keyed digest: a digest a requester can have computed for values of their choosing is
/// an oracle for guessing other requests' values.
pub const ENV_VALUE_SHOWN: &str = "[set]";

fn env_names(env: &std::collections::BTreeMap<String, String>) -> serde_json::Value {
    env.keys()
        .map(|k| (k.clone(), serde_json::Value::from(ENV_VALUE_SHOWN)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The request with every string value passed through DLP redaction and env values withheld.
pub fn masked_view(dlp: &dyn DlpEngine, held: &HeldAction) -> serde_json::Value {
    let view = match &held.action {
        Action::Run(request) => serde_json::json!({
            "cmd": request.cmd,
            "language": request.language,
            "code": request.code,
            "files": request.files,
            "env": env_names(&request.env),
            "stdin": request.stdin,
            "cwd": request.cwd,
            "timeout_s": request.timeout_s,
            "image": request.image,
            "memory_mib": request.memory_mib,
            "vcpus": request.vcpus,
            "secrets": request.secrets,
            "egress": request.egress,
        }),
        Action::Exec {
            sandbox,
            command: request,
        } => serde_json::json!({
            "sandbox": sandbox,
            "cmd": request.cmd,
            "env": env_names(&request.env),
            "cwd": request.cwd,
            "stdin": request.stdin,
            "timeout_s": request.timeout_s,
        }),
        Action::CreateSandbox(request) => serde_json::json!({
            "image": request.image,
            "timeout_s": request.timeout_s,
            "memory_mib": request.memory_mib,
            "vcpus": request.vcpus,
            "env": env_names(&request.env),
            "metadata": request.metadata,
            "egress": request.egress,
            "secrets": request.secrets,
        }),
        // Content is shown by what the approval binds (its digest), never in the view.
        Action::WriteFile {
            sandbox,
            path,
            content,
        } => serde_json::json!({"sandbox": sandbox, "path": path, "size": content.len()}),
        Action::ReadFile { sandbox, path } => {
            serde_json::json!({"sandbox": sandbox, "path": path})
        }
        Action::DeleteSandbox { sandbox } | Action::ShowSandbox { sandbox } => {
            serde_json::json!({"sandbox": sandbox})
        }
        Action::StartProcess {
            sandbox,
            command: request,
            tag,
            stdin,
        } => serde_json::json!({
            "sandbox": sandbox,
            "cmd": request.cmd,
            "env": env_names(&request.env),
            "cwd": request.cwd,
            "tag": tag,
            "stdin": format!("{stdin:?}"),
        }),
        // Input is shown by its size only, like file content.
        Action::SendInput {
            sandbox,
            process,
            data,
        } => serde_json::json!({
            "sandbox": sandbox,
            "process": process.to_string(),
            "size": data.len(),
        }),
        Action::ConnectProcess { sandbox, process }
        | Action::CloseStdin { sandbox, process }
        | Action::ResizeTerminal {
            sandbox, process, ..
        } => serde_json::json!({"sandbox": sandbox, "process": process.to_string()}),
        Action::SignalProcess {
            sandbox,
            process,
            signal,
        } => serde_json::json!({
            "sandbox": sandbox,
            "process": process.to_string(),
            "signal": signal.number(),
        }),
        Action::ListProcesses { sandbox } | Action::ListContexts { sandbox } => {
            serde_json::json!({"sandbox": sandbox})
        }
        Action::RunCode { sandbox, run } => serde_json::json!({
            "sandbox": sandbox,
            "code": run.code,
            "context": run.context,
            "env": env_names(&run.env),
        }),
        Action::CreateContext {
            sandbox,
            language,
            cwd,
        } => serde_json::json!({"sandbox": sandbox, "language": language, "cwd": cwd}),
        Action::RemoveContext { sandbox, context }
        | Action::RestartContext { sandbox, context } => {
            serde_json::json!({"sandbox": sandbox, "context": context})
        }
        // Never parked: a model's caller and a relayed tool call wait on their answer.
        Action::LlmExchange(exchange) => serde_json::json!({
            "format": format!("{:?}", exchange.format),
            "provider": exchange.provider,
        }),
        Action::McpToolCall(call) => serde_json::json!({
            "upstream": call.upstream,
            "tool": crate::action::mcp_safe_name(&call.tool),
        }),
        // Names and digests only: a definition's text is the upstream's, not the requester's,
        // and it is what the approver is asked to trust.
        Action::PinMcpTools(set) => serde_json::json!({
            "upstream": set.upstream,
            "digest": set.digest,
            "previous": set.previous,
            "tools": set.tools,
        }),
        Action::Filesystem { sandbox, op } => {
            serde_json::json!({"sandbox": sandbox, "operation": op.name()})
        }
        Action::SetTimeout { sandbox, timeout_s } => {
            serde_json::json!({"sandbox": sandbox, "timeout_s": timeout_s})
        }
        Action::ListSandboxes => serde_json::json!({}),
    };
    crate::dlp::mask_json_strings(view, &mut |s| dlp.redact(s).text)
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

fn encode(record: &ApprovalRecord) -> rusqlite::Result<String> {
    serde_json::to_string(record).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn expires_at_sql(record: &ApprovalRecord) -> i64 {
    i64::try_from(record.expires_at).unwrap_or(i64::MAX)
}

/// Stores a new record. An existing id is an error: every later change goes through
/// [`replace`], so nothing overwrites a record it did not read.
pub fn insert(store: &Store, record: &ApprovalRecord) -> Result<(), StoreError> {
    store.with_connection(|c| {
        c.execute(
            "INSERT INTO approvals (id, tenant, status, expires_at, record) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.id,
                record.tenant,
                record.status.as_str(),
                expires_at_sql(record),
                encode(record)?
            ],
        )
        .map(|_| ())
    })
}

/// A record with the stored text it was read from: the version a [`replace`] compares with.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub record: ApprovalRecord,
    stored: String,
}

pub fn get_versioned(store: &Store, id: &str) -> Result<Option<Versioned>, StoreError> {
    store.with_connection(|c| {
        c.query_row("SELECT record FROM approvals WHERE id = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .map(|stored| {
            Ok(Versioned {
                record: decode(stored.clone())?,
                stored,
            })
        })
        .transpose()
    })
}

/// The compare-and-swap every change of a stored approval goes through: writes `new` only if
/// the stored row is still exactly the one `read` came from, in one conditional `UPDATE`
/// (atomic in SQLite, also against other processes on the same database). `Ok(false)`: someone
/// changed it first; read it again and decide again.
pub fn replace(store: &Store, read: &Versioned, new: &ApprovalRecord) -> Result<bool, StoreError> {
    store.with_connection(|c| {
        c.execute(
            "UPDATE approvals SET status = ?2, expires_at = ?3, record = ?4 WHERE id = ?1 AND record = ?5",
            params![
                read.record.id,
                new.status.as_str(),
                expires_at_sql(new),
                encode(new)?,
                read.stored
            ],
        )
        .map(|changed| changed == 1)
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
pub fn due(store: &Store, now: u64) -> Result<Vec<Versioned>, StoreError> {
    store.with_connection(|c| {
        versioned_where(
            c,
            "status = 'pending' AND expires_at <= ?1",
            [i64::try_from(now).unwrap_or(i64::MAX)],
        )
    })
}

pub(super) fn versioned_where(
    c: &rusqlite::Connection,
    condition: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Versioned>> {
    let mut stmt = c.prepare(&format!("SELECT record FROM approvals WHERE {condition}"))?;
    let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    rows.map(|r| {
        r.and_then(|stored| {
            Ok(Versioned {
                record: decode(stored.clone())?,
                stored,
            })
        })
    })
    .collect()
}

/// At start-up: ends every approval a previous run left pending or approved, except those
/// `kept` (their held request was restored and can still run).
pub fn expire_all_pending(
    store: &Store,
    reason: &str,
    kept: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, StoreError> {
    let stale = store
        .with_connection(|c| versioned_where(c, "status IN ('pending', 'approved')", params![]))?;
    let mut ids = Vec::new();
    for read in stale.into_iter().filter(|r| !kept(&r.record.id)) {
        let mut r = read.record.clone();
        r.status = if r.status == Status::Approved {
            Status::Failed
        } else {
            Status::Expired
        };
        r.status_reason = Some(reason.to_owned());
        if replace(store, &read, &r)? {
            ids.push(r.id);
        }
    }
    Ok(ids)
}

/// Expires every pending approval `requester` asked for (their API key was revoked), each by
/// compare-and-swap, so one an approver decides at the same moment is either decided first (and
/// its run then refuses the revoked key) or expired here. Returns the records expired. Creates
/// the table when missing: `ztee apikey revoke` may run against a database no gateway opened.
pub fn expire_pending_of(
    store: &Store,
    requester: &str,
    reason: &str,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    store.with_connection(|c| c.execute_batch(TABLE))?;
    let mut expired = Vec::new();
    for _ in 0..5 {
        let pending =
            store.with_connection(|c| versioned_where(c, "status = 'pending'", params![]))?;
        let mut raced = false;
        for read in pending.iter().filter(|v| v.record.requester == requester) {
            let mut r = read.record.clone();
            r.status = Status::Expired;
            r.status_reason = Some(reason.to_owned());
            if replace(store, read, &r)? {
                expired.push(r);
            } else {
                raced = true;
            }
        }
        if !raced {
            break;
        }
    }
    Ok(expired)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pending(id: &str, requester: &str) -> ApprovalRecord {
        ApprovalRecord {
            id: id.into(),
            tenant: "acme".into(),
            requester: requester.into(),
            action: "run".into(),
            status: Status::Pending,
            status_reason: None,
            created_at: 1,
            expires_at: 4_000_000_000,
            risk: "HIGH".into(),
            rule_ids: vec!["pci.raw_pan_in_code".into()],
            reasons: vec![],
            required_approvals: 1,
            request: serde_json::json!({}),
            inputs: vec![],
            decisions: vec![],
            result: None,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        create_table(&store).unwrap();
        (dir, store)
    }

    /// The interleaving of an approve and a deny forced: both read the pending approval, the
    /// approve writes first; the deny's write must not land on top of it.
    #[test]
    fn of_two_changes_made_from_the_same_read_only_the_first_lands() {
        let (_dir, store) = store();
        insert(&store, &pending("apr_1", "apikey:agent")).unwrap();
        let approver_read = get_versioned(&store, "apr_1").unwrap().unwrap();
        let denier_read = get_versioned(&store, "apr_1").unwrap().unwrap();
        let mut approved = approver_read.record.clone();
        approved.status = Status::Approved;
        let mut denied = denier_read.record.clone();
        denied.status = Status::Denied;
        assert!(replace(&store, &approver_read, &approved).unwrap());
        assert!(
            !replace(&store, &denier_read, &denied).unwrap(),
            "a deny made from a stale read overwrote the approval"
        );
        assert_eq!(
            get(&store, "apr_1").unwrap().unwrap().status,
            Status::Approved
        );
        // A change in a pending record (a first of two approvals) is a change too.
        insert(&store, &pending("apr_2", "apikey:agent")).unwrap();
        let first = get_versioned(&store, "apr_2").unwrap().unwrap();
        let second = get_versioned(&store, "apr_2").unwrap().unwrap();
        let mut one = first.record.clone();
        one.decisions.push(DecisionEntry {
            by: "apikey:alice".into(),
            approve: true,
            comment: None,
            at: 2,
            via: Some("api".into()),
        });
        assert!(replace(&store, &first, &one).unwrap());
        assert!(!replace(&store, &second, &second.record).unwrap());
        assert!(
            insert(&store, &pending("apr_2", "x")).is_err(),
            "no blind overwrite"
        );
    }

    #[test]
    fn a_revoked_requesters_pending_approvals_expire_and_only_theirs() {
        let (_dir, store) = store();
        insert(&store, &pending("apr_1", "apikey:gone")).unwrap();
        insert(&store, &pending("apr_2", "apikey:other")).unwrap();
        let mut done = pending("apr_3", "apikey:gone");
        done.status = Status::Executed;
        insert(&store, &done).unwrap();
        let expired = expire_pending_of(&store, "apikey:gone", "revoked").unwrap();
        assert_eq!(
            expired.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["apr_1"]
        );
        let r = get(&store, "apr_1").unwrap().unwrap();
        assert_eq!(r.status, Status::Expired);
        assert_eq!(r.status_reason.as_deref(), Some("revoked"));
        assert_eq!(
            get(&store, "apr_2").unwrap().unwrap().status,
            Status::Pending
        );
        assert_eq!(
            get(&store, "apr_3").unwrap().unwrap().status,
            Status::Executed
        );
        // Against a database no gateway opened yet (no approvals table): nothing to expire.
        let dir = tempfile::tempdir().unwrap();
        let bare = Store::open(&dir.path().join("s.db")).unwrap();
        assert!(expire_pending_of(&bare, "apikey:gone", "revoked")
            .unwrap()
            .is_empty());
    }
}
