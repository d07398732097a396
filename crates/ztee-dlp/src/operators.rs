//! Operators (Presidio's "anonymizers"): what happens to each finding's text. Overlapping
//! findings are merged first, so every character of every finding is covered exactly once.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::crypto::{decimal_value, digits_of, EncryptionKey, KeyedHasher};
use crate::detect::card::CardBrand;
use crate::entity::Entity;
use crate::error::DlpError;
use crate::finding::Finding;
use crate::tokens::TokenMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// Replace with `new_value`, or `<ENTITY_TYPE>` when none is given.
    Replace {
        new_value: Option<String>,
    },
    /// Remove the text.
    Redact,
    Mask(MaskStyle),
    /// Keyed HMAC-SHA-256 (hex); card numbers are hashed over their digits only.
    Hash,
    /// AES-GCM ciphertext (URL-safe base64), reversible with [`deanonymize`].
    Encrypt,
    /// `<ENTITY_TYPE_N>` placeholders, reversible with [`TokenMap::restore`].
    Tokenize,
    /// Leave the text as it is (the finding is still counted).
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MaskStyle {
    /// PCI DSS 3.4.1 for card numbers: keep at most the BIN (first 6, or 8 for networks with
    /// 8-digit BINs on 16+ digit PANs) and the last four digits, mask the other digits with `*`
    /// and keep separators. PANs shorter than 16 digits keep fewer leading digits so that at
    /// least five stay masked. Other entities: every letter and digit masked.
    Pci,
    /// Presidio's mask: `chars_to_mask` characters from the start (or end) become `masking_char`.
    Chars {
        masking_char: char,
        chars_to_mask: usize,
        from_end: bool,
    },
}

/// Which operator applies to which entity, and the keys the keyed operators use.
#[derive(Debug, Clone)]
pub struct Operators {
    pub default: Operator,
    pub per_entity: BTreeMap<Entity, Operator>,
    pub hash_key: Option<KeyedHasher>,
    pub encryption_key: Option<EncryptionKey>,
}

impl Operators {
    pub fn new(default: Operator) -> Operators {
        Operators {
            default,
            per_entity: BTreeMap::new(),
            hash_key: None,
            encryption_key: None,
        }
    }

    pub fn with(mut self, entity: Entity, operator: Operator) -> Operators {
        self.per_entity.insert(entity, operator);
        self
    }

    pub fn with_hash_key(mut self, key: KeyedHasher) -> Operators {
        self.hash_key = Some(key);
        self
    }

    pub fn with_encryption_key(mut self, key: EncryptionKey) -> Operators {
        self.encryption_key = Some(key);
        self
    }

    pub fn for_entity(&self, entity: Entity) -> &Operator {
        self.per_entity.get(&entity).unwrap_or(&self.default)
    }
}

impl Default for Operators {
    fn default() -> Self {
        Operators::new(Operator::Replace { new_value: None })
    }
}

/// One replaced span in the output text (character offsets into the *new* text).
#[derive(Debug, Clone, Serialize)]
pub struct Replacement {
    pub entity_type: Entity,
    pub start: usize,
    pub end: usize,
    /// The text now standing there (never the original, except with `Keep`).
    pub text: String,
    pub operator: &'static str,
}

#[derive(Debug, Clone)]
pub struct Anonymized {
    pub text: String,
    /// In output order.
    pub items: Vec<Replacement>,
    /// How many findings of each entity were acted on (after merging overlaps).
    pub counts: BTreeMap<Entity, usize>,
    /// Placeholders issued when an entity was tokenized with [`anonymize`].
    pub tokens: TokenMap,
}

/// Merges overlapping findings into one span each (their union), labelled with the strongest
/// finding: highest score, then longest, then entity order, then rule id. Deterministic for any
/// input order. Returns findings sorted by position.
pub fn resolve_overlaps(findings: &[Finding]) -> Vec<Finding> {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by(|a, b| {
        (a.byte_start, a.byte_end, a.entity_type, &a.rule_id).cmp(&(
            b.byte_start,
            b.byte_end,
            b.entity_type,
            &b.rule_id,
        ))
    });
    let stronger = |a: &Finding, b: &Finding| {
        b.score
            .total_cmp(&a.score)
            .then((b.byte_end - b.byte_start).cmp(&(a.byte_end - a.byte_start)))
            .then(a.entity_type.cmp(&b.entity_type))
            .then(a.rule_id.cmp(&b.rule_id))
            .is_lt()
    };
    let mut out: Vec<Finding> = Vec::new();
    let mut winner: Option<Finding> = None;
    for f in sorted {
        match &mut winner {
            Some(w) if f.byte_start < w.byte_end => {
                let (start, byte_start) = (w.start, w.byte_start);
                let (end, byte_end) = if f.byte_end > w.byte_end {
                    (f.end, f.byte_end)
                } else {
                    (w.end, w.byte_end)
                };
                if stronger(f, w) {
                    *w = f.clone();
                }
                w.start = start;
                w.byte_start = byte_start;
                w.end = end;
                w.byte_end = byte_end;
            }
            _ => {
                if let Some(done) = winner.take() {
                    out.push(done);
                }
                winner = Some(f.clone());
            }
        }
    }
    out.extend(winner);
    out
}

/// Applies `operators` to `findings` in `text`. Tokenized entities get placeholders from a fresh
/// [`TokenMap`], returned in [`Anonymized::tokens`].
pub fn anonymize(
    text: &str,
    findings: &[Finding],
    operators: &Operators,
) -> Result<Anonymized, DlpError> {
    let mut tokens = TokenMap::new();
    let mut out = anonymize_with(text, findings, operators, &mut tokens)?;
    out.tokens = tokens;
    Ok(out)
}

/// Like [`anonymize`], issuing placeholders from `tokens` so that a request and its response
/// share them.
pub fn anonymize_with(
    text: &str,
    findings: &[Finding],
    operators: &Operators,
    tokens: &mut TokenMap,
) -> Result<Anonymized, DlpError> {
    for (index, f) in findings.iter().enumerate() {
        if f.byte_start >= f.byte_end
            || f.byte_end > text.len()
            || !text.is_char_boundary(f.byte_start)
            || !text.is_char_boundary(f.byte_end)
        {
            return Err(DlpError::FindingOutOfRange {
                index,
                start: f.start,
                end: f.end,
                len: text.chars().count(),
            });
        }
    }
    let merged = resolve_overlaps(findings);
    let mut out = String::with_capacity(text.len());
    let mut items = Vec::with_capacity(merged.len());
    let mut counts: BTreeMap<Entity, usize> = BTreeMap::new();
    let mut last = 0;
    let mut out_chars = 0usize;
    for f in &merged {
        let before = &text[last..f.byte_start];
        out.push_str(before);
        out_chars += before.chars().count();
        let original = &text[f.byte_start..f.byte_end];
        let operator = operators.for_entity(f.entity_type);
        let new_text = apply(operator, f.entity_type, original, operators, tokens)?;
        let len = new_text.chars().count();
        items.push(Replacement {
            entity_type: f.entity_type,
            start: out_chars,
            end: out_chars + len,
            text: new_text.clone(),
            operator: operator_name(operator),
        });
        out.push_str(&new_text);
        out_chars += len;
        *counts.entry(f.entity_type).or_insert(0) += 1;
        last = f.byte_end;
    }
    out.push_str(&text[last..]);
    Ok(Anonymized {
        text: out,
        items,
        counts,
        tokens: TokenMap::new(),
    })
}

pub(crate) fn operator_name(op: &Operator) -> &'static str {
    match op {
        Operator::Replace { .. } => "replace",
        Operator::Redact => "redact",
        Operator::Mask(_) => "mask",
        Operator::Hash => "hash",
        Operator::Encrypt => "encrypt",
        Operator::Tokenize => "tokenize",
        Operator::Keep => "keep",
    }
}

fn apply(
    op: &Operator,
    entity: Entity,
    original: &str,
    operators: &Operators,
    tokens: &mut TokenMap,
) -> Result<String, DlpError> {
    Ok(match op {
        Operator::Replace { new_value } => new_value
            .clone()
            .unwrap_or_else(|| format!("<{}>", entity.as_str())),
        Operator::Redact => String::new(),
        Operator::Mask(style) => mask(style, entity, original),
        Operator::Hash => {
            let key = operators.hash_key.as_ref().ok_or(DlpError::MissingKey {
                operator: "hash",
                what: "hash key",
            })?;
            if entity == Entity::CreditCard {
                key.hash_pan(original)
            } else {
                key.hash_hex(original.as_bytes())
            }
        }
        Operator::Encrypt => operators
            .encryption_key
            .as_ref()
            .ok_or(DlpError::MissingKey {
                operator: "encrypt",
                what: "encryption key",
            })?
            .encrypt(original)?,
        Operator::Tokenize => tokens.token_for(entity, original),
        Operator::Keep => original.to_string(),
    })
}

fn mask(style: &MaskStyle, entity: Entity, original: &str) -> String {
    match style {
        MaskStyle::Pci if entity == Entity::CreditCard => {
            let digits: Vec<u8> = digits_of(original).bytes().map(|b| b - b'0').collect();
            let n = digits.len();
            let keep_first = if n >= 16 {
                CardBrand::bin_len(&digits)
            } else {
                6.min(n.saturating_sub(4 + 5))
            };
            let keep_last = 4.min(n);
            let mut seen = 0;
            original
                .chars()
                .map(|c| {
                    if decimal_value(c).is_some() {
                        seen += 1;
                        if seen <= keep_first || seen > n - keep_last {
                            c
                        } else {
                            '*'
                        }
                    } else {
                        c
                    }
                })
                .collect()
        }
        MaskStyle::Pci => original
            .chars()
            .map(|c| if c.is_alphanumeric() { '*' } else { c })
            .collect(),
        MaskStyle::Chars {
            masking_char,
            chars_to_mask,
            from_end,
        } => {
            let n = original.chars().count();
            let k = (*chars_to_mask).min(n);
            original
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    let masked = if *from_end { i >= n - k } else { i < k };
                    if masked {
                        *masking_char
                    } else {
                        c
                    }
                })
                .collect()
        }
    }
}

/// Reverses `encrypt`: decrypts the text at each span (character offsets into `text`, as
/// reported by [`Anonymized::items`]) with `key`.
pub fn deanonymize(
    text: &str,
    spans: &[(usize, usize)],
    key: &EncryptionKey,
) -> Result<String, DlpError> {
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    let char_to_byte: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for &(start, end) in &sorted {
        let (Some(&bs), Some(&be)) = (char_to_byte.get(start), char_to_byte.get(end)) else {
            return Err(DlpError::Decrypt { start, end });
        };
        if start >= end || bs < last {
            return Err(DlpError::Decrypt { start, end });
        }
        out.push_str(&text[last..bs]);
        let plain = key
            .decrypt(&text[bs..be])
            .ok_or(DlpError::Decrypt { start, end })?;
        out.push_str(&plain);
        last = be;
    }
    out.push_str(&text[last..]);
    Ok(out)
}
