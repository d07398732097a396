//! Sandboxes: creation, commands, files, deletion, and who may see and use them.
//!
//! Visibility: a principal with `sandbox:run` sees the sandboxes it created; `sandbox:admin` sees
//! every sandbox of its tenant (role `admin` is such a tenant admin); `platform:admin` sees every
//! tenant's. Anything else is "not found", so the existence of another tenant's sandbox is never
//! revealed. The VMM's host pid and jail (host uid, cgroup and chroot paths) are shown to platform
//! admins only.
//!
//! A sandbox holding secrets is different: code runs and files move in it (commands, file
//! reads, file writes) only for its owner, the principal that created it and was granted its
//! secrets. Anyone else who can see it (a sandbox admin, an operator) is refused
//! `secrets_owner_only`: a command can print a secret in a form masking does not know (`rev`,
//! `base32`), a planted file can run with it, and a dynamic credential names its lease holder.
//! They may still list, show (names, never values) and delete it. The owner's own commands and
//! file operations are decided by policy with the secret names as well, so a grant withdrawn
//! (or one that asks for approval) applies to every use, not only to the creation.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use ztee_audit::{EventType, Outcome as AuditOutcome};

use super::checks::{bounded, check_env, check_guest_path, check_image, timeout};
use super::provision::{provision, Provision};
use super::{
    Action, ActionError, Approved, CreateSandbox, HeldAction, Outcome, RunCommand, SandboxView,
};
use crate::audit;
use crate::auth::Caller;
use crate::exec::CreateSpec;
use crate::image_admission::ImageGate;
use crate::pipeline::{exec_error, ActionContext, Gate, StreamContext, Work};
use crate::policy::PolicyInput;
use crate::principal::Permission;
use crate::state::{AppState, LiveSandbox};
use crate::store::{now_rfc3339, SandboxRecord};

/// Where a process's tag travels through inbound DLP with the other inputs.
const PROCESS_TAG: &str = "process.tag";

/// The policy input every action starts from: the caller and the action's name.
pub fn policy_input(caller: &Caller, action: &'static str) -> PolicyInput {
    PolicyInput {
        action,
        subject: caller.principal.subject.clone(),
        tenant: caller.principal.tenant.clone(),
        roles: caller.principal.roles.clone(),
        image: None,
        memory_mib: None,
        vcpus: None,
        timeout_s: None,
        findings: Vec::new(),
        cmd: Vec::new(),
        secrets: Vec::new(),
    }
}

fn visible(caller: &Caller, record: &SandboxRecord) -> bool {
    let p = &caller.principal;
    p.has(Permission::PlatformAdmin)
        || (record.tenant == p.tenant
            && (p.has(Permission::SandboxAdmin) || record.owner == p.subject))
}

/// The sandbox record if the caller may see it; 404 otherwise.
async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<SandboxRecord, ActionError> {
    let lookup = id.to_owned();
    let record = state
        .store
        .run(move |s| s.sandbox(&lookup))
        .await
        .map_err(ActionError::internal)?;
    record
        .filter(|r| visible(caller, r))
        .ok_or_else(|| ActionError::not_found(format!("no sandbox {id:?}")))
}

/// Names of the secrets a sandbox holds (never values), for the policy input of every action
/// in it.
fn secret_names(sandbox: &LiveSandbox) -> Vec<String> {
    sandbox
        .secrets
        .as_ref()
        .map(|s| s.names())
        .unwrap_or_default()
}

/// The owner rule for a sandbox holding secrets (see the module comment): anyone but its owner
/// is refused, and the refusal is audited as a denial before anything runs.
async fn only_owner_where_secrets(
    state: &AppState,
    ctx: &ActionContext<'_>,
    record: &SandboxRecord,
    sandbox: &LiveSandbox,
) -> Result<(), ActionError> {
    let p = &ctx.caller.principal;
    if ctx.policy.secrets.is_empty() || (p.tenant == record.tenant && p.subject == record.owner) {
        return Ok(());
    }
    let message = format!(
        "sandbox {} holds secrets ({}); only the principal that created it may run commands or \
         read or write files in it",
        record.id,
        secret_names(sandbox).join(", ")
    );
    let decision = crate::policy::Decision {
        kind: crate::policy::DecisionKind::Deny,
        reasons: vec!["secret.owner_only".into()],
        messages: vec![message.clone()],
        risk: "HIGH",
        redact_inbound: false,
    };
    let event = state
        .pipeline
        .event(ctx, AuditOutcome::Denied)
        .with_decision(audit::decision_record(&decision));
    state.pipeline.record(event).await?;
    Err(ActionError::new(
        crate::error::ErrorKind::Forbidden,
        "secrets_owner_only",
        message,
    ))
}

/// A sandbox a caller acts in: its record, its running VM and the action's context.
pub(super) struct Entered<'a> {
    pub record: SandboxRecord,
    pub sandbox: Arc<LiveSandbox>,
    pub ctx: ActionContext<'a>,
}

/// Where every action inside a running sandbox starts: the caller sees the sandbox, it runs,
/// and where it holds secrets the caller is its owner (a refusal is audited). The context names
/// the sandbox as its resource and carries `action` (with the image and the secret names) as
/// the policy input, recorded as `event_type`.
pub(super) async fn enter<'a>(
    state: &AppState,
    caller: &'a Caller,
    id: &str,
    action: &'static str,
    event_type: EventType,
) -> Result<Entered<'a>, ActionError> {
    let record = find(state, caller, id).await?;
    let sandbox = live(state, &record.id)?;
    let mut policy = policy_input(caller, action);
    policy.image = Some(record.image.clone());
    policy.secrets = secret_names(&sandbox);
    let ctx = ActionContext {
        caller,
        event_type,
        resource: Some(format!("sandbox/{}", record.id)),
        policy,
        approval: None,
    };
    only_owner_where_secrets(state, &ctx, &record, &sandbox).await?;
    Ok(Entered {
        record,
        sandbox,
        ctx,
    })
}

fn live(state: &AppState, id: &str) -> Result<Arc<LiveSandbox>, ActionError> {
    state
        .sandboxes
        .get(id)
        .ok_or_else(|| ActionError::not_found(format!("sandbox {id:?} is no longer running")))
}

/// Parts of the engine's sandbox description that are about the host, not the VM: the VMM's host
/// pid and its jail (host uid, cgroup and chroot paths).
const HOST_DETAILS: &[&str] = &["vmm_pid", "jail"];

/// The engine's description of a sandbox's VM, without host details unless `host_details`.
fn vm_info(handle: &dyn crate::exec::SandboxHandle, host_details: bool) -> serde_json::Value {
    let mut info = handle.info();
    if !host_details {
        if let Some(fields) = info.as_object_mut() {
            for key in HOST_DETAILS {
                fields.remove(*key);
            }
        }
    }
    info
}

/// What `caller` is shown of a sandbox: host details only for platform admins.
fn view(state: &AppState, caller: &Caller, r: SandboxRecord) -> SandboxView {
    view_with(state, caller.principal.has(Permission::PlatformAdmin), r)
}

fn view_with(state: &AppState, host_details: bool, r: SandboxRecord) -> SandboxView {
    let live = state.sandboxes.get(&r.id);
    let vm = live
        .as_ref()
        .map(|l| vm_info(l.handle.as_ref(), host_details));
    let egress = live.as_ref().map(|l| l.egress.clone());
    let expires_at = live
        .as_ref()
        .map(|l| crate::store::rfc3339(l.expiry.ends_at()));
    let secrets = live
        .as_ref()
        .map(|l| l.secrets.as_ref().map(|s| s.requests()).unwrap_or_default());
    SandboxView {
        id: r.id,
        tenant: r.tenant,
        owner: r.owner,
        image: r.image,
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        timeout_s: r.timeout_s,
        created_at: r.created_at,
        metadata: r.metadata,
        expires_at,
        vm,
        egress,
        secrets,
    }
}

pub(super) async fn list(state: &Arc<AppState>, caller: &Caller) -> Result<Outcome, ActionError> {
    let tenant =
        (!caller.principal.has(Permission::PlatformAdmin)).then(|| caller.principal.tenant.clone());
    let records = state
        .store
        .run(move |s| s.sandboxes(tenant.as_deref()))
        .await
        .map_err(ActionError::internal)?;
    Ok(Outcome::Sandboxes(
        records
            .into_iter()
            .filter(|r| visible(caller, r))
            .map(|r| view(state, caller, r))
            .collect(),
    ))
}

pub(super) async fn show(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<Outcome, ActionError> {
    let record = find(state, caller, id).await?;
    Ok(Outcome::Sandbox(view(state, caller, record)))
}

pub(super) async fn create(
    state: &Arc<AppState>,
    caller: &Caller,
    req: CreateSandbox,
    approved: Option<Approved<'_>>,
) -> Result<Outcome, ActionError> {
    let host_details = caller.principal.has(Permission::PlatformAdmin);
    // What an approver would approve: the request exactly as sent.
    let original = Action::CreateSandbox(req.clone());
    let d = &state.config.sandbox_defaults;
    let l = &state.config.limits;
    check_image(req.image.as_deref())?;
    let memory_mib = bounded(
        "memory_mib",
        req.memory_mib,
        d.memory_mib,
        64,
        l.max_memory_mib,
    )?;
    let vcpus = bounded("vcpus", req.vcpus, d.vcpus, 1, l.max_vcpus)?;
    let lifetime = timeout(state, req.timeout_s, d.timeout_s)?;
    check_env(&req.env)?;
    let egress = crate::egress::parse(&req.egress)?;
    if req.metadata.len() > 16
        || req
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 256)
    {
        return Err(ActionError::bad_request(
            "metadata: at most 16 keys, keys up to 64 bytes, values up to 256 bytes",
        ));
    }
    let id = format!("sbx_{}", uuid::Uuid::new_v4().simple());
    let resource = format!("sandbox/{id}");
    let mut policy = policy_input(caller, "sandbox.create");
    policy.image = req.image.clone();
    policy.memory_mib = Some(memory_mib);
    policy.vcpus = Some(vcpus);
    policy.timeout_s = Some(lifetime.as_secs());
    policy.secrets = req.secrets.iter().map(|r| r.name.to_string()).collect();
    crate::secrets::check_requests(&req.secrets)?;
    let mut ctx = ActionContext {
        caller,
        event_type: EventType::SandboxCreate,
        resource: Some(resource),
        policy,
        approval: approved.map(Approved::grant),
    };
    // Metadata is returned to callers and stored: scan it, keys and values, like any other input.
    let work = Work {
        env: req.env,
        metadata: req.metadata.clone(),
        ..Work::default()
    };
    let gate = crate::egress::admit_with_egress(
        &state.pipeline,
        &mut ctx,
        work,
        &egress,
        approved.is_some(),
    )
    .await?;
    let admitted = match gate {
        Gate::Admitted(admitted) => admitted,
        Gate::Held(decision) => {
            let held = HeldAction {
                action: original,
                bound: Vec::new(),
            };
            let ticket = crate::approvals::park(state, caller, held, &decision).await?;
            return Ok(Outcome::Held(ticket));
        }
    };
    let env = admitted.work.env.clone();
    // The image is admitted before any secret is leased for it.
    let image =
        match crate::image_admission::admit(state, &ctx, req.image.as_deref(), approved.is_some())
            .await?
        {
            ImageGate::Admitted(image) => image,
            ImageGate::Held(decision) => {
                let held = HeldAction {
                    action: original,
                    bound: Vec::new(),
                };
                let ticket = crate::approvals::park(state, caller, held, &decision).await?;
                return Ok(Outcome::Held(ticket));
            }
        };
    let injected = crate::secrets::checkout(
        state,
        &crate::secrets::Target {
            caller,
            image: req.image.as_deref(),
            resource: &format!("sandbox/{id}"),
            approved: approved.is_some(),
        },
        &req.secrets,
    )
    .await?;

    let record = SandboxRecord {
        id: id.clone(),
        tenant: caller.principal.tenant.clone(),
        owner: caller.principal.subject.clone(),
        image: req.image.clone().unwrap_or_else(|| "default".into()),
        memory_mib,
        vcpus,
        timeout_s: lifetime.as_secs(),
        created_at: now_rfc3339(),
        // What DLP finds is masked before it reaches the state database (under `redact`, or
        // findings the policy let through), like every caller-controlled string we keep.
        metadata: serde_json::to_value(
            req.metadata
                .iter()
                .map(|(k, v)| {
                    let dlp = state.pipeline.dlp.as_ref();
                    (audit::caller_text(dlp, k), audit::caller_text(dlp, v))
                })
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap_or_default(),
    };
    let handle = provision(
        state,
        &ctx,
        &admitted,
        Provision {
            record: &record,
            spec: CreateSpec {
                image,
                memory_mib,
                vcpus,
                scratch_mib: None,
                max_processes: None,
            },
            egress: egress.clone(),
            secrets: injected.as_ref(),
        },
    )
    .await?;
    let expiry = Arc::new(crate::state::Expiry::after(lifetime));
    state.sandboxes.insert(
        id.clone(),
        Arc::new(LiveSandbox {
            handle,
            env,
            secrets: injected,
            egress: egress.rules().to_vec(),
            processes: Default::default(),
            contexts: Default::default(),
            fs: Default::default(),
            expiry: expiry.clone(),
        }),
    );
    state.metrics.sandboxes_active.inc();
    schedule_expiry(Arc::downgrade(state), id.clone(), expiry);
    let event = state
        .pipeline
        .event(&ctx, AuditOutcome::Success)
        .with_decision(audit::decision_record(&admitted.decision));
    if let Err(e) = state.pipeline.record(event).await {
        destroy(state, &id).await;
        return Err(e);
    }
    Ok(Outcome::Created(view_with(state, host_details, record)))
}

/// Takes quota for a sandbox, or answers 429 with the tenant's usage.
pub(crate) async fn reserve(state: &AppState, record: &SandboxRecord) -> Result<(), ActionError> {
    let q = &state.config.quotas;
    let (max_n, max_mem) = (q.max_sandboxes_per_tenant, q.max_memory_mib_per_tenant);
    let r = record.clone();
    let reserved = state
        .store
        .run(move |s| s.reserve_sandbox(&r, max_n, max_mem))
        .await
        .map_err(ActionError::internal)?;
    reserved.map_err(|usage| {
        ActionError::quota_exceeded(
            format!(
                "tenant quota exceeded: {} of {max_n} sandboxes and {} of {max_mem} MiB in use, \
                 {} MiB requested",
                usage.sandboxes, usage.memory_mib, record.memory_mib
            ),
            30,
        )
    })
}

pub(crate) async fn release(state: &AppState, id: &str) {
    let id = id.to_owned();
    if let Err(e) = state.store.run(move |s| s.delete_sandbox(&id)).await {
        tracing::error!(error = %e, "releasing a sandbox's quota");
    }
}

/// Stops the VM and frees the quota. Idempotent.
async fn destroy(state: &AppState, id: &str) {
    if let Some(live) = state.sandboxes.remove(id) {
        state.metrics.sandboxes_active.dec();
        if let Err(e) = live.handle.destroy().await {
            tracing::warn!(sandbox = id, error = %e, "destroying a sandbox's VM");
        }
    }
    release(state, id).await;
}

fn schedule_expiry(state: Weak<AppState>, id: String, expiry: Arc<crate::state::Expiry>) {
    tokio::spawn(async move {
        loop {
            let deadline = expiry.deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = expiry.changed() => continue,
            }
            if expiry.deadline() <= tokio::time::Instant::now() {
                break;
            }
        }
        let Some(state) = state.upgrade() else { return };
        if state.sandboxes.get(&id).is_none() {
            return;
        }
        destroy(&state, &id).await;
        let event = audit::event(
            EventType::SandboxClose,
            AuditOutcome::Success,
            ztee_audit::Principal::system(),
            &format!("expiry-{id}"),
            None,
            Some(&format!("sandbox/{id}")),
        );
        if let Err(e) = state.pipeline.record(event).await {
            tracing::error!(sandbox = %id, error = %e.message, "recording a sandbox expiry");
        }
    });
}

/// Ends the sandbox `timeout_s` from now (sooner or later than it would have), within the
/// configured ceiling; recorded.
pub(super) async fn set_timeout(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    timeout_s: u64,
) -> Result<Outcome, ActionError> {
    let lifetime = super::checks::timeout(state, Some(timeout_s), timeout_s)?;
    let record = find(state, caller, id).await?;
    let sandbox = live(state, &record.id)?;
    let mut policy = policy_input(caller, "sandbox.timeout");
    policy.image = Some(record.image.clone());
    policy.secrets = secret_names(&sandbox);
    policy.timeout_s = Some(lifetime.as_secs());
    let ctx = ActionContext {
        caller,
        event_type: EventType::SandboxTimeout,
        resource: Some(format!(
            "sandbox/{}/timeout/{}",
            record.id,
            lifetime.as_secs()
        )),
        policy,
        approval: None,
    };
    only_owner_where_secrets(state, &ctx, &record, &sandbox).await?;
    sandbox.expiry.reset(lifetime);
    state
        .pipeline
        .record(state.pipeline.event(&ctx, AuditOutcome::Success))
        .await?;
    Ok(Outcome::Done)
}

pub(super) async fn delete(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<Outcome, ActionError> {
    find(state, caller, id).await?;
    // A command held for approval in it can never run now.
    crate::approvals::inputs::expire_on_delete(state, id).await;
    destroy(state, id).await;
    let ctx = ActionContext {
        caller,
        event_type: EventType::SandboxClose,
        resource: Some(format!("sandbox/{id}")),
        policy: policy_input(caller, "sandbox.delete"),
        approval: None,
    };
    state
        .pipeline
        .record(state.pipeline.event(&ctx, AuditOutcome::Success))
        .await?;
    Ok(Outcome::Deleted)
}

/// How a command's events reach the caller (see [`super::Delivery`] and
/// [`Action::StartProcess`]).
pub(super) enum ExecMode {
    Whole,
    Stream,
    /// Streamed, and kept reachable while it runs: its input as `stdin` says, found by its pid
    /// or by `tag`.
    Process {
        tag: Option<String>,
        stdin: crate::pipeline::Stdin,
    },
}

pub(super) async fn exec(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    req: RunCommand,
    mode: ExecMode,
    approved: Option<Approved<'_>>,
) -> Result<Outcome, ActionError> {
    let stream = !matches!(mode, ExecMode::Whole);
    // What an approver would approve: the command exactly as sent.
    let original = req.clone();
    let record = find(state, caller, id).await?;
    let sandbox = live(state, &record.id)?;
    if approved.is_none() {
        crate::approvals::inputs::ensure_not_held(state, &record.id)?;
    }
    let argv = req.cmd.into_argv().map_err(ActionError::bad_request)?;
    check_env(&req.env)?;
    if let Some(cwd) = &req.cwd {
        check_guest_path("cwd", cwd)?;
    }
    let limit = timeout(
        state,
        req.timeout_s,
        state.config.sandbox_defaults.command_timeout_s,
    )?;
    let own_env: Vec<String> = req.env.keys().cloned().collect();
    let mut env: BTreeMap<String, String> = sandbox.env.clone();
    env.extend(req.env);
    let mut policy = policy_input(caller, "sandbox.exec");
    policy.image = Some(record.image.clone());
    policy.timeout_s = Some(limit.as_secs());
    // The command can read every secret of the sandbox: it is a use of each of them.
    policy.secrets = secret_names(&sandbox);
    let secret_env = sandbox
        .secrets
        .as_ref()
        .map(|s| s.env())
        .unwrap_or_default();
    let (tag, stdin_mode) = match &mode {
        ExecMode::Process { tag, stdin } => (tag.clone(), *stdin),
        _ => (None, crate::pipeline::Stdin::Closed),
    };
    if matches!(mode, ExecMode::Process { .. }) && !sandbox.processes.has_room() {
        return Err(ActionError::quota_exceeded(
            format!(
                "sandbox {} already runs {} processes; wait for one to end or kill one",
                record.id,
                super::process::MAX_PROCESSES
            ),
            5,
        ));
    }
    // A tag is caller text kept while the process runs and shown to callers: it is scanned
    // and masked with every other input.
    let metadata = tag
        .map(|tag| BTreeMap::from([(PROCESS_TAG.to_owned(), tag)]))
        .unwrap_or_default();
    let work = Work {
        argv,
        env,
        cwd: req.cwd,
        stdin: req.stdin,
        metadata,
        ..Work::default()
    };
    let resource = Some(format!("sandbox/{}", record.id));
    let mut ctx = ActionContext {
        caller,
        event_type: EventType::SandboxExec,
        resource: resource.clone(),
        policy,
        approval: approved.map(Approved::grant),
    };
    only_owner_where_secrets(state, &ctx, &record, &sandbox).await?;
    // A stream cannot wait for a human: a hold answers 403 there, and the caller may send the
    // command again without streaming to have it parked.
    let gate = if stream {
        Gate::Admitted(state.pipeline.admit(&mut ctx, work).await?)
    } else {
        state
            .pipeline
            .admit_or_hold(&mut ctx, work, approved.is_some())
            .await?
    };
    let mut admitted = match gate {
        Gate::Admitted(admitted) => admitted,
        Gate::Held(decision) => {
            // The approval binds the files argv names, read now, by digest.
            let argv = original
                .cmd
                .clone()
                .into_argv()
                .map_err(ActionError::bad_request)?;
            let inputs = match crate::approvals::inputs::bind(
                state.pipeline.dlp.as_ref(),
                &state.pipeline.content_key,
                sandbox.handle.as_ref(),
                &argv,
                original.cwd.as_deref(),
            )
            .await
            {
                Ok(inputs) => inputs,
                Err(e) => {
                    return Err(crate::approvals::inputs::refuse_unbindable(state, &ctx, e).await)
                }
            };
            let held = HeldAction {
                action: Action::Exec {
                    sandbox: record.id.clone(),
                    command: original,
                },
                bound: inputs,
            };
            let ticket = crate::approvals::park(state, caller, held, &decision).await?;
            return Ok(Outcome::Held(ticket));
        }
    };
    // Secret values join the environment after inbound DLP and policy.
    admitted.work.env.extend(secret_env);
    if stream {
        let stream_ctx = StreamContext {
            caller: caller.clone(),
            event_type: EventType::SandboxExec,
            resource,
            policy: ctx.policy,
        };
        let handle = sandbox.handle.clone();
        let scope = sandbox.secrets.as_ref().and_then(|s| s.scope());
        let info = super::process::ProcessInfo {
            pid: 0,
            tag: admitted.work.metadata.get(PROCESS_TAG).cloned(),
            argv: admitted.work.argv.clone(),
            cwd: admitted.work.cwd.clone(),
            env: admitted
                .work
                .env
                .iter()
                .filter(|(k, _)| own_env.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            terminal: matches!(stdin_mode, crate::pipeline::Stdin::Terminal(_)),
        };
        let processes = sandbox.processes.clone();
        let streaming = state
            .pipeline
            .clone()
            .stream(
                stream_ctx,
                handle,
                admitted,
                limit,
                stdin_mode,
                scope,
                // Keeps the sandbox's secrets leased until the stream ends.
                Box::new(sandbox),
            )
            .await?;
        if !matches!(mode, ExecMode::Process { .. }) {
            return Ok(Outcome::Streaming(streaming.events));
        }
        return match processes.adopt(info, streaming) {
            Ok(attachment) => Ok(Outcome::Process(attachment)),
            // The engine keeps no handle on its commands: what was started still streams.
            Err(streaming) => Ok(Outcome::Streaming(streaming.events)),
        };
    }
    if let Some(approval) = approved {
        // As late as the gateway can: the files the approver saw are still the files it runs.
        crate::approvals::inputs::check_before_run(
            state,
            &ctx,
            sandbox.handle.as_ref(),
            approval.id,
            approval.bound,
        )
        .await?;
    }
    let result = state
        .pipeline
        .collect(
            &ctx,
            sandbox.handle.as_ref(),
            admitted,
            limit,
            state.config.limits.max_output_bytes,
            sandbox.secrets.as_ref().and_then(|s| s.scope()).as_ref(),
        )
        .await?;
    Ok(Outcome::Ran(result))
}

/// Writes a file into a sandbox. The door holds a transfer place ([`super::transfer::permit`])
/// while it reads the content, and until this returns.
pub(super) async fn write_file(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    path: String,
    content: Bytes,
) -> Result<Outcome, ActionError> {
    check_guest_path("path", &path)?;
    if content.len() > state.config.limits.max_file_bytes {
        return Err(super::transfer::too_large(
            state.config.limits.max_file_bytes,
        ));
    }
    let Entered {
        record,
        sandbox,
        mut ctx,
    } = enter(state, caller, id, "file.write", EventType::FileWrite).await?;
    ctx.resource = Some(format!("sandbox/{}{}", record.id, path));
    // A file a held command is bound to is not replaced through the gateway.
    crate::approvals::inputs::ensure_not_held(state, &record.id)?;
    let work = Work {
        files: vec![crate::pipeline::InputFile::new(path, content)],
        ..Work::default()
    };
    let admitted = super::transfer::admit_upload(state, &mut ctx, work).await?;
    let file = admitted
        .work
        .files
        .first()
        .cloned()
        .ok_or_else(|| ActionError::internal("admitted upload lost its file"))?;
    let (path, size) = (file.path, file.content.len());
    let written = sandbox
        .handle
        .write_file(&path, file.content, file.mode)
        .await;
    state
        .pipeline
        .record_admitted(&ctx, &admitted, written.is_ok())
        .await?;
    written.map_err(exec_error)?;
    Ok(Outcome::Written {
        path,
        size,
        redactions: admitted.inbound_redactions,
    })
}

/// Reads a file of the sandbox, masked, as a stream (see [`super::transfer`]).
pub(super) async fn read_file(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    path: String,
) -> Result<Outcome, ActionError> {
    check_guest_path("path", &path)?;
    // Held until the transfer ends: bounds how many downloads run at once.
    let permit = super::transfer::permit(state, caller)?;
    let Entered {
        record,
        sandbox,
        mut ctx,
    } = enter(state, caller, id, "file.read", EventType::FileRead).await?;
    ctx.resource = Some(format!("sandbox/{}{}", record.id, path));
    let admitted = state
        .pipeline
        .admit(
            &mut ctx,
            Work {
                argv: vec![path.clone()],
                ..Work::default()
            },
        )
        .await?;
    let audit = super::transfer::DownloadAudit {
        caller: caller.clone(),
        resource: ctx.resource.clone(),
        policy: ctx.policy.clone(),
        decision: audit::decision_record(&admitted.decision),
    };
    let content = super::transfer::download(state.clone(), sandbox, path, audit, permit).await?;
    Ok(Outcome::File(content))
}
