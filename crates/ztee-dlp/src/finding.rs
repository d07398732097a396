//! What a scan reports. A `Finding` holds positions and metadata only, never the matched text, so
//! it can go to logs, audit events and API responses as it is.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::entity::Entity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub entity_type: Entity,
    /// Character (Unicode scalar value) offsets, Presidio's convention: `text.chars().skip(start)`.
    pub start: usize,
    pub end: usize,
    /// Byte offsets into the UTF-8 text, for Rust callers that slice `&text[byte_start..byte_end]`.
    pub byte_start: usize,
    pub byte_end: usize,
    /// Confidence in [0, 1]; context words raise it, contradicting context lowers it.
    pub score: f64,
    /// Which rule fired, e.g. `credit_card.luhn` or `secret.exact:db-password`.
    pub rule_id: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}..{} (score {:.2}, rule {})",
            self.entity_type, self.start, self.end, self.score, self.rule_id
        )
    }
}

/// A detector's raw result, in byte offsets, before context scoring and char offsets.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub entity: Entity,
    pub start: usize,
    pub end: usize,
    pub score: f64,
    pub rule: RuleId,
}

#[derive(Debug, Clone)]
pub(crate) enum RuleId {
    Static(&'static str),
    Owned(String),
}

impl RuleId {
    pub fn into_string(self) -> String {
        match self {
            RuleId::Static(s) => s.to_string(),
            RuleId::Owned(s) => s,
        }
    }
}

/// Converts sorted-or-not byte offsets into char offsets in one pass over the text.
pub(crate) fn byte_to_char_offsets(text: &str, offsets: &mut [(usize, usize)]) {
    // offsets: (byte offset, slot for char offset). Sorted by byte offset first.
    offsets.sort_unstable_by_key(|o| o.0);
    if text.is_ascii() {
        for o in offsets.iter_mut() {
            o.1 = o.0;
        }
        return;
    }
    let bytes = text.as_bytes();
    let mut chars = 0usize;
    let mut pos = 0usize;
    for o in offsets.iter_mut() {
        let target = o.0.min(bytes.len());
        // Continuation bytes (10xxxxxx) do not start a character.
        chars += bytes[pos..target]
            .iter()
            .filter(|&&b| (b & 0xC0) != 0x80)
            .count();
        pos = target;
        o.1 = chars;
    }
}
