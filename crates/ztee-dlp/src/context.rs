//! Context words: words near a candidate that make it more (or, for card numbers, less) likely to
//! be what the detector thinks. Positive words work like Presidio's context enhancer: the score
//! rises by 0.35 (to at least 0.4, at most 1.0).

use std::collections::BTreeMap;

use crate::entity::Entity;
use crate::finding::Candidate;

const BEFORE: usize = 64;
const AFTER: usize = 32;
/// Negative labels must sit right before the number ("IMEI: 3548...", "Order #4111...").
const NEGATIVE_BEFORE: usize = 24;
const BOOST: f64 = 0.35;
const MIN_WITH_CONTEXT: f64 = 0.4;
/// A card candidate labelled as something else keeps this score: reported only to callers that
/// lower the threshold this far.
const CONTRADICTED_SCORE: f64 = 0.1;

fn default_words(entity: Entity) -> &'static [&'static str] {
    match entity {
        Entity::CreditCard => &[
            "credit",
            "card",
            "visa",
            "mastercard",
            "amex",
            "american express",
            "discover",
            "jcb",
            "diners",
            "maestro",
            "unionpay",
            "instapayment",
            "cc",
            "pan",
            "debit",
            "cardholder",
        ],
        Entity::CardTrackData => &["track", "magstripe", "swipe"],
        Entity::CardVerificationCode => &["cvv", "cvc", "cid", "security code"],
        Entity::CardExpiry => &["exp", "expiry", "expires", "valid"],
        Entity::CardPinBlock => &["pin"],
        Entity::IbanCode => &["iban", "bank", "transaction"],
        Entity::UsSsn => &["social", "security", "ssn", "ssns", "ss#", "ssid"],
        Entity::EmailAddress => &["email", "e-mail", "mail"],
        Entity::PhoneNumber => &[
            "phone",
            "number",
            "telephone",
            "tel",
            "cell",
            "cellphone",
            "mobile",
            "call",
            "fax",
        ],
        Entity::UsBankNumber => &[
            "bank", "check", "account", "account#", "acct", "save", "debit", "checking", "savings",
        ],
        Entity::AbaRoutingNumber => &[
            "aba",
            "routing",
            "abarouting",
            "association",
            "bankrouting",
            "transit",
            "rtn",
        ],
        Entity::IpAddress => &["ip", "ipv4", "ipv6", "address", "host"],
        Entity::Secret => &[],
        // Scored by their detector: a label or a nearby card decides, not a word.
        Entity::CardholderName | Entity::PostalAddress => &[],
    }
}

/// Labels under which a Luhn-valid number is usually not a card.
const CARD_CONTRADICTIONS: &[&str] = &[
    "imei",
    "order",
    "invoice",
    "tracking",
    "serial",
    "isbn",
    "iccid",
    "msisdn",
    "timestamp",
    "sku",
    "upc",
    "ean",
    "gtin",
    "reference",
    "ref",
    "shipment",
];

pub(crate) struct Context {
    words: Vec<Vec<String>>,
}

impl Context {
    pub fn new(extra: &BTreeMap<Entity, Vec<String>>) -> Context {
        let words = Entity::ALL
            .iter()
            .map(|&e| {
                let mut w: Vec<String> = default_words(e).iter().map(|s| s.to_string()).collect();
                if let Some(more) = extra.get(&e) {
                    w.extend(more.iter().map(|s| s.to_ascii_lowercase()));
                }
                w.retain(|s| !s.is_empty());
                w
            })
            .collect();
        Context { words }
    }

    pub fn adjust(&self, text: &str, c: &Candidate) -> f64 {
        let b = text.as_bytes();
        // At 1.0 a supporting word changes nothing (the boost is capped at 1.0): only a card
        // labelled as something else can move, so most findings at 1.0 (e-mail addresses, keys,
        // canonically grouped cards) skip the word search.
        if c.score >= 1.0 && (c.entity != Entity::CreditCard || !contradicted(b, c)) {
            return c.score;
        }
        if self.supported(b, c) {
            return (c.score + BOOST).clamp(MIN_WITH_CONTEXT, 1.0);
        }
        if c.entity == Entity::CreditCard && contradicted(b, c) {
            return c.score.min(CONTRADICTED_SCORE);
        }
        c.score
    }

    /// A positive context word of the candidate's entity sits before or after it.
    fn supported(&self, b: &[u8], c: &Candidate) -> bool {
        let words = &self.words[c.entity as usize];
        if words.is_empty() {
            return false;
        }
        let mut before = [0u8; BEFORE];
        let before = lower_window(b, c.start.saturating_sub(BEFORE), c.start, &mut before);
        let mut after = [0u8; AFTER];
        let after = lower_window(b, c.end, c.end.saturating_add(AFTER), &mut after);
        words
            .iter()
            .any(|w| contains_word(before, w, false) || contains_word(after, w, false))
    }
}

/// A card candidate right after a label that says it is something else.
fn contradicted(b: &[u8], c: &Candidate) -> bool {
    let mut near = [0u8; NEGATIVE_BEFORE];
    let near = lower_window(
        b,
        c.start.saturating_sub(NEGATIVE_BEFORE),
        c.start,
        &mut near,
    );
    CARD_CONTRADICTIONS
        .iter()
        .any(|w| contains_word(near, w, true))
}

/// ASCII-lowercased bytes of `b[start..end]`, both ends clamped to the text, in `buf` (the
/// window is at most `buf.len()` bytes: a candidate's context is copied on the stack, not the
/// heap).
fn lower_window<'a>(b: &[u8], start: usize, end: usize, buf: &'a mut [u8]) -> &'a [u8] {
    let end = end.min(b.len()).min(start.saturating_add(buf.len()));
    let start = start.min(end);
    let window = &mut buf[..end - start];
    for (dst, src) in window.iter_mut().zip(&b[start..end]) {
        *dst = src.to_ascii_lowercase();
    }
    window
}

/// `word` occurs in `hay` starting at a word boundary (and, if `whole`, ending at one: "ref"
/// must not match "refund"; "card" may match "cards").
fn contains_word(hay: &[u8], word: &str, whole: bool) -> bool {
    let w = word.as_bytes();
    let Some(&first) = w.first() else {
        return false;
    };
    // Windows are at most 64 bytes: a search for the first byte beats building a searcher.
    memchr::memchr_iter(first, hay).any(|i| {
        let starts = i == 0 || !hay[i - 1].is_ascii_alphabetic();
        let ends = !whole
            || hay
                .get(i + w.len())
                .is_none_or(|c| !c.is_ascii_alphabetic());
        starts && ends && hay[i..].starts_with(w)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::RuleId;

    fn card(text: &str, pan: &str, score: f64) -> f64 {
        let start = text.find(pan).unwrap_or(0);
        let c = Candidate {
            entity: Entity::CreditCard,
            start,
            end: start + pan.len(),
            score,
            rule: RuleId::Static("credit_card.luhn"),
        };
        Context::new(&BTreeMap::new()).adjust(text, &c)
    }

    #[test]
    fn a_card_at_full_score_falls_only_when_labelled_otherwise_and_unsupported() {
        let pan = "4111111111111111";
        assert_eq!(card(&format!("x {pan}"), pan, 1.0), 1.0);
        assert_eq!(card(&format!("order #{pan}"), pan, 1.0), CONTRADICTED_SCORE);
        assert_eq!(card(&format!("card order #{pan}"), pan, 1.0), 1.0);
        assert_eq!(card(&format!("ORDER {pan} visa"), pan, 1.0), 1.0);
        assert_eq!(card(&format!("refund {pan}"), pan, 1.0), 1.0);
        assert_eq!(card(&format!("ordered: {pan}"), pan, 0.6), 0.6);
        assert_eq!(
            card(&format!("é order {pan}"), pan, 0.6),
            CONTRADICTED_SCORE
        );
        assert_eq!(
            card(&format!("{}pan {pan}", "é".repeat(40)), pan, 0.6),
            0.95
        );
    }

    #[test]
    fn windows_stop_at_the_text_ends_and_at_their_size() {
        let mut buf = [0u8; 8];
        assert_eq!(lower_window(b"ABCdef", 2, 100, &mut buf), b"cdef");
        assert_eq!(lower_window(b"ABCDEFGHIJKL", 0, 12, &mut buf), b"abcdefgh");
        assert_eq!(lower_window(b"AB", 5, 9, &mut buf), b"");
        assert!(contains_word(b"x card", "card", true));
        assert!(!contains_word(b"xcard", "card", false));
        assert!(!contains_word(b"cardx", "card", true));
        assert!(!contains_word(b"car", "card", false));
    }
}
