//! The MCP guard: ztee in front of a third-party MCP server (streamable HTTP).
//!
//! `ANY /v1/mcp-guard/{name}` relays the MCP wire protocol to the configured upstream `name`,
//! with the gateway's authentication in front. Every JSON-RPC message is looked at on the way:
//!
//! - `tools/call` requests are decided by policy (`tool.call`: the tool's name, DLP findings in
//!   its arguments) *before* anything is forwarded; a refusal (deny, or a required approval,
//!   which this relay cannot hold) is answered by ztee as a JSON-RPC error and audited.
//! - every message relayed, in both directions, has every string DLP-masked: values and keys,
//!   at any depth (`params._meta`, a prompt's arguments, notifications, results), not a chosen
//!   list of fields. Opaque values (base64 blobs) cannot be masked; one holding a card number
//!   refuses the request (see `llm/walk.rs`).
//! - tool results coming back (JSON or server-sent events) are also scored for prompt injection;
//!   when policy refuses the result (an injection), the caller gets an error result instead of
//!   the text. An answer that is not JSON is masked as text.
//! - a request body must be JSON-RPC (one message object or a batch of them) declared as
//!   `application/json`, no larger than the gateway's JSON limit; anything else is refused with
//!   a 4xx and not relayed. GET and DELETE carry no body.
//!
//! The caller's ztee credentials are never forwarded upstream.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use ztee_policy::{Action, PolicyRequest, Verdict};

use crate::auth::Caller;
use crate::error::ActionError;
use crate::llm::sse::{SseEvent, SseParser};
use crate::principal::Permission;
use crate::state::AppState;
use ztee_state::config::Transport;

/// Headers of the MCP transport that pass through in both directions.
const PASSED: &[&str] = &[
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "accept",
    "content-type",
];

/// Longest silence from an upstream MCP server within one answer. An answer may be a long event
/// stream, so the whole exchange is not bounded, but a server that stops sending is.
const UPSTREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(UPSTREAM_IDLE)
            .build()
            .unwrap_or_default()
    })
}

fn jsonrpc_error(id: &Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// JSON-RPC error code for a call ztee refused (implementation-defined server error range).
const REFUSED: i64 = -32001;

/// Largest answer read from an upstream that is not a stream (a stream is masked as it flows).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Reads the caller's body, bounded, and checks it is JSON-RPC: a message object or a non-empty
/// batch of them. Nothing that fails here is relayed.
async fn read_messages(
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Option<(Vec<Value>, bool)>, ActionError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ActionError::new(
            crate::error::ErrorKind::TooLarge,
            "payload_too_large",
            format!("the body is larger than {limit} bytes (limits.max_json_body_bytes); it was not relayed"),
        )
    })?;
    if *method != Method::POST {
        if !bytes.is_empty() {
            return Err(ActionError::bad_request(
                "only a POST to the MCP guard carries a body (GET listens, DELETE ends the session); it was not relayed",
            ));
        }
        return Ok(None);
    }
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !declared_json {
        return Err(ActionError::new(
            crate::error::ErrorKind::UnsupportedInput,
            "unsupported_media_type",
            "an MCP message is sent as Content-Type: application/json; it was not relayed",
        ));
    }
    // The parser's message gives a line and column, never the body's text.
    let parsed: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ActionError::bad_request(format!("the body is not JSON ({e}); it was not relayed"))
    })?;
    let (messages, batch) = match parsed {
        Value::Array(items) if !items.is_empty() => (items, true),
        one @ Value::Object(_) => (vec![one], false),
        _ => {
            return Err(ActionError::bad_request(
                "the body is not a JSON-RPC message (an object) or a non-empty batch of them; it was not relayed",
            ))
        }
    };
    if let Some(i) = messages.iter().position(|m| !m.is_object()) {
        return Err(ActionError::bad_request(format!(
            "message [{i}] of the batch is not a JSON-RPC message (an object); it was not relayed"
        )));
    }
    Ok(Some((messages, batch)))
}

/// PCI-masks every string of a message, keys included, before it leaves for the other side.
fn mask_message(
    state: &AppState,
    message: &mut Value,
    counts: &mut BTreeMap<String, u64>,
) -> Result<(), crate::llm::walk::WalkError> {
    let scanner = state.llm.scanner();
    crate::llm::walk::every_string(message, "", &mut |s, _| {
        *s = crate::llm::tokenize::outbound_text(&scanner, None, s, counts);
    })
}

pub async fn relay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ActionError> {
    caller.require(Permission::SandboxRun)?;
    let Some(upstream) = state.config.mcp.upstreams.iter().find(|u| u.name == name) else {
        return Err(ActionError::not_found(format!(
            "no MCP upstream named {name:?} is configured ([[mcp.upstreams]])"
        )));
    };
    let limit = state.config.limits.max_json_body_bytes;
    let mut tool_names: BTreeMap<String, String> = BTreeMap::new();
    let mut lists: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut forward_body = Bytes::new();
    // The messages relayed, for a stdio server (which gets them one by one).
    let mut forwarded: Vec<Value> = Vec::new();
    let mut refused: Vec<Value> = Vec::new();
    if let Some((mut messages, batch)) = read_messages(&method, &headers, body, limit).await? {
        let mut kept = Vec::new();
        let mut inbound = BTreeMap::new();
        for mut message in messages.drain(..) {
            if message.get("method").and_then(Value::as_str) == Some("tools/call") {
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                let tool = message
                    .pointer("/params/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let args = message
                    .pointer("/params/arguments")
                    .cloned()
                    .unwrap_or(Value::Null);
                // Decided and recorded by the core; refused calls are answered here.
                let call = crate::action::McpToolCall {
                    upstream: name.clone(),
                    tool: tool.clone(),
                    arguments: args,
                };
                let decided = crate::action::execute(
                    &state,
                    &caller,
                    crate::action::Action::McpToolCall(call),
                    crate::action::Delivery::Whole,
                    None,
                )
                .await;
                match decided {
                    Ok(_) => {}
                    Err(e) if e.kind == crate::action::ErrorKind::Forbidden => {
                        refused.push(jsonrpc_error(
                            &id,
                            REFUSED,
                            format!("{} (request id {})", e.message, caller.request_id.as_str()),
                        ));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                tool_names.insert(id.to_string(), tool);
            }
            if message.get("method").and_then(Value::as_str) == Some("tools/list") {
                lists.insert(
                    message
                        .get("id")
                        .cloned()
                        .unwrap_or(Value::Null)
                        .to_string(),
                );
            }
            // Everything else in the message (`_meta`, other methods' params, notifications,
            // answers to the server's requests) is masked before it is relayed.
            mask_message(&state, &mut message, &mut inbound)
                .map_err(|e| ActionError::bad_request(format!("{e}; it was not relayed")))?;
            kept.push(message);
        }
        state.metrics.redactions("inbound", &inbound);
        if kept.is_empty() {
            let answer = if batch || refused.len() != 1 {
                Value::Array(refused)
            } else {
                refused.pop().unwrap_or(Value::Null)
            };
            return Ok(axum::Json(answer).into_response());
        }
        let out = if batch {
            Value::Array(kept)
        } else {
            kept.pop().unwrap_or(Value::Null)
        };
        forward_body = Bytes::from(out.to_string());
        forwarded = match out {
            Value::Array(items) => items,
            one => vec![one],
        };
    }

    let guard = Arc::new(ResultGuard {
        state: state.clone(),
        caller: caller.clone(),
        tools: tool_names,
        lists,
        upstream: upstream.name.clone(),
        trust_first_use: upstream.pin == ztee_state::config::PinMode::FirstUse,
    });
    let url = match upstream.transport() {
        Some(Transport::Http(url)) => url,
        Some(Transport::Stdio { command, image }) => {
            if method != Method::POST {
                // No stream for the server's own messages: a client's GET listens for none.
                return Ok(
                    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response()
                );
            }
            let answers = state
                .stdio_mcp
                .exchange(&state, &caller, &upstream.name, command, image, forwarded)
                .await?;
            let mut answers = match guard.message(Value::Array(answers)).await {
                Value::Array(items) => items,
                one => vec![one],
            };
            answers.extend(refused);
            if answers.is_empty() {
                return Ok(StatusCode::ACCEPTED.into_response());
            }
            let answer = if answers.len() == 1 {
                answers.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(answers)
            };
            return Ok(axum::Json(answer).into_response());
        }
        None => {
            return Err(ActionError::internal(format!(
                "MCP upstream {name:?} has neither a url nor a command"
            )))
        }
    };
    let mut request = client().request(
        reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| ActionError::bad_request(e.to_string()))?,
        url,
    );
    for name in PASSED {
        if let Some(v) = headers.get(*name) {
            request = request.header(*name, v.as_bytes());
        }
    }
    let mut response = request.body(forward_body).send().await.map_err(|e| {
        ActionError::new(
            crate::error::ErrorKind::BadGateway,
            "upstream_unreachable",
            format!(
                "the MCP upstream {name:?} cannot be reached: {}",
                e.without_url()
            ),
        )
    })?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out_headers = HeaderMap::new();
    for name in PASSED {
        if let Some(v) = response.headers().get(*name) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(v.as_bytes()),
            ) {
                out_headers.insert(n, v);
            }
        }
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with("text/event-stream") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            let mut parser = SseParser::default();
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(c)) => c,
                    _ => break,
                };
                let Ok(events) = parser.push(&chunk) else {
                    break;
                };
                let mut out = Vec::new();
                for ev in events {
                    guard.event(ev).await.encode(&mut out);
                }
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
            if let Some(ev) = parser.finish() {
                let mut out = Vec::new();
                guard.event(ev).await.encode(&mut out);
                let _ = tx.send(Ok(Bytes::from(out))).await;
            }
        });
        let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        return Ok((status, out_headers, body).into_response());
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                bytes.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                return Err(ActionError::new(
            crate::error::ErrorKind::BadGateway,
                    "upstream_too_large",
                    format!(
                        "the MCP upstream {name:?} answered with more than {MAX_ANSWER_BYTES} bytes; the answer is withheld"
                    ),
                ))
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ActionError::unavailable(format!(
                    "reading the MCP upstream: {}",
                    e.without_url()
                )))
            }
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        // Not JSON (an error page, plain text): masked as one text.
        return Ok((status, out_headers, guard.raw(&bytes)).into_response());
    };
    let mut value = guard.message(value).await;
    if !refused.is_empty() {
        value = match value {
            Value::Array(mut items) => {
                items.extend(refused);
                Value::Array(items)
            }
            one => {
                let mut items = vec![one];
                items.extend(refused);
                Value::Array(items)
            }
        };
    }
    Ok((status, out_headers, value.to_string()).into_response())
}

fn summary(scan: ztee_policy::injection::Scan) -> ztee_policy::InjectionSummary {
    ztee_policy::InjectionSummary {
        score: scan.score,
        rules: scan.rules,
    }
}

/// Masks and scores tool results on their way back.
struct ResultGuard {
    state: Arc<AppState>,
    caller: Caller,
    /// JSON-RPC id (as JSON text) -> tool name, for the calls of this request.
    tools: BTreeMap<String, String>,
    /// JSON-RPC ids (as JSON text) of this request's `tools/list` calls.
    lists: std::collections::BTreeSet<String>,
    upstream: String,
    trust_first_use: bool,
}

impl ResultGuard {
    async fn event(&self, event: SseEvent) -> SseEvent {
        let data = match serde_json::from_str::<Value>(&event.data) {
            Ok(v) => self.message(v).await.to_string(),
            Err(_) => self.raw(event.data.as_bytes()),
        };
        SseEvent {
            event: event.event,
            data,
        }
    }

    /// A `tools/list` answer: poisoned definitions withheld (and recorded), the rest passed only
    /// when they are the set the upstream is pinned to. A new or changed set is held for a
    /// person (`Err`: the refusal the caller gets, naming the approval).
    async fn review_tools(&self, tools: &mut Value) -> Result<(), String> {
        let rid = self.caller.request_id.as_str();
        let Some(list) = tools.as_array() else {
            return Err(format!(
                "ztee withheld the tool list of MCP upstream {:?}: `tools` is not an array (request id {rid})",
                self.upstream
            ));
        };
        let review = super::definitions::review(list);
        if !review.flagged.is_empty() {
            self.record_withheld(&review.flagged).await?;
        }
        *tools = Value::Array(review.kept);
        let set = crate::action::McpToolSet {
            upstream: self.upstream.clone(),
            digest: review.digest,
            tools: review.names,
            previous: None,
            trust_first_use: self.trust_first_use,
        };
        let pinned = crate::action::execute(
            &self.state,
            &self.caller,
            crate::action::Action::PinMcpTools(set),
            crate::action::Delivery::Whole,
            None,
        )
        .await;
        match pinned {
            Ok(crate::action::Outcome::Held(ticket)) => Err(format!(
                "ztee holds the tool definitions of MCP upstream {:?}: {} They wait for approval {} ({}); list the tools again once it is approved (request id {rid})",
                self.upstream,
                ticket.record.reasons.join("; "),
                ticket.record.id,
                ticket.link
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{} (request id {rid})", e.message)),
        }
    }

    /// One `tool.list` record naming the withheld definitions and the rules they broke.
    async fn record_withheld(&self, flagged: &[(String, Vec<&'static str>)]) -> Result<(), String> {
        let mut rules: Vec<String> = flagged
            .iter()
            .flat_map(|(_, r)| r.iter().map(|r| (*r).to_owned()))
            .collect();
        rules.sort();
        rules.dedup();
        tracing::warn!(upstream = %self.upstream, withheld = flagged.len(), "MCP tool definitions withheld");
        let ctx = crate::pipeline::ActionContext {
            caller: &self.caller,
            event_type: ztee_audit::EventType::ToolList,
            resource: Some(format!("mcp/{}", self.upstream)),
            policy: crate::action::policy_input(&self.caller, "tool.list"),
            approval: None,
        };
        let record = crate::audit::decision_record(&crate::policy::Decision {
            kind: crate::policy::DecisionKind::Deny,
            reasons: rules,
            messages: flagged
                .iter()
                .map(|(name, r)| format!("withheld tool {name}: {}", r.join(", ")))
                .collect(),
            risk: "HIGH",
            redact_inbound: false,
        });
        let event = self
            .state
            .pipeline
            .event(&ctx, ztee_audit::Outcome::Denied)
            .with_decision(record);
        self.state
            .pipeline
            .record(event)
            .await
            .map_err(|e| e.message)
    }

    /// An answer that is not JSON, masked as one text.
    fn raw(&self, bytes: &[u8]) -> String {
        let mut counts = BTreeMap::new();
        let masked = crate::llm::tokenize::outbound_text(
            &self.state.llm.scanner(),
            None,
            &String::from_utf8_lossy(bytes),
            &mut counts,
        );
        self.state.metrics.redactions("outbound", &counts);
        masked
    }

    async fn message(&self, value: Value) -> Value {
        match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for m in items {
                    out.push(self.one(m).await);
                }
                Value::Array(out)
            }
            one => self.one(one).await,
        }
    }

    async fn one(&self, mut message: Value) -> Value {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        if self.lists.contains(&id.to_string()) {
            if let Some(tools) = message.pointer_mut("/result/tools") {
                if let Err(refusal) = self.review_tools(tools).await {
                    return jsonrpc_error(&id, REFUSED, refusal);
                }
            }
        }
        // What the tool returned, read before masking, for the injection score: its text as
        // the LLM proxy reads a tool result (no `type` tags, base64 blobs or bare URLs).
        let mut text = String::new();
        let tool = self.tools.get(&id.to_string()).cloned();
        if let (Some(_), Some(result)) = (&tool, message.get("result")) {
            let mut result = result.clone();
            crate::llm::walk::texts(
                &mut result,
                crate::llm::tokenize::SlotKind::ToolOutput,
                "result",
                &mut |s, _, _| {
                    text.push_str(s);
                    text.push('\n');
                },
            );
        }
        // Every message, whatever it answers or announces, is masked string by string.
        let mut counts = BTreeMap::new();
        if let Err(e) = mask_message(&self.state, &mut message, &mut counts) {
            tracing::warn!(error = %e, "MCP upstream message withheld");
            return jsonrpc_error(
                &id,
                REFUSED,
                format!(
                    "ztee withheld this message from the MCP upstream: {e} (request id {})",
                    self.caller.request_id.as_str()
                ),
            );
        }
        self.state.metrics.redactions("outbound", &counts);
        let (Some(tool), Some(result)) = (tool, message.get_mut("result")) else {
            return message;
        };
        let injection = summary(ztee_policy::injection::scan(&text));
        // The session's trace gets the result as the model would have read it (facts only),
        // withheld or not: a later call that sends data out is decided on it. What DLP found
        // is what the masking above replaced.
        let found = counts
            .iter()
            .flat_map(|(entity, n)| std::iter::repeat_n(entity.as_str(), *n as usize));
        self.state.tool_traces.push(
            &self.caller.principal,
            ztee_policy::TraceStep {
                kind: ztee_policy::TraceKind::ToolResult,
                tool: tool.clone(),
                dlp: crate::policy::dlp_summary(found),
                injection: injection.clone(),
            },
        );
        let input = ztee_policy::PolicyInput {
            principal: crate::action::policy_principal(&self.state, &self.caller),
            action: Action::ToolCall,
            request: PolicyRequest {
                tool: Some(ztee_policy::ToolCall {
                    name: tool.clone(),
                    args: Value::Null,
                }),
                ..Default::default()
            },
            dlp: Default::default(),
            injection,
            trace: Vec::new(),
        };
        let decision = self.state.llm.decide(&input);
        let injection_rules: Vec<&str> = decision
            .reasons
            .iter()
            .map(|r| r.rule.as_str())
            .filter(|r| r.starts_with("injection."))
            .collect();
        if !injection_rules.is_empty() && decision.verdict != Verdict::Allow {
            tracing::info!(tool = %crate::action::mcp_safe_name(&tool), rules = ?injection_rules, "MCP tool result withheld");
            *result = json!({
                "content": [{"type": "text", "text": format!(
                    "ztee withheld this tool result: {} (request id {})",
                    injection_rules.join(", "),
                    self.caller.request_id.as_str()
                )}],
                "isError": true
            });
        }
        message
    }
}
