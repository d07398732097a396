//! Card data out of prompts, and back into answers for those allowed to see it.
//!
//! Inbound, every finding in every string of the request (messages, tool arguments and results,
//! tool schemas, metadata, keys: everything but a few opaque blobs) is replaced by a numbered
//! placeholder (`<CREDIT_CARD_1>`), the same one for the same value anywhere in the
//! request, so the model sees the structure of the conversation but never the number. Outbound,
//! the model's text is scanned again (a number the model wrote itself is PCI-masked) and the
//! placeholders are restored only for a caller with the `pan:detokenize` permission.

use std::collections::BTreeMap;
use std::sync::Arc;

use ztee_dlp::{anonymize_with, MaskStyle, Operator, Operators, Scanner, StreamScanner, TokenMap};
use ztee_policy::injection::Detector;
use ztee_policy::{DlpSummary, InjectionSummary};

/// What a piece of text is, which decides how closely it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    System,
    User,
    Assistant,
    /// Arguments of a tool call the model made earlier in the conversation.
    ToolArguments,
    /// What a tool returned: the main road for indirect prompt injection.
    ToolOutput,
}

impl SlotKind {
    fn injection_scanned(self) -> bool {
        matches!(self, Self::User | Self::ToolOutput | Self::ToolArguments)
    }
}

/// The inbound stage for one request: tokenizes, counts and scores each text it is given.
pub struct InboundGuard<'a> {
    scanner: &'a Scanner,
    detector: Option<&'a Detector>,
    operators: Operators,
    tokens: TokenMap,
    counts: BTreeMap<String, u32>,
    sad: bool,
    injection: InjectionSummary,
    /// Where the highest injection score came from (a field name, never text).
    pub injection_field: Option<String>,
}

impl<'a> InboundGuard<'a> {
    pub fn new(scanner: &'a Scanner, detector: Option<&'a Detector>) -> Self {
        Self {
            scanner,
            detector,
            operators: Operators::new(Operator::Tokenize),
            tokens: TokenMap::new(),
            counts: BTreeMap::new(),
            sad: false,
            injection: InjectionSummary::default(),
            injection_field: None,
        }
    }

    /// Tokenizes every string of a request body (values and keys, at any depth) except the
    /// opaque values [`super::walk`] lists, which are checked for card numbers instead. This is
    /// the request's only DLP pass: what it does not rewrite is sent as it is.
    pub fn request(&mut self, body: &mut serde_json::Value) -> Result<(), super::walk::WalkError> {
        super::walk::every_string(body, "", &mut |text, field| self.tokenize(text, field))
    }

    /// Scores one conversation text for prompt injection, by what it is.
    pub fn score(&mut self, text: &str, kind: SlotKind, field: &str) {
        if !kind.injection_scanned() {
            return;
        }
        let scan = match self.detector {
            Some(d) => d.scan(text),
            None => ztee_policy::injection::scan(text),
        };
        for rule in scan.rules {
            if !self.injection.rules.contains(&rule) {
                self.injection.rules.push(rule);
            }
        }
        if scan.score > self.injection.score {
            self.injection.score = scan.score;
            self.injection_field = Some(field.to_owned());
        }
    }

    /// Replaces every finding in `text` by its placeholder, counting what it replaced.
    pub fn tokenize(&mut self, text: &mut String, field: &str) {
        let findings = self.scanner.scan(text);
        if findings.is_empty() {
            return;
        }
        for f in &findings {
            self.sad |= f.entity_type.is_sensitive_authentication_data();
        }
        match anonymize_with(text, &findings, &self.operators, &mut self.tokens) {
            Ok(a) => {
                for (entity, n) in &a.counts {
                    *self.counts.entry(entity.as_str().to_owned()).or_default() +=
                        u32::try_from(*n).unwrap_or(u32::MAX);
                }
                *text = a.text;
            }
            Err(e) => {
                // Tokenizing needs no keys, so this is a detector bug: send nothing of the text.
                tracing::error!(error = %e, field, "tokenizing failed; withholding the text");
                *self.counts.entry("WITHHELD".into()).or_default() += 1;
                *text = ztee_dlp::WITHHELD.into();
            }
        }
    }

    /// The DLP summary policy sees: what leaves after tokenization (no raw PAN remains).
    pub fn dlp_summary(&self) -> DlpSummary {
        DlpSummary {
            counts: self.counts.clone(),
            raw_pan: false,
            sad: self.sad,
        }
    }

    pub fn injection(&self) -> InjectionSummary {
        self.injection.clone()
    }

    pub fn counts(&self) -> &BTreeMap<String, u32> {
        &self.counts
    }

    pub fn into_tokens(self) -> TokenMap {
        self.tokens
    }
}

/// Operators for model output: a card number the model produced on its own is PCI-masked.
fn outbound_operators() -> Operators {
    Operators::new(Operator::Mask(MaskStyle::Pci))
}

/// The outbound stage for every string in a JSON value, keys included, each masked whole (events
/// the stream rewriters do not take apart: errors, annotations, newer event types, and what is
/// left of the others once their streamed texts are taken out). Opaque provider state passes.
pub fn outbound_value(
    scanner: &Scanner,
    tokens: Option<&TokenMap>,
    value: &mut serde_json::Value,
    counts: &mut BTreeMap<String, u64>,
) {
    super::walk::answer_strings(value, &mut |t, _| {
        *t = outbound_text(scanner, tokens, t, counts);
    });
}

/// The outbound stage for what a stream rewriter did not rewrite itself: every string of `value`
/// except those at `streamed` (JSON pointers to the texts it masked, and maybe restored, on
/// their channels), which are taken out, left alone and put back. So a field the rewriter does
/// not know (a new delta type, a citation, an echo of the request) is masked all the same.
pub fn outbound_rest(
    scanner: &Scanner,
    tokens: Option<&TokenMap>,
    value: &mut serde_json::Value,
    streamed: &[String],
    counts: &mut BTreeMap<String, u64>,
) {
    let mut kept = Vec::new();
    for pointer in streamed {
        if let Some(slot) = value.pointer_mut(pointer) {
            kept.push((pointer, slot.take()));
        }
    }
    outbound_value(scanner, tokens, value, counts);
    for (pointer, original) in kept {
        // The pointers run through protocol keys (`choices`, `delta`, ...), which masking leaves
        // as they are, so each slot is still there.
        if let Some(slot) = value.pointer_mut(pointer) {
            *slot = original;
        }
    }
}

/// An upstream stream event whose data is not JSON, masked as one text.
pub fn outbound_raw_event(
    scanner: &Scanner,
    event: super::sse::SseEvent,
    counts: &mut BTreeMap<String, u64>,
) -> super::sse::SseEvent {
    super::sse::SseEvent {
        data: outbound_text(scanner, None, &event.data, counts),
        event: event.event,
    }
}

/// The outbound stage for a whole (non-streaming) text.
pub fn outbound_text(
    scanner: &Scanner,
    tokens: Option<&TokenMap>,
    text: &str,
    counts: &mut BTreeMap<String, u64>,
) -> String {
    let findings = scanner.scan(text);
    let masked = if findings.is_empty() {
        text.to_owned()
    } else {
        match ztee_dlp::anonymize(text, &findings, &outbound_operators()) {
            Ok(a) => {
                for (entity, n) in &a.counts {
                    *counts.entry(entity.as_str().to_owned()).or_default() +=
                        u64::try_from(*n).unwrap_or(u64::MAX);
                }
                a.text
            }
            Err(e) => {
                tracing::error!(error = %e, "masking model output failed; withholding it");
                return ztee_dlp::WITHHELD.into();
            }
        }
    };
    match tokens {
        Some(tokens) => tokens.restore(&masked),
        None => masked,
    }
}

/// The outbound stage for one stream of model text (a choice's content, a tool call's
/// arguments): DLP with a bounded hold-back, then placeholder restoration that holds back a
/// placeholder cut in two.
pub struct OutboundStream {
    dlp: StreamScanner,
    restore: Option<Restorer>,
    failed: ztee_dlp::FailClosed,
    /// What the DLP stage released, before any restoration: for the trace (bounded).
    masked: String,
}

/// Largest text kept per stream for the trace.
const MAX_TRACE_TEXT: usize = 1024 * 1024;

impl OutboundStream {
    pub fn new(scanner: Arc<Scanner>, tokens: Option<TokenMap>) -> Self {
        Self {
            dlp: StreamScanner::new(scanner, outbound_operators()),
            restore: tokens.map(Restorer::new),
            failed: ztee_dlp::FailClosed::default(),
            masked: String::new(),
        }
    }

    pub fn push(&mut self, chunk: &str) -> String {
        let r = self.dlp.feed(chunk);
        self.after_dlp(r, false)
    }

    pub fn finish(&mut self) -> String {
        let r = self.dlp.finish();
        self.after_dlp(r, true)
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.dlp
            .counts()
            .iter()
            .map(|(e, n)| (e.as_str().to_owned(), u64::try_from(*n).unwrap_or(u64::MAX)))
            .collect()
    }

    /// The text released so far with placeholders kept (never a restored value).
    pub fn masked(&self) -> &str {
        &self.masked
    }

    fn after_dlp(&mut self, r: Result<String, ztee_dlp::DlpError>, last: bool) -> String {
        let text = self.failed.release(r, "model output");
        if self.failed.failed() {
            // Withheld (the first time) or nothing: never restored, never traced.
            return text;
        }
        if self.masked.len() + text.len() <= MAX_TRACE_TEXT {
            self.masked.push_str(&text);
        }
        match &mut self.restore {
            Some(r) if last => {
                let mut out = r.push(&text);
                out.push_str(&r.finish());
                out
            }
            Some(r) => r.push(&text),
            None => text,
        }
    }
}

/// Longest placeholder held back while waiting for its closing `>`.
const MAX_PLACEHOLDER: usize = 64;

/// Restores placeholders in text that arrives in pieces.
struct Restorer {
    tokens: TokenMap,
    pending: String,
}

impl Restorer {
    fn new(tokens: TokenMap) -> Self {
        Self {
            tokens,
            pending: String::new(),
        }
    }

    fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        // Hold back a trailing `<...` that may still become a placeholder.
        let cut = match self.pending.rfind('<') {
            Some(open)
                if self.pending.len() - open < MAX_PLACEHOLDER
                    && self.pending[open + 1..]
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                open
            }
            _ => self.pending.len(),
        };
        let rest = self.pending.split_off(cut);
        let ready = std::mem::replace(&mut self.pending, rest);
        self.tokens.restore(&ready)
    }

    fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.tokens.restore(&rest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scanner() -> Arc<Scanner> {
        Arc::new(Scanner::new(Default::default()).unwrap())
    }

    #[test]
    fn same_pan_same_token_and_restored_only_when_allowed() {
        let s = scanner();
        let mut g = InboundGuard::new(&s, None);
        let mut a = "charge 4111 1111 1111 1111 now".to_string();
        let mut b = "again 4111111111111111 and 5500 0000 0000 0004".to_string();
        g.tokenize(&mut a, "messages[0].content");
        g.tokenize(&mut b, "messages[1].content");
        assert_eq!(a, "charge <CREDIT_CARD_1> now");
        assert_eq!(b, "again <CREDIT_CARD_1> and <CREDIT_CARD_2>");
        assert_eq!(g.dlp_summary().counts.get("CREDIT_CARD"), Some(&3));
        let tokens = g.into_tokens();
        let mut counts = BTreeMap::new();
        let shown = outbound_text(&s, Some(&tokens), "card <CREDIT_CARD_2>", &mut counts);
        assert_eq!(shown, "card 5500 0000 0000 0004");
        let hidden = outbound_text(&s, None, "card <CREDIT_CARD_2>", &mut counts);
        assert_eq!(hidden, "card <CREDIT_CARD_2>");
    }

    #[test]
    fn stream_masks_a_split_pan_and_restores_a_split_placeholder() {
        let s = scanner();
        let mut g = InboundGuard::new(&s, None);
        let mut a = "4111 1111 1111 1111".to_string();
        g.tokenize(&mut a, "m");
        let tokens = g.into_tokens();

        let mut out = OutboundStream::new(s.clone(), Some(tokens));
        let mut text = String::new();
        for piece in ["ok <CREDIT_", "CARD_1> and 5500 00", "00 0000 0004 done"] {
            text.push_str(&out.push(piece));
        }
        text.push_str(&out.finish());
        assert!(text.contains("ok 4111 1111 1111 1111 and"), "{text}");
        assert!(!text.contains("5500 0000 0000 0004"), "{text}");
        assert!(text.ends_with("0004 done"), "{text}");
        assert_eq!(out.counts().get("CREDIT_CARD"), Some(&1));
    }

    #[test]
    fn sensitive_authentication_data_is_a_verification_code_not_an_expiry_date() {
        let s = scanner();
        let mut g = InboundGuard::new(&s, None);
        let mut expiry = "card 4111 1111 1111 1111 exp 12/27".to_string();
        g.tokenize(&mut expiry, "messages[0].content");
        assert_eq!(g.dlp_summary().counts.get("CARD_EXPIRY"), Some(&1));
        assert!(
            !g.dlp_summary().sad,
            "an expiry date is cardholder data, not SAD"
        );
        let mut tool_call = r#"{"card": "4111111111111111", "cvv": "123"}"#.to_string();
        g.tokenize(
            &mut tool_call,
            "messages[1].tool_calls[0].function.arguments",
        );
        assert!(g.dlp_summary().sad, "{:?}", g.dlp_summary());
    }
}
