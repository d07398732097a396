//! The approval gate: a request that policy holds for a human is parked, announced, decided and
//! then executed (or not).
//!
//! ```text
//! POST /v1/run -> policy: require_approval -> park (202 + approval id and link)
//!   -> webhooks (signed JSON, Slack template) with signed approve/deny callback links
//!   -> approvers: GET /v1/approvals[/{id}], POST .../approve | .../deny   (or the callback)
//!   -> approved (by enough distinct approvers, never the requester) -> the parked request runs
//!   -> result stored with the approval; the requester long-polls GET /v1/approvals/{id}?wait=N
//!   -> pending too long -> expired
//! ```
//! Records (status, masked request, decisions, result) are kept in the state database and
//! survive a restart. The request itself (code, env, files: possibly card data) is kept in
//! memory only, so it never reaches a disk; a request still pending when the gateway stops
//! cannot run after the restart and is marked expired with that reason.

pub mod callback;
pub mod record;
pub mod webhook;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use ztee_audit::{EventType, Outcome};

use crate::api::types::{CreateSandbox, OneShotRun, RunCommand};
use crate::audit;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy::Decision;
use crate::principal::Permission;
use crate::state::AppState;
use crate::store::{Store, StoreError};
pub use record::{ApprovalRecord, DecisionEntry, Status};

/// `[approvals]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Seconds a request waits for its approvals before it expires (default 3600).
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Policy rule ids (e.g. `pci.raw_pan_in_code`) whose hold needs two distinct approvers.
    #[serde(default)]
    pub two_person_rules: Vec<String>,
    /// Base URL approvers and webhooks reach the gateway at, for links
    /// (default `http://<listen>`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where notifications go.
    #[serde(default)]
    pub webhooks: Vec<webhook::WebhookConfig>,
}

fn default_ttl() -> u64 {
    3600
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl_s: default_ttl(),
            two_person_rules: Vec::new(),
            public_url: None,
            webhooks: Vec::new(),
        }
    }
}

/// What a pending approval will run once approved.
#[derive(Clone)]
pub enum HeldRequest {
    /// A one-shot run (`POST /v1/run`).
    Run(OneShotRun),
    /// A command in an existing sandbox (`POST /v1/sandboxes/{id}/commands`).
    Command {
        sandbox: String,
        request: RunCommand,
    },
    /// A new sandbox (`POST /v1/sandboxes`), for example one that asks for egress.
    SandboxCreate(CreateSandbox),
}

impl HeldRequest {
    fn action(&self) -> &'static str {
        match self {
            HeldRequest::Run(_) => "run",
            HeldRequest::Command { .. } => "sandbox.exec",
            HeldRequest::SandboxCreate(_) => "sandbox.create",
        }
    }
}

/// The request a pending approval will run, with the identity it runs as. Memory only.
struct Parked {
    caller: Caller,
    request: HeldRequest,
}

/// Who decides: an authenticated approver, or the holder of a signed callback link.
pub enum Approver<'a> {
    Caller(&'a Caller),
    Callback,
}

pub struct Approvals {
    pub config: ApprovalsConfig,
    store: Store,
    parked: Mutex<HashMap<String, Parked>>,
    /// Bumped on every change, for long-polls.
    changed: tokio::sync::watch::Sender<u64>,
    callback_key: callback::CallbackKey,
    webhooks: Vec<webhook::Webhook>,
    public_url: String,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(e)
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "approval_not_pending", message)
}

impl Approvals {
    /// Opens the approvals table, loads (or creates) the callback key and marks requests left
    /// pending by a previous run as expired.
    pub fn open(
        config: ApprovalsConfig,
        store: Store,
        data_dir: &Path,
        listen: std::net::SocketAddr,
    ) -> Result<(Self, Vec<String>), String> {
        record::create_table(&store).map_err(|e| e.to_string())?;
        let callback_key =
            callback::CallbackKey::load_or_create(&data_dir.join("approvals-callback.key"))?;
        let webhooks = config
            .webhooks
            .iter()
            .map(webhook::Webhook::new)
            .collect::<Result<Vec<_>, _>>()?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let stale = record::expire_all_pending(
            &store,
            "the gateway restarted while this request waited; request content is kept in memory only (so card data never reaches a disk): submit it again",
        )
        .map_err(|e| e.to_string())?;
        if !stale.is_empty() {
            tracing::info!(
                stale = stale.len(),
                "expired approvals left pending by a previous run"
            );
        }
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok((
            Self {
                config,
                store,
                parked: Mutex::new(HashMap::new()),
                changed,
                callback_key,
                webhooks,
                public_url,
            },
            stale,
        ))
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn link(&self, id: &str) -> String {
        format!("{}/v1/approvals/{id}", self.public_url)
    }

    async fn load(&self, id: &str) -> Result<ApprovalRecord, ApiError> {
        let id = id.to_owned();
        self.store
            .run(move |s| record::get(s, &id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("no such approval (or not visible)"))
    }

    async fn save(&self, record: &ApprovalRecord) -> Result<(), ApiError> {
        let r = record.clone();
        self.store
            .run(move |s| record::put(s, &r))
            .await
            .map_err(store_error)?;
        self.bump();
        Ok(())
    }

    /// Whether `caller` may see `record`: its requester, an approver of its tenant, an admin.
    pub fn visible(caller: &Caller, record: &ApprovalRecord) -> bool {
        let p = &caller.principal;
        p.has(Permission::Admin)
            || (p.tenant == record.tenant
                && (p.subject == record.requester || p.has(Permission::ApprovalDecide)))
    }

    pub async fn get_visible(&self, caller: &Caller, id: &str) -> Result<ApprovalRecord, ApiError> {
        let record = self.load(id).await?;
        if !Self::visible(caller, &record) {
            return Err(ApiError::not_found("no such approval (or not visible)"));
        }
        Ok(record)
    }

    pub async fn list_visible(
        &self,
        caller: &Caller,
        status: Option<Status>,
    ) -> Result<Vec<ApprovalRecord>, ApiError> {
        let tenant =
            (!caller.principal.has(Permission::Admin)).then(|| caller.principal.tenant.clone());
        let all = self
            .store
            .run(move |s| record::list(s, tenant.as_deref()))
            .await
            .map_err(store_error)?;
        let mut out = Vec::new();
        out.extend(
            all.into_iter()
                .filter(|r| Self::visible(caller, r) && status.is_none_or(|s| s == r.status)),
        );
        Ok(out)
    }

    /// Waits until the approval leaves `pending`/`approved` or `wait` passes.
    pub async fn wait(
        &self,
        caller: &Caller,
        id: &str,
        wait: Duration,
    ) -> Result<ApprovalRecord, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.changed.subscribe();
        loop {
            let record = self.get_visible(caller, id).await?;
            if record.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }

    /// Expires a pending approval past its time (the expiry task calls this; it audits).
    async fn expire(&self, mut record: ApprovalRecord) -> Result<ApprovalRecord, ApiError> {
        record.status = Status::Expired;
        record.status_reason = Some("no decision before the approval expired".into());
        self.forget(&record.id);
        self.save(&record).await?;
        Ok(record)
    }

    fn forget(&self, id: &str) -> Option<Parked> {
        self.parked.lock().ok()?.remove(id)
    }
}

/// Parks a held request and answers `202 Accepted` with the approval and where to wait for it.
pub async fn park_answer(
    state: &Arc<AppState>,
    caller: &Caller,
    request: HeldRequest,
    decision: &Decision,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let record = park(state, caller, request, decision).await?;
    let link = state.approvals.link(&record.id);
    let body = serde_json::json!({"approval": {
        "id": record.id,
        "status": record.status,
        "expires_at": record.expires_at,
        "required_approvals": record.required_approvals,
        "rule_ids": record.rule_ids,
        "reasons": record.reasons,
        "link": link,
        "wait": format!("{link}?wait=30"),
    }});
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, link)],
        axum::Json(body),
    )
        .into_response())
}

/// Parks a held request and announces it. Returns the record the 202 answer shows.
pub async fn park(
    state: &Arc<AppState>,
    caller: &Caller,
    request: HeldRequest,
    decision: &Decision,
) -> Result<ApprovalRecord, ApiError> {
    let approvals = &state.approvals;
    let id = format!("apr_{}", uuid::Uuid::new_v4().simple());
    let created_at = now();
    let two_person = decision
        .reasons
        .iter()
        .any(|r| approvals.config.two_person_rules.contains(r));
    let record = ApprovalRecord {
        id: id.clone(),
        tenant: caller.principal.tenant.clone(),
        requester: caller.principal.subject.clone(),
        action: request.action().into(),
        status: Status::Pending,
        status_reason: None,
        created_at,
        expires_at: created_at + approvals.config.ttl_s,
        risk: decision.risk.to_owned(),
        rule_ids: decision.reasons.clone(),
        reasons: decision.messages.clone(),
        required_approvals: if two_person { 2 } else { 1 },
        request: record::masked_view(state.pipeline.dlp.as_ref(), &request),
        decisions: Vec::new(),
        result: None,
    };
    if let Ok(mut parked) = approvals.parked.lock() {
        parked.insert(
            id.clone(),
            Parked {
                caller: caller.clone(),
                request,
            },
        );
    }
    if let Err(e) = approvals.save(&record).await {
        approvals.forget(&id);
        return Err(e);
    }
    let event = audit::event(
        EventType::ApprovalRequest,
        Outcome::PendingApproval,
        audit::audit_principal(&caller.principal),
        caller.request_id.as_str(),
        caller.origin_ip,
        Some(&format!("approval/{id}")),
    )
    .with_decision(audit::decision_record(decision));
    state.pipeline.record(event).await?;
    notify(state, &record, "approval.requested");
    Ok(record)
}

fn notify(state: &Arc<AppState>, record: &ApprovalRecord, kind: &'static str) {
    let approvals = &state.approvals;
    if approvals.webhooks.is_empty() {
        return;
    }
    let links = webhook::Links {
        view: approvals.link(&record.id),
        approve: (record.status == Status::Pending).then(|| {
            approvals
                .callback_key
                .url(&approvals.public_url, &record.id, true, record.expires_at)
        }),
        deny: (record.status == Status::Pending).then(|| {
            approvals
                .callback_key
                .url(&approvals.public_url, &record.id, false, record.expires_at)
        }),
    };
    for hook in &approvals.webhooks {
        hook.send(kind, record, &links);
    }
}

/// An approve or deny. The requester can never approve their own request; an approver decides
/// once; with the two-person rule, two distinct approvers must approve.
pub async fn decide(
    state: &Arc<AppState>,
    approver: Approver<'_>,
    id: &str,
    approve: bool,
    comment: Option<String>,
) -> Result<ApprovalRecord, ApiError> {
    let approvals = &state.approvals;
    let mut record = approvals.load(id).await?;
    let by = match &approver {
        Approver::Caller(caller) => {
            caller.principal.require(Permission::ApprovalDecide)?;
            if !Approvals::visible(caller, &record) {
                return Err(ApiError::not_found("no such approval (or not visible)"));
            }
            if approve && caller.principal.subject == record.requester {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "self_approval",
                    "the requester of an approval can never approve it; another approver must",
                ));
            }
            caller.principal.subject.clone()
        }
        Approver::Callback => "callback:signed-link".to_owned(),
    };
    if let Some(c) = &comment {
        if c.len() > 1000 {
            return Err(ApiError::bad_request("comment: at most 1000 bytes"));
        }
    }
    if record.status == Status::Pending && now() >= record.expires_at {
        // The expiry task marks it within a second; a late decision never counts.
        return Err(conflict(format!("approval {id} has expired")));
    }
    if record.status != Status::Pending {
        return Err(conflict(format!(
            "approval {id} is {}; only pending approvals can be decided",
            record.status.as_str()
        )));
    }
    if record.decisions.iter().any(|d| d.by == by) {
        return Err(conflict(format!(
            "{by} has already decided on approval {id}"
        )));
    }
    // Comments are shown to people and stored: mask what DLP finds in them.
    let comment = comment.map(|c| state.pipeline.dlp.redact(&c).text);
    record.decisions.push(DecisionEntry {
        by: by.clone(),
        approve,
        comment,
        at: now(),
    });
    let approvals_given = record.decisions.iter().filter(|d| d.approve).count();
    let (event_type, outcome) = if !approve {
        record.status = Status::Denied;
        record.status_reason = Some(format!("denied by {by}"));
        approvals.forget(id);
        (EventType::ApprovalReject, Outcome::Denied)
    } else if approvals_given >= record.required_approvals as usize {
        record.status = Status::Approved;
        (EventType::ApprovalGrant, Outcome::Success)
    } else {
        (EventType::ApprovalGrant, Outcome::PendingApproval)
    };
    approvals.save(&record).await?;
    let principal = match &approver {
        Approver::Caller(c) => audit::audit_principal(&c.principal),
        Approver::Callback => ztee_audit::Principal::system(),
    };
    let (request_id, origin) = match &approver {
        Approver::Caller(c) => (c.request_id.as_str().to_owned(), c.origin_ip),
        Approver::Callback => (format!("callback-{id}"), None),
    };
    let event = audit::event(
        event_type,
        outcome,
        principal,
        &request_id,
        origin,
        Some(&format!("approval/{id}")),
    );
    state.pipeline.record(event).await?;
    if record.status == Status::Approved {
        let state = state.clone();
        let id = id.to_owned();
        tokio::spawn(async move { execute(state, id).await });
    }
    if record.status.is_final() || record.status == Status::Approved {
        notify(state, &record, "approval.decided");
    }
    Ok(record)
}

/// Runs an approved request as its requester and stores the (outbound-masked) result.
async fn execute(state: Arc<AppState>, id: String) {
    let approvals = &state.approvals;
    let Ok(mut record) = approvals.load(&id).await else {
        return;
    };
    fn json(result: impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(result).unwrap_or_default()
    }
    let outcome = match approvals.forget(&id) {
        Some(Parked {
            caller,
            request: HeldRequest::Run(request),
        }) => crate::api::run_approved(state.clone(), caller, request, &id)
            .await
            .map(json),
        Some(Parked {
            caller,
            request: HeldRequest::Command { sandbox, request },
        }) => crate::api::command_approved(state.clone(), caller, &sandbox, request, &id)
            .await
            .map(json),
        Some(Parked {
            caller,
            request: HeldRequest::SandboxCreate(request),
        }) => crate::api::create_approved(state.clone(), caller, request, &id)
            .await
            .map(json),
        None => Err(ApiError::unavailable(
            "the request content is no longer held (the gateway restarted); submit it again",
        )),
    };
    match outcome {
        Ok(result) => {
            record.status = Status::Executed;
            record.result = Some(result);
        }
        Err(e) => {
            record.status = Status::Failed;
            record.result =
                Some(serde_json::json!({"error": {"code": e.code, "message": e.message}}));
        }
    }
    if let Err(e) = approvals.save(&record).await {
        tracing::error!(approval = %id, error = %e.message, "storing an approval's result");
    }
    notify(&state, &record, "approval.executed");
}

/// Marks pending approvals past their expiry as expired, once a second, for as long as the
/// gateway lives.
pub fn spawn_expiry(state: Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            let due = state
                .approvals
                .store
                .run(|s| record::due(s, now()))
                .await
                .unwrap_or_default();
            for r in due {
                let id = r.id.clone();
                if let Ok(r) = state.approvals.expire(r).await {
                    record_expiry(&state, &id).await;
                    notify(&state, &r, "approval.expired");
                }
            }
        }
    });
}

/// Audits an approval that ended without a decision (expired, or lost to a restart).
pub async fn record_expiry(state: &AppState, id: &str) {
    let event = audit::event(
        EventType::ApprovalReject,
        Outcome::Failure,
        ztee_audit::Principal::system(),
        &format!("expiry-{id}"),
        None,
        Some(&format!("approval/{id}")),
    );
    if let Err(e) = state.pipeline.record(event).await {
        tracing::error!(approval = %id, error = %e.message, "recording an expired approval");
    }
}

/// Checks a signed callback link and decides with it.
pub async fn decide_by_callback(
    state: &Arc<AppState>,
    id: &str,
    query: &callback::CallbackQuery,
) -> Result<ApprovalRecord, ApiError> {
    state.approvals.callback_key.verify(id, query, now())?;
    decide(state, Approver::Callback, id, query.approve(), None).await
}

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("approvals-callback.key")
}
