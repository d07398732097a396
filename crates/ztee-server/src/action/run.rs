//! A run: one command in a fresh VM that is destroyed afterwards.

use std::sync::Arc;

use bytes::Bytes;
use ztee_audit::EventType;

use super::checks::{bounded, check_env, check_guest_path, check_image, timeout};
use super::provision::{provision, Provision};
use super::sandbox::{policy_input, release};
use super::{Action, ActionError, Approved, Delivery, HeldAction, OneShotRun, Outcome};
use crate::auth::Caller;
use crate::exec::{CreateSpec, SandboxHandle};
use crate::image_admission::ImageGate;
use crate::pipeline::{ActionContext, Gate, InputFile, StreamContext, Work};
use crate::state::AppState;
use crate::store::{now_rfc3339, SandboxRecord};

/// Where `code` is written in the guest, and how each language runs it.
fn program_for(language: &str) -> Result<(&'static str, Vec<String>), ActionError> {
    match language {
        "python" | "python3" => Ok((
            "/tmp/ztee-main.py",
            vec!["python3".into(), "/tmp/ztee-main.py".into()],
        )),
        "sh" | "shell" | "bash" => Ok((
            "/tmp/ztee-main.sh",
            vec!["/bin/sh".into(), "/tmp/ztee-main.sh".into()],
        )),
        other => Err(ActionError::bad_request(format!(
            "language {other:?} is not supported; use python or sh"
        ))),
    }
}

/// Destroys the one-shot VM and frees its quota however the request ends (including a client
/// that disconnects mid-stream).
struct OneShot {
    state: Arc<AppState>,
    id: String,
    handle: Option<Arc<dyn SandboxHandle>>,
}

impl OneShot {
    async fn finish(mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(e) = h.destroy().await {
                tracing::warn!(error = %e, "destroying a one-shot VM");
            }
        }
        release(&self.state, &self.id).await;
        self.state.metrics.sandboxes_active.dec();
    }
}

impl Drop for OneShot {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let state = self.state.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = handle.destroy().await {
                    tracing::warn!(error = %e, "destroying a one-shot VM");
                }
                release(&state, &id).await;
                state.metrics.sandboxes_active.dec();
            });
        }
    }
}

pub(super) async fn run(
    state: &Arc<AppState>,
    caller: &Caller,
    req: OneShotRun,
    delivery: Delivery,
    approved: Option<Approved<'_>>,
) -> Result<Outcome, ActionError> {
    // What an approver would approve: the request exactly as sent.
    let original = Action::Run(req.clone());
    check_image(req.image.as_deref())?;
    check_env(&req.env)?;
    let egress = crate::egress::parse(&req.egress)?;
    let d = &state.config.sandbox_defaults;
    let l = &state.config.limits;
    let memory_mib = bounded(
        "memory_mib",
        req.memory_mib,
        d.memory_mib,
        64,
        l.max_memory_mib,
    )?;
    let vcpus = bounded("vcpus", req.vcpus, d.vcpus, 1, l.max_vcpus)?;
    // Held in guest memory: at most what the guest can spare, as the engine requires.
    let scratch_mib = req
        .disk_mib
        .map(|v| {
            bounded(
                "disk_mib",
                Some(v),
                v,
                8,
                memory_mib.saturating_sub(64).max(8),
            )
        })
        .transpose()?;
    let max_processes = req
        .max_processes
        .map(|v| bounded("max_processes", Some(v), v, 16, 65536))
        .transpose()?;
    let limit = timeout(state, req.timeout_s, d.command_timeout_s)?;
    if let Some(cwd) = &req.cwd {
        check_guest_path("cwd", cwd)?;
    }
    let mut files = Vec::with_capacity(req.files.len() + 1);
    for (i, f) in req.files.into_iter().enumerate() {
        check_guest_path(&format!("files[{i}].path"), &f.path)?;
        let mode = match f.mode {
            Some(mode) if mode > 0o777 => {
                return Err(ActionError::bad_request(format!(
                    "files[{i}].mode {mode:#o} is not a permission mode (0 to 0o777)"
                )))
            }
            Some(mode) => mode,
            None => 0o644,
        };
        files.push(InputFile {
            path: f.path,
            content: f.content,
            mode,
        });
    }
    let argv = match (req.cmd, req.language, req.code) {
        (Some(cmd), None, None) => cmd.into_argv().map_err(ActionError::bad_request)?,
        (None, Some(language), Some(code)) => {
            let (path, argv) = program_for(&language)?;
            files.push(InputFile::new(path.to_owned(), Bytes::from(code)));
            argv
        }
        (None, None, Some(_)) => return Err(ActionError::bad_request("code needs a language")),
        (None, Some(_), None) => return Err(ActionError::bad_request("language needs code")),
        (None, None, None) => {
            return Err(ActionError::bad_request(
                "give either cmd, or language and code",
            ))
        }
        (Some(_), _, _) => {
            return Err(ActionError::bad_request(
                "give either cmd, or language and code, not both",
            ))
        }
    };
    let id = format!("run_{}", uuid::Uuid::new_v4().simple());
    let mut policy = policy_input(caller, "run");
    policy.image = req.image.clone();
    policy.memory_mib = Some(memory_mib);
    policy.vcpus = Some(vcpus);
    policy.timeout_s = Some(limit.as_secs());
    policy.secrets = req.secrets.iter().map(|r| r.name.to_string()).collect();
    crate::secrets::check_requests(&req.secrets)?;
    let resource = Some(format!("run/{id}"));
    let mut ctx = ActionContext {
        caller,
        event_type: EventType::Run,
        resource: resource.clone(),
        policy,
        approval: approved.map(Approved::grant),
    };
    let work = Work {
        argv,
        env: req.env,
        cwd: req.cwd,
        stdin: req.stdin,
        files,
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
    let mut admitted = match gate {
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
            resource: &format!("run/{id}"),
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
        timeout_s: limit.as_secs(),
        created_at: now_rfc3339(),
        metadata: serde_json::json!({"one_shot": true}),
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
                scratch_mib,
                max_processes,
            },
            egress,
            secrets: injected.as_ref(),
        },
    )
    .await?;
    state.metrics.sandboxes_active.inc();
    let one_shot = OneShot {
        state: state.clone(),
        id,
        handle: Some(handle.clone()),
    };
    if let Some(secrets) = &injected {
        // Added after inbound DLP and policy: values never enter findings or digests.
        admitted.work.env.extend(secrets.env());
    }

    if delivery == Delivery::Stream {
        let stream_ctx = StreamContext {
            caller: caller.clone(),
            event_type: EventType::Run,
            resource,
            policy: ctx.policy,
        };
        let streaming = state
            .pipeline
            .clone()
            .stream(
                stream_ctx,
                handle,
                admitted,
                limit,
                crate::pipeline::Stdin::Closed,
                injected.as_ref().and_then(|s| s.scope()),
                // The VM goes first, then the secrets' leases.
                Box::new((one_shot, injected)),
            )
            .await?;
        return Ok(Outcome::Streaming(streaming.events));
    }
    let result = state
        .pipeline
        .collect(
            &ctx,
            handle.as_ref(),
            admitted,
            limit,
            l.max_output_bytes,
            injected.as_ref().and_then(|s| s.scope()).as_ref(),
        )
        .await;
    drop(handle);
    one_shot.finish().await;
    if let Some(secrets) = injected {
        secrets.end().await;
    }
    Ok(Outcome::Ran(result?))
}
