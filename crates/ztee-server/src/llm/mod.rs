//! The LLM proxy's door: OpenAI- and Anthropic-compatible chat endpoints in front of configured
//! model providers, and the provider dialects the exchange speaks.
//!
//! ```text
//! POST /v1/openai/chat/completions | /v1/openai/responses | /v1/anthropic/messages
//!   -> authn (auth.rs; Anthropic clients may send `x-api-key`)
//!   -> chat: the body parsed as a JSON object, `x-ztee-provider` and the provider's protocol
//!      headers parsed into an `LlmExchange`
//!   -> action::execute (permission `llm:chat`) -> action/llm.rs: inbound DLP over every string
//!      (walk.rs, tokenize.rs), the dialect's shape check, policy `llm.chat` per provider,
//!      upstream (upstream.rs), outbound DLP (SSE rewritten event by event: sse.rs and the
//!      dialect's rewriter), policy `tool.call`, audit and trace (trace.rs)
//!   -> the outcome rendered: the answer, or the refusal in the provider's error shape
//! ```
//! Errors are answered in the provider's own error shape so the official SDKs raise their usual
//! exceptions.

pub mod anthropic;
pub mod attachments;
pub mod config;
pub mod flow;
pub mod openai;
pub mod openai_responses;
pub mod sse;
pub mod tokenize;
pub mod trace;
pub mod upstream;
pub mod walk;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ztee_dlp::{Scanner, TokenMap};

pub use crate::action::llm::{
    LlmAnswer, LlmExchange, ProviderHeaders, WireFormat, DLP_REFUSAL_RULE,
};
use crate::auth::Caller;
use crate::state::AppState;
pub use config::{LlmConfig, ProviderApi, ProviderConfig};
use sse::SseEvent;
use tokenize::SlotKind;
use trace::TraceStore;
use upstream::Upstream;

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
    pub(crate) upstream: Upstream,
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
    /// The wire format this dialect reads and writes (the action names it).
    const FORMAT: WireFormat;

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
        headers: &ProviderHeaders,
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

/// The door for every chat route: parses the body and the provider headers into an
/// [`LlmExchange`](crate::action::llm::LlmExchange), runs it through the action core, and
/// renders the outcome (or the refusal) in the provider's own shape.
async fn chat<D: Dialect>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = caller.request_id.as_str().to_owned();
    let exchange = match parse_exchange::<D>(&headers, &body) {
        Ok(exchange) => exchange,
        Err(e) => return refusal::<D>(&e, &rid),
    };
    let outcome = crate::action::execute(
        &state,
        &caller,
        crate::action::Action::LlmExchange(exchange),
        crate::action::Delivery::Whole,
        None,
    )
    .await;
    match outcome {
        Ok(crate::action::Outcome::Llm(answer)) => render_answer(answer),
        Ok(_) => refusal::<D>(
            &crate::action::ActionError::internal("an LLM exchange ended without an answer"),
            &rid,
        ),
        Err(e) => refusal::<D>(&e, &rid),
    }
}

/// Parse at the edge: a JSON object (its shape is the core's to check), the provider a caller
/// pins, and the headers the provider's protocol needs.
fn parse_exchange<D: Dialect>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<LlmExchange, crate::action::ActionError> {
    let body = match serde_json::from_slice(body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            return Err(crate::action::ActionError::bad_request(
                "the request body must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(crate::action::ActionError::bad_request(format!(
                "the request body is not valid JSON: {e}"
            )))
        }
    };
    let provider = match headers.get("x-ztee-provider") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    crate::action::ActionError::bad_request(
                        "the x-ztee-provider header must be a provider name",
                    )
                })?
                .to_owned(),
        ),
    };
    let provider_headers = ProviderHeaders::parse(
        headers.get("anthropic-version").map(HeaderValue::as_bytes),
        headers.get("anthropic-beta").map(HeaderValue::as_bytes),
    )?;
    Ok(LlmExchange {
        format: D::FORMAT,
        body,
        provider,
        headers: provider_headers,
    })
}

/// A refusal in the provider's error shape, so the official SDKs raise their usual exceptions.
fn refusal<D: Dialect>(e: &crate::action::ActionError, request_id: &str) -> Response {
    error_response::<D>(crate::error::status_of(e.kind), &e.message, request_id)
}

fn render_answer(answer: LlmAnswer) -> Response {
    match answer {
        LlmAnswer::Whole { status, json, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        LlmAnswer::Stream { status, events } => {
            let body =
                Body::from_stream(futures_util::stream::unfold(events, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }));
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    }
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
