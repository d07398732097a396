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
        let words = &self.words[c.entity as usize];
        let before = lower_window(text, c.start.saturating_sub(BEFORE), c.start);
        if !words.is_empty() {
            let after = lower_window(text, c.end, c.end + AFTER);
            if words
                .iter()
                .any(|w| contains_word(&before, w, false) || contains_word(&after, w, false))
            {
                return (c.score + BOOST).clamp(MIN_WITH_CONTEXT, 1.0);
            }
        }
        if c.entity == Entity::CreditCard {
            let near = lower_window(text, c.start.saturating_sub(NEGATIVE_BEFORE), c.start);
            if CARD_CONTRADICTIONS
                .iter()
                .any(|w| contains_word(&near, w, true))
            {
                return c.score.min(CONTRADICTED_SCORE);
            }
        }
        c.score
    }
}

/// ASCII-lowercased bytes of `text[start..end]`, both ends clamped to the text.
fn lower_window(text: &str, start: usize, end: usize) -> Vec<u8> {
    let b = text.as_bytes();
    let end = end.min(b.len());
    let start = start.min(end);
    b[start..end].iter().map(u8::to_ascii_lowercase).collect()
}

/// `word` occurs in `hay` starting at a word boundary (and, if `whole`, ending at one: "ref"
/// must not match "refund"; "card" may match "cards").
fn contains_word(hay: &[u8], word: &str, whole: bool) -> bool {
    let w = word.as_bytes();
    memchr::memmem::find_iter(hay, w).any(|i| {
        let starts = i == 0 || !hay[i - 1].is_ascii_alphabetic();
        let ends = !whole
            || hay
                .get(i + w.len())
                .is_none_or(|c| !c.is_ascii_alphabetic());
        starts && ends
    })
}
