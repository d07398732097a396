//! OpenAI's chat completions shape: `POST {base}/chat/completions`, streamed as `data:` events
//! of `chat.completion.chunk` objects ending with `data: [DONE]`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};
use ztee_dlp::{Scanner, TokenMap};

use super::sse::SseEvent;
use super::tokenize::{outbound_raw_event, outbound_text, OutboundStream, SlotKind};
use super::{
    Dialect, FoundToolCall, ProviderApi, ProviderHeaders, StreamRewriter, Visit, WireFormat,
};

pub struct OpenAi;

/// The error `type` both providers use for a status.
pub(crate) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

fn content_texts(
    content: &mut Value,
    kind: SlotKind,
    field: &str,
    visit: &mut Visit<'_>,
) -> Result<(), String> {
    match content {
        Value::String(s) => visit(s, kind, field),
        Value::Null => {}
        Value::Array(parts) => {
            for (k, part) in parts.iter_mut().enumerate() {
                let Some(part) = part.as_object_mut() else {
                    return Err(format!("{field}[{k}] must be a content part object"));
                };
                for key in ["text", "refusal"] {
                    if let Some(Value::String(t)) = part.get_mut(key) {
                        visit(t, kind, &format!("{field}[{k}].{key}"));
                    }
                }
            }
        }
        _ => {
            return Err(format!(
                "{field} must be a string or an array of content parts"
            ))
        }
    }
    Ok(())
}

impl Dialect for OpenAi {
    const API: ProviderApi = ProviderApi::Openai;
    const FORMAT: WireFormat = WireFormat::ChatCompletions;

    fn error_body(status: StatusCode, message: &str) -> Value {
        json!({"error": {
            "message": message,
            "type": error_type(status),
            "param": null,
            "code": status.as_u16().to_string(),
        }})
    }

    fn stream_error(status: StatusCode, message: &str) -> Vec<SseEvent> {
        // A chunk carrying `error`: the SDK raises `APIError` on it.
        vec![SseEvent::data(
            Self::error_body(status, message).to_string(),
        )]
    }

    fn walk_request(body: &mut Value, visit: &mut Visit<'_>) -> Result<(), String> {
        let obj = super::request_object(body)?;
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
                Some("system" | "developer") => SlotKind::System,
                Some("user") => SlotKind::User,
                Some("assistant") => SlotKind::Assistant,
                Some("tool" | "function") => SlotKind::ToolOutput,
                Some(other) => {
                    return Err(format!(
                        "messages[{i}].role {other:?} is not one of system, developer, user, assistant, tool"
                    ))
                }
                None => return Err(format!("messages[{i}].role must be a string")),
            };
            if let Some(content) = m.get_mut("content") {
                content_texts(content, kind, &format!("messages[{i}].content"), visit)?;
            }
            // The legacy form of a tool call (`functions` / `function_call`).
            if let Some(Value::String(args)) = m
                .get_mut("function_call")
                .and_then(|call| call.get_mut("arguments"))
            {
                visit(
                    args,
                    SlotKind::ToolArguments,
                    &format!("messages[{i}].function_call.arguments"),
                );
            }
            if let Some(calls) = m.get_mut("tool_calls") {
                let Some(calls) = calls.as_array_mut() else {
                    return Err(format!("messages[{i}].tool_calls must be an array"));
                };
                for (j, call) in calls.iter_mut().enumerate() {
                    if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                        visit(
                            args,
                            SlotKind::ToolArguments,
                            &format!("messages[{i}].tool_calls[{j}].function.arguments"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn tool_calls(response: &Value) -> Vec<FoundToolCall> {
        let mut found = Vec::new();
        let choices = response.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            let calls = choice
                .pointer("/message/tool_calls")
                .and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let arguments = super::tool_arguments(call.pointer("/function/arguments"));
                found.push(FoundToolCall { name, arguments });
            }
        }
        found
    }

    fn stream_rewriter(scanner: Arc<Scanner>, tokens: Option<TokenMap>) -> Box<dyn StreamRewriter> {
        Box::new(OpenAiStream {
            scanner,
            tokens,
            channels: BTreeMap::new(),
            tools: BTreeMap::new(),
            template: json!({"object": "chat.completion.chunk"}),
            loose: BTreeMap::new(),
        })
    }

    fn trace_messages(request: &Value, answer: Option<&Value>) -> Vec<Value> {
        let mut messages: Vec<Value> = request
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(m) = answer.and_then(|a| a.pointer("/choices/0/message")) {
            messages.push(m.clone());
        }
        messages
    }

    fn upstream_request(
        request: reqwest::RequestBuilder,
        key: Option<&str>,
        _headers: &ProviderHeaders,
    ) -> reqwest::RequestBuilder {
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    fn upstream_path() -> &'static str {
        "/chat/completions"
    }
}

/// A stream channel: (choice index, tool call index or none for the content).
type Channel = (u64, Option<u64>);

struct OpenAiStream {
    scanner: Arc<Scanner>,
    tokens: Option<TokenMap>,
    channels: BTreeMap<Channel, OutboundStream>,
    /// (choice, tool index) -> (id, function name), for the assembled answer.
    tools: BTreeMap<(u64, u64), (Value, String)>,
    /// `id`, `created`, `model` of the last chunk, for chunks the rewriter adds.
    template: Value,
    loose: BTreeMap<String, u64>,
}

impl OpenAiStream {
    fn channel(&mut self, key: Channel) -> &mut OutboundStream {
        let (scanner, tokens) = (&self.scanner, &self.tokens);
        self.channels
            .entry(key)
            .or_insert_with(|| OutboundStream::new(scanner.clone(), tokens.clone()))
    }

    /// Flushes the channels of `choice` (all choices when `None`): (content tail, tool tails).
    fn flush(&mut self, choice: Option<u64>) -> BTreeMap<u64, (String, Vec<(u64, String)>)> {
        let mut tails: BTreeMap<u64, (String, Vec<(u64, String)>)> = BTreeMap::new();
        for ((c, tool), stream) in self.channels.iter_mut() {
            if choice.is_some_and(|want| want != *c) {
                continue;
            }
            let tail = stream.finish();
            if tail.is_empty() {
                continue;
            }
            let entry = tails.entry(*c).or_default();
            match tool {
                None => entry.0.push_str(&tail),
                Some(t) => entry.1.push((*t, tail)),
            }
        }
        tails
    }

    fn chunk_with(&self, choice: u64, content: String, tools: Vec<(u64, String)>) -> SseEvent {
        let mut chunk = self.template.clone();
        let mut delta = serde_json::Map::new();
        if !content.is_empty() {
            delta.insert("content".into(), Value::String(content));
        }
        if !tools.is_empty() {
            delta.insert(
                "tool_calls".into(),
                Value::Array(
                    tools
                        .into_iter()
                        .map(|(t, args)| json!({"index": t, "function": {"arguments": args}}))
                        .collect(),
                ),
            );
        }
        chunk["choices"] = json!([{"index": choice, "delta": delta, "finish_reason": null}]);
        SseEvent::data(chunk.to_string())
    }
}

fn add_tails(delta: &mut Value, content: String, tools: Vec<(u64, String)>) {
    if !delta.is_object() {
        *delta = json!({});
    }
    if !content.is_empty() {
        let joined = match delta.get("content").and_then(Value::as_str) {
            Some(c) => format!("{c}{content}"),
            None => content,
        };
        delta["content"] = Value::String(joined);
    }
    for (t, args) in tools {
        if !delta.get("tool_calls").is_some_and(Value::is_array) {
            delta["tool_calls"] = json!([]);
        }
        if let Some(calls) = delta["tool_calls"].as_array_mut() {
            match calls
                .iter_mut()
                .find(|c| c.get("index").and_then(Value::as_u64) == Some(t))
            {
                Some(call) => {
                    let joined = match call.pointer("/function/arguments").and_then(Value::as_str) {
                        Some(a) => format!("{a}{args}"),
                        None => args,
                    };
                    call["function"]["arguments"] = Value::String(joined);
                }
                None => calls.push(json!({"index": t, "function": {"arguments": args}})),
            }
        }
    }
}

impl StreamRewriter for OpenAiStream {
    fn event(&mut self, event: SseEvent) -> Vec<SseEvent> {
        if event.data.trim() == "[DONE]" {
            let mut out = self.finish();
            out.push(event);
            return out;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(&event.data) else {
            return vec![outbound_raw_event(&self.scanner, event, &mut self.loose)];
        };
        let mut choices = match chunk.get_mut("choices").map(Value::take) {
            Some(Value::Array(c)) => c,
            _ => Vec::new(),
        };
        for choice in choices.iter_mut() {
            let idx = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            if let Some(delta) = choice.get_mut("delta") {
                if let Some(Value::String(c)) = delta.get_mut("content") {
                    let text = std::mem::take(c);
                    *c = self.channel((idx, None)).push(&text);
                }
                if let Some(Value::String(c)) = delta.get_mut("refusal") {
                    *c = outbound_text(&self.scanner, None, c, &mut self.loose);
                }
                if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for call in calls.iter_mut() {
                        let t = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                        if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                            let id = call.get("id").cloned().unwrap_or(Value::Null);
                            self.tools.insert((idx, t), (id, name.to_owned()));
                        }
                        if let Some(Value::String(a)) = call.pointer_mut("/function/arguments") {
                            let text = std::mem::take(a);
                            *a = self.channel((idx, Some(t))).push(&text);
                        }
                    }
                }
            }
            if finishing {
                if let Some((content, tools)) = self.flush(Some(idx)).remove(&idx) {
                    match choice.get_mut("delta") {
                        Some(delta) => add_tails(delta, content, tools),
                        None => {
                            let mut delta = json!({});
                            add_tails(&mut delta, content, tools);
                            choice["delta"] = delta;
                        }
                    }
                }
            }
        }
        // The texts just streamed on their channels stay as they are; every other string of
        // the chunk is masked whole.
        let mut streamed = Vec::new();
        for (i, choice) in choices.iter().enumerate() {
            streamed.push(format!("/choices/{i}/delta/content"));
            let calls = choice
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array);
            for j in 0..calls.map_or(0, Vec::len) {
                streamed.push(format!(
                    "/choices/{i}/delta/tool_calls/{j}/function/arguments"
                ));
            }
        }
        chunk["choices"] = Value::Array(choices);
        super::tokenize::outbound_rest(
            &self.scanner,
            self.tokens.as_ref(),
            &mut chunk,
            &streamed,
            &mut self.loose,
        );
        // Kept for the chunks `finish` adds, as masked.
        for key in ["id", "created", "model", "system_fingerprint"] {
            if let Some(v) = chunk.get(key) {
                self.template[key] = v.clone();
            }
        }
        vec![SseEvent {
            event: event.event,
            data: chunk.to_string(),
        }]
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        let tails = self.flush(None);
        tails
            .into_iter()
            .map(|(choice, (content, tools))| self.chunk_with(choice, content, tools))
            .collect()
    }

    fn is_terminal(&self, event: &SseEvent) -> bool {
        event.data.trim() == "[DONE]"
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = self.loose.clone();
        for stream in self.channels.values() {
            for (e, n) in stream.counts() {
                *counts.entry(e).or_default() += n;
            }
        }
        counts
    }

    fn assistant_message(&self) -> Value {
        let content = self.channels.get(&(0, None)).map(|s| s.masked().to_owned());
        let mut message = json!({"role": "assistant", "content": content});
        let calls: Vec<Value> = self
            .tools
            .iter()
            .filter(|((c, _), _)| *c == 0)
            .map(|((_, t), (id, name))| {
                let args = self
                    .channels
                    .get(&(0, Some(*t)))
                    .map(|s| s.masked().to_owned())
                    .unwrap_or_default();
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        message
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_a_chunk_is_masked_not_only_the_content() {
        let scanner = Arc::new(Scanner::new(Default::default()).unwrap());
        let mut stream = OpenAi::stream_rewriter(scanner, None);
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0,
            "delta": {"content": "ok ", "audio": {"transcript": "card 5500 0000 0000 0004"}},
            "finish_reason": null}]});
        let out = stream.event(SseEvent::data(chunk.to_string()));
        let text: String = out.iter().map(|e| e.data.clone()).collect();
        assert!(!text.contains("5500 0000 0000 0004"), "{text}");
        assert!(text.contains("0004"), "{text}");
    }
}
