//! The approval gate: a request that policy holds for a human is parked, announced, decided and
//! then executed (or not).
//!
//! ```text
//! POST /v1/run -> policy: require_approval -> park (202 + approval id and link)
//!   -> webhooks (signed JSON, Slack template), each with approve/deny links signed for the one
//!      approver (an API key) the webhook is configured for
//!   -> approvers: GET /v1/approvals[/{id}], POST .../approve | .../deny
//!      (or POST on their signed link; GET on it only shows a confirmation page)
//!   -> approved (by enough distinct identities, never the requester) -> the requester's
//!      credential is checked again (a revoked key, an expired token: nothing runs)
//!      -> the parked request runs
//!   -> result stored with the approval; the requester long-polls GET /v1/approvals/{id}?wait=N
//!   -> pending too long (or the requester's key revoked, or their token expired) -> expired
//! ```
//! Every change of a stored approval is a compare-and-swap on the stored row
//! ([`record::replace`]): of an approve and a deny that race, exactly one lands, and the other
//! is answered 409 with the final state.
//! Records (status, masked request, decisions, result) are kept in the state database and
//! survive a restart. The request itself (code, env, files: possibly card data) is kept beside
//! its record sealed with AES-256-GCM under a key that is not in the database ([`sealed`]): a
//! gateway that restarts parks its pending requests again, runs the ones approved while it was
//! down, and drops the content the moment a request runs or ends. A request whose sealed content
//! does not open (another seal key) cannot run and ends with that reason.

pub mod callback;
pub mod hold;
pub mod inputs;
pub mod record;
pub mod sealed;
pub mod webhook;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ztee_audit::{EventType, Outcome};
use ztee_state::config::ApprovalsConfig;

use crate::action::{Action, Approved, Delivery, HeldAction, Outcome as ActionOutcome};
use crate::audit;
use crate::auth::Caller;
use crate::error::ActionError;
use crate::policy::Decision;
use crate::principal::{AuthMethod, Permission, Principal};
use crate::state::AppState;
use crate::store::{Store, StoreError};
pub use record::{ApprovalRecord, DecisionEntry, Status};

/// The request a pending approval will run, with the identity it runs as (sealed in the
/// database too, see [`sealed`]).
struct Parked {
    caller: Caller,
    held: HeldAction,
}

/// Who decides, and through which door. Either way it is one identity, counted once.
pub enum Approver<'a> {
    /// An approver who called the API with their own credential.
    Caller(&'a Caller),
    /// The named approver of a signed link, looked up in the key store when the link was used.
    Link(&'a Caller),
}

impl Approver<'_> {
    fn caller(&self) -> &Caller {
        match self {
            Approver::Caller(c) | Approver::Link(c) => c,
        }
    }

    fn via(&self) -> &'static str {
        match self {
            Approver::Caller(_) => "api",
            Approver::Link(_) => "link",
        }
    }
}

pub struct Approvals {
    pub config: ApprovalsConfig,
    store: Store,
    parked: Mutex<HashMap<String, Parked>>,
    /// What held requests reserve against [`ApprovalsConfig::hold_limits`].
    holds: hold::Ledger,
    /// Bumped on every change, for long-polls.
    changed: tokio::sync::watch::Sender<u64>,
    callback_key: callback::CallbackKey,
    /// Seals held requests kept beside their records.
    seal: sealed::SealKey,
    webhooks: Vec<webhook::Webhook>,
    public_url: String,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn store_error(e: StoreError) -> ActionError {
    ActionError::internal(e)
}

fn conflict(message: impl Into<String>) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::Conflict,
        "approval_not_pending",
        message,
    )
}

impl Approvals {
    /// Opens the approvals tables and loads (or creates) the callback and seal keys. Requests
    /// left pending or approved by a previous run are parked again when their sealed content
    /// opens; the others end. Returns the approvals, the ids of those that ended, and the ids
    /// of approved requests to run now ([`resume_approved`]).
    pub fn open(
        config: ApprovalsConfig,
        store: Store,
        data_dir: &Path,
        listen: std::net::SocketAddr,
        audit: Arc<dyn crate::audit::AuditSink>,
    ) -> Result<(Self, Vec<String>, Vec<String>), String> {
        record::create_table(&store).map_err(|e| e.to_string())?;
        sealed::create_table(&store).map_err(|e| e.to_string())?;
        let callback_key = callback::CallbackKey::load_or_create(&key_path(data_dir))?;
        let seal_path = config
            .seal_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("approvals-seal.key"));
        let seal = sealed::SealKey::load_or_create(&seal_path)?;
        let restored = restore(&store, &seal, audit)?;
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
            "the gateway restarted and this request's content could not be opened (its seal key is not this gateway's): submit it again",
            &|id| restored.iter().any(|(kept, _, _)| kept == id),
        )
        .map_err(|e| e.to_string())?;
        sealed::remove_ended(&store).map_err(|e| e.to_string())?;
        if !stale.is_empty() {
            tracing::info!(
                stale = stale.len(),
                "ended approvals left by a previous run whose content cannot be opened"
            );
        }
        let holds = hold::Ledger::new(config.hold_limits.clone());
        let mut parked = HashMap::new();
        let mut approved = Vec::new();
        for (id, entry, status) in restored {
            // Admitted once already: a restart does not refuse what the caps let in.
            if let Ok(slot) = holds.reserve(
                &id,
                &entry.caller.principal.tenant,
                &entry.caller.principal.subject,
                hold::held_bytes(&entry.held),
            ) {
                slot.keep();
            }
            if status == Status::Approved {
                approved.push(id.clone());
            }
            parked.insert(id, entry);
        }
        if !parked.is_empty() {
            tracing::info!(
                parked = parked.len(),
                approved = approved.len(),
                "held requests of a previous run parked again"
            );
        }
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok((
            Self {
                config,
                store,
                parked: Mutex::new(parked),
                holds,
                changed,
                callback_key,
                seal,
                webhooks,
                public_url,
            },
            stale,
            approved,
        ))
    }

    /// The approvals of a host where nobody can approve (the command line, whose pipeline
    /// refuses what needs approval, see [`crate::pipeline::HoldPolicy::Refuse`]): nothing is
    /// parked, so the state database and its key files are not touched, and a gateway sharing
    /// the data directory keeps its held requests.
    pub fn unavailable(config: ApprovalsConfig, store: Store) -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        Self {
            holds: hold::Ledger::new(config.hold_limits.clone()),
            config,
            store,
            parked: Mutex::new(HashMap::new()),
            changed,
            callback_key: callback::CallbackKey::ephemeral(),
            seal: sealed::SealKey::ephemeral(),
            webhooks: Vec::new(),
            public_url: String::new(),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn link(&self, id: &str) -> String {
        format!("{}/v1/approvals/{id}", self.public_url)
    }

    async fn load(&self, id: &str) -> Result<ApprovalRecord, ActionError> {
        Ok(self.load_versioned(id).await?.record)
    }

    async fn load_versioned(&self, id: &str) -> Result<record::Versioned, ActionError> {
        let id = id.to_owned();
        self.store
            .run(move |s| record::get_versioned(s, &id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ActionError::not_found("no such approval (or not visible)"))
    }

    async fn insert(&self, record: &ApprovalRecord) -> Result<(), ActionError> {
        let r = record.clone();
        self.store
            .run(move |s| record::insert(s, &r))
            .await
            .map_err(store_error)?;
        self.bump();
        Ok(())
    }

    /// Writes `new` if the stored approval is still the one `read` holds (compare-and-swap);
    /// `Ok(false)` when another change landed first.
    async fn replace(
        &self,
        read: &record::Versioned,
        new: &ApprovalRecord,
    ) -> Result<bool, ActionError> {
        let (read, new) = (read.clone(), new.clone());
        let swapped = self
            .store
            .run(move |s| record::replace(s, &read, &new))
            .await
            .map_err(store_error)?;
        if swapped {
            self.bump();
        }
        Ok(swapped)
    }

    /// Whether `caller` may see `record`: its requester, an approver of its tenant, a platform
    /// admin.
    pub fn visible(caller: &Caller, record: &ApprovalRecord) -> bool {
        Self::visible_to(&caller.principal, record)
    }

    fn visible_to(p: &Principal, record: &ApprovalRecord) -> bool {
        p.has(Permission::PlatformAdmin)
            || (p.tenant == record.tenant
                && (p.subject == record.requester || p.has(Permission::ApprovalDecide)))
    }

    pub async fn get_visible(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ApprovalRecord, ActionError> {
        let record = self.load(id).await?;
        if !Self::visible(caller, &record) {
            return Err(ActionError::not_found("no such approval (or not visible)"));
        }
        Ok(record)
    }

    pub async fn list_visible(
        &self,
        caller: &Caller,
        status: Option<Status>,
    ) -> Result<Vec<ApprovalRecord>, ActionError> {
        let tenant = (!caller.principal.has(Permission::PlatformAdmin))
            .then(|| caller.principal.tenant.clone());
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
    ) -> Result<ApprovalRecord, ActionError> {
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
    /// `Ok(None)`: a decision landed first, which then stands.
    async fn expire(&self, read: record::Versioned) -> Result<Option<ApprovalRecord>, ActionError> {
        let mut record = read.record.clone();
        record.status = Status::Expired;
        record.status_reason = Some("no decision before the approval expired".into());
        if !self.replace(&read, &record).await? {
            return Ok(None);
        }
        self.forget(&record.id);
        Ok(Some(record))
    }

    /// Drops a held request, in memory and its sealed copy: it ran, or it never will.
    fn forget(&self, id: &str) -> Option<Parked> {
        self.holds.release(id);
        if let Err(e) = sealed::remove(&self.store, id) {
            // Left behind, it is removed at the next start (`sealed::remove_ended`).
            tracing::error!(approval = %id, error = %e, "removing a sealed held request");
        }
        self.parked.lock().ok()?.remove(id)
    }

    /// Drops held requests whose approval ended without this process deciding it (expired by
    /// `ztee apikey revoke` in another process, for example), so their content (possibly card
    /// data) does not stay in memory.
    async fn drop_ended(&self) {
        let ids: Vec<String> = match self.parked.lock() {
            Ok(parked) => parked.keys().cloned().collect(),
            Err(_) => return,
        };
        for id in ids {
            let key = id.clone();
            let ended = match self.store.run(move |s| record::get(s, &key)).await {
                Ok(Some(r)) => r.status.is_final(),
                Ok(None) => true,
                Err(_) => false,
            };
            if ended {
                self.forget(&id);
            }
        }
        // A reservation whose request is not parked (a park that failed half-way) goes too.
        if let Ok(parked) = self.parked.lock() {
            self.holds.retain(|id| parked.contains_key(id));
        }
    }
}

/// A parked action, as its requester is told of it: the approval record and where to wait.
pub struct Ticket {
    pub record: ApprovalRecord,
    /// The approval's URL (`GET` shows it, `?wait=30` long-polls for its decision).
    pub link: String,
}

impl Ticket {
    /// What the requester is shown of the approval.
    pub fn summary(&self) -> serde_json::Value {
        let record = &self.record;
        serde_json::json!({"approval": {
            "id": record.id,
            "status": record.status,
            "expires_at": record.expires_at,
            "required_approvals": record.required_approvals,
            "rule_ids": record.rule_ids,
            "reasons": record.reasons,
            "link": self.link,
            "wait": format!("{}?wait=30", self.link),
        }})
    }
}

/// Parks a held action and announces it. Returns what its requester is told.
pub async fn park(
    state: &Arc<AppState>,
    caller: &Caller,
    held: HeldAction,
    decision: &Decision,
) -> Result<Ticket, ActionError> {
    if state.pipeline.holds == crate::pipeline::HoldPolicy::Refuse {
        return Err(crate::pipeline::approval_unavailable(decision));
    }
    let approvals = &state.approvals;
    let id = format!("apr_{}", uuid::Uuid::new_v4().simple());
    let created_at = now();
    let two_person = decision
        .reasons
        .iter()
        .any(|r| approvals.config.two_person_rules.contains(r));
    // A request held for an OIDC caller never outlives the caller's token: the approval
    // expires when the token does (the requester can submit it again with a fresh token).
    let expires_at = match caller.credential_expires_at {
        Some(token_exp) => (created_at + approvals.config.ttl_s).min(token_exp),
        None => created_at + approvals.config.ttl_s,
    };
    let record = ApprovalRecord {
        id: id.clone(),
        tenant: caller.principal.tenant.clone(),
        requester: caller.principal.subject.clone(),
        action: held.action.name().into(),
        status: Status::Pending,
        status_reason: None,
        created_at,
        expires_at,
        risk: decision.risk.to_owned(),
        rule_ids: decision.reasons.clone(),
        reasons: decision.messages.clone(),
        required_approvals: if two_person { 2 } else { 1 },
        request: record::masked_view(state.pipeline.dlp.as_ref(), &held),
        inputs: inputs::of_request(state.pipeline.dlp.as_ref(), &held),
        decisions: Vec::new(),
        result: None,
    };
    // Counted against the hold caps before it is parked; over a cap it is refused (and
    // audited), and a park that fails below gives the reservation back.
    let slot = match approvals.holds.reserve(
        &id,
        &caller.principal.tenant,
        &caller.principal.subject,
        hold::held_bytes(&held),
    ) {
        Ok(slot) => slot,
        Err(cap) => return Err(hold::refuse(state, caller, cap).await),
    };
    // Sealed beside the record before anything is announced, so the request survives this
    // process; nothing sealable (no door parks such an action) is refused rather than kept
    // where a restart would lose it.
    let sealed = sealed::Sealed::of(caller, &held)
        .ok_or_else(|| ActionError::internal(format!("a {} cannot be held", held.action.name())))
        .and_then(|s| approvals.seal.seal(&id, &s).map_err(ActionError::internal))?;
    {
        let key = id.clone();
        approvals
            .store
            .run(move |s| sealed::put(s, &key, &sealed))
            .await
            .map_err(store_error)?;
    }
    if let Ok(mut parked) = approvals.parked.lock() {
        // One pending command per sandbox, checked and parked under the one lock: the files a
        // held command is bound to must not be changed through the gateway by another hold.
        if let Action::Exec { sandbox, .. } = &held.action {
            if let Some(other) = parked.iter().find_map(|(other, p)| match &p.held.action {
                Action::Exec { sandbox: s, .. } if s == sandbox => Some(other),
                _ => None,
            }) {
                let refusal = inputs::sandbox_held(sandbox, other);
                drop(parked);
                approvals.forget(&id);
                return Err(refusal);
            }
        }
        parked.insert(
            id.clone(),
            Parked {
                caller: caller.clone(),
                held,
            },
        );
    }
    if let Err(e) = approvals.insert(&record).await {
        approvals.forget(&id);
        return Err(e);
    }
    slot.keep();
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
    let link = approvals.link(&record.id);
    Ok(Ticket { record, link })
}

fn notify(state: &Arc<AppState>, record: &ApprovalRecord, kind: &'static str) {
    let approvals = &state.approvals;
    if approvals.webhooks.is_empty() {
        return;
    }
    for hook in &approvals.webhooks {
        // Decision links only while pending, and only for the approver this webhook names:
        // a link is that one identity, never an extra approver.
        let approver = hook
            .approver
            .as_deref()
            .filter(|_| record.status == Status::Pending);
        let url = |approve| {
            approver.map(|a| {
                approvals.callback_key.url(
                    &approvals.public_url,
                    &record.id,
                    approve,
                    record.expires_at,
                    a,
                )
            })
        };
        let links = webhook::Links {
            view: approvals.link(&record.id),
            approve: url(true),
            deny: url(false),
            approver: approver.map(str::to_owned),
        };
        hook.send(kind, record, &links);
    }
}

/// The 409 for a decision on an approval that is no longer pending, saying how it ended.
fn not_pending(record: &ApprovalRecord) -> ActionError {
    let id = &record.id;
    let status = record.status.as_str();
    let how = match record.status {
        Status::Approved | Status::Executed | Status::Failed => {
            let by: Vec<&str> = record
                .decisions
                .iter()
                .filter(|d| d.approve)
                .map(|d| d.by.as_str())
                .collect();
            format!(" (approved by {})", by.join(", "))
        }
        _ => record
            .status_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    };
    conflict(format!(
        "approval {id} is already {status}{how}; only pending approvals can be decided"
    ))
}

/// How many times a decision reads the approval again after another change landed first
/// (another approver's decision on a two-person approval); the checks run again each time.
const DECIDE_ATTEMPTS: usize = 16;

/// An approve or deny. The requester can never approve their own request; an identity decides
/// once, whether through the API or its signed link; with the two-person rule, two distinct
/// identities must approve. The change is a compare-and-swap: of concurrent decisions exactly
/// one ends the approval, the others get 409 with the final state.
pub async fn decide(
    state: &Arc<AppState>,
    approver: Approver<'_>,
    id: &str,
    approve: bool,
    comment: Option<String>,
) -> Result<ApprovalRecord, ActionError> {
    let approvals = &state.approvals;
    let caller = approver.caller();
    let principal = &caller.principal;
    caller.require(Permission::ApprovalDecide)?;
    if let Some(c) = &comment {
        if c.len() > 1000 {
            return Err(ActionError::bad_request("comment: at most 1000 bytes"));
        }
    }
    // Comments are shown to people and stored: mask what DLP finds in them.
    let comment = comment.map(|c| state.pipeline.dlp.redact(&c).text);
    let by = principal.subject.clone();
    let mut decided = None;
    for _ in 0..DECIDE_ATTEMPTS {
        let read = approvals.load_versioned(id).await?;
        let mut record = read.record.clone();
        if !Approvals::visible_to(principal, &record) {
            return Err(ActionError::not_found("no such approval (or not visible)"));
        }
        if approve && by == record.requester {
            return Err(ActionError::new(
                crate::error::ErrorKind::Forbidden,
                "self_approval",
                "the requester of an approval can never approve it; another approver must",
            ));
        }
        if record.status == Status::Pending && now() >= record.expires_at {
            // The expiry task marks it within a second; a late decision never counts.
            return Err(conflict(format!("approval {id} has expired")));
        }
        if record.status != Status::Pending {
            return Err(not_pending(&record));
        }
        if record.decisions.iter().any(|d| d.by == by) {
            return Err(conflict(format!(
                "{by} has already decided on approval {id}; an identity counts once, through the API or a link"
            )));
        }
        record.decisions.push(DecisionEntry {
            by: by.clone(),
            approve,
            comment: comment.clone(),
            at: now(),
            via: Some(approver.via().to_owned()),
        });
        let approvals_given = record.decisions.iter().filter(|d| d.approve).count();
        let outcome = if !approve {
            record.status = Status::Denied;
            record.status_reason = Some(format!("denied by {by}"));
            (EventType::ApprovalReject, Outcome::Denied)
        } else if approvals_given >= record.required_approvals as usize {
            record.status = Status::Approved;
            (EventType::ApprovalGrant, Outcome::Success)
        } else {
            (EventType::ApprovalGrant, Outcome::PendingApproval)
        };
        if approvals.replace(&read, &record).await? {
            decided = Some((record, outcome));
            break;
        }
        // Another change landed between the read and the write: read it again and check again.
    }
    let Some((record, (event_type, outcome))) = decided else {
        return Err(conflict(format!(
            "approval {id} kept changing while this decision was made; try again"
        )));
    };
    if record.status == Status::Denied {
        approvals.forget(id);
    }
    let event = audit::event(
        event_type,
        outcome,
        audit::audit_principal(principal),
        caller.request_id.as_str(),
        caller.origin_ip,
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

/// Why a held request's requester can no longer act: a rule id for the audit trail and a
/// sentence for the approval record.
struct RequesterGone {
    rule: &'static str,
    reason: String,
}

/// Whether the requester of a held request may still act, checked when an approval releases
/// it: an API key must still exist unrevoked in the same tenant (the principal it runs as is
/// read again from the store), an OIDC token must not have expired.
async fn requester_now(state: &AppState, caller: &Caller) -> Result<Caller, RequesterGone> {
    let subject = caller.principal.subject.clone();
    let gone = |rule, reason| Err(RequesterGone { rule, reason });
    match caller.principal.method {
        AuthMethod::ApiKey => {
            let s = subject.clone();
            let verdict = match state
                .store
                .run(move |store| crate::apikey::resolve(store, &s))
                .await
            {
                Ok(verdict) => verdict,
                Err(e) => {
                    return gone(
                        "apikey.unverifiable",
                        format!("the requester's API key could not be checked ({e}); the request was not run"),
                    )
                }
            };
            match verdict {
                Ok(principal) if principal.tenant == caller.principal.tenant => {
                    Ok(caller.with_principal(principal))
                }
                Ok(_) => gone(
                    "apikey.tenant_changed",
                    format!(
                        "the requester's API key {subject} no longer belongs to tenant {}; the request was not run",
                        caller.principal.tenant
                    ),
                ),
                Err(crate::apikey::KeyRejection::Revoked) => gone(
                    "apikey.revoked",
                    format!("the requester's API key {subject} was revoked after the request was held; it was not run"),
                ),
                Err(_) => gone(
                    "apikey.unknown",
                    format!("the requester's API key {subject} no longer exists; the request was not run"),
                ),
            }
        }
        AuthMethod::Oidc => match caller.credential_expires_at {
            Some(exp) if now() < exp => Ok(caller.clone()),
            Some(exp) => gone(
                "oidc.token_expired",
                format!("the requester's token expired (at {exp}) before the request could run; submit it again with a fresh token"),
            ),
            None => gone(
                "oidc.token_expired",
                "the requester's token has no known expiry; the request was not run".to_owned(),
            ),
        },
        // The CLI never parks a request: a hold is refused at the terminal.
        AuthMethod::Local => gone(
            "local.not_held",
            "a request from the command line cannot wait for an approval; it was not run"
                .to_owned(),
        ),
    }
}

/// The audit event of an approval ended because its requester can no longer act (a revoked
/// key, an expired token): `approval.reject` by ztee on behalf of the approval's tenant (so the
/// tenant's auditors see it), with the reason as a rule id.
pub fn requester_gone_event(record: &ApprovalRecord, rule: &str) -> ztee_audit::AuditEvent {
    let id = &record.id;
    let principal = ztee_audit::Principal::new(
        ztee_audit::PrincipalKind::System,
        "ztee",
        record.tenant.clone(),
    )
    .unwrap_or_else(|_| ztee_audit::Principal::system());
    audit::event(
        EventType::ApprovalReject,
        Outcome::Failure,
        principal,
        &format!("requester-{id}"),
        None,
        Some(&format!("approval/{id}")),
    )
    .with_decision(ztee_audit::DecisionRecord {
        decision: ztee_audit::DecisionKind::Deny,
        risk: record.risk.clone(),
        rule_ids: vec![rule.to_owned()],
        reasons: vec![format!(
            "the requester {} can no longer act; the held request was not run",
            record.requester
        )],
    })
}

/// Runs an approved request as its requester (checked again first) and stores the
/// (outbound-masked) result.
async fn execute(state: Arc<AppState>, id: String) {
    let approvals = &state.approvals;
    let Ok(read) = approvals.load_versioned(&id).await else {
        return;
    };
    if read.record.status != Status::Approved {
        approvals.forget(&id);
        return;
    }
    let parked = approvals.forget(&id);
    let checked = match &parked {
        Some(p) => requester_now(&state, &p.caller).await.map(Some),
        None => Ok(None),
    };
    let mut record = read.record.clone();
    let outcome = match (parked, checked) {
        (_, Err(gone)) => {
            let event = requester_gone_event(&record, gone.rule);
            if let Err(e) = state.pipeline.record(event).await {
                tracing::error!(approval = %id, error = %e.message, "recording a refused run");
            }
            record.status_reason = Some(gone.reason.clone());
            Err(ActionError::forbidden(gone.reason))
        }
        (Some(Parked { held, .. }), Ok(Some(caller))) => {
            let approved_by: Vec<String> = record
                .decisions
                .iter()
                .filter(|d| d.approve)
                .map(|d| d.by.clone())
                .collect();
            let approved = Approved {
                id: &id,
                bound: &held.bound,
                approved_by: &approved_by,
            };
            crate::action::execute(
                &state,
                &caller,
                held.action,
                Delivery::Whole,
                Some(approved),
            )
            .await
            .and_then(result_of)
        }
        _ => Err(ActionError::unavailable(
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
            if e.code == "inputs_changed" {
                record.status_reason = Some(e.message.clone());
            }
            record.result =
                Some(serde_json::json!({"error": {"code": e.code, "message": e.message}}));
        }
    }
    match approvals.replace(&read, &record).await {
        Ok(true) => {}
        Ok(false) => tracing::error!(approval = %id, "an approved approval changed while it ran"),
        Err(e) => {
            tracing::error!(approval = %id, error = %e.message, "storing an approval's result")
        }
    }
    notify(&state, &record, "approval.executed");
}

/// What an approval record keeps of an approved action's outcome (masked already).
fn result_of(outcome: ActionOutcome) -> Result<serde_json::Value, ActionError> {
    match outcome {
        ActionOutcome::Ran(result) => Ok(serde_json::to_value(result).unwrap_or_default()),
        ActionOutcome::Created(view) | ActionOutcome::Sandbox(view) => {
            Ok(serde_json::to_value(view).unwrap_or_default())
        }
        ActionOutcome::ToolsPinned(set) => Ok(serde_json::json!({
            "upstream": set.upstream,
            "digest": set.digest,
            "tools": set.tools,
        })),
        _ => Err(ActionError::internal(
            "an approved action ended without a result to keep",
        )),
    }
}

/// Marks pending approvals past their expiry as expired, once a second, for as long as the
/// gateway lives.
pub fn spawn_expiry(state: Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            ticks = ticks.wrapping_add(1);
            let Some(state) = state.upgrade() else { return };
            let due = state
                .approvals
                .store
                .run(|s| record::due(s, now()))
                .await
                .unwrap_or_default();
            for r in due {
                let id = r.record.id.clone();
                if let Ok(Some(r)) = state.approvals.expire(r).await {
                    record_expiry(&state, &id).await;
                    notify(&state, &r, "approval.expired");
                }
            }
            if ticks % 10 == 0 {
                state.approvals.drop_ended().await;
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

/// Checks a signed link and looks up the approver it names: an API key that is still active.
async fn link_approver(
    state: &Arc<AppState>,
    id: &str,
    query: &callback::CallbackQuery,
) -> Result<Principal, ActionError> {
    state.approvals.callback_key.verify(id, query, now())?;
    let subject = query.approver.clone();
    let verdict = state
        .store
        .run(move |s| crate::apikey::resolve(s, &subject))
        .await
        .map_err(store_error)?;
    verdict.map_err(|_| {
        ActionError::new(
            crate::error::ErrorKind::Forbidden,
            "invalid_callback",
            format!(
                "the link's approver {} is no longer an active API key",
                query.approver
            ),
        )
    })
}

/// `GET` on a signed link: the approval to confirm, with no side effect.
pub async fn callback_page(
    state: &Arc<AppState>,
    id: &str,
    query: &callback::CallbackQuery,
) -> Result<String, ActionError> {
    let approver = link_approver(state, id, query).await?;
    let record = state.approvals.load(id).await?;
    if !Approvals::visible_to(&approver, &record) {
        return Err(ActionError::not_found("no such approval (or not visible)"));
    }
    Ok(callback::confirmation_page(&record, query))
}

/// `POST` on a signed link: decides as the approver the link names, exactly as that approver
/// calling the API would (permission, tenant, requester exclusion, one decision per identity).
pub async fn decide_by_callback(
    state: &Arc<AppState>,
    id: &str,
    query: &callback::CallbackQuery,
    extensions: &axum::http::Extensions,
) -> Result<ApprovalRecord, ActionError> {
    let approver = link_approver(state, id, query).await?;
    let caller = Caller::resolved(approver, extensions, state.pipeline.audit.clone());
    decide(state, Approver::Link(&caller), id, query.approve(), None).await
}

/// Where the key of the signed decision links lives in a data directory.
fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("approvals-callback.key")
}

/// The held requests of a previous run that open with this gateway's seal key, with the
/// status their approval is in (pending or approved).
fn restore(
    store: &Store,
    seal: &sealed::SealKey,
    audit: Arc<dyn crate::audit::AuditSink>,
) -> Result<Vec<(String, Parked, Status)>, String> {
    let open = store
        .with_connection(|c| {
            record::versioned_where(c, "status IN ('pending', 'approved')", rusqlite::params![])
        })
        .map_err(|e| e.to_string())?;
    let mut restored = Vec::new();
    for read in open {
        let id = read.record.id.clone();
        let bytes = match sealed::get(store, &id) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        };
        match seal.open(&id, &bytes) {
            Ok(content) => {
                let (caller, held) = content.restore(audit.clone());
                restored.push((id, Parked { caller, held }, read.record.status));
            }
            Err(e) => tracing::warn!(approval = %id, error = %e, "a held request cannot be opened"),
        }
    }
    Ok(restored)
}

/// The ticket of a pending approval whose held action `matches`, if one is parked.
pub async fn pending_ticket(
    state: &Arc<AppState>,
    matches: &(dyn Fn(&Action) -> bool + Sync),
) -> Result<Option<Ticket>, ActionError> {
    let approvals = &state.approvals;
    let found = approvals.parked.lock().ok().and_then(|parked| {
        parked
            .iter()
            .find(|(_, p)| matches(&p.held.action))
            .map(|(id, _)| id.clone())
    });
    let Some(id) = found else { return Ok(None) };
    let record = approvals.load(&id).await?;
    if record.status != Status::Pending {
        return Ok(None);
    }
    let link = approvals.link(&id);
    Ok(Some(Ticket { record, link }))
}

/// Runs the requests approved while no gateway held them (restored by [`Approvals::open`]).
pub fn resume_approved(state: &Arc<AppState>, ids: Vec<String>) {
    for id in ids {
        tokio::spawn(execute(state.clone(), id));
    }
}
