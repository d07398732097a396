//! JSON-aware scanning: every string value of a document is scanned after JSON unescaping
//! (`\u0034\u0031...` is seen as digits), and findings name the JSON path of their value.
//! Object keys are not scanned: they are field names, not data.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::entity::Entity;
use crate::error::DlpError;
use crate::finding::Finding;
use crate::operators::{anonymize_with, Operators};
use crate::scanner::Scanner;
use crate::tokens::TokenMap;

/// A finding inside one string value; offsets are into that (unescaped) value.
#[derive(Debug, Clone, Serialize)]
pub struct JsonFinding {
    /// JSONPath of the string value, e.g. `$.payment.card` or `$.items[2]["first name"]`.
    pub path: String,
    #[serde(flatten)]
    pub finding: Finding,
}

pub fn parse(json: &str) -> Result<Value, DlpError> {
    serde_json::from_str(json).map_err(|e| DlpError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Scans every string value of `json`.
pub fn scan(scanner: &Scanner, json: &str) -> Result<Vec<JsonFinding>, DlpError> {
    let value = parse(json)?;
    let mut out = Vec::new();
    walk(&value, &mut String::from("$"), &mut |path, s| {
        for finding in scanner.scan(s) {
            out.push(JsonFinding {
                path: path.to_string(),
                finding,
            });
        }
    });
    Ok(out)
}

/// Redacts every string value of `json` in place; returns counts per entity.
pub fn redact(
    scanner: &Scanner,
    value: &mut Value,
    operators: &Operators,
    tokens: &mut TokenMap,
) -> Result<BTreeMap<Entity, usize>, DlpError> {
    let mut counts = BTreeMap::new();
    redact_value(scanner, value, operators, tokens, &mut counts)?;
    Ok(counts)
}

fn redact_value(
    scanner: &Scanner,
    value: &mut Value,
    operators: &Operators,
    tokens: &mut TokenMap,
    counts: &mut BTreeMap<Entity, usize>,
) -> Result<(), DlpError> {
    match value {
        Value::String(s) => {
            let findings = scanner.scan(s);
            if !findings.is_empty() {
                let out = anonymize_with(s, &findings, operators, tokens)?;
                for (e, n) in out.counts {
                    *counts.entry(e).or_insert(0) += n;
                }
                *s = out.text;
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_value(scanner, item, operators, tokens, counts)?;
            }
        }
        Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                redact_value(scanner, item, operators, tokens, counts)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn walk(value: &Value, path: &mut String, f: &mut impl FnMut(&str, &str)) {
    match value {
        Value::String(s) => f(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path, f);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                let plain = !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !key.starts_with(|c: char| c.is_ascii_digit());
                if plain {
                    path.push('.');
                    path.push_str(key);
                } else {
                    path.push('[');
                    path.push_str(&Value::String(key.clone()).to_string());
                    path.push(']');
                }
                walk(item, path, f);
                path.truncate(len);
            }
        }
        // Numbers are scanned too: a PAN stored as a JSON number is still a PAN.
        Value::Number(n) => f(path, &n.to_string()),
        Value::Null | Value::Bool(_) => {}
    }
}
