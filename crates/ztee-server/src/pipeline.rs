//! The order of the gateway's stages, in one place.
//!
//! ```text
//! request -> authn (auth.rs, as the `Caller` extractor) -> rate limit
//!         -> inbound DLP   (scan code, args, env, stdin, files)
//!         -> policy        (allow | deny | require_approval; may require inbound redaction)
//!         -> VM            (exec.rs; quota reserved before a VM is created)
//!         -> outbound DLP  (PCI mask on stdout/stderr/downloads, counted per entity)
//!         -> audit         (durable before the caller sees the result)
//!         -> response
//! ```
//! [`Pipeline::admit`] runs inbound DLP and policy; [`Pipeline::collect`] and
//! [`Pipeline::stream`] run the VM and outbound DLP and finish with the audit event. Every
//! handler that runs code goes through `admit` first; nothing reaches a VM otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ztee_audit::{AuditEvent, ContentKey, EventType, Outcome};

use crate::audit::{self, AuditSink};
use crate::auth::Caller;
use crate::dlp::{merge_counts, scan_fields, DlpEngine, RedactionCounts, StreamRedactor};
use crate::error::ApiError;
use crate::exec::{CommandResult, ExecSpec, Executor, OutputEvent, OutputStream, SandboxHandle};
use crate::metrics::Metrics;
use crate::policy::{Decision, DecisionKind, PolicyEngine, PolicyInput};

pub struct Pipeline {
    pub dlp: Arc<dyn DlpEngine>,
    pub policy: Arc<dyn PolicyEngine>,
    pub executor: Arc<dyn Executor>,
    pub audit: Arc<dyn AuditSink>,
    /// Key of the content digests in audit events (code and output are never stored, and
    /// their digests are keyed so a short input cannot be recovered by guessing).
    pub content_key: Arc<ContentKey>,
    pub metrics: Arc<Metrics>,
}

/// Everything a caller sends into a VM for one action, as the inbound stage sees it.
#[derive(Debug, Clone, Default)]
pub struct Work {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<String>,
    /// Files to write before running (path, content).
    pub files: Vec<(String, Bytes)>,
}

impl Work {
    /// SHA-256 over every input, for the audit event (the content itself is never stored).
    /// Keyed digest of everything the action sends in (see [`ContentKey`]).
    pub fn digest_input(&self, key: &ContentKey) -> Vec<u8> {
        let mut h = key.hasher();
        for a in &self.argv {
            h.update(a.as_bytes());
            h.update(&[0]);
        }
        for (k, v) in &self.env {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(&[0]);
        }
        if let Some(stdin) = &self.stdin {
            h.update(stdin.as_bytes());
        }
        for (path, content) in &self.files {
            h.update(path.as_bytes());
            h.update(content);
        }
        h.finalize().to_vec()
    }

    fn fields(&self) -> Vec<(String, std::borrow::Cow<'_, str>)> {
        let mut fields: Vec<(String, std::borrow::Cow<'_, str>)> = Vec::new();
        for (i, a) in self.argv.iter().enumerate() {
            fields.push((format!("cmd[{i}]"), a.as_str().into()));
        }
        for (k, v) in &self.env {
            fields.push((format!("env.{k}"), v.as_str().into()));
        }
        if let Some(cwd) = &self.cwd {
            fields.push(("cwd".into(), cwd.as_str().into()));
        }
        if let Some(stdin) = &self.stdin {
            fields.push(("stdin".into(), stdin.as_str().into()));
        }
        for (i, (path, content)) in self.files.iter().enumerate() {
            fields.push((format!("files[{i}].path"), path.as_str().into()));
            fields.push((
                format!("files[{i}].content"),
                String::from_utf8_lossy(content),
            ));
        }
        fields
    }

    /// Masks every finding in place. Fails for a binary file with findings: it cannot be edited
    /// safely, so it is refused instead.
    fn redact(&mut self, dlp: &dyn DlpEngine) -> Result<RedactionCounts, ApiError> {
        let mut counts = RedactionCounts::new();
        let mut apply = |text: &mut String| {
            let r = dlp.redact(text);
            merge_counts(&mut counts, &r.counts);
            *text = r.text;
        };
        self.argv.iter_mut().for_each(&mut apply);
        self.env.values_mut().for_each(&mut apply);
        self.cwd.iter_mut().for_each(&mut apply);
        self.stdin.iter_mut().for_each(&mut apply);
        for (i, (path, content)) in self.files.iter_mut().enumerate() {
            apply(path);
            match std::str::from_utf8(content) {
                Ok(text) => {
                    let mut text = text.to_owned();
                    apply(&mut text);
                    *content = Bytes::from(text);
                }
                Err(_) if !dlp.scan(&String::from_utf8_lossy(content)).is_empty() => {
                    return Err(ApiError::dlp_blocked(format!(
                        "files[{i}] is binary and holds sensitive data that cannot be masked in place"
                    )));
                }
                Err(_) => {}
            }
        }
        Ok(counts)
    }
}

/// What `admit` hands to the execution stage.
pub struct Admitted {
    pub work: Work,
    pub decision: Decision,
    pub inbound_redactions: RedactionCounts,
    pub input_digest: Vec<u8>,
}

/// What the policy stage made of a request: go ahead, or hold it for a human approver.
pub enum Gate {
    Admitted(Admitted),
    Held(Decision),
}

/// The answer to a held request that is not parked: a stream (it cannot wait for a human) or a
/// file upload (its body is not kept).
pub fn approval_required(decision: &Decision) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "approval_required",
        format!(
            "policy requires a human approval for this request; it was not run ({})",
            decision.reasons.join(", ")
        ),
    )
}

/// Describes the action for policy and audit.
pub struct ActionContext<'a> {
    pub caller: &'a Caller,
    pub event_type: EventType,
    pub resource: Option<String>,
    pub policy: PolicyInput,
}

impl Pipeline {
    /// Stages 1-2: inbound DLP, then the policy decision. A denial or a hold for approval is
    /// audited here and returned as the error the caller sees; nothing has run.
    pub async fn admit(
        &self,
        ctx: &mut ActionContext<'_>,
        work: Work,
    ) -> Result<Admitted, ApiError> {
        match self.admit_or_hold(ctx, work, false).await? {
            Gate::Admitted(admitted) => Ok(admitted),
            Gate::Held(decision) => Err(approval_required(&decision)),
        }
    }

    /// As [`Pipeline::admit`], but a hold for approval is returned as [`Gate::Held`] (audited
    /// as pending) for the caller to park. With `approved`, a decision that requires approval
    /// goes ahead: a human approved exactly this request. A denial is never overridden.
    pub async fn admit_or_hold(
        &self,
        ctx: &mut ActionContext<'_>,
        mut work: Work,
        approved: bool,
    ) -> Result<Gate, ApiError> {
        let input_digest = work.digest_input(&self.content_key);
        let fields = work.fields();
        let findings = scan_fields(
            self.dlp.as_ref(),
            fields.iter().map(|(f, t)| (f.clone(), t.as_ref())),
        );
        drop(fields);
        ctx.policy.findings = findings;
        ctx.policy.cmd = work.argv.clone();
        let decision = self.policy.decide(&ctx.policy);
        self.metrics.decision(match decision.kind {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
            DecisionKind::RequireApproval => "require_approval",
        });
        match decision.kind {
            DecisionKind::Allow => {}
            DecisionKind::RequireApproval if approved => {}
            DecisionKind::Deny => {
                let event = self
                    .event(ctx, Outcome::Denied)
                    .with_decision(audit::decision_record(&decision))
                    .with_code(&input_digest);
                self.record(event).await?;
                return Err(ApiError::policy_denied(format!(
                    "policy denied this request: {}",
                    decision.reasons.join(", ")
                )));
            }
            DecisionKind::RequireApproval => {
                let event = self
                    .event(ctx, Outcome::PendingApproval)
                    .with_decision(audit::decision_record(&decision))
                    .with_code(&input_digest);
                self.record(event).await?;
                return Ok(Gate::Held(decision));
            }
        }
        let inbound_redactions = if decision.redact_inbound {
            let counts = work.redact(self.dlp.as_ref())?;
            self.metrics.redactions("inbound", &counts);
            counts
        } else {
            RedactionCounts::new()
        };
        Ok(Gate::Admitted(Admitted {
            work,
            decision,
            inbound_redactions,
            input_digest,
        }))
    }

    /// Stages 3-5 for a non-streaming call: run, mask the output, record, answer.
    pub async fn collect(
        &self,
        ctx: &ActionContext<'_>,
        sandbox: &dyn SandboxHandle,
        admitted: Admitted,
        timeout: std::time::Duration,
        max_output_bytes: usize,
    ) -> Result<CommandResult, ApiError> {
        let start = Instant::now();
        let mut outbound = Outbound::new(self.dlp.as_ref());
        let mut stream = self.execute(ctx, sandbox, &admitted, timeout).await?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let mut truncated = false;
        let mut exit = (None, false);
        while let Some(ev) = stream.next_event().await {
            match ev {
                OutputEvent::Stdout(b) => {
                    let text = outbound.stdout(&b);
                    truncated |= push_capped(&mut stdout, &text, max_output_bytes);
                }
                OutputEvent::Stderr(b) => {
                    let text = outbound.stderr(&b);
                    truncated |= push_capped(&mut stderr, &text, max_output_bytes);
                }
                OutputEvent::Exit {
                    exit_code,
                    timed_out,
                } => exit = (exit_code, timed_out),
            }
        }
        let (out_tail, err_tail) = outbound.finish();
        truncated |= push_capped(&mut stdout, &out_tail, max_output_bytes);
        truncated |= push_capped(&mut stderr, &err_tail, max_output_bytes);
        let mut redactions = outbound.counts();
        self.metrics.redactions("outbound", &redactions);
        merge_counts(&mut redactions, &admitted.inbound_redactions);
        let result = CommandResult {
            stdout,
            stderr,
            exit_code: exit.0,
            timed_out: exit.1,
            duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            redactions,
            truncated,
        };
        let mut digest_of_output = self.content_key.hasher();
        digest_of_output.update(result.stdout.as_bytes());
        digest_of_output.update(result.stderr.as_bytes());
        let event = self
            .event(ctx, Outcome::Success)
            .with_decision(audit::decision_record(&admitted.decision))
            .with_code(&admitted.input_digest)
            .with_output(&digest_of_output.finalize())
            .with_redactions(&result.redactions);
        self.record(event).await?;
        Ok(result)
    }

    /// Stages 3-5 for a streaming call: every output chunk is masked before it is sent; the
    /// final `exit` line is sent only after the audit event is durable.
    pub async fn stream(
        self: Arc<Self>,
        ctx: StreamContext,
        sandbox: Arc<dyn SandboxHandle>,
        admitted: Admitted,
        timeout: std::time::Duration,
        keep_alive: Box<dyn std::any::Any + Send>,
    ) -> Result<tokio::sync::mpsc::Receiver<serde_json::Value>, ApiError> {
        let action = ctx.as_action();
        let mut stream = self
            .execute(&action, sandbox.as_ref(), &admitted, timeout)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let pipeline = self.clone();
        tokio::spawn(async move {
            // The sandbox handle lives as long as the stream, even if the sandbox is deleted.
            let _sandbox = sandbox;
            // Whatever the caller needs released after the stream (a one-shot VM) goes last.
            let _keep_alive = keep_alive;
            let start = Instant::now();
            let mut outbound = Outbound::new(pipeline.dlp.as_ref());
            let mut output_digest = pipeline.content_key.hasher();
            let mut exit = (None, false);
            let mut client_gone = false;
            while let Some(ev) = stream.next_event().await {
                let line = match ev {
                    OutputEvent::Stdout(b) => chunk_line("stdout", outbound.stdout(&b)),
                    OutputEvent::Stderr(b) => chunk_line("stderr", outbound.stderr(&b)),
                    OutputEvent::Exit {
                        exit_code,
                        timed_out,
                    } => {
                        exit = (exit_code, timed_out);
                        None
                    }
                };
                if let Some(line) = line {
                    output_digest.update(line.to_string().as_bytes());
                    client_gone |= tx.send(line).await.is_err();
                }
            }
            let (out_tail, err_tail) = outbound.finish();
            for line in [
                chunk_line("stdout", out_tail),
                chunk_line("stderr", err_tail),
            ]
            .into_iter()
            .flatten()
            {
                output_digest.update(line.to_string().as_bytes());
                client_gone |= tx.send(line).await.is_err();
            }
            let mut redactions = outbound.counts();
            pipeline.metrics.redactions("outbound", &redactions);
            merge_counts(&mut redactions, &admitted.inbound_redactions);
            let action = ctx.as_action();
            let event = pipeline
                .event(&action, Outcome::Success)
                .with_decision(audit::decision_record(&admitted.decision))
                .with_code(&admitted.input_digest)
                .with_output(&output_digest.finalize())
                .with_redactions(&redactions);
            let last = match pipeline.record(event).await {
                Ok(()) => serde_json::json!({
                    "type": "exit",
                    "exit_code": exit.0,
                    "timed_out": exit.1,
                    "duration_ms": u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "redactions": redactions,
                }),
                Err(e) => serde_json::json!({
                    "type": "error",
                    "error": {"code": e.code, "message": e.message, "request_id": action.caller.request_id.as_str()},
                }),
            };
            if !client_gone {
                let _ = tx.send(last).await;
            }
        });
        Ok(rx)
    }

    /// Stage 3: the VM. Writes the files, then starts the command.
    async fn execute(
        &self,
        ctx: &ActionContext<'_>,
        sandbox: &dyn SandboxHandle,
        admitted: &Admitted,
        timeout: std::time::Duration,
    ) -> Result<Box<dyn OutputStream>, ApiError> {
        let work = &admitted.work;
        let started = async {
            for (path, content) in &work.files {
                sandbox.write_file(path, content.clone(), 0o644).await?;
            }
            sandbox
                .exec(ExecSpec {
                    argv: work.argv.clone(),
                    env: work.env.clone(),
                    cwd: work.cwd.clone(),
                    stdin: work.stdin.clone().map(Bytes::from),
                    timeout,
                })
                .await
        }
        .await;
        match started {
            Ok(stream) => Ok(stream),
            Err(e) => {
                let event = self
                    .event(ctx, Outcome::Failure)
                    .with_decision(audit::decision_record(&admitted.decision))
                    .with_code(&admitted.input_digest);
                self.record(event).await?;
                Err(exec_error(e))
            }
        }
    }

    /// The audit stage. Fails closed: an event that cannot be made durable fails the request.
    pub async fn record(&self, event: AuditEvent) -> Result<(), ApiError> {
        self.audit.append(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            ApiError::unavailable("the audit trail cannot be written; nothing was done")
        })
    }

    pub fn event(&self, ctx: &ActionContext<'_>, outcome: Outcome) -> AuditEvent {
        audit::event(
            ctx.event_type,
            outcome,
            audit::audit_principal(&ctx.caller.principal),
            ctx.caller.request_id.as_str(),
            ctx.caller.origin_ip,
            ctx.resource.as_deref(),
        )
    }
}

/// An owned action context for work that outlives the handler (streams).
pub struct StreamContext {
    pub caller: Caller,
    pub event_type: EventType,
    pub resource: Option<String>,
    pub policy: PolicyInput,
}

impl StreamContext {
    fn as_action(&self) -> ActionContext<'_> {
        ActionContext {
            caller: &self.caller,
            event_type: self.event_type,
            resource: self.resource.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// What the audit trail records for a failed create: the admission denial when the image was
/// refused (rule and reason), else the policy decision that let the request through.
pub fn create_failure_decision(
    e: &crate::exec::ExecError,
    policy: &ztee_audit::DecisionRecord,
) -> ztee_audit::DecisionRecord {
    match e {
        crate::exec::ExecError::Refused { rule, reason, .. } => ztee_audit::DecisionRecord {
            decision: ztee_audit::DecisionKind::Deny,
            risk: "HIGH".into(),
            rule_ids: vec![format!("admission.{rule}")],
            reasons: vec![reason.clone()],
        },
        _ => policy.clone(),
    }
}

pub fn exec_error(e: crate::exec::ExecError) -> ApiError {
    match e {
        crate::exec::ExecError::Guest(m) => ApiError::bad_request(m),
        refused @ crate::exec::ExecError::Refused { .. } => {
            ApiError::forbidden(refused.to_string())
        }
        crate::exec::ExecError::NotFound(m) => ApiError::not_found(m),
        crate::exec::ExecError::Engine(m) => {
            tracing::error!(error = %m, "VM engine failure");
            ApiError::unavailable("the VM engine failed to run this request; see the server log")
        }
    }
}

fn chunk_line(stream: &str, text: String) -> Option<serde_json::Value> {
    (!text.is_empty()).then(|| serde_json::json!({"type": stream, "data": text}))
}

/// Appends up to the cap (on a char boundary); returns true when something was cut.
fn push_capped(out: &mut String, text: &str, cap: usize) -> bool {
    let room = cap.saturating_sub(out.len());
    if text.len() <= room {
        out.push_str(text);
        return false;
    }
    let mut end = room;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&text[..end]);
    true
}

/// Stage 4: outbound DLP over both output streams, chunk by chunk.
pub struct Outbound {
    stdout: (Utf8Carry, Box<dyn StreamRedactor>),
    stderr: (Utf8Carry, Box<dyn StreamRedactor>),
}

impl Outbound {
    pub fn new(dlp: &dyn DlpEngine) -> Self {
        Self {
            stdout: (Utf8Carry::default(), dlp.stream()),
            stderr: (Utf8Carry::default(), dlp.stream()),
        }
    }

    pub fn stdout(&mut self, bytes: &[u8]) -> String {
        let text = self.stdout.0.push(bytes);
        self.stdout.1.push(&text)
    }

    pub fn stderr(&mut self, bytes: &[u8]) -> String {
        let text = self.stderr.0.push(bytes);
        self.stderr.1.push(&text)
    }

    pub fn finish(&mut self) -> (String, String) {
        let mut out = self.stdout.1.push(&self.stdout.0.finish());
        out.push_str(&self.stdout.1.finish());
        let mut err = self.stderr.1.push(&self.stderr.0.finish());
        err.push_str(&self.stderr.1.finish());
        (out, err)
    }

    pub fn counts(&self) -> RedactionCounts {
        let mut counts = self.stdout.1.counts();
        merge_counts(&mut counts, &self.stderr.1.counts());
        counts
    }
}

/// Turns a byte stream into text without splitting a UTF-8 sequence across chunks; invalid
/// bytes become U+FFFD.
#[derive(Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}
