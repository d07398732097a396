//! Every string of a JSON body, whatever its shape: the inbound DLP stage does not choose which
//! fields to look at, it looks at all of them.
//!
//! [`every_string`] visits every string value and every object key, depth first. The only
//! strings it does not hand to the visitor are the opaque values listed in [`opaque_reason`]:
//! provider state, signatures and base64 media that would be corrupted by any rewriting. Those
//! are not trusted either: each is checked for a card number ([`card_like_run`]), and one found
//! there refuses the request, because it can be neither tokenized nor forwarded.
//!
//! A new field in a provider's API is therefore scanned from the day a client sends it; only a
//! new opaque field needs a line here.

use serde_json::{Map, Value};

use super::tokenize::SlotKind;
use super::Visit;

/// Why a request cannot be forwarded after the walk. Messages name the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error(
        "{field} holds what looks like a card number (a run of {digits} digits that passes the \
         Luhn check) inside {what}, which cannot be tokenized without corrupting it; the request \
         was refused and sent nowhere"
    )]
    CardInOpaque {
        field: String,
        digits: usize,
        what: &'static str,
    },
    #[error(
        "two keys of {field} are the same once the card data in them is replaced by placeholders; \
         the request was refused and sent nowhere"
    )]
    KeyCollision { field: String },
}

/// Why the value of `key` (in `object`, itself held under `parent_key`) is opaque, or `None`
/// when it is text to scan. This is the whole allowlist; keep it short and keep the reasons.
pub fn opaque_reason(
    key: &str,
    value: &str,
    object: &Map<String, Value>,
    parent_key: Option<&str>,
) -> Option<&'static str> {
    let object_type = object.get("type").and_then(Value::as_str);
    match key {
        // OpenAI Responses reasoning and compaction items, Anthropic web search results: the
        // provider's encrypted state, handed back as it was received.
        "encrypted_content" | "encrypted_index" => Some("encrypted provider state"),
        // Anthropic: the signature over a thinking block (the thinking text itself is scanned).
        "signature" if matches!(object_type, Some("thinking" | "signature_delta")) => {
            Some("a thinking block's signature")
        }
        // Anthropic: thinking the provider redacted, encrypted.
        "data" if object_type == Some("redacted_thinking") => Some("redacted thinking"),
        // Anthropic image and document sources `{"type": "base64", "data": ...}`.
        "data" if object_type == Some("base64") => Some("base64 media"),
        // OpenAI chat `input_audio` parts `{"data": <base64>, "format": "wav"}`, and the audio
        // of an answer (`message.audio.data`).
        "data" if matches!(parent_key, Some("input_audio" | "audio")) => Some("base64 audio"),
        // MCP image and audio content `{"type": "image", "data": <base64>, "mimeType": ...}`
        // and blob resource contents `{"uri": ..., "blob": <base64>}` (the MCP guard).
        "data" if matches!(object_type, Some("image" | "audio")) => Some("base64 media"),
        "blob" if object.contains_key("uri") => Some("base64 resource content"),
        // OpenAI chat `file` parts and Responses `input_file` items: base64 file content.
        "file_data" => Some("base64 file content"),
        // Images inline as data URLs (OpenAI chat `image_url.url`, Responses `image_url`).
        "url" | "image_url" if is_base64_data_url(value) => Some("a base64 data URL"),
        _ => None,
    }
}

fn is_base64_data_url(value: &str) -> bool {
    value.starts_with("data:")
        && value
            .split_once(',')
            .is_some_and(|(head, _)| head.ends_with(";base64"))
}

/// Visits every string of `value` (values and object keys) except opaque values, which are
/// checked instead. `field` names where `value` sits (`""` for a whole body); the visitor gets
/// the field of each string, built from keys as they are *after* the visitor rewrote them, so a
/// field name never carries a value the visitor removed.
pub fn every_string(
    value: &mut Value,
    field: &str,
    visit: &mut dyn FnMut(&mut String, &str),
) -> Result<(), WalkError> {
    walk(value, field, None, Mode::Request, visit)
}

/// Like [`every_string`] for what comes back from a provider (answers, stream events): opaque
/// values pass as they are (the provider's state, handed back by the client on its next turn),
/// and keys that collide once masked are kept apart by a suffix rather than refused.
pub fn answer_strings(value: &mut Value, visit: &mut dyn FnMut(&mut String, &str)) {
    // Nothing in answer mode returns an error.
    let _ = walk(value, "", None, Mode::Answer, visit);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A request about to leave: opaque values are checked, collisions refused.
    Request,
    /// An answer on its way back: nothing is refused.
    Answer,
}

fn walk(
    value: &mut Value,
    field: &str,
    parent_key: Option<&str>,
    mode: Mode,
    visit: &mut dyn FnMut(&mut String, &str),
) -> Result<(), WalkError> {
    walk_in(value, field, parent_key, mode, Origin::Protocol, visit)
}

/// Who chose the field names of a subtree. Opaque fields are recognised by name, so they exist
/// only where the protocol names the fields; under a tool call's `input` the model names them,
/// and a field it calls `file_data` is text like any other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Protocol,
    Model,
}

fn walk_in(
    value: &mut Value,
    field: &str,
    parent_key: Option<&str>,
    mode: Mode,
    origin: Origin,
    visit: &mut dyn FnMut(&mut String, &str),
) -> Result<(), WalkError> {
    match value {
        Value::String(s) => visit(s, field),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk_in(item, &format!("{field}[{i}]"), None, mode, origin, visit)?;
            }
        }
        Value::Object(map) => {
            rename_keys(map, field, mode, visit)?;
            // Decided before any value is rewritten: the rules read sibling `type` fields.
            let tool_call = map
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("tool_use"));
            let opaque: Vec<(String, &'static str)> = match origin {
                Origin::Model => Vec::new(),
                Origin::Protocol => map
                    .iter()
                    .filter_map(|(k, v)| {
                        let s = v.as_str()?;
                        opaque_reason(k, s, map, parent_key).map(|why| (k.clone(), why))
                    })
                    .collect(),
            };
            for (k, v) in map.iter_mut() {
                let at = child(field, k);
                let origin = if tool_call && k == "input" {
                    Origin::Model
                } else {
                    origin
                };
                match opaque.iter().find(|(key, _)| key == k) {
                    Some(_) if mode == Mode::Answer => {}
                    Some((_, what)) => {
                        if let Some(digits) = v.as_str().and_then(card_like_run) {
                            return Err(WalkError::CardInOpaque {
                                field: at,
                                digits,
                                what,
                            });
                        }
                    }
                    None => walk_in(v, &at, Some(k), mode, origin, visit)?,
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Visits the string values of `value` as conversation text of `kind` (for policy and the
/// injection score, after DLP). Left out: `type` tags and opaque values, which no one wrote, and
/// values that are only a URL (a search result's `source`, a document's `url`): locators, which
/// the injection detector reads as suspicious on their own.
pub fn texts(value: &mut Value, kind: SlotKind, field: &str, visit: &mut Visit<'_>) {
    texts_in(value, kind, field, None, visit);
}

fn texts_in(
    value: &mut Value,
    kind: SlotKind,
    field: &str,
    parent_key: Option<&str>,
    visit: &mut Visit<'_>,
) {
    match value {
        Value::String(s) if !is_url_only(s) => visit(s, kind, field),
        Value::String(_) => {}
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                texts_in(item, kind, &format!("{field}[{i}]"), None, visit);
            }
        }
        Value::Object(map) => {
            let skip: Vec<String> = map
                .iter()
                .filter(|(k, v)| {
                    k.as_str() == "type"
                        || v.as_str()
                            .is_some_and(|s| opaque_reason(k, s, map, parent_key).is_some())
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (k, v) in map.iter_mut() {
                if !skip.contains(k) {
                    texts_in(v, kind, &child(field, k), Some(k), visit);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn is_url_only(s: &str) -> bool {
    let s = s.trim();
    (s.starts_with("https://") || s.starts_with("http://")) && !s.contains(char::is_whitespace)
}

fn child(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

/// Scans the keys of `map`, renaming those the visitor rewrites. Two keys that become one would
/// silently drop a value, so that refuses the request instead.
fn rename_keys(
    map: &mut Map<String, Value>,
    field: &str,
    mode: Mode,
    visit: &mut dyn FnMut(&mut String, &str),
) -> Result<(), WalkError> {
    let keys_at = if field.is_empty() {
        "the keys of the body".to_owned()
    } else {
        format!("the keys of {field}")
    };
    let mut renamed = Vec::new();
    for key in map.keys() {
        let mut scanned = key.clone();
        visit(&mut scanned, &keys_at);
        if scanned != *key {
            renamed.push((key.clone(), scanned));
        }
    }
    for (old, mut new) in renamed {
        let Some(v) = map.remove(&old) else { continue };
        if mode == Mode::Answer {
            let base = new.clone();
            let mut n = 2;
            while map.contains_key(&new) {
                new = format!("{base} ({n})");
                n += 1;
            }
        }
        if map.contains_key(&new) {
            return Err(WalkError::KeyCollision {
                field: if field.is_empty() {
                    "the body".to_owned()
                } else {
                    field.to_owned()
                },
            });
        }
        map.insert(new, v);
    }
    Ok(())
}

/// Separator characters a card number may be written with between its digit groups.
fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '-' | '.' | '/' | '\u{a0}' | '\u{2000}'
            ..='\u{200d}' | '\u{202f}'
    )
}

fn digit_value(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        // Full-width digits, which look the same to a person.
        '\u{ff10}'..='\u{ff19}' => u8::try_from(u32::from(c) - 0xff10).ok(),
        _ => None,
    }
}

/// More than this many separators in a row end a run of digit groups.
const MAX_SEPARATORS: usize = 3;
/// Digits of a card number.
const CARD_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

/// The length of the first run of 13 to 19 digits that passes the Luhn check, in groups joined
/// by at most three separators, starting and ending on a group boundary. Unlike the DLP
/// scanner this ignores what surrounds the digits: inside a base64 blob every card number is
/// "glued" to letters, and it must still be found.
pub fn card_like_run(text: &str) -> Option<usize> {
    // The digits of the current run and where each of its groups starts.
    let mut digits: Vec<u8> = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    let mut group_len = 0usize;
    let mut separators = 0usize;
    for c in text.chars().chain(std::iter::once('\u{0}')) {
        if let Some(d) = digit_value(c) {
            if group_len == 0 {
                starts.push(digits.len());
            }
            group_len += 1;
            // A group longer than any card number is part of no candidate: its digits are
            // not kept (memory stays bounded however long it is).
            if group_len <= *CARD_DIGITS.end() {
                digits.push(d);
            }
            separators = 0;
            continue;
        }
        if group_len > *CARD_DIGITS.end() {
            // No candidate can end in or span the overlong group: start afresh after it.
            digits.clear();
            starts.clear();
        } else if group_len > 0 {
            // A group just ended: every candidate ending here starts at some group start.
            if let Some(n) = candidate_ending_here(&digits, &starts) {
                return Some(n);
            }
        }
        group_len = 0;
        if is_separator(c) && !digits.is_empty() && separators < MAX_SEPARATORS {
            separators += 1;
            // Only the last 19 digits can still belong to a candidate; drop the groups before
            // them so a long table of short numbers stays bounded.
            if digits.len() > 64 {
                let keep_from = starts
                    .iter()
                    .copied()
                    .find(|&s| digits.len() - s <= *CARD_DIGITS.end())
                    .unwrap_or(digits.len());
                digits.drain(..keep_from);
                starts.retain(|&s| s >= keep_from);
                for s in &mut starts {
                    *s -= keep_from;
                }
            }
        } else {
            digits.clear();
            starts.clear();
            separators = 0;
        }
    }
    None
}

fn candidate_ending_here(digits: &[u8], starts: &[usize]) -> Option<usize> {
    for &start in starts.iter().rev() {
        let len = digits.len() - start;
        if len > *CARD_DIGITS.end() {
            break;
        }
        if CARD_DIGITS.contains(&len) && ztee_dlp::luhn_valid(&digits[start..]) {
            return Some(len);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Replaces the test card number wherever it is, as the tokenizer would.
    fn fake_tokenize(value: &mut Value) -> Result<Vec<String>, WalkError> {
        let mut fields = Vec::new();
        every_string(value, "", &mut |s, field| {
            if s.contains("4111 1111 1111 1111") {
                *s = s.replace("4111 1111 1111 1111", "<CREDIT_CARD_1>");
                fields.push(field.to_owned());
            }
        })?;
        Ok(fields)
    }

    #[test]
    fn every_value_and_key_is_visited_at_any_depth() {
        let mut body = json!({"model": "m", "metadata": {"card 4111 1111 1111 1111": "x",
            "note": "card 4111 1111 1111 1111"},
            "tools": [{"function": {"parameters": {"properties": {
                "card": {"enum": ["a", "4111 1111 1111 1111"]}}}}}],
            "messages": [[["deep 4111 1111 1111 1111"]]]});
        let mut fields = fake_tokenize(&mut body).unwrap();
        fields.sort();
        let text = body.to_string();
        assert!(!text.contains("4111"), "{text}");
        assert_eq!(body["metadata"]["card <CREDIT_CARD_1>"], "x");
        assert_eq!(
            body["tools"][0]["function"]["parameters"]["properties"]["card"]["enum"][1],
            "<CREDIT_CARD_1>"
        );
        assert_eq!(
            fields,
            [
                "messages[0][0][0]",
                "metadata.note",
                "the keys of metadata",
                "tools[0].function.parameters.properties.card.enum[1]",
            ]
        );
    }

    #[test]
    fn opaque_values_pass_untouched_and_are_not_visited() {
        let blob = "gAAAAABoZm9vYmFy";
        let mut body = json!({"input": [
            {"type": "reasoning", "encrypted_content": blob, "summary": []},
            {"type": "thinking", "thinking": "t", "signature": "sig"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            {"type": "file", "file": {"file_data": "JVBE", "filename": "a.pdf"}}]});
        let before = body.clone();
        let mut seen = Vec::new();
        every_string(&mut body, "", &mut |s, _| seen.push(s.clone())).unwrap();
        assert_eq!(body, before);
        for opaque in [
            blob,
            "sig",
            "iVBO",
            "UklG",
            "data:image/png;base64,iVBO",
            "JVBE",
        ] {
            assert!(!seen.iter().any(|s| s == opaque), "{opaque} was visited");
        }
        // Their neighbours are text.
        for text in ["t", "wav", "a.pdf", "image/png"] {
            assert!(seen.iter().any(|s| s == text), "{text} was not visited");
        }
    }

    #[test]
    fn a_signature_or_data_outside_its_block_type_is_text() {
        let mut body = json!({"metadata": {"signature": "card 4111 1111 1111 1111",
            "data": "card 4111 1111 1111 1111", "url": "https://x/4111 1111 1111 1111"}});
        fake_tokenize(&mut body).unwrap();
        assert!(!body.to_string().contains("4111"), "{body}");
    }

    #[test]
    fn a_blob_outside_a_resource_is_text() {
        let mut body = json!({"metadata": {"blob": "card 4111 1111 1111 1111"},
            "contents": [{"uri": "file:///a", "blob": "JVBE"}]});
        let mut seen = Vec::new();
        every_string(&mut body, "", &mut |s, _| seen.push(s.clone())).unwrap();
        assert!(seen.iter().any(|s| s == "card 4111 1111 1111 1111"));
        assert!(
            !seen.iter().any(|s| s == "JVBE"),
            "a resource blob was visited"
        );
    }

    #[test]
    fn a_card_number_inside_an_opaque_value_refuses_the_request() {
        for (mut body, field) in [
            (
                json!({"input": [{"type": "reasoning", "encrypted_content": "gAAAAABo4111111111111111Zm9v"}]}),
                "input[0].encrypted_content",
            ),
            (
                json!({"messages": [{"content": [{"type": "thinking", "thinking": "x",
                    "signature": "EqQB-4111-1111-1111-1111-AAAA"}]}]}),
                "messages[0].content[0].signature",
            ),
            (
                json!({"image_url": {"url": "data:image/png;base64,AAAA4111/1111/1111/1111"}}),
                "image_url.url",
            ),
        ] {
            let err = fake_tokenize(&mut body).unwrap_err();
            assert!(
                matches!(&err, WalkError::CardInOpaque { field: f, digits: 16, .. } if f == field),
                "{err:?}"
            );
            assert!(!err.to_string().contains("4111"), "{err}");
        }
    }

    #[test]
    fn keys_that_collide_after_tokenizing_refuse_the_request() {
        let mut body = json!({"metadata": {"4111 1111 1111 1111": 1, "<CREDIT_CARD_1>": 2}});
        let err = fake_tokenize(&mut body).unwrap_err();
        assert_eq!(
            err,
            WalkError::KeyCollision {
                field: "metadata".into()
            }
        );
    }

    #[test]
    fn conversation_texts_leave_out_tags_locators_and_opaque_values() {
        let mut block = json!({"type": "search_result", "source": "https://kb.example/a",
            "title": "Refunds", "content": [{"type": "text", "text": "Refunds take 5 days."}],
            "signature": "not opaque here", "encrypted_content": "gAAAA"});
        let mut seen = Vec::new();
        texts(&mut block, SlotKind::User, "b", &mut |s, kind, field| {
            assert_eq!(kind, SlotKind::User);
            seen.push((field.to_owned(), s.clone()));
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                (
                    "b.content[0].text".to_owned(),
                    "Refunds take 5 days.".to_owned()
                ),
                ("b.signature".to_owned(), "not opaque here".to_owned()),
                ("b.title".to_owned(), "Refunds".to_owned()),
            ]
        );
    }

    #[test]
    fn answers_pass_opaque_values_and_keep_colliding_keys_apart() {
        let blob = "gAAAAABo4111111111111111Zm9v";
        let mut answer = json!({"output": [{"type": "reasoning", "encrypted_content": blob,
            "summary": [{"type": "summary_text", "text": "card 4111 1111 1111 1111"}]}],
            "input": {"4111 1111 1111 1111": 1, "<CREDIT_CARD_1>": 2}});
        answer_strings(&mut answer, &mut |s, _| {
            *s = s.replace("4111 1111 1111 1111", "<CREDIT_CARD_1>");
        });
        assert_eq!(answer["output"][0]["encrypted_content"], blob);
        assert_eq!(
            answer["output"][0]["summary"][0]["text"],
            "card <CREDIT_CARD_1>"
        );
        let keys: Vec<&String> = answer["input"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(!answer.to_string().contains("4111 1111"), "{answer}");
    }

    #[test]
    fn card_like_runs() {
        assert_eq!(card_like_run("4111111111111111"), Some(16));
        assert_eq!(card_like_run("ab4111 1111 1111 1111cd"), Some(16));
        assert_eq!(card_like_run("４１１１１１１１１１１１１１１１"), Some(16));
        // A valid number after a group of other digits is still found.
        assert_eq!(card_like_run("12 4111 1111 1111 1111"), Some(16));
        // One digit changed: no Luhn.
        assert_eq!(card_like_run("4111111111111112"), None);
        // Too short, too long in one group, or groups too far apart.
        assert_eq!(card_like_run("411111111111"), None);
        assert_eq!(card_like_run("41111111111111111111"), None);
        assert_eq!(card_like_run(&"7".repeat(100_000)), None);
        assert_eq!(card_like_run("4111 1111    1111 1111"), None);
        assert_eq!(
            card_like_run("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"),
            None
        );
        // A long table of short numbers stays bounded and finds nothing.
        assert_eq!(card_like_run(&"12 ".repeat(10_000)), None);
    }

    #[test]
    fn field_names_a_model_chose_in_a_tool_call_are_never_opaque() {
        let mut answer = json!({"type": "message", "content": [
            {"type": "tool_use", "id": "t1", "name": "upload",
             "input": {"file_data": "4111 1111 1111 1111", "nested": {"encrypted_content": "x"}}},
            {"type": "reasoning", "encrypted_content": "opaque state"}
        ]});
        let mut seen = Vec::new();
        answer_strings(&mut answer, &mut |s, _| seen.push(s.clone()));
        assert!(seen.contains(&"4111 1111 1111 1111".to_owned()), "{seen:?}");
        assert!(seen.contains(&"x".to_owned()), "{seen:?}");
        assert!(!seen.contains(&"opaque state".to_owned()), "{seen:?}");
    }
}
