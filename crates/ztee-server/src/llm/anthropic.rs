//! Anthropic's messages shape: `POST {base}/v1/messages`, streamed as named events
//! (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`, `ping`, `error`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};
use ztee_dlp::{Scanner, TokenMap};

use super::openai::error_type;
use super::sse::SseEvent;
use super::tokenize::{outbound_raw_event, outbound_rest, OutboundStream, SlotKind};
use super::{
    walk, walk_strings, Dialect, FoundToolCall, ProviderApi, ProviderHeaders, StreamRewriter,
    Visit, WireFormat,
};

pub struct Anthropic;

/// The API version sent upstream when the client names none.
const DEFAULT_VERSION: &str = "2023-06-01";

fn blocks(
    content: &mut Value,
    kind: SlotKind,
    field: &str,
    visit: &mut Visit<'_>,
) -> Result<(), String> {
    match content {
        Value::String(s) => visit(s, kind, field),
        Value::Array(items) => {
            for (k, block) in items.iter_mut().enumerate() {
                let at = format!("{field}[{k}]");
                let Some(obj) = block.as_object_mut() else {
                    return Err(format!("{at} must be a content block object"));
                };
                let block_type = obj
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{at}.type must be a string"))?
                    .to_owned();
                match block_type.as_str() {
                    "text" => {
                        if let Some(Value::String(t)) = obj.get_mut("text") {
                            visit(t, kind, &format!("{at}.text"));
                        }
                    }
                    "tool_use" | "server_tool_use" => {
                        if let Some(input) = obj.get_mut("input") {
                            walk_strings(
                                input,
                                SlotKind::ToolArguments,
                                &format!("{at}.input"),
                                visit,
                            );
                        }
                    }
                    "tool_result" => {
                        if let Some(c) = obj.get_mut("content") {
                            blocks(c, SlotKind::ToolOutput, &format!("{at}.content"), visit)?;
                        }
                    }
                    // Pixels: nothing to read here; attachments.rs tells policy where they are.
                    "image" => {}
                    // A document's text (a text source, its title and context) is what a tool or
                    // a retrieval put there; a base64 source is opaque and skipped.
                    "document" => walk::texts(block, SlotKind::ToolOutput, &at, visit),
                    // `search_result`, `thinking` and every block type newer than this code:
                    // all their text is conversation, scored like the message it is in.
                    _ => walk::texts(block, kind, &at, visit),
                }
            }
        }
        Value::Null => {}
        _ => {
            return Err(format!(
                "{field} must be a string or an array of content blocks"
            ))
        }
    }
    Ok(())
}

impl Dialect for Anthropic {
    const API: ProviderApi = ProviderApi::Anthropic;
    const FORMAT: WireFormat = WireFormat::Messages;

    fn error_body(status: StatusCode, message: &str) -> Value {
        json!({"type": "error", "error": {"type": error_type(status), "message": message}})
    }

    fn stream_error(status: StatusCode, message: &str) -> Vec<SseEvent> {
        // Anthropic's own `error` event: the SDK raises on it.
        vec![SseEvent::named(
            "error",
            Self::error_body(status, message).to_string(),
        )]
    }

    fn walk_request(body: &mut Value, visit: &mut Visit<'_>) -> Result<(), String> {
        let obj = super::request_object(body)?;
        if obj
            .get("max_tokens")
            .and_then(Value::as_u64)
            .is_none_or(|n| n == 0)
        {
            return Err("`max_tokens` must be a positive integer".into());
        }
        if let Some(system) = obj.get_mut("system") {
            blocks(system, SlotKind::System, "system", visit)?;
        }
        let Some(messages) = obj.get_mut("messages").and_then(Value::as_array_mut) else {
            return Err("`messages` must be an array of messages".into());
        };
        if messages.is_empty() {
            return Err("`messages` must hold at least one message".into());
        }
        for (i, m) in messages.iter_mut().enumerate() {
            let Some(m) = m.as_object_mut() else {
                return Err(format!("messages[{i}] must be an object"));
            };
            let kind = match m.get("role").and_then(Value::as_str) {
                Some("user") => SlotKind::User,
                Some("assistant") => SlotKind::Assistant,
                Some(other) => {
                    return Err(format!(
                        "messages[{i}].role {other:?} is not one of user, assistant"
                    ))
                }
                None => return Err(format!("messages[{i}].role must be a string")),
            };
            match m.get_mut("content") {
                Some(content) => blocks(content, kind, &format!("messages[{i}].content"), visit)?,
                None => return Err(format!("messages[{i}].content is missing")),
            }
        }
        Ok(())
    }

    fn tool_calls(response: &Value) -> Vec<FoundToolCall> {
        response
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .map(|b| FoundToolCall {
                name: b
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: b.get("input").cloned().unwrap_or(Value::Null),
            })
            .collect()
    }

    fn stream_rewriter(scanner: Arc<Scanner>, tokens: Option<TokenMap>) -> Box<dyn StreamRewriter> {
        Box::new(AnthropicStream {
            scanner,
            tokens,
            blocks: BTreeMap::new(),
            loose: BTreeMap::new(),
        })
    }

    fn trace_messages(request: &Value, answer: Option<&Value>) -> Vec<Value> {
        let mut out = Vec::new();
        match request.get("system") {
            Some(Value::String(s)) => out.push(json!({"role": "system", "content": s})),
            Some(Value::Array(items)) => {
                out.push(json!({"role": "system", "content": text_of(items)}))
            }
            _ => {}
        }
        for m in request
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            match m.get("content") {
                Some(Value::String(s)) => out.push(json!({"role": role, "content": s})),
                Some(Value::Array(items)) => out.extend(openai_messages(role, items)),
                _ => {}
            }
        }
        if let Some(Value::Array(items)) = answer.and_then(|a| a.get("content")) {
            out.extend(openai_messages("assistant", items));
        }
        out
    }

    fn upstream_request(
        request: reqwest::RequestBuilder,
        key: Option<&str>,
        headers: &ProviderHeaders,
    ) -> reqwest::RequestBuilder {
        let version = headers
            .anthropic_version
            .as_deref()
            .unwrap_or(DEFAULT_VERSION);
        let mut request = request.header("anthropic-version", version);
        if let Some(beta) = headers.anthropic_beta.as_deref() {
            request = request.header("anthropic-beta", beta);
        }
        match key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    fn upstream_path() -> &'static str {
        "/v1/messages"
    }
}

fn text_of(items: &[Value]) -> String {
    items
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Anthropic content blocks as OpenAI messages: text stays with the role, `tool_use` becomes
/// `tool_calls`, each `tool_result` a `tool` message.
fn openai_messages(role: &str, items: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    let text = text_of(
        &items
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let calls: Vec<Value> = items
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            json!({"id": b.get("id"), "type": "function", "function": {
                "name": b.get("name"),
                "arguments": b.get("input").map(Value::to_string).unwrap_or_default(),
            }})
        })
        .collect();
    for r in items
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
    {
        let content = match r.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => text_of(items),
            _ => String::new(),
        };
        out.push(json!({"role": "tool", "tool_call_id": r.get("tool_use_id"), "content": content}));
    }
    if !text.is_empty() || !calls.is_empty() {
        let mut m = json!({"role": role, "content": text});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        out.push(m);
    }
    out
}

/// A content block being streamed.
struct Block {
    kind: String,
    id: Value,
    name: Option<String>,
    stream: OutboundStream,
}

struct AnthropicStream {
    scanner: Arc<Scanner>,
    tokens: Option<TokenMap>,
    blocks: BTreeMap<u64, Block>,
    loose: BTreeMap<String, u64>,
}

/// The delta field that carries text for a block kind.
fn delta_for(kind: &str, text: String) -> Value {
    match kind {
        "tool_use" => json!({"type": "input_json_delta", "partial_json": text}),
        "thinking" => json!({"type": "thinking_delta", "thinking": text}),
        _ => json!({"type": "text_delta", "text": text}),
    }
}

impl AnthropicStream {
    fn tail_event(&mut self, index: u64) -> Option<SseEvent> {
        let block = self.blocks.get_mut(&index)?;
        let tail = block.stream.finish();
        (!tail.is_empty()).then(|| {
            SseEvent::named(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta_for(&block.kind, tail)})
                    .to_string(),
            )
        })
    }
}

impl StreamRewriter for AnthropicStream {
    fn event(&mut self, event: SseEvent) -> Vec<SseEvent> {
        let Ok(mut data) = serde_json::from_str::<Value>(&event.data) else {
            return vec![outbound_raw_event(&self.scanner, event, &mut self.loose)];
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        let mut out = Vec::new();
        match kind.as_str() {
            "content_block_start" => {
                let block_kind = data
                    .pointer("/content_block/type")
                    .and_then(Value::as_str)
                    .unwrap_or("text")
                    .to_owned();
                let mut block = Block {
                    kind: block_kind,
                    id: data
                        .pointer("/content_block/id")
                        .cloned()
                        .unwrap_or(Value::Null),
                    name: data
                        .pointer("/content_block/name")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    stream: OutboundStream::new(self.scanner.clone(), self.tokens.clone()),
                };
                for key in ["text", "thinking"] {
                    if let Some(Value::String(t)) =
                        data.pointer_mut(&format!("/content_block/{key}"))
                    {
                        let text = std::mem::take(t);
                        *t = block.stream.push(&text);
                    }
                }
                self.blocks.insert(index, block);
            }
            "content_block_delta" => {
                let (scanner, tokens) = (self.scanner.clone(), self.tokens.clone());
                let block = self.blocks.entry(index).or_insert_with(|| Block {
                    kind: "text".into(),
                    id: Value::Null,
                    name: None,
                    stream: OutboundStream::new(scanner, tokens),
                });
                for key in ["text", "partial_json", "thinking"] {
                    if let Some(Value::String(t)) = data.pointer_mut(&format!("/delta/{key}")) {
                        let text = std::mem::take(t);
                        *t = block.stream.push(&text);
                    }
                }
            }
            "content_block_stop" => {
                out.extend(self.tail_event(index));
            }
            "message_stop" => {
                out.extend(self.finish());
            }
            _ => {}
        }
        // The texts streamed on a block's channel stay as they are; every other string of the
        // event (`message_start`, `error`, citations, server tool results, anything newer) is
        // masked whole. Signatures pass: they are opaque.
        let streamed: Vec<String> = match kind.as_str() {
            "content_block_start" => vec![
                "/content_block/text".into(),
                "/content_block/thinking".into(),
            ],
            "content_block_delta" => vec![
                "/delta/text".into(),
                "/delta/partial_json".into(),
                "/delta/thinking".into(),
            ],
            _ => Vec::new(),
        };
        outbound_rest(&self.scanner, None, &mut data, &streamed, &mut self.loose);
        out.push(SseEvent {
            event: event.event,
            data: data.to_string(),
        });
        out
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        let indexes: Vec<u64> = self.blocks.keys().copied().collect();
        indexes
            .into_iter()
            .filter_map(|i| self.tail_event(i))
            .collect()
    }

    fn is_terminal(&self, event: &SseEvent) -> bool {
        event.event.as_deref() == Some("message_stop")
            || event.data.contains("\"type\":\"message_stop\"")
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = self.loose.clone();
        for block in self.blocks.values() {
            for (e, n) in block.stream.counts() {
                *counts.entry(e).or_default() += n;
            }
        }
        counts
    }

    fn assistant_message(&self) -> Value {
        let text: String = self
            .blocks
            .values()
            .filter(|b| b.kind == "text")
            .map(|b| b.stream.masked())
            .collect();
        let calls: Vec<Value> = self
            .blocks
            .values()
            .filter(|b| b.kind == "tool_use")
            .map(|b| {
                json!({"id": b.id, "type": "function", "function": {
                    "name": b.name, "arguments": b.stream.masked(),
                }})
            })
            .collect();
        let mut m = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        m
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_the_rewriter_does_not_stream_are_masked_and_signatures_pass() {
        let scanner = Arc::new(Scanner::new(Default::default()).unwrap());
        let mut stream = Anthropic::stream_rewriter(scanner, None);
        let mut all = String::new();
        for (name, data) in [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "m",
                "content": [{"type": "text", "text": "card 5500 0000 0000 0004"}]}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "citations_delta", "citation": {
                    "cited_text": "card 5500 0000 0000 0004"}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "signature_delta", "signature": "EqQB5500000000000004AA"}}),
            ),
        ] {
            for ev in stream.event(SseEvent::named(name, data.to_string())) {
                all.push_str(&ev.data);
            }
        }
        assert!(!all.contains("card 5500 0000 0000 0004"), "{all}");
        assert!(all.contains("EqQB5500000000000004AA"), "{all}");
    }
}
