//! The scanner: runs the detectors for the configured entities, applies context, filters by
//! score and reports findings with character and byte offsets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::detect::chd;
use crate::detect::digits::{self, DigitEntities};
use crate::detect::exact::{ExactSecrets, ExactValues};
use crate::detect::near;
use crate::detect::network;
use crate::detect::patterns::Patterns;
use crate::entity::Entity;
use crate::error::DlpError;
use crate::finding::{byte_to_char_offsets, Candidate, Finding, RuleId};

/// How a [`Scanner`] is built. Deserializable, so it can come from the gateway's config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScannerConfig {
    /// Entities to detect; empty means all of [`Entity::ALL`].
    pub entities: Vec<Entity>,
    /// Findings scoring below this are dropped. In [0, 1].
    pub score_threshold: f64,
    /// Extra context words per entity, added to the built-in ones.
    pub context_words: BTreeMap<Entity, Vec<String>>,
    /// Decode base64 blobs (24+ characters) and scan the text inside them.
    pub decode_base64: bool,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        ScannerConfig {
            entities: Vec::new(),
            score_threshold: 0.4,
            context_words: BTreeMap::new(),
            decode_base64: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntitySet(u32);

impl EntitySet {
    pub fn of(entities: &[Entity]) -> EntitySet {
        if entities.is_empty() {
            return EntitySet::of(&Entity::ALL);
        }
        EntitySet(entities.iter().fold(0, |acc, &e| acc | (1 << e as u32)))
    }

    pub fn has(self, e: Entity) -> bool {
        self.0 & (1 << e as u32) != 0
    }
}

/// Blobs nested deeper than this are not decoded (base64 inside base64 inside base64...).
const MAX_DECODE_DEPTH: usize = 1;

/// The detection engine. Build once, share (`Send + Sync`), call [`Scanner::scan`] from any thread.
pub struct Scanner {
    enabled: EntitySet,
    threshold: f64,
    context: Context,
    patterns: Patterns,
    exact: ExactSecrets,
    decode_base64: bool,
}

impl Scanner {
    pub fn new(config: ScannerConfig) -> Result<Scanner, DlpError> {
        if !(0.0..=1.0).contains(&config.score_threshold) {
            return Err(DlpError::ScoreThreshold(config.score_threshold));
        }
        Ok(Scanner {
            enabled: EntitySet::of(&config.entities),
            threshold: config.score_threshold,
            context: Context::new(&config.context_words),
            patterns: Patterns::new(),
            exact: ExactSecrets::new(),
            decode_base64: config.decode_base64,
        })
    }

    /// The configured entities.
    pub fn entities(&self) -> Vec<Entity> {
        Entity::ALL
            .iter()
            .copied()
            .filter(|&e| self.enabled.has(e))
            .collect()
    }

    pub fn score_threshold(&self) -> f64 {
        self.threshold
    }

    /// Finds every configured entity scoring at least the configured threshold. Findings are
    /// sorted by position; they may overlap (see [`crate::resolve_overlaps`]).
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        self.scan_filtered(text, self.enabled, self.threshold)
    }

    /// Like [`Scanner::scan`] with a per-call entity list (any supported entity, not only the
    /// configured ones; `None` means the configured ones) and threshold.
    pub fn scan_with(
        &self,
        text: &str,
        entities: Option<&[Entity]>,
        score_threshold: Option<f64>,
    ) -> Result<Vec<Finding>, DlpError> {
        let set = entities.map_or(self.enabled, EntitySet::of);
        let threshold = score_threshold.unwrap_or(self.threshold);
        if !(0.0..=1.0).contains(&threshold) {
            return Err(DlpError::ScoreThreshold(threshold));
        }
        Ok(self.scan_filtered(text, set, threshold))
    }

    /// Like [`Scanner::scan`], and also reports the exact values of one scope (one sandbox):
    /// the shared detectors plus that scope's values, never another scope's.
    pub fn scan_scoped(&self, text: &str, exact: &ExactValues) -> Vec<Finding> {
        let candidates = self.candidates(text, self.enabled, 0, Some(exact));
        to_findings(text, candidates, self.threshold)
    }

    /// Registers a secret value: from now on every scan reports it (and its base64, hex and
    /// URL-encoded forms) as `SECRET` with rule id `secret.exact:<name>`. Re-registering a name
    /// replaces its value.
    ///
    /// Every caller of this scanner is then matched against the value, and can learn whether a
    /// guess is registered by scanning it: use this only for a scanner that serves one principal.
    /// A scanner shared between tenants keeps per-sandbox values in an [`ExactValues`] instead.
    pub fn register_secret(&self, name: &str, value: &[u8]) -> Result<(), DlpError> {
        self.exact.register(name, value)
    }

    /// Forgets a registered secret; returns whether it was registered.
    pub fn unregister_secret(&self, name: &str) -> bool {
        self.exact.unregister(name)
    }

    /// Length in bytes of the longest encoded form of any registered secret.
    pub(crate) fn longest_exact_secret(&self) -> usize {
        self.exact.longest()
    }

    /// Names of the registered secrets (never their values).
    pub fn secret_names(&self) -> Vec<String> {
        self.exact.names()
    }

    fn scan_filtered(&self, text: &str, set: EntitySet, threshold: f64) -> Vec<Finding> {
        let candidates = self.candidates(text, set, 0, None);
        to_findings(text, candidates, threshold)
    }

    /// Scored candidates (context applied), not yet filtered by threshold.
    pub(crate) fn candidates(
        &self,
        text: &str,
        set: EntitySet,
        depth: usize,
        scoped: Option<&ExactValues>,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        let near_wanted = set.has(Entity::CardExpiry) || set.has(Entity::CardVerificationCode);
        let chd_wanted = set.has(Entity::CardholderName) || set.has(Entity::PostalAddress);
        let want_digits = DigitEntities {
            card: set.has(Entity::CreditCard) || near_wanted || chd_wanted,
            ssn: set.has(Entity::UsSsn),
            phone: set.has(Entity::PhoneNumber),
            aba: set.has(Entity::AbaRoutingNumber),
            bank: set.has(Entity::UsBankNumber),
            ipv4: set.has(Entity::IpAddress),
        };
        if want_digits.any() {
            digits::scan(text, want_digits, &mut out);
        }
        if near_wanted {
            let pan_ends: Vec<usize> = out
                .iter()
                .filter(|c| c.entity == Entity::CreditCard && c.score >= 0.5)
                .map(|c| c.end)
                .collect();
            for end in pan_ends {
                near::after_pan(text, end, &mut out);
            }
        }
        if set.has(Entity::EmailAddress) {
            network::emails(text, &mut out);
        }
        if set.has(Entity::IpAddress) {
            network::ipv6(text, &mut out);
        }
        let decode = self.decode_base64 && depth < MAX_DECODE_DEPTH;
        let mut blobs: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        let pattern_entities = [
            Entity::Secret,
            Entity::IbanCode,
            Entity::CardTrackData,
            Entity::CardVerificationCode,
            Entity::CardExpiry,
            Entity::CardPinBlock,
        ];
        if pattern_entities.iter().any(|&e| set.has(e)) || chd_wanted {
            let track = chd_wanted;
            self.patterns.scan(
                text,
                |e| set.has(e) || (track && e == Entity::CardTrackData),
                &mut out,
            );
        }
        if chd_wanted {
            // Card numbers as the scanner will report them (context applied: "order #4111..."
            // is not a card), and track data, which holds one.
            let cards: Vec<(usize, usize)> = out
                .iter()
                .filter(|c| match c.entity {
                    Entity::CreditCard => self.context.adjust(text, c) >= 0.5,
                    Entity::CardTrackData => true,
                    _ => false,
                })
                .map(|c| (c.start, c.end))
                .collect();
            chd::scan(
                text,
                &cards,
                set.has(Entity::CardholderName),
                set.has(Entity::PostalAddress),
                &mut out,
            );
        }
        if decode {
            self.patterns
                .base64_blobs(text, |s, e, decoded| blobs.push((s, e, decoded.to_vec())));
        }
        if set.has(Entity::Secret) && !self.exact.is_empty() {
            self.exact.scan(text, &mut out);
        }
        if let Some(scoped) = scoped.filter(|s| set.has(Entity::Secret) && !s.is_empty()) {
            scoped.scan(text, &mut out);
        }
        out.retain(|c| set.has(c.entity));
        for c in &mut out {
            c.score = self.context.adjust(text, c);
        }
        for (start, end, decoded) in blobs {
            let Some(inner) = printable_text(&decoded) else {
                continue;
            };
            let mut inner_found = self.candidates(inner, set, depth + 1, scoped);
            inner_found.sort_by(|a, b| b.score.total_cmp(&a.score));
            let mut seen: Vec<Entity> = Vec::new();
            for c in inner_found {
                if seen.contains(&c.entity) {
                    continue;
                }
                seen.push(c.entity);
                out.push(Candidate {
                    entity: c.entity,
                    start,
                    end,
                    score: c.score,
                    rule: RuleId::Owned(format!("base64.{}", c.rule.into_string())),
                });
            }
        }
        out
    }
}

/// Decoded bytes worth scanning: UTF-8 text that is mostly printable.
fn printable_text(decoded: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(decoded).ok()?;
    let total = s.chars().count();
    let control = s
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        .count();
    (total > 0 && control * 10 <= total).then_some(s)
}

pub(crate) fn to_findings(
    text: &str,
    mut candidates: Vec<Candidate>,
    threshold: f64,
) -> Vec<Finding> {
    candidates.retain(|c| c.score >= threshold && c.score > 0.0 && c.start < c.end);
    candidates.sort_by(|a, b| {
        (a.start, a.end, a.entity)
            .cmp(&(b.start, b.end, b.entity))
            .then(b.score.total_cmp(&a.score))
    });
    candidates.dedup_by(|b, a| a.start == b.start && a.end == b.end && a.entity == b.entity);
    let mut offsets: Vec<(usize, usize)> = Vec::with_capacity(candidates.len() * 2);
    for c in &candidates {
        offsets.push((c.start, 0));
        offsets.push((c.end, 0));
    }
    byte_to_char_offsets(text, &mut offsets);
    let char_of = |byte: usize| {
        offsets
            .binary_search_by_key(&byte, |o| o.0)
            .map_or(byte, |i| offsets[i].1)
    };
    candidates
        .into_iter()
        .map(|c| Finding {
            entity_type: c.entity,
            start: char_of(c.start),
            end: char_of(c.end),
            byte_start: c.start,
            byte_end: c.end,
            score: (c.score * 100.0).round() / 100.0,
            rule_id: c.rule.into_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Scanner>();
    }

    #[test]
    fn char_offsets_count_characters_not_bytes() {
        let s = Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let text = "héllo wörld 4111 1111 1111 1111";
        let f = s.scan(text);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].byte_start, 14);
        assert_eq!(f[0].start, 12);
        assert_eq!(f[0].end - f[0].start, 19);
        assert_eq!(&text[f[0].byte_start..f[0].byte_end], "4111 1111 1111 1111");
    }
}
