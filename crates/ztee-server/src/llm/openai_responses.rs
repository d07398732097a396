//! OpenAI's Responses API: `POST {base}/responses`. The request carries `instructions` and
//! `input` (a string, or a list of items: messages, function calls and their outputs); the answer
//! is a list of `output` items. Streams are named events (`response.output_text.delta`, ...)
//! ending with `response.completed` (or `.incomplete` / `.failed`).
//!
//! Streamed text and tool arguments are rewritten with the same bounded hold-back as chat
//! completions. What is held back is released as one more delta event just before the
//! matching `.done` event, and every `.done` event and the final response carry exactly the text
//! the client was sent, so the SDK's accumulated answer and its final answer agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};
use ztee_dlp::{Scanner, TokenMap};

use super::openai::OpenAi;
use super::sse::SseEvent;
use super::tokenize::{outbound_raw_event, outbound_rest, outbound_text, OutboundStream, SlotKind};
use super::{
    Dialect, FoundToolCall, ProviderApi, ProviderHeaders, StreamRewriter, Visit, WireFormat,
};

pub struct OpenAiResponses;

/// Content parts that carry text, and the key that holds it.
fn part_text_key(part_type: Option<&str>) -> Option<&'static str> {
    match part_type {
        Some("input_text" | "output_text" | "text" | "summary_text" | "reasoning_text") => {
            Some("text")
        }
        Some("refusal") => Some("refusal"),
        _ => None,
    }
}

/// Visits the text of a message's `content` for policy and the injection score: a string or a
/// list of parts. Parts without text (images, files, audio) are not read here; DLP has already
/// tokenized every string of the body (`walk.rs`).
fn content_texts(
    content: &mut Value,
    kind: SlotKind,
    field: &str,
    visit: &mut Visit<'_>,
) -> Result<(), String> {
    match content {
        Value::String(s) => visit(s, kind, field),
        Value::Array(parts) => {
            for (k, part) in parts.iter_mut().enumerate() {
                let Some(obj) = part.as_object_mut() else {
                    return Err(format!("{field}[{k}] must be a content part object"));
                };
                let key = part_text_key(obj.get("type").and_then(Value::as_str));
                if let Some(key) = key {
                    if let Some(Value::String(t)) = obj.get_mut(key) {
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

fn role_kind(role: Option<&str>, field: &str) -> Result<SlotKind, String> {
    match role {
        Some("system" | "developer") => Ok(SlotKind::System),
        Some("user") => Ok(SlotKind::User),
        Some("assistant") => Ok(SlotKind::Assistant),
        Some(other) => Err(format!(
            "{field}.role {other:?} is not one of system, developer, user, assistant"
        )),
        None => Err(format!("{field}.role must be a string")),
    }
}

/// Visits one input item for policy and the injection score. Item types without a text field
/// of their own (an item reference, a built-in tool's call) count every string in them (opaque
/// values aside) as user text.
fn walk_input_item(item: &mut Value, field: &str, visit: &mut Visit<'_>) -> Result<(), String> {
    let Some(obj) = item.as_object_mut() else {
        return Err(format!("{field} must be an object"));
    };
    let item_type = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_owned();
    match item_type.as_str() {
        "message" => {
            let kind = role_kind(obj.get("role").and_then(Value::as_str), field)?;
            let Some(content) = obj.get_mut("content") else {
                return Err(format!("{field}.content is missing"));
            };
            content_texts(content, kind, &format!("{field}.content"), visit)
        }
        "function_call" => {
            match obj.get_mut("arguments") {
                Some(Value::String(args)) => {
                    visit(args, SlotKind::ToolArguments, &format!("{field}.arguments"))
                }
                _ => return Err(format!("{field}.arguments must be a string")),
            }
            Ok(())
        }
        "function_call_output" => match obj.get_mut("output") {
            Some(Value::String(out)) => {
                visit(out, SlotKind::ToolOutput, &format!("{field}.output"));
                Ok(())
            }
            Some(parts @ Value::Array(_)) => content_texts(
                parts,
                SlotKind::ToolOutput,
                &format!("{field}.output"),
                visit,
            ),
            _ => Err(format!(
                "{field}.output must be a string or an array of content parts"
            )),
        },
        "reasoning" => {
            if let Some(summary) = obj.get_mut("summary") {
                content_texts(
                    summary,
                    SlotKind::Assistant,
                    &format!("{field}.summary"),
                    visit,
                )?;
            }
            Ok(())
        }
        _ => {
            super::walk::texts(item, SlotKind::User, field, visit);
            Ok(())
        }
    }
}

impl Dialect for OpenAiResponses {
    const API: ProviderApi = ProviderApi::Openai;
    const FORMAT: WireFormat = WireFormat::Responses;

    fn error_body(status: StatusCode, message: &str) -> Value {
        OpenAi::error_body(status, message)
    }

    fn stream_error(status: StatusCode, message: &str) -> Vec<SseEvent> {
        // The Responses API's `error` event, with the `error` object the SDK raises `APIError`
        // on.
        let mut event = OpenAi::error_body(status, message);
        event["type"] = Value::String("error".into());
        event["code"] = Value::String(super::openai::error_type(status).into());
        event["message"] = Value::String(message.into());
        event["param"] = Value::Null;
        vec![SseEvent::named("error", event.to_string())]
    }

    fn walk_request(body: &mut Value, visit: &mut Visit<'_>) -> Result<(), String> {
        let obj = super::request_object(body)?;
        match obj.get_mut("instructions") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => visit(s, SlotKind::System, "instructions"),
            Some(_) => return Err("`instructions` must be a string".into()),
        }
        match obj.get_mut("input") {
            Some(Value::String(s)) => {
                visit(s, SlotKind::User, "input");
                Ok(())
            }
            Some(Value::Array(items)) if items.is_empty() => {
                Err("`input` must hold at least one item".into())
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    walk_input_item(item, &format!("input[{i}]"), visit)?;
                }
                Ok(())
            }
            _ => Err("`input` must be a string or an array of input items".into()),
        }
    }

    fn tool_calls(response: &Value) -> Vec<FoundToolCall> {
        let output = response.get("output").and_then(Value::as_array);
        output
            .into_iter()
            .flatten()
            .filter(|item| item.get("type").and_then(Value::as_str) == Some("function_call"))
            .map(|item| FoundToolCall {
                name: item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: super::tool_arguments(item.get("arguments")),
            })
            .collect()
    }

    fn stream_rewriter(scanner: Arc<Scanner>, tokens: Option<TokenMap>) -> Box<dyn StreamRewriter> {
        Box::new(ResponsesStream {
            scanner,
            tokens,
            channels: BTreeMap::new(),
            calls: BTreeMap::new(),
            loose: BTreeMap::new(),
        })
    }

    fn trace_messages(request: &Value, answer: Option<&Value>) -> Vec<Value> {
        let mut messages = Vec::new();
        if let Some(Value::String(s)) = request.get("instructions") {
            messages.push(json!({"role": "system", "content": s}));
        }
        match request.get("input") {
            Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
            Some(Value::Array(items)) => {
                for item in items {
                    messages.push(item_as_message(item));
                }
            }
            _ => {}
        }
        if let Some(answer) = answer {
            messages.push(answer_as_message(answer));
        }
        messages
    }

    fn upstream_request(
        request: reqwest::RequestBuilder,
        key: Option<&str>,
        headers: &ProviderHeaders,
    ) -> reqwest::RequestBuilder {
        OpenAi::upstream_request(request, key, headers)
    }

    fn upstream_path() -> &'static str {
        "/responses"
    }
}

/// The text of a content value (a string, or the texts of its parts joined).
fn joined_text(content: Option<&Value>) -> Value {
    match content {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| {
                    let key = part_text_key(p.get("type").and_then(Value::as_str))?;
                    p.get(key).and_then(Value::as_str)
                })
                .collect();
            Value::String(texts.concat())
        }
        _ => Value::Null,
    }
}

/// One input item in OpenAI's chat message format, for the trace.
fn item_as_message(item: &Value) -> Value {
    match item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
    {
        "message" => json!({
            "role": item.get("role").cloned().unwrap_or(Value::Null),
            "content": joined_text(item.get("content")),
        }),
        "function_call" => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").cloned().unwrap_or(Value::Null),
                },
            }],
        }),
        "function_call_output" => json!({
            "role": "tool",
            "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
            "content": joined_text(item.get("output")),
        }),
        other => json!({"role": "user", "content": null, "item_type": other}),
    }
}

/// A (masked) answer as one assistant message in OpenAI's chat format.
fn answer_as_message(answer: &Value) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in answer
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                if let Value::String(t) = joined_text(item.get("content")) {
                    text.push_str(&t);
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").cloned().unwrap_or(Value::Null),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// A streamed text: the output item's index, and the content part's index (none for a function
/// call's arguments).
type Channel = (u64, Option<u64>);

struct ChannelState {
    stream: OutboundStream,
    /// Everything sent to the client so far (placeholders restored where the caller may see
    /// them): what the `.done` events and the final response must say.
    sent: String,
}

struct ResponsesStream {
    scanner: Arc<Scanner>,
    tokens: Option<TokenMap>,
    channels: BTreeMap<Channel, ChannelState>,
    /// Output index -> (call id, function name), for the assembled answer.
    calls: BTreeMap<u64, (Value, String)>,
    loose: BTreeMap<String, u64>,
}

fn index(data: &Value, key: &str) -> u64 {
    data.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl ResponsesStream {
    fn channel(&mut self, key: Channel) -> &mut ChannelState {
        let (scanner, tokens) = (&self.scanner, &self.tokens);
        self.channels.entry(key).or_insert_with(|| ChannelState {
            stream: OutboundStream::new(scanner.clone(), tokens.clone()),
            sent: String::new(),
        })
    }

    fn push(&mut self, key: Channel, text: &str) -> String {
        let channel = self.channel(key);
        let out = channel.stream.push(text);
        channel.sent.push_str(&out);
        out
    }

    /// Releases what `key` holds back; the full text sent on it.
    fn close(&mut self, key: Channel) -> (String, String) {
        let channel = self.channel(key);
        let tail = channel.stream.finish();
        channel.sent.push_str(&tail);
        (tail, channel.sent.clone())
    }

    /// Masks a whole text outside any channel.
    fn mask(&mut self, text: &str) -> String {
        outbound_text(&self.scanner, self.tokens.as_ref(), text, &mut self.loose)
    }

    /// Rewrites an output item (in `.output_item.*` events and the final response): streamed
    /// texts become what was sent, every other string is masked whole.
    fn rewrite_item(&mut self, item: &mut Value, output_index: u64) {
        let mut streamed = Vec::new();
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                if let Some(parts) = item.get_mut("content").and_then(Value::as_array_mut) {
                    for (k, part) in parts.iter_mut().enumerate() {
                        let key = part_text_key(part.get("type").and_then(Value::as_str));
                        let Some(key) = key else { continue };
                        let channel = (output_index, Some(k as u64));
                        let replacement = match self.channels.get(&channel) {
                            Some(state) => state.sent.clone(),
                            None => match part.get(key).and_then(Value::as_str) {
                                Some(t) => self.mask(t),
                                None => continue,
                            },
                        };
                        part[key] = Value::String(replacement);
                        streamed.push(format!("/content/{k}/{key}"));
                    }
                }
            }
            Some("function_call") => {
                let replacement = match self.channels.get(&(output_index, None)) {
                    Some(state) => Some(state.sent.clone()),
                    None => item
                        .get("arguments")
                        .and_then(Value::as_str)
                        .map(|a| self.mask(a)),
                };
                if let Some(replacement) = replacement {
                    item["arguments"] = Value::String(replacement);
                    streamed.push("/arguments".to_owned());
                }
            }
            _ => {}
        }
        // Everything else in the item (annotations, ids, a built-in tool's call, anything newer)
        // is masked whole; a reasoning item's encrypted state passes, it is opaque.
        outbound_rest(
            &self.scanner,
            self.tokens.as_ref(),
            item,
            &streamed,
            &mut self.loose,
        );
        if item.get("type").and_then(Value::as_str) == Some("function_call") {
            if let Some(name) = item.get("name").and_then(Value::as_str) {
                let id = item.get("call_id").cloned().unwrap_or(Value::Null);
                self.calls.insert(output_index, (id, name.to_owned()));
            }
        }
    }

    /// A delta event carrying `tail`, built from the `.done` event it precedes.
    fn tail_event(done: &Value, delta_type: &str, tail: String) -> SseEvent {
        let mut delta = json!({"type": delta_type, "delta": tail});
        for key in [
            "item_id",
            "output_index",
            "content_index",
            "sequence_number",
        ] {
            if let Some(v) = done.get(key) {
                delta[key] = v.clone();
            }
        }
        SseEvent::named(delta_type, delta.to_string())
    }
}

impl StreamRewriter for ResponsesStream {
    fn event(&mut self, event: SseEvent) -> Vec<SseEvent> {
        let Ok(mut data) = serde_json::from_str::<Value>(&event.data) else {
            return vec![outbound_raw_event(&self.scanner, event, &mut self.loose)];
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default()
            .to_owned();
        let output_index = index(&data, "output_index");
        let content_index = index(&data, "content_index");
        let mut out = Vec::new();
        match kind.as_str() {
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(Value::String(d)) = data.get_mut("delta") {
                    let text = std::mem::take(d);
                    *d = self.push((output_index, Some(content_index)), &text);
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(Value::String(d)) = data.get_mut("delta") {
                    let text = std::mem::take(d);
                    *d = self.push((output_index, None), &text);
                }
            }
            "response.output_text.done" | "response.refusal.done" => {
                let (tail, sent) = self.close((output_index, Some(content_index)));
                let (delta_type, key) = if kind == "response.output_text.done" {
                    ("response.output_text.delta", "text")
                } else {
                    ("response.refusal.delta", "refusal")
                };
                if !tail.is_empty() {
                    out.push(Self::tail_event(&data, delta_type, tail));
                }
                data[key] = Value::String(sent);
            }
            "response.function_call_arguments.done" => {
                let (tail, sent) = self.close((output_index, None));
                if !tail.is_empty() {
                    out.push(Self::tail_event(
                        &data,
                        "response.function_call_arguments.delta",
                        tail,
                    ));
                }
                data["arguments"] = Value::String(sent);
            }
            "response.content_part.added" | "response.content_part.done" => {
                let channel = (output_index, Some(content_index));
                if let Some(part) = data.get_mut("part") {
                    let key = part_text_key(part.get("type").and_then(Value::as_str));
                    let sent = self.channels.get(&channel).map(|s| s.sent.clone());
                    let replacement = match (key, sent) {
                        (Some(key), Some(sent)) => Some((key, sent)),
                        (Some(key), None) => part
                            .get(key)
                            .and_then(Value::as_str)
                            .map(|t| (key, self.mask(t))),
                        (None, _) => None,
                    };
                    if let Some((key, text)) = replacement {
                        part[key] = Value::String(text);
                    }
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(mut item) = data.get_mut("item").map(Value::take) {
                    self.rewrite_item(&mut item, output_index);
                    data["item"] = item;
                }
            }
            "response.created"
            | "response.in_progress"
            | "response.completed"
            | "response.incomplete"
            | "response.failed" => {
                if let Some(mut response) = data.get_mut("response").map(Value::take) {
                    if let Some(items) = response.get_mut("output").and_then(Value::as_array_mut) {
                        for (i, item) in items.iter_mut().enumerate() {
                            self.rewrite_item(item, i as u64);
                        }
                    }
                    data["response"] = response;
                }
            }
            _ => {}
        }
        // What was just rewritten on a channel, or as an output item, stays as it is; every
        // other string of the event (annotations, reasoning summaries, errors, the request's
        // echo in a response object, anything newer) is masked whole.
        let streamed: Vec<String> = match kind.as_str() {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta" => vec!["/delta".into()],
            "response.output_text.done" => vec!["/text".into()],
            "response.refusal.done" => vec!["/refusal".into()],
            "response.function_call_arguments.done" => vec!["/arguments".into()],
            "response.content_part.added" | "response.content_part.done" => data
                .get("part")
                .and_then(|p| part_text_key(p.get("type").and_then(Value::as_str)))
                .map(|key| vec![format!("/part/{key}")])
                .unwrap_or_default(),
            "response.output_item.added" | "response.output_item.done" => vec!["/item".into()],
            "response.created"
            | "response.in_progress"
            | "response.completed"
            | "response.incomplete"
            | "response.failed" => vec!["/response/output".into()],
            _ => Vec::new(),
        };
        outbound_rest(
            &self.scanner,
            self.tokens.as_ref(),
            &mut data,
            &streamed,
            &mut self.loose,
        );
        out.push(SseEvent {
            event: event.event,
            data: data.to_string(),
        });
        out
    }

    fn finish(&mut self) -> Vec<SseEvent> {
        // A stream cut before its `.done` events: release what is held back as plain deltas.
        let keys: Vec<Channel> = self.channels.keys().copied().collect();
        let mut out = Vec::new();
        for key in keys {
            let (tail, _) = self.close(key);
            if tail.is_empty() {
                continue;
            }
            let (delta_type, mut data) = match key {
                (o, Some(c)) => (
                    "response.output_text.delta",
                    json!({"output_index": o, "content_index": c}),
                ),
                (o, None) => (
                    "response.function_call_arguments.delta",
                    json!({"output_index": o}),
                ),
            };
            data["type"] = Value::String(delta_type.into());
            data["delta"] = Value::String(tail);
            out.push(SseEvent::named(delta_type, data.to_string()));
        }
        out
    }

    fn is_terminal(&self, event: &SseEvent) -> bool {
        let name = event.event.as_deref().unwrap_or_default();
        matches!(
            name,
            "response.completed" | "response.incomplete" | "response.failed"
        ) || serde_json::from_str::<Value>(&event.data).is_ok_and(|d| {
            matches!(
                d.get("type").and_then(Value::as_str),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = self.loose.clone();
        for channel in self.channels.values() {
            for (e, n) in channel.stream.counts() {
                *counts.entry(e).or_default() += n;
            }
        }
        counts
    }

    fn assistant_message(&self) -> Value {
        let text: String = self
            .channels
            .iter()
            .filter(|((_, part), _)| part.is_some())
            .map(|(_, state)| state.stream.masked())
            .collect();
        let mut message = json!({"role": "assistant", "content": text});
        let calls: Vec<Value> = self
            .calls
            .iter()
            .map(|(output_index, (id, name))| {
                let args = self
                    .channels
                    .get(&(*output_index, None))
                    .map(|s| s.stream.masked().to_owned())
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

    const PAN: &str = "4111 1111 1111 1111";

    fn scanner() -> Arc<Scanner> {
        Arc::new(Scanner::new(Default::default()).unwrap())
    }

    fn event(data: Value) -> SseEvent {
        SseEvent::named(data["type"].as_str().unwrap().to_owned(), data.to_string())
    }

    fn data(events: &[SseEvent]) -> Vec<Value> {
        events
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect()
    }

    #[test]
    fn reasoning_state_passes_untouched_and_its_summary_is_masked() {
        let opaque = "gAAAAABo4111111111111111Zm9vYmFyYmF6cXV4";
        let mut answer = json!({"output": [{"type": "reasoning", "id": "rs_1",
            "encrypted_content": opaque,
            "summary": [{"type": "summary_text", "text": format!("card {PAN}")}]}]});
        let mut seen = Vec::new();
        OpenAiResponses::walk_response(&mut answer, &mut |t, _, field| {
            seen.push(field.to_owned());
            *t = outbound_text(&scanner(), None, t, &mut BTreeMap::new());
        });
        assert!(
            seen.contains(&"output[0].summary[0].text".to_owned()),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|f| f.contains("encrypted_content")),
            "{seen:?}"
        );
        assert_eq!(answer["output"][0]["encrypted_content"], opaque);
        assert!(!answer.to_string().contains(PAN));
    }

    #[test]
    fn a_held_back_tail_is_sent_before_done_and_done_says_what_was_sent() {
        let mut stream = OpenAiResponses::stream_rewriter(scanner(), None);
        let mut out = Vec::new();
        for piece in ["card 4111 1111 ", "1111 1111 ok"] {
            out.extend(
                stream.event(event(json!({"type": "response.output_text.delta",
                "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece}))),
            );
        }
        out.extend(
            stream.event(event(json!({"type": "response.output_text.done",
            "item_id": "msg_1", "output_index": 0, "content_index": 0,
            "text": format!("card {PAN} ok")}))),
        );
        let events = data(&out);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds.last(), Some(&"response.output_text.done"));
        let streamed: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(events.last().unwrap()["text"], streamed.as_str());
        assert!(
            !streamed.contains(PAN) && streamed.ends_with("1111 ok"),
            "{streamed}"
        );
        assert_eq!(stream.counts().get("CREDIT_CARD"), Some(&1));
        // The final response repeats the text that was sent, not the model's.
        let done = stream.event(event(json!({"type": "response.completed", "response": {
            "output": [{"type": "message", "content": [
                {"type": "output_text", "text": format!("card {PAN} ok")}]}]}})));
        assert!(stream.is_terminal(&done[0]));
        let done = data(&done);
        assert_eq!(
            done[0]["response"]["output"][0]["content"][0]["text"],
            streamed.as_str()
        );
    }

    #[test]
    fn unknown_events_are_masked_whole() {
        let mut stream = OpenAiResponses::stream_rewriter(scanner(), None);
        let out = stream.event(event(
            json!({"type": "response.reasoning_summary_text.done",
            "text": format!("the card is {PAN}")}),
        ));
        assert!(!out[0].data.contains(PAN), "{}", out[0].data);
    }

    #[test]
    fn fields_around_the_streamed_text_are_masked_and_the_text_is_restored_once() {
        let s = scanner();
        let mut guard = super::super::tokenize::InboundGuard::new(&s, None);
        let mut prompt = format!("card {PAN}");
        guard.tokenize(&mut prompt, "input");
        let mut stream = OpenAiResponses::stream_rewriter(scanner(), Some(guard.into_tokens()));
        let item = json!({"type": "message", "id": "msg_1", "content": [
            {"type": "output_text", "text": "refunded <CREDIT_CARD_1>",
             "annotations": [{"type": "url_citation", "title": "card 5500 0000 0000 0004",
                              "url": "https://x.example/"}]}]});
        let out = stream.event(event(
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        ));
        let done = data(&out);
        let part = &done[0]["item"]["content"][0];
        // The caller may see the number it sent; the model's own is masked, in any field.
        assert_eq!(part["text"], format!("refunded {PAN}"));
        let title = part["annotations"][0]["title"].as_str().unwrap();
        assert!(
            title.ends_with("0004") && !title.contains("5500 0000 0000 0004"),
            "{title}"
        );
        // The request's echo in the final response object is masked too.
        let out = stream.event(event(json!({"type": "response.completed", "response": {
            "output": [], "instructions": "card 5500 0000 0000 0004",
            "metadata": {"card 5500 0000 0000 0004": "x"}}})));
        assert!(
            !out[0].data.contains("5500 0000 0000 0004"),
            "{}",
            out[0].data
        );
    }
}
