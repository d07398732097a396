//! The DLP stages' view of the detector: scan what goes in, redact what comes out.
//!
//! The gateway talks to DLP through [`DlpEngine`] so the pipeline can be tested stage by stage;
//! the production engine wraps `ztee-dlp`'s scanner and PCI masking (see `dlp_engine.rs`).

use std::collections::BTreeMap;

use serde::Serialize;
pub use ztee_state::config::InboundAction;

/// One thing found in a field, without the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// Entity type, e.g. `CREDIT_CARD`.
    pub entity: String,
    /// Where it was found, e.g. `cmd[2]`, `env.CARD`, `files[0].content`.
    pub field: String,
}

/// Counts per entity type of what was redacted, as returned to callers (`{"CREDIT_CARD": 2}`).
pub type RedactionCounts = BTreeMap<String, u64>;

pub fn merge_counts(into: &mut RedactionCounts, from: &RedactionCounts) {
    for (entity, n) in from {
        *into.entry(entity.clone()).or_default() += n;
    }
}

/// `value` with every string in it, object keys included, passed through `mask`: what leaves
/// from JSON of unknown shape (a sandbox helper's answer, a held request's view) is scanned
/// whole, never field by field.
pub fn mask_json_strings(
    value: serde_json::Value,
    mask: &mut impl FnMut(&str) -> String,
) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) => serde_json::Value::String(mask(&s)),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(|v| mask_json_strings(v, mask))
                .collect(),
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| (mask(&k), mask_json_strings(v, mask)))
                .collect(),
        ),
        other => other,
    }
}

/// Text after redaction, with what was replaced.
pub struct Redacted {
    pub text: String,
    pub counts: RedactionCounts,
}

pub trait DlpEngine: Send + Sync + 'static {
    /// Entity types found in `text`.
    fn scan(&self, text: &str) -> Vec<String>;
    /// `text` with every finding replaced by its masked form (PCI mask for card numbers).
    fn redact(&self, text: &str) -> Redacted;
    /// A redactor for output that arrives in chunks, where a card number may span two chunks.
    fn stream(&self) -> Box<dyn StreamRedactor>;
    /// The exact values of one sandbox (its leased secrets) as a [`SecretScope`]: found, with
    /// their base64, hex and URL-encoded forms, only by the scans given that scope
    /// ([`DlpEngine::redact_in`], [`DlpEngine::stream_for`]), never by [`DlpEngine::scan`],
    /// [`DlpEngine::redact`], the DLP API or another sandbox's output. An engine that cannot do
    /// this refuses, and the gateway then refuses to inject secrets.
    fn secret_scope(&self, values: &[(&str, &[u8])]) -> Result<SecretScope, String> {
        let _ = values;
        Err("this DLP engine cannot redact exact secret values".into())
    }
    /// [`DlpEngine::redact`] for one sandbox's output: the shared detectors plus `scope`.
    fn redact_in(&self, scope: Option<&SecretScope>, text: &str) -> Redacted;
    /// [`DlpEngine::scan`] for one sandbox's output: the shared detectors plus `scope`.
    fn scan_in(&self, scope: Option<&SecretScope>, text: &str) -> Vec<String>;
    /// [`DlpEngine::stream`] for one sandbox's output: the shared detectors plus `scope`.
    fn stream_for(&self, scope: Option<&SecretScope>) -> Box<dyn StreamRedactor>;

    /// The `ztee-dlp` scanner behind this engine, for stages that tokenize (the LLM proxy).
    fn ztee_scanner(&self) -> Option<std::sync::Arc<ztee_dlp::Scanner>> {
        None
    }
}

/// The exact secret values of one sandbox, for masking that sandbox's output and nothing else.
/// Created when its secrets are leased, held by the sandbox (and by each output stream still
/// running), and wiped from memory when the last holder drops it. Cloning shares it. `Debug`
/// never shows a value.
#[derive(Clone)]
pub struct SecretScope {
    values: std::sync::Arc<ztee_dlp::ExactValues>,
}

impl SecretScope {
    /// `(name, value)` pairs; see [`ztee_dlp::ExactValues::new`] for what is refused.
    pub fn new(values: &[(&str, &[u8])]) -> Result<SecretScope, ztee_dlp::DlpError> {
        let values = ztee_dlp::ExactValues::new(values.iter().copied())?;
        Ok(SecretScope {
            values: std::sync::Arc::new(values),
        })
    }

    /// The values, for an engine built on `ztee-dlp`.
    pub fn exact_values(&self) -> &std::sync::Arc<ztee_dlp::ExactValues> {
        &self.values
    }
}

impl std::fmt::Debug for SecretScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretScope")
            .field("names", &self.values.names())
            .finish()
    }
}

pub trait StreamRedactor: Send {
    /// Feeds a chunk; returns the part of the output that is final (redacted) so far.
    fn push(&mut self, chunk: &str) -> String;
    /// Flushes what is held back at the end of the stream.
    fn finish(&mut self) -> String;
    /// The source has paused: releases what can be released safely before it goes on (complete
    /// lines, see `ztee_dlp::StreamScanner::flush_lines`). Nothing, unless the engine can.
    fn pause(&mut self) -> String {
        String::new()
    }
    fn counts(&self) -> RedactionCounts;
}

/// Scans each named field and lists what was found where.
pub fn scan_fields<'a>(
    engine: &dyn DlpEngine,
    fields: impl IntoIterator<Item = (String, &'a str)>,
) -> Vec<Detection> {
    let mut found = Vec::new();
    for (field, text) in fields {
        for entity in engine.scan(text) {
            found.push(Detection {
                entity,
                field: field.clone(),
            });
        }
    }
    found
}
