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
use crate::dlp::{
    merge_counts, scan_fields, DlpEngine, RedactionCounts, SecretScope, StreamRedactor,
};
use crate::error::ActionError;
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
    /// What a decision that requires approval becomes on this host.
    pub holds: HoldPolicy,
}

/// What a decision that requires approval becomes on a host.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HoldPolicy {
    /// A gateway: the action is recorded as pending and parked for an approver.
    Park,
    /// A host where nobody can approve (the command line): the decision is recorded as a denial
    /// with the rule `approval.unavailable` added, and refused.
    Refuse,
}

/// A file the action writes into the VM before it runs.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: String,
    pub content: Bytes,
    /// Unix permission bits (0o644 unless the caller asked otherwise).
    pub mode: u32,
}

impl InputFile {
    /// A file of mode 0o644.
    pub fn new(path: String, content: Bytes) -> Self {
        Self {
            path,
            content,
            mode: 0o644,
        }
    }
}

/// Everything a caller sends into a VM for one action, as the inbound stage sees it.
#[derive(Debug, Clone, Default)]
pub struct Work {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<String>,
    /// Files to write before running.
    pub files: Vec<InputFile>,
    /// Caller-chosen labels stored with a sandbox and returned to callers: scanned and masked
    /// like every other input, but never sent into the VM nor shown to policy as a command.
    pub metadata: BTreeMap<String, String>,
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
        for file in &self.files {
            h.update(file.path.as_bytes());
            h.update(&file.content);
        }
        for (k, v) in &self.metadata {
            h.update(k.as_bytes());
            h.update(&[0]);
            h.update(v.as_bytes());
            h.update(&[0]);
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
        for (i, file) in self.files.iter().enumerate() {
            fields.push((format!("files[{i}].path"), file.path.as_str().into()));
            fields.push((
                format!("files[{i}].content"),
                String::from_utf8_lossy(&file.content),
            ));
        }
        // Keys are caller text too: named by position, so a key is never copied into a name.
        for (i, (k, v)) in self.metadata.iter().enumerate() {
            fields.push((format!("metadata[{i}].key"), k.as_str().into()));
            fields.push((format!("metadata[{i}].value"), v.as_str().into()));
        }
        fields
    }

    /// Masks every finding in place. Fails for a binary file with findings: it cannot be edited
    /// safely, so it is refused instead.
    fn redact(&mut self, dlp: &dyn DlpEngine) -> Result<RedactionCounts, ActionError> {
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
        self.metadata = std::mem::take(&mut self.metadata)
            .into_iter()
            .map(|(mut k, mut v)| {
                apply(&mut k);
                apply(&mut v);
                (k, v)
            })
            .collect();
        for (i, file) in self.files.iter_mut().enumerate() {
            apply(&mut file.path);
            match std::str::from_utf8(&file.content) {
                Ok(text) => {
                    let mut text = text.to_owned();
                    apply(&mut text);
                    file.content = Bytes::from(text);
                }
                Err(_) if !dlp.scan(&String::from_utf8_lossy(&file.content)).is_empty() => {
                    return Err(ActionError::dlp_blocked(format!(
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

/// What the policy stage does with a decision that requires approval.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Holds {
    /// Hold the request (audited as pending) for the caller to park.
    Park,
    /// A human approved exactly this request: go ahead.
    Approved,
    /// Nobody can approve through this door: record and answer a denial.
    Refuse,
}

/// The audit record of a decision that requires approval at a door where nobody can approve:
/// a denial, with the rule `approval.unavailable` added.
pub fn unapprovable(decision: &Decision) -> ztee_audit::DecisionRecord {
    let mut record = audit::decision_record(decision);
    record.decision = ztee_audit::DecisionKind::Deny;
    record.rule_ids.push("approval.unavailable".into());
    record
}

/// What the policy stage made of a request: go ahead, or hold it for a human approver.
pub enum Gate {
    Admitted(Admitted),
    Held(Decision),
}

/// The answer to a held action on a host where nobody can approve it.
pub fn approval_unavailable(decision: &Decision) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::Forbidden,
        "approval_required",
        format!(
            "policy requires a human approval for this request, and nobody can approve here; it \
             was not run ({}). Approvals are decided through a gateway (ztee serve): submit the \
             request there",
            decision.reasons.join(", ")
        ),
    )
}

/// The answer to a held request that is not parked: a stream (it cannot wait for a human) or a
/// file upload (its body is not kept).
pub fn approval_required(decision: &Decision) -> ActionError {
    ActionError::new(
        crate::error::ErrorKind::Forbidden,
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
    /// For an action that runs because people approved it: every record it writes names them.
    pub approval: Option<ztee_audit::ApprovalGrant>,
}

impl Pipeline {
    /// Stages 1-2: inbound DLP, then the policy decision. A denial or a hold for approval is
    /// audited here and returned as the error the caller sees; nothing has run.
    pub async fn admit(
        &self,
        ctx: &mut ActionContext<'_>,
        work: Work,
    ) -> Result<Admitted, ActionError> {
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
        work: Work,
        approved: bool,
    ) -> Result<Gate, ActionError> {
        self.gate(ctx, work, self.holds_for(approved)).await
    }

    /// What a decision that requires approval becomes: with `approved`, a human approved exactly
    /// this request; otherwise the host's [`HoldPolicy`].
    pub(crate) fn holds_for(&self, approved: bool) -> Holds {
        match (approved, self.holds) {
            (true, _) => Holds::Approved,
            (false, HoldPolicy::Park) => Holds::Park,
            (false, HoldPolicy::Refuse) => Holds::Refuse,
        }
    }

    /// Inbound DLP and the policy decision, with `holds` saying what a decision that requires
    /// approval becomes.
    async fn gate(
        &self,
        ctx: &mut ActionContext<'_>,
        mut work: Work,
        holds: Holds,
    ) -> Result<Gate, ActionError> {
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
            DecisionKind::RequireApproval if holds == Holds::Approved => {}
            DecisionKind::RequireApproval if holds == Holds::Refuse => {
                let event = self
                    .event(ctx, Outcome::Denied)
                    .with_decision(unapprovable(&decision))
                    .with_code(&input_digest);
                self.record(event).await?;
                return Err(approval_unavailable(&decision));
            }
            DecisionKind::Deny => {
                let event = self
                    .event(ctx, Outcome::Denied)
                    .with_decision(audit::decision_record(&decision))
                    .with_code(&input_digest);
                self.record(event).await?;
                return Err(ActionError::policy_denied(format!(
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

    /// Stages 3-5 for a non-streaming call: run, mask the output, record, answer. `secrets` is
    /// the scope of the sandbox's own secrets: its values are masked in this output only.
    pub async fn collect(
        &self,
        ctx: &ActionContext<'_>,
        sandbox: &dyn SandboxHandle,
        admitted: Admitted,
        timeout: std::time::Duration,
        max_output_bytes: usize,
        secrets: Option<&SecretScope>,
    ) -> Result<CommandResult, ActionError> {
        let start = Instant::now();
        let mut outbound = Outbound::new(self.dlp.as_ref(), secrets);
        let mut stream = self
            .execute(ctx, sandbox, &admitted, timeout, Stdin::Closed)
            .await?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let mut truncated = false;
        let mut exit = (None, false);
        let mut keep = |released: Released| {
            truncated |= push_capped(&mut stdout, &released.stdout, max_output_bytes);
            truncated |= push_capped(&mut stderr, &released.stderr, max_output_bytes);
        };
        while let Some(ev) = stream.next_event().await {
            match ev {
                OutputEvent::Stdout(b) => keep(outbound.stdout(&b)),
                OutputEvent::Stderr(b) => keep(outbound.stderr(&b)),
                OutputEvent::Exit {
                    exit_code,
                    timed_out,
                } => exit = (exit_code, timed_out),
            }
        }
        keep(outbound.finish());
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
    /// final `exit` event is sent only after the audit event is durable. `secrets` is the scope
    /// of the sandbox's own secrets, held until the stream ends. Unless `stdin` is
    /// [`Stdin::Closed`], [`Streaming::process`] reaches the command while it runs.
    ///
    /// The command runs to its end whether or not anyone still reads the events: a caller that
    /// goes away leaves it running (bounded by `timeout`), and its record is written when it ends.
    #[allow(clippy::too_many_arguments)]
    pub async fn stream(
        self: Arc<Self>,
        ctx: StreamContext,
        sandbox: Arc<dyn SandboxHandle>,
        admitted: Admitted,
        timeout: std::time::Duration,
        stdin: Stdin,
        secrets: Option<SecretScope>,
        keep_alive: Box<dyn std::any::Any + Send>,
    ) -> Result<Streaming, ActionError> {
        let action = ctx.as_action();
        let mut stream = self
            .execute(&action, sandbox.as_ref(), &admitted, timeout, stdin)
            .await?;
        let process = stream.process();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let pipeline = self.clone();
        tokio::spawn(async move {
            // The sandbox handle lives as long as the stream, even if the sandbox is deleted.
            let _sandbox = sandbox;
            // Whatever the caller needs released after the stream (a one-shot VM) goes last.
            let _keep_alive = keep_alive;
            let start = Instant::now();
            let mut outbound = Outbound::new(pipeline.dlp.as_ref(), secrets.as_ref());
            let mut output_digest = pipeline.content_key.hasher();
            let mut exit = (None, false);
            let mut client_gone = false;
            let mut send = |event: StreamEvent, tx: &tokio::sync::mpsc::Sender<StreamEvent>| {
                output_digest.update(event.digest_line().as_bytes());
                let tx = tx.clone();
                async move { tx.send(event).await.is_err() }
            };
            // A program that waits for input (a REPL, a tool server answering a request) gets
            // its complete lines out after a short pause instead of when more output comes.
            let mut paused = false;
            loop {
                let ev = if paused {
                    stream.next_event().await
                } else {
                    match tokio::time::timeout(PAUSE, stream.next_event()).await {
                        Ok(ev) => ev,
                        Err(_) => {
                            paused = true;
                            for event in outbound.pause().into_events() {
                                client_gone |= send(event, &tx).await;
                            }
                            continue;
                        }
                    }
                };
                let Some(ev) = ev else { break };
                paused = false;
                let released = match ev {
                    OutputEvent::Stdout(b) => outbound.stdout(&b),
                    OutputEvent::Stderr(b) => outbound.stderr(&b),
                    OutputEvent::Exit {
                        exit_code,
                        timed_out,
                    } => {
                        exit = (exit_code, timed_out);
                        continue;
                    }
                };
                for event in released.into_events() {
                    client_gone |= send(event, &tx).await;
                }
            }
            for event in outbound.finish().into_events() {
                client_gone |= send(event, &tx).await;
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
                Ok(()) => StreamEvent::Exit {
                    exit_code: exit.0,
                    timed_out: exit.1,
                    duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    redactions,
                },
                Err(e) => StreamEvent::Error {
                    error: StreamFailure {
                        code: e.code,
                        message: e.message,
                        request_id: action.caller.request_id.as_str().to_owned(),
                    },
                },
            };
            if !client_gone {
                let _ = tx.send(last).await;
            }
        });
        Ok(Streaming {
            events: rx,
            process,
        })
    }

    /// Stage 3: the VM. Writes the files, then starts the command.
    async fn execute(
        &self,
        ctx: &ActionContext<'_>,
        sandbox: &dyn SandboxHandle,
        admitted: &Admitted,
        timeout: std::time::Duration,
        stdin: Stdin,
    ) -> Result<Box<dyn OutputStream>, ActionError> {
        let work = &admitted.work;
        let started = async {
            for file in &work.files {
                sandbox
                    .write_file(&file.path, file.content.clone(), file.mode)
                    .await?;
            }
            sandbox
                .exec(ExecSpec {
                    argv: work.argv.clone(),
                    env: work.env.clone(),
                    cwd: work.cwd.clone(),
                    stdin: work.stdin.clone().map(Bytes::from),
                    interactive: stdin != Stdin::Closed,
                    pty: match stdin {
                        Stdin::Terminal(size) => Some(size),
                        _ => None,
                    },
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
    pub async fn record(&self, event: AuditEvent) -> Result<(), ActionError> {
        self.audit.append(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            ActionError::unavailable("the audit trail cannot be written; nothing was done")
        })
    }

    /// The one record of an admitted action that changed something in a sandbox (a file
    /// written, input typed, a file operation): success or failure as `done` says, with the
    /// decision, the keyed digest of the input and what inbound DLP replaced.
    pub async fn record_admitted(
        &self,
        ctx: &ActionContext<'_>,
        admitted: &Admitted,
        done: bool,
    ) -> Result<(), ActionError> {
        let outcome = if done {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let event = self
            .event(ctx, outcome)
            .with_decision(audit::decision_record(&admitted.decision))
            .with_code(&admitted.input_digest)
            .with_redactions(&admitted.inbound_redactions);
        self.record(event).await
    }

    pub fn event(&self, ctx: &ActionContext<'_>, outcome: Outcome) -> AuditEvent {
        let event = audit::event(
            ctx.event_type,
            outcome,
            audit::audit_principal(&ctx.caller.principal),
            ctx.caller.request_id.as_str(),
            ctx.caller.origin_ip,
            ctx.resource.as_deref(),
        );
        match &ctx.approval {
            // Ids and subjects are ours; a value the audit log refuses is not worth losing the
            // record for, and the approval's own records still name everyone.
            Some(grant) => match event.clone().with_approval(grant.clone()) {
                Ok(named) => named,
                Err(e) => {
                    tracing::error!(error = %e, "an approval could not be named in a record");
                    event
                }
            },
            None => event,
        }
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
    pub(crate) fn as_action(&self) -> ActionContext<'_> {
        ActionContext {
            caller: &self.caller,
            event_type: self.event_type,
            resource: self.resource.clone(),
            policy: self.policy.clone(),
            approval: None,
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

pub fn exec_error(e: crate::exec::ExecError) -> ActionError {
    match e {
        crate::exec::ExecError::Guest(m) => ActionError::bad_request(m),
        refused @ crate::exec::ExecError::Refused { .. } => ActionError::new(
            crate::error::ErrorKind::Forbidden,
            "image_refused",
            refused.to_string(),
        ),
        crate::exec::ExecError::NotFound(m) => ActionError::not_found(m),
        crate::exec::ExecError::Engine(m) => {
            tracing::error!(error = %m, "VM engine failure");
            ActionError::unavailable("the VM engine failed to run this request; see the server log")
        }
    }
}

/// How long a streamed command's output may stop before its complete lines are released.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// One event of a streamed command, in the order the caller receives them: masked output, then
/// one `exit` (once the command's record is durable) or one `error`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: Option<i32>,
        timed_out: bool,
        duration_ms: u64,
        redactions: RedactionCounts,
    },
    Error {
        error: StreamFailure,
    },
}

/// Why a stream ended without its `exit` event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamFailure {
    pub code: &'static str,
    pub message: String,
    pub request_id: String,
}

impl StreamEvent {
    /// The event as one line of the REST API's NDJSON stream; also what the output digest of
    /// the audit record covers.
    pub fn digest_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// The request's `stdin` text, then end of input.
    Closed,
    /// Input that arrives while it runs.
    Open,
    /// A pseudo-terminal of this size: typed input, one output stream, a size that can change.
    Terminal(ztee_wire::PtySize),
}

/// A streamed command: its events, and while it runs, its pid and control when the engine
/// keeps it reachable.
pub struct Streaming {
    pub events: tokio::sync::mpsc::Receiver<StreamEvent>,
    pub process: Option<crate::exec::RunningProcess>,
}

impl Released {
    /// Stream events for what the outbound stage released: stdout's first, then stderr's.
    fn into_events(self) -> impl Iterator<Item = StreamEvent> {
        [
            (!self.stdout.is_empty()).then_some(StreamEvent::Stdout { data: self.stdout }),
            (!self.stderr.is_empty()).then_some(StreamEvent::Stderr { data: self.stderr }),
        ]
        .into_iter()
        .flatten()
    }
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

/// Stage 4: outbound DLP over a command's output, chunk by chunk. stdout and stderr are scanned as
/// one stream in the order they arrived, so a card number a program splits between the two
/// (`echo 4111 1111 >&1; echo 1111 1111 >&2`) is still found: each stream's text enters one
/// redactor behind a mark naming the stream, and what the redactor releases is routed back by
/// those marks. The marks are default-ignorable characters, which the detector reads through
/// like any separator; the same characters in the output itself are replaced, so a program
/// cannot move its text from one stream to the other.
pub struct Outbound {
    carry: [ztee_dlp::Utf8Stream; 2],
    redactor: Box<dyn StreamRedactor>,
    /// The stream whose text the redactor was fed last.
    fed: Option<OutputStreamKind>,
    /// The stream released text goes to until the next mark.
    routed: OutputStreamKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutputStreamKind {
    Stdout = 0,
    Stderr = 1,
}

/// INVISIBLE TIMES and INVISIBLE SEPARATOR: default-ignorable, so they split no card number.
const STDOUT_MARK: char = '\u{2062}';
const STDERR_MARK: char = '\u{2063}';

/// What one step of the outbound stage releases, per stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub stdout: String,
    pub stderr: String,
}

impl Outbound {
    /// The outbound stage of one sandbox's command: the shared detectors plus the exact values
    /// of that sandbox's secrets (`secrets`), never another sandbox's.
    pub fn new(dlp: &dyn DlpEngine, secrets: Option<&SecretScope>) -> Self {
        Self {
            carry: Default::default(),
            redactor: dlp.stream_for(secrets),
            fed: None,
            routed: OutputStreamKind::Stdout,
        }
    }

    pub fn stdout(&mut self, bytes: &[u8]) -> Released {
        let mut text = String::new();
        self.carry[OutputStreamKind::Stdout as usize].push(bytes, &mut text);
        self.feed(OutputStreamKind::Stdout, &text)
    }

    pub fn stderr(&mut self, bytes: &[u8]) -> Released {
        let mut text = String::new();
        self.carry[OutputStreamKind::Stderr as usize].push(bytes, &mut text);
        self.feed(OutputStreamKind::Stderr, &text)
    }

    /// Everything still held back, at the end of the command.
    pub fn finish(&mut self) -> Released {
        let mut released = Released::default();
        for kind in [OutputStreamKind::Stdout, OutputStreamKind::Stderr] {
            let mut text = String::new();
            self.carry[kind as usize].finish(&mut text);
            released.append(self.feed(kind, &text));
        }
        let tail = self.redactor.finish();
        released.append(self.route(&tail));
        released
    }

    pub fn counts(&self) -> RedactionCounts {
        self.redactor.counts()
    }

    /// The command has paused (an interactive program waiting for input): what can be released
    /// safely before it goes on.
    pub fn pause(&mut self) -> Released {
        let lines = self.redactor.pause();
        self.route(&lines)
    }

    fn feed(&mut self, kind: OutputStreamKind, text: &str) -> Released {
        if text.is_empty() {
            return Released::default();
        }
        let mut input = String::with_capacity(text.len() + 3);
        if self.fed != Some(kind) {
            input.push(match kind {
                OutputStreamKind::Stdout => STDOUT_MARK,
                OutputStreamKind::Stderr => STDERR_MARK,
            });
            self.fed = Some(kind);
        }
        input.extend(text.chars().map(|c| match c {
            STDOUT_MARK | STDERR_MARK => char::REPLACEMENT_CHARACTER,
            c => c,
        }));
        let released = self.redactor.push(&input);
        self.route(&released)
    }

    fn route(&mut self, released: &str) -> Released {
        let mut out = Released::default();
        for c in released.chars() {
            match c {
                STDOUT_MARK => self.routed = OutputStreamKind::Stdout,
                STDERR_MARK => self.routed = OutputStreamKind::Stderr,
                c => match self.routed {
                    OutputStreamKind::Stdout => out.stdout.push(c),
                    OutputStreamKind::Stderr => out.stderr.push(c),
                },
            }
        }
        out
    }
}

impl Released {
    fn append(&mut self, more: Released) {
        self.stdout.push_str(&more.stdout);
        self.stderr.push_str(&more.stderr);
    }
}

#[cfg(test)]
mod outbound_tests {
    //! The outbound stage with the production detector: a card number split between stdout and
    //! stderr is masked, and each stream keeps its own text.

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::dlp_engine::ZteeDlp;

    fn run(chunks: &[(bool, &str)]) -> (String, String, RedactionCounts) {
        let dlp = ZteeDlp::new(Default::default()).unwrap();
        let mut outbound = Outbound::new(&dlp, None);
        let mut all = Released::default();
        for (is_stdout, text) in chunks {
            all.append(if *is_stdout {
                outbound.stdout(text.as_bytes())
            } else {
                outbound.stderr(text.as_bytes())
            });
        }
        all.append(outbound.finish());
        (all.stdout, all.stderr, outbound.counts())
    }

    fn digits(text: &str) -> String {
        text.chars().filter(char::is_ascii_digit).collect()
    }

    #[test]
    fn a_card_number_split_between_stdout_and_stderr_is_masked() {
        let (out, err, counts) = run(&[
            (true, "card: 4111 1111 "),
            (false, "1111 1111\n"),
            (true, "\ndone\n"),
        ]);
        // Unmasked, the two streams together would hold all sixteen digits.
        let both = format!("{out}{err}");
        assert!(
            !digits(&both).contains("4111111111111111"),
            "{out:?} {err:?}"
        );
        assert!(both.contains('*'), "{out:?} {err:?}");
        assert_eq!(counts.get("CREDIT_CARD"), Some(&1), "{counts:?}");
        assert!(out.starts_with("card: "), "{out:?}");
        assert!(out.ends_with("\ndone\n"), "{out:?}");
    }

    #[test]
    fn each_stream_keeps_its_own_text_in_order() {
        let (out, err, counts) = run(&[
            (true, "one "),
            (false, "alpha "),
            (true, "two "),
            (false, "beta"),
            (true, "three"),
        ]);
        assert_eq!(out, "one two three");
        assert_eq!(err, "alpha beta");
        assert!(counts.is_empty(), "{counts:?}");
    }

    #[test]
    fn a_program_cannot_route_its_text_with_the_marks() {
        let (out, err, _) = run(&[(true, "a\u{2063}b"), (false, "c\u{2062}d")]);
        assert_eq!(out, "a\u{fffd}b");
        assert_eq!(err, "c\u{fffd}d");
    }

    #[test]
    fn a_card_number_within_one_stream_is_still_masked() {
        let (out, err, counts) = run(&[(false, "x 5500 0000 "), (false, "0000 0004 y")]);
        assert!(out.is_empty());
        assert!(!digits(&err).contains("5500000000000004"), "{err:?}");
        assert!(err.contains('*'), "{err:?}");
        assert_eq!(counts.get("CREDIT_CARD"), Some(&1));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod inbound_tests {
    use super::*;

    #[test]
    fn sandbox_metadata_is_scanned_and_masked_as_its_own_fields() {
        let dlp = crate::dlp_engine::ZteeDlp::new(Default::default()).unwrap();
        let pan = "4111111111111111";
        let mut work = Work {
            metadata: [(pan.to_owned(), format!("card {pan}"))].into(),
            ..Work::default()
        };
        let names: Vec<String> = work.fields().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["metadata[0].key", "metadata[0].value"]);
        let counts = work.redact(&dlp).unwrap();
        assert!(!counts.is_empty());
        let (k, v) = work.metadata.iter().next().unwrap();
        assert!(!k.contains(pan) && !v.contains(pan), "{k} {v}");
        assert!(work.argv.is_empty());
    }
}
