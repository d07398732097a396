//! An exchange with a model provider: the LLM proxy's action.
//!
//! The stages are the core's, with a model where the others have a VM:
//!
//! ```text
//! exchange(caller, LlmExchange)
//!   -> inbound DLP     every string of the body tokenized, keys included, opaque values checked
//!                      instead; card data that cannot be tokenized refuses the exchange
//!   -> shape checks    the wire format's walk (a precise message on failure); the conversation
//!                      by role, the injection score, attachments located for policy
//!   -> policy          `llm.chat` per candidate provider (first allowed wins), the principal
//!                      from `action::policy_principal` (the tenant's real tier)
//!   -> approval hold   refused: the caller's SDK waits for its answer and nobody can approve in
//!                      that time; the record says pending_approval and the answer says why
//!   -> execution       the provider (llm/upstream.rs)
//!   -> outbound DLP    masked, placeholders restored for `pan:detokenize`; a stream is
//!                      rewritten event by event
//!   -> policy          `tool.call` on every tool call in the answer, with the DLP summary built
//!                      by `policy::dlp_summary` (SAD defined once)
//!   -> audit           one record, built by `Pipeline::event`; durable before the answer's last
//!                      byte; the trace (llm/trace.rs) after it
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use ztee_audit::{EventType, Outcome as AuditOutcome};
use ztee_dlp::TokenMap;
use ztee_policy::{PolicyRequest, Provider, Verdict};

use super::{ActionError, ErrorKind, Outcome};
use crate::audit;
use crate::auth::Caller;
use crate::llm::anthropic::Anthropic;
use crate::llm::openai::OpenAi;
use crate::llm::openai_responses::OpenAiResponses;
use crate::llm::sse::{self, SseEvent};
use crate::llm::tokenize::{self, InboundGuard, SlotKind};
use crate::llm::trace::{DecisionNote, TraceRecord};
use crate::llm::upstream::UpstreamReply;
use crate::llm::{attachments, trace, Dialect, ProviderConfig, StreamRewriter};
use crate::pipeline::ActionContext;
use crate::principal::Permission;
use crate::state::AppState;

/// The rule id of a request the inbound DLP walk refuses (card data inside an opaque value, keys
/// that collide once tokenized), in the error and the audit trail.
pub const DLP_REFUSAL_RULE: &str = "dlp.untokenizable_card_data";
/// The rule a request refused for its shape is recorded with.
pub const SHAPE_REFUSAL_RULE: &str = "llm.malformed_request";

/// The wire format a caller spoke, which is the one the provider is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI's `/chat/completions`.
    ChatCompletions,
    /// OpenAI's `/responses`.
    Responses,
    /// Anthropic's `/v1/messages`.
    Messages,
}

/// One request for a model's answer.
#[derive(Clone)]
pub struct LlmExchange {
    pub format: WireFormat,
    /// The request body: a JSON object, in the format's shape (checked by the core).
    pub body: serde_json::Value,
    /// A provider the caller names (`x-ztee-provider`); policy still decides.
    pub provider: Option<String>,
    pub headers: ProviderHeaders,
}

/// The few request headers a provider's protocol needs passed on (Anthropic's API version and
/// beta features). Anything else the caller sends stays at the gateway.
#[derive(Debug, Clone, Default)]
pub struct ProviderHeaders {
    pub anthropic_version: Option<String>,
    pub anthropic_beta: Option<String>,
}

impl ProviderHeaders {
    /// Parses the headers as the caller sent them: a value is a short list of tokens (letters,
    /// digits, `-`, `_`, `.`, `,`), never free text that could carry card data upstream.
    pub fn parse(
        anthropic_version: Option<&[u8]>,
        anthropic_beta: Option<&[u8]>,
    ) -> Result<Self, ActionError> {
        Ok(Self {
            anthropic_version: header_tokens("anthropic-version", anthropic_version)?,
            anthropic_beta: header_tokens("anthropic-beta", anthropic_beta)?,
        })
    }
}

fn header_tokens(name: &str, value: Option<&[u8]>) -> Result<Option<String>, ActionError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b',');
    if value.is_empty() || value.len() > 256 || !value.iter().all(allowed) {
        return Err(ActionError::bad_request(format!(
            "the {name} header must be 1 to 256 of A-Z a-z 0-9 - _ . , (a version or a list of feature names)"
        )));
    }
    let text = String::from_utf8_lossy(value).into_owned();
    if crate::llm::walk::card_like_run(&text).is_some() {
        return Err(ActionError::bad_request(format!(
            "the {name} header holds a card-number-like run of digits; it was not sent"
        )));
    }
    Ok(Some(text))
}

/// A model's answer, masked, for the door to send on.
pub enum LlmAnswer {
    /// A whole body: the provider's answer (JSON), or its error page masked as text.
    Whole {
        status: u16,
        json: bool,
        body: Vec<u8>,
    },
    /// Server-sent events, rewritten as they pass; the last one waits for the audit record.
    Stream {
        status: u16,
        events: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    },
}

/// Runs an exchange in the caller's wire format.
pub(super) async fn exchange(
    state: &Arc<AppState>,
    caller: &Caller,
    request: LlmExchange,
) -> Result<Outcome, ActionError> {
    match request.format {
        WireFormat::ChatCompletions => exchange_in::<OpenAi>(state, caller, request).await,
        WireFormat::Responses => exchange_in::<OpenAiResponses>(state, caller, request).await,
        WireFormat::Messages => exchange_in::<Anthropic>(state, caller, request).await,
    }
}

/// What the exchange keeps for its audit record and its trace.
struct Exchange {
    caller: Caller,
    format: &'static str,
    provider: Option<String>,
    model: Option<String>,
    stream: bool,
    /// Every decision, in order, for the trace.
    decisions: Vec<DecisionNote>,
    /// The `llm.chat` decision the record names (the chosen provider's, else the first refusal).
    chat_decision: Option<ztee_policy::Decision>,
    /// Set when a `tool.call` in the answer is denied: the record names that decision.
    tool_denial: Option<ztee_policy::Decision>,
    injection: ztee_policy::InjectionSummary,
    injection_field: Option<String>,
    /// The tool calls and results the conversation carried, for `tool.call` (llm/flow.rs).
    trace: Vec<ztee_policy::TraceStep>,
    inbound: BTreeMap<String, u32>,
    request_digest: Vec<u8>,
    started: Instant,
}

impl Exchange {
    /// Records the exchange as refused before any provider saw it: one `llm.chat` decision
    /// with `rule` and `message` (which names a field, never a value), the inbound counts and
    /// the digest of what was read of `request`.
    async fn refuse_before_provider(
        &mut self,
        state: &AppState,
        (rule, risk, message): (&str, ztee_policy::Risk, String),
        inbound: &BTreeMap<String, u32>,
        request: &serde_json::Value,
    ) -> Result<(), ActionError> {
        let refusal = ztee_policy::Decision {
            verdict: Verdict::Deny,
            risk,
            reasons: vec![ztee_policy::Reason {
                rule: rule.into(),
                message,
            }],
        };
        self.decisions
            .push(DecisionNote::new("llm.chat", None, &refusal));
        self.chat_decision = Some(refusal);
        self.inbound = inbound.clone();
        self.request_digest = Sha256::digest(request.to_string().as_bytes()).to_vec();
        self.record(state, AuditOutcome::Denied, None).await
    }

    /// The one record of the exchange, through the core's conversion (`Pipeline::event`,
    /// `audit::decision_record`). Fails closed: the caller gets no answer without it.
    async fn record(
        &self,
        state: &AppState,
        outcome: AuditOutcome,
        output_digest: Option<&[u8]>,
    ) -> Result<(), ActionError> {
        let resource = match &self.provider {
            Some(p) => format!("llm/{p}"),
            None => format!("llm/{}", self.format),
        };
        let ctx = ActionContext {
            caller: &self.caller,
            event_type: EventType::LlmChat,
            resource: Some(resource),
            policy: super::policy_input(&self.caller, "llm.chat"),
            approval: None,
        };
        let decision = match self.tool_denial.as_ref().or(self.chat_decision.as_ref()) {
            Some(d) => audit::decision_record(&crate::policy::Decision::from(d)),
            None => audit::decision_record(&crate::policy::Decision::allow()),
        };
        let mut event = state
            .pipeline
            .event(&ctx, outcome)
            .with_decision(decision)
            // Keyed like every content digest in the trail: a short prompt holding a PAN could
            // otherwise be recovered by guessing.
            .with_code(&state.pipeline.content_key.digest(&self.request_digest))
            .with_redactions(
                &self
                    .inbound
                    .iter()
                    .map(|(entity, n)| (entity.clone(), u64::from(*n)))
                    .collect(),
            );
        if let Some(d) = output_digest {
            event = event.with_output(&state.pipeline.content_key.digest(d));
        }
        state.pipeline.record(event).await
    }

    fn trace(
        &self,
        outcome: &str,
        messages: Vec<serde_json::Value>,
        outbound: BTreeMap<String, u64>,
    ) -> TraceRecord {
        TraceRecord {
            request_id: self.caller.request_id.as_str().to_owned(),
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            tenant: self.caller.principal.tenant.clone(),
            subject: self.caller.principal.subject.clone(),
            kind: "llm.chat".into(),
            api: self.format.into(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            stream: self.stream,
            outcome: outcome.into(),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            messages,
            decisions: self.decisions.clone(),
            injection: trace::InjectionNote {
                score: self.injection.score,
                rules: self.injection.rules.clone(),
                field: self.injection_field.clone(),
            },
            redactions: trace::RedactionNote {
                inbound: self.inbound.clone(),
                outbound,
            },
        }
    }
}

async fn exchange_in<D: Dialect>(
    state: &Arc<AppState>,
    caller: &Caller,
    request: LlmExchange,
) -> Result<Outcome, ActionError> {
    let proxy = &state.llm;
    let LlmExchange {
        body: mut request,
        provider: pinned,
        headers,
        ..
    } = request;
    let mut exchange = Exchange {
        caller: caller.clone(),
        format: D::API.as_str(),
        provider: None,
        model: None,
        stream: false,
        decisions: Vec::new(),
        chat_decision: None,
        tool_denial: None,
        injection: Default::default(),
        injection_field: None,
        trace: Vec::new(),
        inbound: BTreeMap::new(),
        // Set once the body is known: the forwarded body, or what was read of a refused one.
        request_digest: Vec::new(),
        started: Instant::now(),
    };

    // Inbound DLP over every string of the body, whatever field it is in, before anything else
    // reads it: the model name, the error messages and the trace below see placeholders only.
    let detector = ztee_policy::injection::Detector::builtin().ok();
    let scanner = proxy.scanner();
    let mut guard = InboundGuard::new(&scanner, detector);
    if let Err(e) = guard.request(&mut request) {
        // Card data where it cannot be tokenized: refused by the gateway itself, and audited
        // like a policy denial.
        let why = (DLP_REFUSAL_RULE, ztee_policy::Risk::High, e.to_string());
        exchange
            .refuse_before_provider(state, why, guard.counts(), &request)
            .await?;
        return Err(ActionError::new(
            ErrorKind::BadRequest,
            "dlp_untokenizable",
            format!("{e} ({DLP_REFUSAL_RULE})"),
        ));
    }
    exchange.stream = request
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    exchange.model = request
        .get("model")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);

    // The request's shape, and its conversation (by role) for policy and the injection score.
    let mut policy_messages: Vec<ztee_policy::Message> = Vec::new();
    let walked = D::walk_request(&mut request, &mut |text, kind, field| {
        guard.score(text, kind, field);
        policy_messages.push(ztee_policy::Message {
            role: match kind {
                SlotKind::System => "system",
                SlotKind::User => "user",
                SlotKind::Assistant | SlotKind::ToolArguments => "assistant",
                SlotKind::ToolOutput => "tool",
            }
            .into(),
            content: text.clone(),
        });
    });
    if let Err(e) = walked {
        // A request of the wrong shape is refused before any model sees it, and recorded like
        // any refusal.
        let why = (SHAPE_REFUSAL_RULE, ztee_policy::Risk::Low, e.clone());
        exchange
            .refuse_before_provider(state, why, guard.counts(), &request)
            .await?;
        return Err(ActionError::bad_request(e));
    }
    exchange.trace = crate::llm::flow::trace(&D::trace_messages(&request, None), detector);
    let unscanned = attachments::find(&request);
    let forwarded = serde_json::to_vec(&request).map_err(ActionError::internal)?;
    exchange.injection = guard.injection();
    exchange.injection_field = guard.injection_field.clone();
    exchange.inbound = guard.counts().clone();
    exchange.request_digest = Sha256::digest(&forwarded).to_vec();
    let dlp_summary = guard.dlp_summary();
    let tokens = guard.into_tokens();
    state.metrics.redactions(
        "inbound",
        &exchange
            .inbound
            .iter()
            .map(|(k, v)| (k.clone(), u64::from(*v)))
            .collect(),
    );

    // Provider routing by policy: the first candidate policy allows.
    let candidates: Vec<&ProviderConfig> = proxy
        .config
        .providers
        .iter()
        .filter(|p| p.api == D::API)
        .filter(|p| pinned.as_deref().is_none_or(|name| p.name == name))
        .collect();
    if candidates.is_empty() {
        let message = match &pinned {
            Some(name) => format!(
                "no {} provider named {name:?} is configured (x-ztee-provider)",
                D::API.as_str()
            ),
            None => format!(
                "no {} provider is configured on this gateway ([[llm.providers]])",
                D::API.as_str()
            ),
        };
        // The exchange was asked for and could not happen: recorded like an upstream failure.
        exchange.record(state, AuditOutcome::Failure, None).await?;
        return Err(ActionError::not_found(message));
    }
    let principal = super::policy_principal(state, caller);
    let mut chosen = None;
    for provider in candidates {
        let input = ztee_policy::PolicyInput {
            principal: principal.clone(),
            action: ztee_policy::Action::LlmChat,
            request: PolicyRequest {
                messages: policy_messages.clone(),
                attachments: unscanned.clone(),
                provider: Some(Provider {
                    name: provider.name.clone(),
                    external: provider.external,
                }),
                ..Default::default()
            },
            dlp: dlp_summary.clone(),
            injection: exchange.injection.clone(),
            trace: Vec::new(),
        };
        let decision = proxy.decide(&input);
        let allowed = decision.verdict == Verdict::Allow;
        if allowed || exchange.chat_decision.is_none() {
            exchange.decisions.push(DecisionNote::new(
                "llm.chat",
                Some(&provider.name),
                &decision,
            ));
            exchange.chat_decision = Some(decision);
        }
        if allowed {
            chosen = Some(provider);
            break;
        }
    }
    let verdict = exchange
        .chat_decision
        .as_ref()
        .map_or(Verdict::Deny, |d| d.verdict);
    state.metrics.decision(match (chosen.is_some(), verdict) {
        (true, _) => "allow",
        (false, Verdict::RequireApproval) => "require_approval",
        (false, _) => "deny",
    });
    let Some(provider) = chosen else {
        let decision = exchange
            .chat_decision
            .clone()
            .unwrap_or_else(|| ztee_policy::Decision::deny_on_error("no provider was evaluated"));
        let held = decision.verdict == Verdict::RequireApproval;
        let outcome = if held {
            AuditOutcome::PendingApproval
        } else {
            AuditOutcome::Denied
        };
        exchange.record(state, outcome, None).await?;
        proxy.traces.append(&exchange.trace(
            "denied",
            D::trace_messages(&request, None),
            BTreeMap::new(),
        ));
        let what = if held {
            "policy requires a human approval for this request; it was not sent to any model"
        } else {
            "policy denied this request; it was not sent to any model"
        };
        let reasons: Vec<String> = decision
            .reasons
            .iter()
            .map(|r| format!("{} ({})", r.message, r.rule))
            .collect();
        return Err(ActionError::policy_denied(format!(
            "{what}: {}",
            reasons.join("; ")
        )));
    };
    exchange.provider = Some(provider.name.clone());
    let reveal = caller
        .principal
        .has(Permission::PanDetokenize)
        .then_some(tokens);

    let reply = proxy
        .upstream
        .send::<D>(
            provider,
            forwarded,
            &headers,
            proxy.config.max_response_bytes,
        )
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(provider = %provider.name, error = %e, "upstream failed");
            exchange.record(state, AuditOutcome::Failure, None).await?;
            proxy.traces.append(&exchange.trace(
                "upstream_error",
                D::trace_messages(&request, None),
                BTreeMap::new(),
            ));
            return Err(ActionError::new(
                ErrorKind::BadGateway,
                "upstream_failed",
                format!("the upstream provider {:?} failed: {e}", provider.name),
            ));
        }
    };
    let answer = match reply {
        UpstreamReply::Whole { status, body } => {
            whole::<D>(state, exchange, request, status, body, reveal).await?
        }
        UpstreamReply::Stream { status, response } => {
            streamed::<D>(state.clone(), exchange, request, status, response, reveal)
        }
    };
    Ok(Outcome::Llm(answer))
}

/// A non-streaming answer (or any upstream error body): DLP, restoration, tool-call policy.
async fn whole<D: Dialect>(
    state: &Arc<AppState>,
    mut exchange: Exchange,
    request: serde_json::Value,
    status: u16,
    body: Bytes,
    reveal: Option<TokenMap>,
) -> Result<LlmAnswer, ActionError> {
    let proxy = &state.llm;
    let scanner = proxy.scanner();
    let mut outbound = BTreeMap::new();
    let success = (200..300).contains(&status);
    // What DLP finds in each tool call's arguments before they are masked, for `tool.call`.
    let mut found: Vec<ztee_policy::DlpSummary> = Vec::new();
    let (answer_for_client, answer_masked) =
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(mut answer) => {
                if success {
                    found = D::tool_calls(&answer)
                        .iter()
                        .map(|call| {
                            let findings = scanner.scan(&call.arguments.to_string());
                            answer_dlp(findings.iter().map(|f| f.entity_type.as_str()))
                        })
                        .collect();
                }
                // First mask (placeholders kept): this is what policy and the trace see.
                D::walk_response(&mut answer, &mut |text, _, _| {
                    *text = tokenize::outbound_text(&scanner, None, text, &mut outbound);
                });
                let masked = answer.clone();
                if let Some(tokens) = &reveal {
                    D::walk_response(&mut answer, &mut |text, _, _| {
                        *text = tokens.restore(text);
                    });
                }
                (answer, Some(masked))
            }
            Err(_) => {
                // Not JSON (an upstream error page): pass it on masked, as text.
                let text = String::from_utf8_lossy(&body);
                let masked = tokenize::outbound_text(&scanner, None, &text, &mut outbound);
                (serde_json::Value::String(masked), None)
            }
        };
    state.metrics.redactions("outbound", &outbound);

    let mut blocked = Vec::new();
    if let Some(masked) = &answer_masked {
        if success {
            blocked = tool_call_decisions::<D>(state, &mut exchange, masked, |i| {
                found.get(i).cloned().unwrap_or_default()
            });
        }
    }
    let client_body = match &answer_for_client {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        v => serde_json::to_vec(v).map_err(ActionError::internal)?,
    };
    let outcome = if !blocked.is_empty() {
        AuditOutcome::Denied
    } else if success {
        AuditOutcome::Success
    } else {
        AuditOutcome::Failure
    };
    let digest = Sha256::digest(&client_body).to_vec();
    let recorded = exchange.record(state, outcome, Some(&digest)).await;
    proxy.traces.append(&exchange.trace(
        match outcome {
            AuditOutcome::Denied => "tool_call_denied",
            AuditOutcome::Success => "success",
            _ => "upstream_error",
        },
        D::trace_messages(&request, answer_masked.as_ref()),
        outbound,
    ));
    recorded.map_err(|_| {
        ActionError::unavailable("the audit trail cannot be written; the answer is withheld")
    })?;
    if !blocked.is_empty() {
        return Err(ActionError::policy_denied(format!(
            "policy denied a tool call in the model's answer; the answer is withheld: {}",
            blocked.join("; ")
        )));
    }
    Ok(LlmAnswer::Whole {
        status,
        json: answer_masked.is_some(),
        body: client_body,
    })
}

/// The DLP summary of what a model's answer carried: built like every other summary
/// (`policy::dlp_summary`, SAD defined once), except that a card number in an answer is masked
/// or tokenized before the caller, or any tool, sees it, so no raw PAN reaches the action.
fn answer_dlp<'a>(entities: impl IntoIterator<Item = &'a str>) -> ztee_policy::DlpSummary {
    let mut dlp = crate::policy::dlp_summary(entities);
    dlp.raw_pan = false;
    dlp
}

/// Both summaries' findings in one.
fn merged(mut a: ztee_policy::DlpSummary, b: ztee_policy::DlpSummary) -> ztee_policy::DlpSummary {
    for (entity, n) in b.counts {
        *a.counts.entry(entity).or_default() += n;
    }
    a.raw_pan |= b.raw_pan;
    a.sad |= b.sad;
    a
}

/// Evaluates `tool.call` for every tool call in the (masked) answer, with `found(i)` the DLP
/// summary of call `i` before masking; returns the denials. `require_approval` is annotated but
/// not enforced here: the tool runs on the caller's side, and ztee's own tools (REST, MCP)
/// enforce approval when they are actually called.
fn tool_call_decisions<D: Dialect>(
    state: &AppState,
    exchange: &mut Exchange,
    answer: &serde_json::Value,
    found: impl Fn(usize) -> ztee_policy::DlpSummary,
) -> Vec<String> {
    let mut denied = Vec::new();
    for (i, call) in D::tool_calls(answer).into_iter().enumerate() {
        let input = ztee_policy::PolicyInput {
            principal: super::policy_principal(state, &exchange.caller),
            action: ztee_policy::Action::ToolCall,
            request: PolicyRequest {
                tool: Some(ztee_policy::ToolCall {
                    name: call.name.clone(),
                    args: call.arguments.clone(),
                }),
                ..Default::default()
            },
            // A placeholder in the arguments is card data (or a secret) the call passes on.
            dlp: merged(
                found(i),
                crate::llm::flow::placeholder_summary(&call.arguments.to_string()),
            ),
            injection: Default::default(),
            trace: exchange.trace.clone(),
        };
        let decision = state.llm.decide(&input);
        exchange
            .decisions
            .push(DecisionNote::new("tool.call", Some(&call.name), &decision));
        if decision.verdict == Verdict::Deny {
            denied.push(format!(
                "tool {:?}: {}",
                call.name,
                decision
                    .reasons
                    .iter()
                    .map(|r| r.rule.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if exchange.tool_denial.is_none() {
                exchange.tool_denial = Some(decision);
            }
        }
    }
    denied
}

/// A streaming answer: rewritten event by event; the terminal event waits for the audit.
fn streamed<D: Dialect>(
    state: Arc<AppState>,
    mut exchange: Exchange,
    request: serde_json::Value,
    status: u16,
    mut upstream: reqwest::Response,
    reveal: Option<TokenMap>,
) -> LlmAnswer {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    let scanner = state.llm.scanner();
    tokio::spawn(async move {
        let mut rewriter = D::stream_rewriter(scanner, reveal);
        let mut parser = sse::SseParser::default();
        let mut digest = Sha256::new();
        let mut terminal: Vec<SseEvent> = Vec::new();
        let mut client_gone = false;
        let mut failed = None;
        let send = |events: Vec<SseEvent>,
                    terminal: &mut Vec<SseEvent>,
                    digest: &mut Sha256,
                    rewriter: &dyn StreamRewriter|
         -> Vec<u8> {
            let mut out = Vec::new();
            for ev in events {
                if rewriter.is_terminal(&ev) {
                    terminal.push(ev);
                } else {
                    ev.encode(&mut out);
                }
            }
            digest.update(&out);
            out
        };
        loop {
            let chunk = match upstream.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let events = match parser.push(&chunk) {
                Ok(events) => events,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            let mut rewritten = Vec::new();
            for ev in events {
                rewritten.extend(rewriter.event(ev));
            }
            let out = send(rewritten, &mut terminal, &mut digest, rewriter.as_ref());
            if !out.is_empty() && !client_gone {
                client_gone = tx.send(Ok(Bytes::from(out))).await.is_err();
            }
        }
        let mut rest = Vec::new();
        if let Some(ev) = parser.finish() {
            rest.extend(rewriter.event(ev));
        }
        rest.extend(rewriter.finish());
        let out = send(rest, &mut terminal, &mut digest, rewriter.as_ref());
        if !out.is_empty() && !client_gone {
            client_gone = tx.send(Ok(Bytes::from(out))).await.is_err();
        }
        let assistant = rewriter.assistant_message();
        let outbound = rewriter.counts();
        state.metrics.redactions("outbound", &outbound);
        // One tool-call reader serves every format's stream: the assembled message is OpenAI's.
        let answer = serde_json::json!({"choices": [{"index": 0, "message": assistant}]});
        // A stream's calls are assembled from masked deltas: what the whole answer carried
        // stands for each call (SAD anywhere in it is enough to refuse acting on it).
        let carried = answer_dlp(outbound.iter().flat_map(|(entity, n)| {
            std::iter::repeat_n(entity.as_str(), usize::try_from(*n).unwrap_or(usize::MAX))
        }));
        let blocked =
            tool_call_decisions::<OpenAi>(&state, &mut exchange, &answer, |_| carried.clone());
        let outcome = match (&failed, (200..300).contains(&status)) {
            _ if !blocked.is_empty() => AuditOutcome::Denied,
            (None, true) => AuditOutcome::Success,
            _ => AuditOutcome::Failure,
        };
        if let Some(e) = &failed {
            tracing::warn!(error = %e, "upstream stream failed");
        }
        let recorded = exchange
            .record(&state, outcome, Some(&digest.finalize()))
            .await;
        let mut messages = D::trace_messages(&request, None);
        messages.push(assistant);
        state.llm.traces.append(&exchange.trace(
            match outcome {
                AuditOutcome::Success => "success",
                AuditOutcome::Denied => "tool_call_denied",
                _ => "upstream_error",
            },
            messages,
            outbound,
        ));
        if client_gone {
            return;
        }
        // A denied tool call: the deltas already sent cannot be taken back, but the stream ends
        // with the provider's error instead of its terminal event, so no SDK hands the caller a
        // completed answer to act on.
        if !blocked.is_empty() {
            let rid = exchange.caller.request_id.as_str().to_owned();
            terminal = D::stream_error(
                axum::http::StatusCode::FORBIDDEN,
                &format!(
                    "policy denied a tool call in the model's answer; the answer is withheld: {} (request id {rid})",
                    blocked.join("; ")
                ),
            );
        }
        match recorded {
            Ok(()) => {
                let mut out = Vec::new();
                for ev in terminal {
                    ev.encode(&mut out);
                }
                if !out.is_empty() {
                    let _ = tx.send(Ok(Bytes::from(out))).await;
                }
            }
            Err(_) => {
                tracing::error!("the stream ends without its last event: no audit record");
                let _ = tx
                    .send(Err(std::io::Error::other("audit trail unavailable")))
                    .await;
            }
        }
    });
    LlmAnswer::Stream { status, events: rx }
}
