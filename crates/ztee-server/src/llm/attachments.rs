//! Parts of a chat request DLP cannot read: images, audio and files (base64 or by URL). They are
//! forwarded as they are, so policy sees where they are (`input.request.attachments`) and decides
//! which providers may receive them.

use serde_json::Value;
use ztee_policy::Attachment;

/// The kind of a content part that carries no text, by its `type` in any of the three request
/// shapes (OpenAI chat, OpenAI Responses, Anthropic messages).
fn non_text_kind(part_type: &str) -> Option<&'static str> {
    match part_type {
        "image_url" | "input_image" | "image" => Some("image"),
        "input_audio" | "audio" => Some("audio"),
        "file" | "input_file" | "document" => Some("file"),
        _ => None,
    }
}

/// Every non-text part in `request`, with its path.
pub fn find(request: &Value) -> Vec<Attachment> {
    let mut found = Vec::new();
    walk(request, String::new(), &mut found);
    found
}

/// Anthropic documents whose source is text (`{"type": "text", "data": ...}`) or content blocks
/// are read by DLP like any other text; only their other sources (base64, URL, file) are not.
fn is_text_document(map: &serde_json::Map<String, Value>) -> bool {
    map.get("type").and_then(Value::as_str) == Some("document")
        && matches!(
            map.get("source")
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str),
            Some("text" | "content")
        )
}

fn walk(value: &Value, field: String, found: &mut Vec<Attachment>) {
    match value {
        Value::Object(map) => {
            if let Some(kind) = map
                .get("type")
                .and_then(Value::as_str)
                .filter(|_| !is_text_document(map))
                .and_then(non_text_kind)
            {
                found.push(Attachment {
                    kind: kind.to_owned(),
                    field,
                });
                return;
            }
            for (key, v) in map {
                let path = if field.is_empty() {
                    key.clone()
                } else {
                    format!("{field}.{key}")
                };
                walk(v, path, found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{field}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(request: Value) -> Vec<(String, String)> {
        find(&request)
            .into_iter()
            .map(|a| (a.kind, a.field))
            .collect()
    }

    #[test]
    fn finds_images_audio_and_files_in_every_request_shape() {
        let openai = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is on this card?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]});
        assert_eq!(
            fields(openai),
            [
                ("image".into(), "messages[0].content[1]".into()),
                ("audio".into(), "messages[0].content[2]".into())
            ]
        );
        let responses = json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "read this"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA"}]}]});
        assert_eq!(
            fields(responses),
            [("file".into(), "input[0].content[1]".into())]
        );
        let anthropic = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}]});
        assert_eq!(
            fields(anthropic),
            [("image".into(), "messages[0].content[0].content[0]".into())]
        );
    }

    #[test]
    fn text_documents_are_read_not_attached() {
        let anthropic = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
            {"type": "document", "source": {"type": "content", "content": [
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]});
        assert_eq!(
            fields(anthropic),
            [
                (
                    "image".into(),
                    "messages[0].content[1].source.content[0]".into()
                ),
                ("file".into(), "messages[0].content[2]".into())
            ]
        );
    }

    #[test]
    fn text_only_requests_and_tool_schemas_have_none() {
        let request = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters":
                {"type": "object", "properties": {"path": {"type": "string"}}}}}]});
        assert!(find(&request).is_empty());
    }
}
