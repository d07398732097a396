//! The LLM proxy: OpenAI- and Anthropic-compatible chat endpoints in front of configured model
//! providers, with the gateway's guardrails on every exchange.
//!
//! ```text
//! POST /v1/openai/chat/completions | /v1/openai/responses | /v1/anthropic/messages
//!   -> authn (auth.rs; Anthropic clients may send `x-api-key`)   -> `llm:chat` permission
//!   -> parse + validate the provider's request shape  (openai.rs, openai_responses.rs, anthropic.rs)
//!   -> inbound guard: card data tokenized in every string of the body, keys included, opaque
//!      blobs checked instead (walk.rs, tokenize.rs); DLP counts; injection score on the
//!      conversation; images, audio and files located for policy (attachments.rs)
//!   -> policy `llm.chat` per candidate provider: first allowed wins (tier routing)
//!   -> upstream (upstream.rs)
//!   -> outbound guard: DLP, placeholders restored for `pan:detokenize`; SSE rewritten event by
//!      event (sse.rs, the dialect's stream rewriter) without buffering the whole answer
//!   -> policy `tool.call` on tool calls in the answer
//!   -> audit (durable before the last byte) and trace (trace.rs)
//! ```
//! Errors are answered in the provider's own error shape so the official SDKs raise their usual
//! exceptions.

pub mod anthropic;
pub mod attachments;
pub mod config;
pub mod openai;
pub mod openai_responses;
pub mod sse;
pub mod tokenize;
pub mod trace;
pub mod upstream;
pub mod walk;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use sha2::{Digest, Sha256};
use ztee_audit::{EventType, Outcome};
use ztee_dlp::{Scanner, TokenMap};
use ztee_policy::{Action, PolicyPrincipal, PolicyRequest, Provider, Verdict};

use crate::audit;
use crate::auth::Caller;
use crate::principal::Permission;
use crate::state::AppState;
pub use config::{LlmConfig, ProviderApi, ProviderConfig};
use sse::SseEvent;
use tokenize::{InboundGuard, SlotKind};
use trace::{DecisionNote, TraceRecord, TraceStore};
use upstream::{Upstream, UpstreamReply};

/// The proxy's routes (the SDKs' paths; Anthropic's SDK appends `/v1/messages` to its base URL).
pub const LLM_ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/openai/chat/completions"),
    ("post", "/v1/openai/responses"),
    ("post", "/v1/anthropic/messages"),
    ("post", "/v1/anthropic/v1/messages"),
    ("get", "/v1/traces"),
];

/// Everything the proxy needs that lives as long as the server.
pub struct LlmProxy {
    pub config: LlmConfig,
    scanner: Arc<Scanner>,
    policy: PolicySource,
    upstream: Upstream,
    pub traces: TraceStore,
}

enum PolicySource {
    /// The gateway's own Rego policy.
    Gateway(Arc<dyn crate::policy::PolicyEngine>),
    /// The gateway runs the built-in rules only; LLM routing uses the default bundle.
    Builtin(Box<ztee_policy::PolicyEngine>),
}

#[derive(Debug, thiserror::Error)]
pub enum LlmSetupError {
    #[error("[llm] configuration: {0}")]
    Config(String),
    #[error("policy: {0}")]
    Policy(#[from] ztee_policy::PolicyError),
    #[error("DLP scanner: {0}")]
    Dlp(#[from] ztee_dlp::DlpError),
    #[error("traces directory {path}: {source}")]
    Traces {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl LlmProxy {
    pub fn new(
        config: LlmConfig,
        data_dir: &std::path::Path,
        dlp: &dyn crate::dlp::DlpEngine,
        policy: Arc<dyn crate::policy::PolicyEngine>,
    ) -> Result<Self, LlmSetupError> {
        config.validate().map_err(LlmSetupError::Config)?;
        let scanner = match dlp.ztee_scanner() {
            Some(s) => s,
            None => Arc::new(Scanner::new(Default::default())?),
        };
        let policy = if policy.rego().is_some() {
            PolicySource::Gateway(policy)
        } else {
            PolicySource::Builtin(Box::new(ztee_policy::PolicyEngine::builtin()?))
        };
        let upstream = Upstream::new(&config.providers).map_err(LlmSetupError::Config)?;
        let traces = TraceStore::open(&data_dir.join("traces"))?;
        Ok(Self {
            config,
            scanner,
            policy,
            upstream,
            traces,
        })
    }

    fn rego(&self) -> Option<&ztee_policy::PolicyEngine> {
        match &self.policy {
            PolicySource::Gateway(p) => p.rego(),
            PolicySource::Builtin(engine) => Some(engine),
        }
    }

    pub(crate) fn scanner(&self) -> Arc<Scanner> {
        self.scanner.clone()
    }

    pub(crate) fn decide(&self, input: &ztee_policy::PolicyInput) -> ztee_policy::Decision {
        match self.rego() {
            Some(engine) => engine.evaluate(input),
            None => ztee_policy::Decision::deny_on_error("no policy engine"),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let limit = state.llm.config.max_request_bytes;
    let anthropic = Router::new()
        .route("/v1/anthropic/messages", post(chat::<anthropic::Anthropic>))
        .route(
            "/v1/anthropic/v1/messages",
            post(chat::<anthropic::Anthropic>),
        )
        .layer(axum::middleware::from_fn(x_api_key_as_bearer));
    Router::new()
        .route("/v1/openai/chat/completions", post(chat::<openai::OpenAi>))
        .route(
            "/v1/openai/responses",
            post(chat::<openai_responses::OpenAiResponses>),
        )
        .merge(anthropic)
        .layer(DefaultBodyLimit::max(limit))
        .route("/v1/traces", axum::routing::get(trace::export))
}

/// Anthropic's SDK sends its key as `x-api-key`; the gateway authenticates `Authorization`.
async fn x_api_key_as_bearer(mut request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::AUTHORIZATION) {
        let bearer = request
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .and_then(|key| HeaderValue::from_str(&format!("Bearer {}", key.trim())).ok());
        if let Some(value) = bearer {
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
    }
    next.run(request).await
}

/// The rule id of a request the inbound DLP walk refuses (card data inside an opaque value, keys
/// that collide once tokenized), in the error and the audit trail.
pub const DLP_REFUSAL_RULE: &str = "dlp.untokenizable_card_data";

/// A chat text visited in a request or response: where it is, what it is.
pub type Visit<'v> = dyn FnMut(&mut String, SlotKind, &str) + 'v;

/// A tool call found in a model answer, with its arguments after DLP.
#[derive(Debug, Clone)]
pub struct FoundToolCall {
    pub name: String,
    pub arguments: serde_json::Value,
}

/// One provider's wire format.
pub trait Dialect: Send + Sync + 'static {
    const API: ProviderApi;

    /// The provider's error body.
    fn error_body(status: StatusCode, message: &str) -> serde_json::Value;
    /// The events that end a stream with an error instead of its terminal event: the SDKs raise
    /// on them, so the caller never sees a completed answer.
    fn stream_error(status: StatusCode, message: &str) -> Vec<SseEvent>;
    /// Checks the request's shape (a precise message on failure) and visits the conversation's
    /// texts with their role, for policy and the injection score. DLP does not depend on it:
    /// every string of the body has been tokenized before (see `walk.rs`).
    fn walk_request(body: &mut serde_json::Value, visit: &mut Visit<'_>) -> Result<(), String>;
    /// Visits every string of a non-streaming answer, keys included, whatever its shape;
    /// opaque provider state passes as it is (see `walk.rs`).
    fn walk_response(body: &mut serde_json::Value, visit: &mut Visit<'_>) {
        walk::answer_strings(body, &mut |text, field| {
            visit(text, SlotKind::Assistant, field)
        });
    }
    fn tool_calls(response: &serde_json::Value) -> Vec<FoundToolCall>;
    /// Rewrites a streamed answer event by event.
    fn stream_rewriter(scanner: Arc<Scanner>, tokens: Option<TokenMap>) -> Box<dyn StreamRewriter>;
    /// The conversation in OpenAI's message format, for the trace.
    fn trace_messages(
        request: &serde_json::Value,
        answer: Option<&serde_json::Value>,
    ) -> Vec<serde_json::Value>;
    /// Adds the provider's authentication and version headers.
    fn upstream_request(
        request: reqwest::RequestBuilder,
        key: Option<&str>,
        client_headers: &HeaderMap,
    ) -> reqwest::RequestBuilder;
    fn upstream_path() -> &'static str;
}

/// Rewrites streamed answer events; see the dialect modules.
pub trait StreamRewriter: Send {
    /// Returns the events to send for this upstream event (text masked, maybe restored).
    fn event(&mut self, event: SseEvent) -> Vec<SseEvent>;
    /// The stream ended: flushes what is held back.
    fn finish(&mut self) -> Vec<SseEvent>;
    /// True for the event that ends the answer; it is sent only after the audit event is durable.
    fn is_terminal(&self, event: &SseEvent) -> bool;
    fn counts(&self) -> BTreeMap<String, u64>;
    /// The answer assembled from the stream, placeholders kept, as an OpenAI assistant message.
    fn assistant_message(&self) -> serde_json::Value;
}

fn error_response<D: Dialect>(status: StatusCode, message: &str, request_id: &str) -> Response {
    let message = format!("{message} (request id {request_id})");
    let mut response = (status, axum::Json(D::error_body(status, &message))).into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response
            .headers_mut()
            .insert(crate::request_id::X_REQUEST_ID.clone(), v);
    }
    response
}

/// What the exchange keeps for the audit event and the trace.
struct Exchange {
    caller: Caller,
    api: ProviderApi,
    provider: Option<String>,
    model: Option<String>,
    stream: bool,
    decisions: Vec<DecisionNote>,
    injection: ztee_policy::InjectionSummary,
    injection_field: Option<String>,
    inbound: BTreeMap<String, u32>,
    request_digest: Vec<u8>,
    started: Instant,
}

impl Exchange {
    fn audit_decision(&self) -> ztee_audit::DecisionRecord {
        let chat = self.decisions.iter().rev().find(|d| d.action == "llm.chat");
        let mut record = ztee_audit::DecisionRecord {
            decision: ztee_audit::DecisionKind::Allow,
            risk: "LOW".into(),
            rule_ids: Vec::new(),
            reasons: Vec::new(),
        };
        if let Some(d) = chat {
            record.decision = crate::policy::DecisionKind::from(d.verdict).into();
            record.risk = d.risk.clone();
            record.rule_ids = d.rules.clone();
            record.reasons = d.messages.clone();
        }
        record
    }

    async fn record(
        &self,
        state: &AppState,
        outcome: Outcome,
        output_digest: Option<&[u8]>,
    ) -> Result<(), String> {
        let resource = match &self.provider {
            Some(p) => format!("llm/{p}"),
            None => format!("llm/{}", self.api.as_str()),
        };
        let mut event = audit::event(
            EventType::LlmChat,
            outcome,
            audit::audit_principal(&self.caller.principal),
            self.caller.request_id.as_str(),
            self.caller.origin_ip,
            Some(&resource),
        )
        .with_decision(self.audit_decision())
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
        state.pipeline.audit.append(event).await
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
            api: self.api.as_str().into(),
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

/// The handler for both chat routes.
async fn chat<D: Dialect>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = caller.request_id.as_str().to_owned();
    let proxy = &state.llm;
    if let Err(e) = caller.require(Permission::LlmChat) {
        return error_response::<D>(StatusCode::FORBIDDEN, &e.message, &rid);
    }
    // Parse at the edge: JSON object of the provider's shape, or a 400 naming what is wrong.
    let mut request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            return error_response::<D>(
                StatusCode::BAD_REQUEST,
                "the request body must be a JSON object",
                &rid,
            )
        }
        Err(e) => {
            return error_response::<D>(
                StatusCode::BAD_REQUEST,
                &format!("the request body is not valid JSON: {e}"),
                &rid,
            )
        }
    };

    // Inbound DLP over every string of the body, whatever field it is in, before anything else
    // reads it: the model name, the error messages and the trace below see placeholders only.
    let detector = ztee_policy::injection::Detector::builtin().ok();
    let mut guard = InboundGuard::new(&proxy.scanner, detector);
    if let Err(e) = guard.request(&mut request) {
        // Card data where it cannot be tokenized: refused by the gateway itself, and audited
        // like a policy denial (the message names the field, never the value).
        let refusal = ztee_policy::Decision {
            verdict: Verdict::Deny,
            risk: ztee_policy::Risk::High,
            reasons: vec![ztee_policy::Reason {
                rule: DLP_REFUSAL_RULE.into(),
                message: e.to_string(),
            }],
        };
        let exchange = Exchange {
            api: D::API,
            provider: None,
            model: None,
            stream: false,
            decisions: vec![DecisionNote::new("llm.chat", None, &refusal)],
            injection: Default::default(),
            injection_field: None,
            inbound: guard.counts().clone(),
            request_digest: Sha256::digest(&body).to_vec(),
            started: Instant::now(),
            caller,
        };
        if let Err(e) = exchange.record(&state, Outcome::Denied, None).await {
            tracing::error!(error = %e, "audit append failed");
        }
        return error_response::<D>(
            StatusCode::BAD_REQUEST,
            &format!("{e} ({DLP_REFUSAL_RULE})"),
            &rid,
        );
    }
    let stream = request
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let model = request
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
    if let Err(message) = walked {
        return error_response::<D>(StatusCode::BAD_REQUEST, &message, &rid);
    }
    let unscanned = attachments::find(&request);
    let forwarded = match serde_json::to_vec(&request) {
        Ok(b) => b,
        Err(e) => {
            return error_response::<D>(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the request failed: {e}"),
                &rid,
            )
        }
    };
    let mut exchange = Exchange {
        api: D::API,
        provider: None,
        model,
        stream,
        decisions: Vec::new(),
        injection: guard.injection(),
        injection_field: guard.injection_field.clone(),
        inbound: guard.counts().clone(),
        request_digest: Sha256::digest(&forwarded).to_vec(),
        started: Instant::now(),
        caller,
    };
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
    let pinned = headers
        .get("x-ztee-provider")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
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
        if let Err(e) = exchange.record(&state, Outcome::Failure, None).await {
            tracing::error!(error = %e, "audit append failed");
        }
        return error_response::<D>(StatusCode::NOT_FOUND, &message, &rid);
    }
    let principal = PolicyPrincipal {
        subject: exchange.caller.principal.subject.clone(),
        tenant: exchange.caller.principal.tenant.clone(),
        roles: exchange.caller.principal.roles.clone(),
        tier: proxy
            .config
            .tier_of(&exchange.caller.principal.tenant)
            .to_owned(),
    };
    let mut chosen = None;
    let mut first_refusal: Option<ztee_policy::Decision> = None;
    for provider in candidates {
        let input = ztee_policy::PolicyInput {
            principal: principal.clone(),
            action: Action::LlmChat,
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
        };
        let decision = proxy.decide(&input);
        if decision.verdict == Verdict::Allow {
            exchange.decisions.push(DecisionNote::new(
                "llm.chat",
                Some(&provider.name),
                &decision,
            ));
            chosen = Some(provider);
            break;
        }
        if first_refusal.is_none() {
            exchange.decisions.push(DecisionNote::new(
                "llm.chat",
                Some(&provider.name),
                &decision,
            ));
            first_refusal = Some(decision);
        }
    }
    state.metrics.decision(if chosen.is_some() {
        "allow"
    } else {
        match first_refusal.as_ref().map(|d| d.verdict) {
            Some(Verdict::RequireApproval) => "require_approval",
            _ => "deny",
        }
    });
    let Some(provider) = chosen else {
        let decision = first_refusal
            .unwrap_or_else(|| ztee_policy::Decision::deny_on_error("no provider was evaluated"));
        let outcome = if decision.verdict == Verdict::RequireApproval {
            Outcome::PendingApproval
        } else {
            Outcome::Denied
        };
        let reasons: Vec<String> = decision
            .reasons
            .iter()
            .map(|r| format!("{} ({})", r.message, r.rule))
            .collect();
        if let Err(e) = exchange.record(&state, outcome, None).await {
            tracing::error!(error = %e, "audit append failed");
        }
        proxy.traces.append(&exchange.trace(
            "denied",
            D::trace_messages(&request, None),
            BTreeMap::new(),
        ));
        let what = if decision.verdict == Verdict::RequireApproval {
            "policy requires a human approval for this request; it was not sent to any model"
        } else {
            "policy denied this request; it was not sent to any model"
        };
        return error_response::<D>(
            StatusCode::FORBIDDEN,
            &format!("{what}: {}", reasons.join("; ")),
            &rid,
        );
    };
    exchange.provider = Some(provider.name.clone());
    let reveal = exchange
        .caller
        .principal
        .has(Permission::PanDetokenize)
        .then_some(tokens);

    let reply = match proxy
        .upstream
        .send::<D>(
            provider,
            forwarded,
            &headers,
            proxy.config.max_response_bytes,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(provider = %provider.name, error = %e, "upstream failed");
            if let Err(e) = exchange.record(&state, Outcome::Failure, None).await {
                tracing::error!(error = %e, "audit append failed");
            }
            proxy.traces.append(&exchange.trace(
                "upstream_error",
                D::trace_messages(&request, None),
                BTreeMap::new(),
            ));
            return error_response::<D>(
                StatusCode::BAD_GATEWAY,
                &format!("the upstream provider {:?} failed: {e}", provider.name),
                &rid,
            );
        }
    };
    match reply {
        UpstreamReply::Whole { status, body } => {
            whole::<D>(state.clone(), exchange, request, status, body, reveal).await
        }
        UpstreamReply::Stream { status, response } => {
            streamed::<D>(state.clone(), exchange, request, status, response, reveal)
        }
    }
}

/// A non-streaming answer (or any upstream error body): DLP, restoration, tool-call policy.
async fn whole<D: Dialect>(
    state: Arc<AppState>,
    mut exchange: Exchange,
    request: serde_json::Value,
    status: StatusCode,
    body: Bytes,
    reveal: Option<TokenMap>,
) -> Response {
    let proxy = &state.llm;
    let rid = exchange.caller.request_id.as_str().to_owned();
    let mut outbound = BTreeMap::new();
    let (answer_for_client, answer_masked) =
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(mut answer) => {
                // First mask (placeholders kept): this is what policy and the trace see.
                D::walk_response(&mut answer, &mut |text, _, _| {
                    *text = tokenize::outbound_text(&proxy.scanner, None, text, &mut outbound);
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
                let masked = tokenize::outbound_text(&proxy.scanner, None, &text, &mut outbound);
                (serde_json::Value::String(masked), None)
            }
        };
    state.metrics.redactions("outbound", &outbound);

    // Tool calls the model asks for: policy `tool.call` on each.
    let mut blocked = Vec::new();
    if let Some(masked) = &answer_masked {
        if status.is_success() {
            blocked = tool_call_decisions::<D>(proxy, &mut exchange, masked);
        }
    }
    let client_body = match &answer_for_client {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        v => serde_json::to_vec(v).unwrap_or_default(),
    };
    let outcome = if !blocked.is_empty() {
        Outcome::Denied
    } else if status.is_success() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let digest = Sha256::digest(&client_body).to_vec();
    let recorded = exchange.record(&state, outcome, Some(&digest)).await;
    proxy.traces.append(&exchange.trace(
        match outcome {
            Outcome::Denied => "tool_call_denied",
            Outcome::Success => "success",
            _ => "upstream_error",
        },
        D::trace_messages(&request, answer_masked.as_ref()),
        outbound,
    ));
    if let Err(e) = recorded {
        tracing::error!(error = %e, "audit append failed");
        return error_response::<D>(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit trail cannot be written; the answer is withheld",
            &rid,
        );
    }
    if !blocked.is_empty() {
        return error_response::<D>(
            StatusCode::FORBIDDEN,
            &format!(
                "policy denied a tool call in the model's answer; the answer is withheld: {}",
                blocked.join("; ")
            ),
            &rid,
        );
    }
    let content_type = if answer_masked.is_some() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, content_type)], client_body).into_response()
}

/// Evaluates `tool.call` for every tool call in the (masked) answer; returns the denials.
/// `require_approval` is annotated but not enforced here: the tool runs on the caller's side, and
/// ztee's own tools (REST, MCP) enforce approval when they are actually called.
fn tool_call_decisions<D: Dialect>(
    proxy: &LlmProxy,
    exchange: &mut Exchange,
    answer: &serde_json::Value,
) -> Vec<String> {
    let mut denied = Vec::new();
    for call in D::tool_calls(answer) {
        let args_text = call.arguments.to_string();
        let findings = proxy.scanner.scan(&args_text);
        let mut dlp = ztee_policy::DlpSummary::default();
        for f in &findings {
            *dlp.counts
                .entry(f.entity_type.as_str().to_owned())
                .or_default() += 1;
            dlp.raw_pan |= f.entity_type == ztee_dlp::Entity::CreditCard;
        }
        let input = ztee_policy::PolicyInput {
            principal: PolicyPrincipal {
                subject: exchange.caller.principal.subject.clone(),
                tenant: exchange.caller.principal.tenant.clone(),
                roles: exchange.caller.principal.roles.clone(),
                tier: proxy
                    .config
                    .tier_of(&exchange.caller.principal.tenant)
                    .to_owned(),
            },
            action: Action::ToolCall,
            request: PolicyRequest {
                tool: Some(ztee_policy::ToolCall {
                    name: call.name.clone(),
                    args: call.arguments.clone(),
                }),
                ..Default::default()
            },
            dlp,
            injection: Default::default(),
        };
        let decision = proxy.decide(&input);
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
        }
        exchange
            .decisions
            .push(DecisionNote::new("tool.call", Some(&call.name), &decision));
    }
    denied
}

/// A streaming answer: rewritten event by event; the terminal event waits for the audit.
fn streamed<D: Dialect>(
    state: Arc<AppState>,
    mut exchange: Exchange,
    request: serde_json::Value,
    status: StatusCode,
    mut upstream: reqwest::Response,
    reveal: Option<TokenMap>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    let scanner = state.llm.scanner.clone();
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
        let answer = openai_answer_for_tools(&assistant);
        let blocked = tool_call_decisions::<openai::OpenAi>(&state.llm, &mut exchange, &answer);
        let outcome = match (&failed, status.is_success()) {
            _ if !blocked.is_empty() => Outcome::Denied,
            (None, true) => Outcome::Success,
            _ => Outcome::Failure,
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
                Outcome::Success => "success",
                Outcome::Denied => "tool_call_denied",
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
                StatusCode::FORBIDDEN,
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
            Err(e) => {
                tracing::error!(error = %e, "audit append failed; the stream ends without its last event");
                let _ = tx
                    .send(Err(std::io::Error::other("audit trail unavailable")))
                    .await;
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Wraps an assembled OpenAI assistant message as a chat completion, so one tool-call reader
/// serves both dialects' streams.
fn openai_answer_for_tools(assistant: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({"choices": [{"index": 0, "message": assistant}]})
}

/// The checks every request shape shares: a JSON object with a non-empty `model` and a boolean
/// (or absent) `stream`.
pub(crate) fn request_object(
    body: &mut serde_json::Value,
) -> Result<&mut serde_json::Map<String, serde_json::Value>, String> {
    let Some(obj) = body.as_object_mut() else {
        return Err("the request body must be a JSON object".into());
    };
    if obj
        .get("model")
        .and_then(serde_json::Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("`model` must be a non-empty string".into());
    }
    if obj
        .get("stream")
        .is_some_and(|s| !s.is_boolean() && !s.is_null())
    {
        return Err("`stream` must be true or false".into());
    }
    Ok(obj)
}

/// A tool call's arguments for policy: the JSON a string holds, else the value as given.
pub(crate) fn tool_arguments(arguments: Option<&serde_json::Value>) -> serde_json::Value {
    match arguments {
        Some(serde_json::Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone()))
        }
        Some(v) => v.clone(),
        None => serde_json::Value::Null,
    }
}

/// Walks every string inside a JSON value (tool inputs), depth first.
pub(crate) fn walk_strings(
    value: &mut serde_json::Value,
    kind: SlotKind,
    field: &str,
    visit: &mut Visit<'_>,
) {
    match value {
        serde_json::Value::String(s) => visit(s, kind, field),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk_strings(item, kind, &format!("{field}[{i}]"), visit);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                walk_strings(v, kind, &format!("{field}.{k}"), visit);
            }
        }
        _ => {}
    }
}
