//! Stateful code execution: code contexts in a sandbox that keep their variables between runs
//! and return rich results (the last expression's value, HTML tables, PNG figures, errors with
//! tracebacks), as E2B's code interpreter does.
//!
//! A context is a long-lived interpreter process inside the sandbox (`guest/interpreter.py` under
//! the image's python3, or `guest/interpreter.js` under its node; as the sandbox user, with the
//! sandbox's environment and secrets like any command), started on its first run. Every run is an action: inbound DLP and policy over the code (as `sandbox.exec`,
//! so the same rules apply as to a command), then the run, then its events masked on the way
//! out (output as one stream, so a card number split across two prints is still found; every
//! string of a result and an error; PNG and JPEG images pass unscanned, as files do), then one
//! audit record with the digests of the code and of what was returned.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use ztee_audit::{EventType, Outcome as AuditOutcome};

use super::checks::{check_env, check_guest_path};
use super::helper::{Helper, Program};
use super::sandbox::{enter, Entered};
use super::{ActionError, Outcome};
use crate::audit;
use crate::auth::Caller;
use crate::dlp::{merge_counts, RedactionCounts};
use crate::pipeline::{Outbound, Work};
use crate::state::AppState;

/// Largest event a context may print in one line (a PNG figure, base64).
const MAX_EVENT: usize = 32 * 1024 * 1024;

/// Most contexts one sandbox keeps.
pub const MAX_CONTEXTS: usize = 16;

/// How long an interrupted run has to end before its context is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// A language code contexts run, parsed from the names callers give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    JavaScript,
}

impl Language {
    /// The language a name given by a caller means; `None` (no name) is Python.
    pub fn parse(name: Option<&str>) -> Result<Self, ActionError> {
        match name.map(str::to_ascii_lowercase).as_deref() {
            None | Some("python") | Some("python3") => Ok(Self::Python),
            Some("js") | Some("javascript") | Some("node") => Ok(Self::JavaScript),
            Some(_) => Err(ActionError::bad_request(
                "this language is not served; code contexts run \"python\" or \"js\" \
                 (JavaScript, where the sandbox's image has node)",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::JavaScript => "javascript",
        }
    }

    /// The id of the context a run in this language without a context uses.
    pub fn default_context(self) -> &'static str {
        match self {
            Self::Python => "default-python",
            Self::JavaScript => "default-javascript",
        }
    }

    /// The context program.
    fn program(self) -> Program {
        match self {
            Self::Python => Program::Python(include_str!("guest/interpreter.py")),
            Self::JavaScript => Program::Node(include_str!("guest/interpreter.js")),
        }
    }
}

/// A run of code.
#[derive(Debug, Clone)]
pub struct RunCode {
    pub code: String,
    /// The context to run in; the default Python context when `None`.
    pub context: Option<String>,
    /// The language of the context the run starts when it names none; a run that names a
    /// context runs in that context's language.
    pub language: Language,
    /// Environment for this run only.
    pub env: BTreeMap<String, String>,
    /// Seconds the run may take; the configured command timeout when `None`.
    pub timeout_s: Option<u64>,
}

/// A context as callers see it.
#[derive(Debug, Clone, Serialize)]
pub struct ContextInfo {
    pub id: String,
    pub language: Language,
    pub cwd: String,
}

/// One event of a run, in the shape E2B's code interpreter streams (NDJSON), masked.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeEvent {
    Stdout {
        text: String,
        timestamp: String,
    },
    Stderr {
        text: String,
        timestamp: String,
    },
    /// A result: its formats (`text`, `html`, `png`, ...) and `is_main_result`.
    Result(serde_json::Map<String, serde_json::Value>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    NumberOfExecutions {
        execution_count: u64,
    },
    EndOfExecution,
}

/// What a context prints, as the host parses it (anything else ends the run as an error).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum GuestEvent {
    Ready,
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Result(serde_json::Map<String, serde_json::Value>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    NumberOfExecutions {
        execution_count: u64,
    },
    EndOfExecution,
}

/// Result formats that are images: they pass unscanned (DLP reads text), as file contents of
/// images do. Every other field of a result is scanned.
const OPAQUE_FORMATS: &[&str] = &["png", "jpeg"];

struct Context {
    info: ContextInfo,
    /// Held by a run for its whole duration: one run at a time per context.
    helper: Arc<tokio::sync::Mutex<Option<Helper>>>,
}

/// A sandbox's code contexts.
#[derive(Default)]
pub struct Contexts {
    map: Mutex<HashMap<String, Arc<Context>>>,
}

impl Contexts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Context>, ActionError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ActionError::not_found(format!("no code context {id:?}")))
    }

    /// The context `id`, or when `None`, the default context of `language` (made on first use).
    fn get_or_default(
        &self,
        id: Option<&str>,
        language: Language,
    ) -> Result<Arc<Context>, ActionError> {
        match id {
            Some(id) => self.get(id),
            None => Ok(self
                .lock()
                .entry(language.default_context().to_owned())
                .or_insert_with(|| {
                    Arc::new(Context {
                        info: ContextInfo {
                            id: language.default_context().to_owned(),
                            language,
                            cwd: crate::approvals::inputs::GUEST_HOME.to_owned(),
                        },
                        helper: Default::default(),
                    })
                })
                .clone()),
        }
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let mut list: Vec<_> = self.lock().values().map(|c| c.info.clone()).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}

/// Creates a context (its process starts on its first run).
pub(super) async fn create_context(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    language: Language,
    cwd: Option<String>,
) -> Result<Outcome, ActionError> {
    let cwd = cwd.unwrap_or_else(|| crate::approvals::inputs::GUEST_HOME.to_owned());
    check_guest_path("cwd", &cwd)?;
    let Entered { sandbox, .. } =
        enter(state, caller, id, "sandbox.exec", EventType::SandboxExec).await?;
    let mut map = sandbox.contexts.lock();
    if map.len() >= MAX_CONTEXTS {
        return Err(ActionError::quota_exceeded(
            format!("the sandbox already has {MAX_CONTEXTS} code contexts; remove one"),
            5,
        ));
    }
    // The cwd is caller text kept and shown back: masked like every such string.
    let cwd = state.pipeline.dlp.redact(&cwd).text;
    let info = ContextInfo {
        id: uuid::Uuid::new_v4().simple().to_string(),
        language,
        cwd,
    };
    map.insert(
        info.id.clone(),
        Arc::new(Context {
            info: info.clone(),
            helper: Default::default(),
        }),
    );
    Ok(Outcome::Context(info))
}

pub(super) async fn list_contexts(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
) -> Result<Outcome, ActionError> {
    let Entered { sandbox, .. } =
        enter(state, caller, id, "sandbox.exec", EventType::SandboxExec).await?;
    Ok(Outcome::Contexts(sandbox.contexts.list()))
}

/// Removes a context, ending its process.
pub(super) async fn remove_context(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    context: &str,
) -> Result<Outcome, ActionError> {
    let Entered { sandbox, .. } =
        enter(state, caller, id, "sandbox.exec", EventType::SandboxExec).await?;
    let removed = sandbox
        .contexts
        .lock()
        .remove(context)
        .ok_or_else(|| ActionError::not_found(format!("no code context {context:?}")))?;
    if let Some(helper) = removed.helper.lock().await.as_mut() {
        helper.kill().await;
    }
    Ok(Outcome::Done)
}

/// Restarts a context: its variables are gone, its process starts again on the next run.
pub(super) async fn restart_context(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    context: &str,
) -> Result<Outcome, ActionError> {
    let Entered { sandbox, .. } =
        enter(state, caller, id, "sandbox.exec", EventType::SandboxExec).await?;
    let found = sandbox.contexts.get(context)?;
    let mut slot = found.helper.lock().await;
    if let Some(helper) = slot.as_mut() {
        helper.kill().await;
    }
    *slot = None;
    Ok(Outcome::Done)
}

/// Runs code in a context; its events stream as they happen, and the last one
/// (`end_of_execution`) is sent once the run's record is durable.
pub(super) async fn run(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    request: RunCode,
) -> Result<Outcome, ActionError> {
    check_env(&request.env)?;
    let limit = super::checks::timeout(
        state,
        request.timeout_s,
        state.config.sandbox_defaults.command_timeout_s,
    )?;
    let Entered {
        record,
        sandbox,
        mut ctx,
    } = enter(state, caller, id, "sandbox.exec", EventType::SandboxExec).await?;
    let context = sandbox
        .contexts
        .get_or_default(request.context.as_deref(), request.language)?;
    ctx.resource = Some(format!("sandbox/{}/context/{}", record.id, context.info.id));
    // Policy sees the code as a command: an interpreter and its program.
    let interpreter = match context.info.language {
        Language::Python => "python",
        Language::JavaScript => "node",
    };
    let admitted = state
        .pipeline
        .admit(
            &mut ctx,
            Work {
                argv: vec![interpreter.to_owned(), request.code],
                env: request.env,
                ..Work::default()
            },
        )
        .await?;
    let started = Instant::now();
    let mut slot = context.helper.clone().lock_owned().await;
    if slot.as_ref().is_none_or(Helper::exited) {
        match start_context(state, &sandbox, &context.info).await {
            Ok(helper) => *slot = Some(helper),
            Err(e) => {
                // Admitted, then it could not run: the record says so.
                state
                    .pipeline
                    .record_admitted(&ctx, &admitted, false)
                    .await?;
                return Err(e);
            }
        }
    }
    let code = admitted.work.argv.get(1).cloned().unwrap_or_default();
    let env = admitted.work.env.clone();
    if let Some(helper) = slot.as_mut() {
        helper
            .send(&serde_json::json!({"code": code, "env_vars": env}))
            .await?;
    }
    let (tx, rx) = mpsc::channel(64);
    let pipeline = state.pipeline.clone();
    let scope = sandbox.secrets.as_ref().and_then(|s| s.scope());
    let stream_ctx = crate::pipeline::StreamContext {
        caller: caller.clone(),
        event_type: EventType::SandboxExec,
        resource: ctx.resource.clone(),
        policy: ctx.policy.clone(),
    };
    tokio::spawn(async move {
        // The sandbox (and its secrets' leases) live as long as the run.
        let _sandbox = sandbox;
        let mut slot = slot;
        let mut outbound = Outbound::new(pipeline.dlp.as_ref(), scope.as_ref());
        let mut counts = RedactionCounts::new();
        let mut digest = pipeline.content_key.hasher();
        let mut client_gone = false;
        let deadline = tokio::time::Instant::now() + limit;
        let mut interrupted = false;
        let mut failure = None;
        while let Some(helper) = slot.as_mut() {
            let control = helper.control();
            let next = tokio::select! {
                line = helper.next_line() => line,
                _ = tokio::time::sleep_until(deadline), if !interrupted => {
                    interrupted = true;
                    // SIGINT: the context reports a KeyboardInterrupt and keeps its state.
                    let _ = control.signal(2).await;
                    continue;
                }
                _ = tokio::time::sleep_until(deadline + INTERRUPT_GRACE), if interrupted => {
                    let _ = control.signal(9).await;
                    failure = Some(("TimeoutError", format!(
                        "the run did not end within its {} s limit and did not stop when \
                         interrupted; the context was ended and its variables are gone",
                        limit.as_secs()
                    )));
                    break;
                }
            };
            let event = match next {
                Ok(Some(line)) => match serde_json::from_value::<GuestEvent>(line) {
                    Ok(event) => event,
                    Err(_) => {
                        helper.kill().await;
                        failure = Some((
                            "ContextError",
                            "the code context printed an event the gateway does not know; \
                             the context was ended"
                                .to_owned(),
                        ));
                        break;
                    }
                },
                Ok(None) => {
                    failure = Some((
                        "ContextError",
                        "the code context ended during the run (its process exited); its \
                         variables are gone"
                            .to_owned(),
                    ));
                    break;
                }
                Err(e) => {
                    failure = Some(("ContextError", e.message));
                    break;
                }
            };
            let out = match event {
                GuestEvent::Ready => continue,
                GuestEvent::EndOfExecution => break,
                // The context's timestamps are sandbox text: the gateway's own clock stamps
                // the events instead.
                GuestEvent::Stdout { text, .. } => {
                    released_events(outbound.stdout(text.as_bytes()))
                }
                GuestEvent::Stderr { text, .. } => {
                    released_events(outbound.stderr(text.as_bytes()))
                }
                GuestEvent::NumberOfExecutions { execution_count } => {
                    vec![CodeEvent::NumberOfExecutions { execution_count }]
                }
                other => {
                    // Output still held back by the stream redactor goes before a result; the
                    // output after it is a stream of its own.
                    let mut events = released_events(outbound.finish());
                    merge_counts(&mut counts, &outbound.counts());
                    outbound = Outbound::new(pipeline.dlp.as_ref(), scope.as_ref());
                    events.push(mask_event(
                        pipeline.dlp.as_ref(),
                        scope.as_ref(),
                        other,
                        &mut counts,
                    ));
                    events
                }
            };
            for event in out {
                digest.update(serde_json::to_string(&event).unwrap_or_default().as_bytes());
                client_gone |= tx.send(event).await.is_err();
            }
        }
        for event in released_events(outbound.finish()) {
            digest.update(serde_json::to_string(&event).unwrap_or_default().as_bytes());
            client_gone |= tx.send(event).await.is_err();
        }
        if let Some((name, message)) = &failure {
            let event = CodeEvent::Error {
                name: (*name).to_owned(),
                value: message.clone(),
                traceback: String::new(),
            };
            client_gone |= tx.send(event).await.is_err();
        }
        merge_counts(&mut counts, &outbound.counts());
        pipeline.metrics.redactions("outbound", &counts);
        merge_counts(&mut counts, &admitted.inbound_redactions);
        let action = stream_ctx.as_action();
        let outcome = if failure.is_some() {
            AuditOutcome::Failure
        } else {
            AuditOutcome::Success
        };
        let event = pipeline
            .event(&action, outcome)
            .with_decision(audit::decision_record(&admitted.decision))
            .with_code(&admitted.input_digest)
            .with_output(&digest.finalize())
            .with_redactions(&counts);
        let recorded = pipeline.record(event).await;
        if client_gone {
            return;
        }
        match recorded {
            Ok(()) => {
                let _ = tx.send(CodeEvent::EndOfExecution).await;
            }
            Err(e) => {
                let _ = tx
                    .send(CodeEvent::Error {
                        name: "AuditError".to_owned(),
                        value: format!("{} ({})", e.message, e.code),
                        traceback: String::new(),
                    })
                    .await;
            }
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "code run ended"
        );
    });
    Ok(Outcome::CodeRun(rx))
}

/// Starts a context's process with the sandbox's environment and its secrets, like a
/// command, and waits for it to say it is ready.
async fn start_context(
    state: &AppState,
    sandbox: &crate::state::LiveSandbox,
    context: &ContextInfo,
) -> Result<Helper, ActionError> {
    let mut env = sandbox.env.clone();
    if let Some(secrets) = &sandbox.secrets {
        env.extend(secrets.env());
    }
    let program = context.language.program();
    let mut helper = Helper::start(
        sandbox.handle.as_ref(),
        program,
        &[],
        env,
        Some(context.cwd.clone()),
        Duration::from_secs(state.config.limits.max_timeout_s),
        MAX_EVENT,
    )
    .await?;
    match helper.next_line().await? {
        Some(line) if line.get("type").and_then(|t| t.as_str()) == Some("ready") => Ok(helper),
        _ => Err(ActionError::unavailable(format!(
            "the {} code context did not start (does the sandbox's image have {}?)",
            context.language.name(),
            program.command()
        ))),
    }
}

fn now_timestamp() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// Output the outbound stage released, as events (stdout's first).
fn released_events(released: crate::pipeline::Released) -> Vec<CodeEvent> {
    let timestamp = now_timestamp();
    let mut events = Vec::new();
    if !released.stdout.is_empty() {
        events.push(CodeEvent::Stdout {
            text: released.stdout,
            timestamp: timestamp.clone(),
        });
    }
    if !released.stderr.is_empty() {
        events.push(CodeEvent::Stderr {
            text: released.stderr,
            timestamp,
        });
    }
    events
}

/// A result or an error with every string masked (images excepted, see [`OPAQUE_FORMATS`]).
fn mask_event(
    dlp: &dyn crate::dlp::DlpEngine,
    scope: Option<&crate::dlp::SecretScope>,
    event: GuestEvent,
    counts: &mut RedactionCounts,
) -> CodeEvent {
    let mut mask = |text: &str| {
        let redacted = dlp.redact_in(scope, text);
        merge_counts(counts, &redacted.counts);
        redacted.text
    };
    match event {
        GuestEvent::Result(formats) => CodeEvent::Result(
            formats
                .into_iter()
                .map(|(key, value)| {
                    let value = match value {
                        serde_json::Value::String(s) if OPAQUE_FORMATS.contains(&key.as_str()) => {
                            serde_json::Value::String(s)
                        }
                        other => crate::dlp::mask_json_strings(other, &mut mask),
                    };
                    (mask(&key), value)
                })
                .collect(),
        ),
        GuestEvent::Error {
            name,
            value,
            traceback,
        } => CodeEvent::Error {
            name: mask(&name),
            value: mask(&value),
            traceback: mask(&traceback),
        },
        // Only results and errors are passed here.
        _ => CodeEvent::Error {
            name: "ContextError".to_owned(),
            value: "an unexpected event".to_owned(),
            traceback: String::new(),
        },
    }
}
