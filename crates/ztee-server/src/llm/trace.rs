//! Traces: every LLM exchange as one JSON line, the conversation in OpenAI's message format
//! (system/user/assistant/tool messages with `tool_calls`), masked (placeholders, never a raw
//! card number), with the policy decisions annotated and the request id that links it to the
//! audit event.
//!
//! Stored per tenant as `<data-dir>/traces/<tenant>.jsonl` (append-only) and exported with
//! `GET /v1/traces` (permission `audit:read`) as JSON lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::LlmSetupError;
use crate::auth::Caller;
use crate::error::ActionError;
use crate::principal::Permission;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Same as the audit event's `request_id`.
    pub request_id: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub tenant: String,
    pub subject: String,
    /// `llm.chat`.
    pub kind: String,
    /// `openai` or `anthropic`: the request shape the caller used.
    pub api: String,
    /// The configured provider the request went to (none when policy refused every one).
    pub provider: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    /// `success`, `denied`, `tool_call_denied`, `upstream_error`.
    pub outcome: String,
    pub duration_ms: u64,
    /// The conversation as sent upstream plus the answer, in OpenAI's message format.
    pub messages: Vec<serde_json::Value>,
    pub decisions: Vec<DecisionNote>,
    pub injection: InjectionNote,
    pub redactions: RedactionNote,
}

/// One policy decision taken during the exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionNote {
    /// `llm.chat` or `tool.call`.
    pub action: String,
    /// The provider (llm.chat) or the tool name (tool.call).
    pub target: Option<String>,
    pub verdict: ztee_policy::Verdict,
    pub risk: String,
    pub rules: Vec<String>,
    pub messages: Vec<String>,
}

impl DecisionNote {
    pub fn new(action: &str, target: Option<&str>, d: &ztee_policy::Decision) -> Self {
        Self {
            action: action.into(),
            target: target.map(str::to_owned),
            verdict: d.verdict,
            risk: d.risk.as_str().to_owned(),
            rules: d.reasons.iter().map(|r| r.rule.clone()).collect(),
            messages: d.reasons.iter().map(|r| r.message.clone()).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InjectionNote {
    pub score: f64,
    pub rules: Vec<String>,
    /// The field that scored highest, e.g. `messages[3].content`.
    pub field: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedactionNote {
    /// Findings tokenized before the request left, per entity.
    pub inbound: BTreeMap<String, u32>,
    /// Findings masked in the answer, per entity.
    pub outbound: BTreeMap<String, u64>,
}

pub struct TraceStore {
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl TraceStore {
    pub fn open(dir: &Path) -> Result<Self, LlmSetupError> {
        std::fs::create_dir_all(dir).map_err(|source| LlmSetupError::Traces {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// A store over an existing directory, for reading (`ztee traces export`).
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Tenants that have traces, sorted.
    pub fn tenants(&self) -> std::io::Result<Vec<String>> {
        let mut tenants = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(tenants),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name();
            if let Some(tenant) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) {
                tenants.push(tenant.to_owned());
            }
        }
        tenants.sort();
        Ok(tenants)
    }

    fn file(&self, tenant: &str) -> PathBuf {
        // Tenant names are validated path-safe identifiers (principal::validate_tenant).
        self.dir.join(format!("{tenant}.jsonl"))
    }

    /// Appends one line. A trace that cannot be written is logged: the audit event (written
    /// first, fail-closed) remains the record of the exchange.
    pub fn append(&self, record: &TraceRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "encoding a trace failed");
                return;
            }
        };
        line.push(b'\n');
        let _guard = self.lock.lock();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(&record.tenant))
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            tracing::error!(error = %e, tenant = %record.tenant, "writing a trace failed");
        }
    }

    /// The tenant's traces, oldest first, filtered.
    pub fn read(&self, tenant: &str, filter: &TraceQuery) -> std::io::Result<Vec<String>> {
        let file = match std::fs::File::open(self.file(tenant)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let since = match &filter.since {
            Some(s) => Some(humantime::parse_rfc3339_weak(s).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("since: {e}"))
            })?),
            None => None,
        };
        let mut out = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            let Ok(record) = serde_json::from_str::<TraceRecord>(&line) else {
                continue;
            };
            if filter
                .request_id
                .as_deref()
                .is_some_and(|id| id != record.request_id)
                || since.is_some_and(|since| {
                    humantime::parse_rfc3339_weak(&record.time).is_ok_and(|t| t < since)
                })
            {
                continue;
            }
            out.push(line);
        }
        let limit = filter.limit.unwrap_or(1000).min(100_000);
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    /// Only the trace of this request.
    pub request_id: Option<String>,
    /// RFC 3339 time; traces at or after it.
    pub since: Option<String>,
    /// The most recent N (default 1000).
    pub limit: Option<usize>,
    /// Another tenant's traces (platform operators with `platform:admin` only).
    pub tenant: Option<String>,
}

/// `GET /v1/traces`: JSON lines, one trace per line.
pub async fn export(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    query: Result<Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ActionError> {
    caller.require(Permission::AuditRead)?;
    let Query(query) = query.map_err(|e| ActionError::bad_request(e.body_text()))?;
    if let Some(since) = &query.since {
        humantime::parse_rfc3339_weak(since).map_err(|e| {
            ActionError::bad_request(format!("since={since:?} is not an RFC 3339 time: {e}"))
        })?;
    }
    let tenant = match &query.tenant {
        Some(t) if *t != caller.principal.tenant => {
            caller.require(Permission::PlatformAdmin)?;
            crate::principal::validate_tenant(t).map_err(ActionError::bad_request)?;
            t.clone()
        }
        _ => caller.principal.tenant.clone(),
    };
    let store_dir = state.llm.traces.dir.clone();
    let lock = state.llm.traces.lock.clone();
    let lines = tokio::task::spawn_blocking(move || {
        let store = TraceStore {
            dir: store_dir,
            lock,
        };
        store.read(&tenant, &query)
    })
    .await
    .map_err(ActionError::internal)?
    .map_err(ActionError::internal)?;
    let event = crate::audit::event(
        ztee_audit::EventType::AuditAccess,
        ztee_audit::Outcome::Success,
        crate::audit::audit_principal(&caller.principal),
        caller.request_id.as_str(),
        caller.origin_ip,
        Some("traces"),
    );
    state.pipeline.record(event).await?;
    let mut body = String::new();
    for line in lines {
        body.push_str(&line);
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
