//! Cardholder names and postal addresses. A name or an address is cardholder data only together
//! with a card, and name-shaped text is everywhere, so nothing here reads free text on its own:
//! a value is found either after a label that says what it is (`"cardholder_name": "..."`,
//! `Address: ...`, a CSV column headed `name`), or by its shape within [`NEAR_PAN`] bytes of a
//! card number or track data. Labels are found with one case-insensitive literal search, shapes
//! are read only around the card numbers already found, so text without labels or cards costs
//! one pass of that search.
//!
//! Every finding depends only on text within [`REACH`] bytes of it, which is what lets the
//! streaming scanner hold back a bounded amount and still decide exactly as a whole-text scan.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::detect::digits::MAX_CARD_BYTES;
use crate::entity::Entity;
use crate::finding::{Candidate, RuleId};

/// How far (bytes) from a card number a name or address found by its shape alone may end or
/// start, and how far from a labelled value a card number or card word makes it card context.
pub(crate) const NEAR_PAN: usize = 96;
/// A CSV header labels the values that start at most this many bytes after the header's line
/// starts (the rows right below it).
const CSV_SPAN: usize = 448;
/// A key is at most this long; a labelled value is at most [`MAX_VALUE`] bytes.
const MAX_KEY: usize = 32;
const MAX_VALUE: usize = 200;
/// The longest name (honorific, four names, suffix) or address this module reports.
const MAX_NAME: usize = 96;
const MAX_ADDRESS: usize = 200;
/// The card context of a card number itself: the scanner's context words are read up to 64
/// bytes before it.
const PAN_CONTEXT: usize = 64;
/// The furthest text from a finding's edge that can change it.
pub(crate) const REACH: usize = {
    let near = NEAR_PAN + MAX_CARD_BYTES + PAN_CONTEXT;
    if near > CSV_SPAN {
        near
    } else {
        CSV_SPAN
    }
};

/// Scores. A card-specific label alone is enough; a generic one (`name`, `first_name`) needs card
/// context to reach the default threshold (0.4); a shape near a card scores below any label.
const LABEL_CARDHOLDER: f64 = 0.85;
const LABEL_CARDHOLDER_WITH_CARD: f64 = 0.95;
const LABEL_GENERIC: f64 = 0.35;
const LABEL_GENERIC_WITH_CARD: f64 = 0.75;
const LABEL_ADDRESS: f64 = 0.8;
const LABEL_ADDRESS_WITH_CARD: f64 = 0.9;
const LABEL_LOCALITY: f64 = 0.7;
const NAME_NEAR_PAN: f64 = 0.5;
const ADDRESS_NEAR_PAN: f64 = 0.6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// A label that names the card's holder.
    Cardholder,
    /// A person's name that may or may not be the cardholder's.
    Person,
    /// First or last name alone: one word is enough.
    PersonPart,
    Address,
    /// City or postcode: an address only next to another address field or a card.
    Locality,
    Postcode,
}

/// Keys, lowercased with `_`, `-`, `.` and spaces removed.
const KEYS: &[(&str, Field)] = &[
    ("cardholder", Field::Cardholder),
    ("cardholdername", Field::Cardholder),
    ("cardholdersname", Field::Cardholder),
    ("cardholderfullname", Field::Cardholder),
    ("holder", Field::Cardholder),
    ("holdername", Field::Cardholder),
    ("cardname", Field::Cardholder),
    ("nameoncard", Field::Cardholder),
    ("ccname", Field::Cardholder),
    ("embossedname", Field::Cardholder),
    ("billingname", Field::Cardholder),
    ("accountholder", Field::Cardholder),
    ("accountholdername", Field::Cardholder),
    ("name", Field::Person),
    ("fullname", Field::Person),
    ("customername", Field::Person),
    ("clientname", Field::Person),
    ("payername", Field::Person),
    ("buyername", Field::Person),
    ("shippingname", Field::Person),
    ("recipientname", Field::Person),
    ("contactname", Field::Person),
    ("firstname", Field::PersonPart),
    ("lastname", Field::PersonPart),
    ("givenname", Field::PersonPart),
    ("surname", Field::PersonPart),
    ("familyname", Field::PersonPart),
    ("address", Field::Address),
    ("address1", Field::Address),
    ("address2", Field::Address),
    ("addressline", Field::Address),
    ("addressline1", Field::Address),
    ("addressline2", Field::Address),
    ("addr", Field::Address),
    ("addr1", Field::Address),
    ("addr2", Field::Address),
    ("line1", Field::Address),
    ("line2", Field::Address),
    ("street", Field::Address),
    ("street1", Field::Address),
    ("street2", Field::Address),
    ("streetaddress", Field::Address),
    ("billingaddress", Field::Address),
    ("billingaddress1", Field::Address),
    ("billingaddress2", Field::Address),
    ("billingstreet", Field::Address),
    ("shippingaddress", Field::Address),
    ("mailingaddress", Field::Address),
    ("postaladdress", Field::Address),
    ("homeaddress", Field::Address),
    ("city", Field::Locality),
    ("town", Field::Locality),
    ("billingcity", Field::Locality),
    ("zip", Field::Postcode),
    ("zipcode", Field::Postcode),
    ("postcode", Field::Postcode),
    ("postalcode", Field::Postcode),
    ("billingzip", Field::Postcode),
    ("billingpostcode", Field::Postcode),
    ("billingpostalcode", Field::Postcode),
];

static KEY_MAP: LazyLock<HashMap<&'static [u8], Field, BuildHasherDefault<Fnv>>> =
    LazyLock::new(|| KEYS.iter().map(|&(k, f)| (k.as_bytes(), f)).collect());

/// Words every key above contains; hits are expanded to the whole key and looked up.
const KEY_WORDS: &[&str] = &[
    "name", "holder", "addr", "street", "line1", "line2", "city", "town", "zip", "postcode",
    "postal",
];

/// The key words as written in lower case, capitalised (also inside camelCase keys such as
/// `cardHolderName`) and in capitals: a case-sensitive search over these runs on the SIMD literal
/// search, several times faster than a case-insensitive one over the text.
#[allow(clippy::expect_used)] // constant patterns, built by every test run
static KEY_SEARCH: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        // At most 32 patterns keep the narrower, faster SIMD searcher: `LINE1` in capitals is
        // left out.
        .build(
            KEY_WORDS
                .iter()
                .flat_map(|w| case_forms(w))
                .filter(|w| !w.starts_with("LINE")),
        )
        .expect("key words build")
});

/// Capitalised words that are not names: labels, card and log words, street words.
const STOP_WORDS: &[&str] = &[
    "a",
    "an",
    "and",
    "the",
    "of",
    "for",
    "from",
    "to",
    "in",
    "on",
    "at",
    "by",
    "with",
    "via",
    "is",
    "was",
    "are",
    "this",
    "that",
    "dear",
    "hi",
    "hello",
    "thanks",
    "thank",
    "please",
    "name",
    "names",
    "holder",
    "cardholder",
    "card",
    "cards",
    "credit",
    "debit",
    "visa",
    "mastercard",
    "master",
    "amex",
    "american",
    "express",
    "discover",
    "jcb",
    "diners",
    "club",
    "maestro",
    "unionpay",
    "number",
    "no",
    "pan",
    "cvv",
    "cvc",
    "cvv2",
    "exp",
    "expiry",
    "expires",
    "expiration",
    "valid",
    "thru",
    "date",
    "payment",
    "pay",
    "paid",
    "charge",
    "charged",
    "refund",
    "refunded",
    "amount",
    "total",
    "order",
    "invoice",
    "receipt",
    "customer",
    "client",
    "billing",
    "shipping",
    "address",
    "account",
    "bank",
    "transaction",
    "merchant",
    "status",
    "approved",
    "declined",
    "error",
    "warning",
    "warn",
    "info",
    "debug",
    "trace",
    "fatal",
    "ok",
    "get",
    "post",
    "put",
    "patch",
    "delete",
    "head",
    "http",
    "https",
    "api",
    "id",
    "usd",
    "eur",
    "gbp",
    "null",
    "none",
    "true",
    "false",
    "test",
    "user",
    "street",
    "road",
    "avenue",
    "city",
    "state",
    "zip",
    "postcode",
    "country",
    "phone",
    "email",
    "tel",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "inc",
    "ltd",
    "llc",
    "corp",
    "gmbh",
    "co",
    "company",
    "store",
    "shop",
    "team",
    "service",
    "services",
    "support",
];

const HONORIFICS: &[&str] = &[
    "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "lady", "lord", "rev",
];
const SUFFIXES: &[&str] = &["jr", "sr", "ii", "iii", "iv"];
/// Lower-case particles inside a name: "Ludwig van Beethoven".
const PARTICLES: &[&str] = &[
    "van", "von", "de", "da", "del", "della", "der", "den", "di", "du", "la", "le", "bin", "ibn",
    "al",
];
const STREET_SUFFIXES: &[&str] = &[
    "st",
    "street",
    "ave",
    "av",
    "avenue",
    "rd",
    "road",
    "blvd",
    "boulevard",
    "ln",
    "lane",
    "way",
    "dr",
    "drive",
    "ct",
    "court",
    "pl",
    "place",
    "ter",
    "terrace",
    "cl",
    "close",
    "cres",
    "crescent",
    "pkwy",
    "parkway",
    "hwy",
    "highway",
    "sq",
    "square",
    "cir",
    "circle",
    "trl",
    "trail",
    "row",
    "walk",
    "grove",
    "gardens",
    "hill",
    "mews",
    "strasse",
    "straße",
    "str",
];
const UNITS: &[&str] = &[
    "apt",
    "apartment",
    "suite",
    "ste",
    "unit",
    "flat",
    "fl",
    "floor",
    "room",
    "rm",
    "bldg",
];

const LONGEST_CARD_SPAN: usize = 4096;

const STOP: u8 = 1;
const HONORIFIC: u8 = 2;
const SUFFIX: u8 = 4;
const PARTICLE: u8 = 8;
const STREET: u8 = 16;
const UNIT: u8 = 32;

/// Every listed word (ASCII-lowercased) with the lists it is in: one hash lookup per word
/// instead of a walk through every list.
static WORDS: LazyLock<HashMap<&'static [u8], u8, BuildHasherDefault<Fnv>>> = LazyLock::new(|| {
    let mut map: HashMap<&'static [u8], u8, BuildHasherDefault<Fnv>> = HashMap::default();
    for (list, flag) in [
        (STOP_WORDS, STOP),
        (HONORIFICS, HONORIFIC),
        (SUFFIXES, SUFFIX),
        (PARTICLES, PARTICLE),
        (STREET_SUFFIXES, STREET),
        (UNITS, UNIT),
    ] {
        for w in list {
            *map.entry(w.as_bytes()).or_default() |= flag;
        }
    }
    map
});

/// FNV-1a: the keys are a few short words, which SipHash spends most of a lookup on.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The lists `word` is in (ASCII case-insensitive); no listed word is longer than 16 bytes.
fn word_flags(word: &str) -> u8 {
    let mut buf = [0u8; 16];
    let Some(lower) = buf.get_mut(..word.len()) else {
        return 0;
    };
    lower.copy_from_slice(word.as_bytes());
    lower.make_ascii_lowercase();
    WORDS.get(&*lower).copied().unwrap_or(0)
}

fn one_of(flags: u8, word: &str) -> bool {
    word_flags(word) & flags != 0
}

/// Whether a card span in `cards` (sorted by start) overlaps `from..to`. Card numbers and track
/// data are far shorter than [`LONGEST_CARD_SPAN`], so only the spans starting that close are read.
fn overlaps(cards: &[(usize, usize)], from: usize, to: usize) -> bool {
    let i = cards.partition_point(|&(s, _)| s < to);
    cards[..i]
        .iter()
        .rev()
        .take_while(|&&(s, _)| s + LONGEST_CARD_SPAN > from)
        .any(|&(_, e)| e > from)
}

/// Finds cardholder names and postal addresses. `cards` are the spans of card numbers and track
/// data (already filtered to the ones that count as cards).
pub(crate) fn scan(
    text: &str,
    cards: &[(usize, usize)],
    names: bool,
    addresses: bool,
    out: &mut Vec<Candidate>,
) {
    let mut cards = cards.to_vec();
    cards.sort_unstable();
    let cards = &cards[..];
    let mut found = Vec::new();
    labelled(text, cards, &mut found);
    for &(start, end) in cards {
        near_card(text, start, end, cards, &mut found);
    }
    out.extend(found.into_iter().filter(|c| match c.entity {
        Entity::CardholderName => names,
        Entity::PostalAddress => addresses,
        _ => false,
    }));
}

fn push(
    out: &mut Vec<Candidate>,
    entity: Entity,
    start: usize,
    end: usize,
    score: f64,
    rule: &'static str,
) {
    if start < end {
        out.push(Candidate {
            entity,
            start,
            end,
            score,
            rule: RuleId::Static(rule),
        });
    }
}

// ---- labels ---------------------------------------------------------------------------------

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b' ')
}

/// The key around a key-word hit: its span and what it labels.
fn key_at(b: &[u8], hit_start: usize, hit_end: usize) -> Option<(usize, usize, Field)> {
    let mut left = hit_start;
    while left > 0 && is_key_byte(b[left - 1]) && hit_start - left < MAX_KEY {
        left -= 1;
    }
    if left > 0 && is_key_byte(b[left - 1]) {
        // Cut inside a longer run: the key can only start after a space of it.
        left += b[left..hit_start].iter().position(|&c| c == b' ')? + 1;
    }
    let mut right = hit_end;
    while right < b.len() && is_key_byte(b[right]) && right - hit_start <= MAX_KEY {
        right += 1;
    }
    // The key's own last word may be followed by spaces before the separator.
    let mut key_end = right;
    while key_end > hit_end && b[key_end - 1] == b' ' {
        key_end -= 1;
    }
    // A key may be the last words of the run ("Please send the name: ..."): try each word start.
    let mut start = left;
    loop {
        if let Some(field) = lookup(&b[start..key_end]) {
            return Some((start, right, field));
        }
        let next = b[start..hit_start].iter().position(|&c| c == b' ')?;
        start += next + 1;
    }
}

fn lookup(key: &[u8]) -> Option<Field> {
    let mut norm = [0u8; MAX_KEY + 8];
    let mut n = 0;
    for &c in key {
        if matches!(c, b'_' | b'-' | b' ' | b'.') {
            continue;
        }
        if n == norm.len() {
            return None;
        }
        norm[n] = c.to_ascii_lowercase();
        n += 1;
    }
    KEY_MAP.get(&norm[..n]).copied()
}

/// A key and where its values are.
struct Label {
    key_start: usize,
    field: Field,
    /// The value after `key:` / `key=`, or `None` for a CSV header field.
    value: Option<(usize, usize)>,
}

/// What makes a labelled value card or address data, found once per scan: card words and the
/// address keys, both sorted by position.
struct Near<'a> {
    cards: &'a [(usize, usize)],
    card_words: Vec<usize>,
    address_keys: Vec<usize>,
}

impl Near<'_> {
    /// A card number, track data or a card word within [`NEAR_PAN`] bytes of `start..end`.
    fn card(&self, start: usize, end: usize) -> bool {
        let from = start.saturating_sub(NEAR_PAN);
        let to = end.saturating_add(NEAR_PAN);
        overlaps(self.cards, from, to) || any_in(&self.card_words, from, to)
    }

    /// Another address key (street, city, postcode...) within [`NEAR_PAN`] bytes.
    fn address(&self, key_start: usize, end: usize) -> bool {
        let from = key_start.saturating_sub(NEAR_PAN);
        let to = end.saturating_add(NEAR_PAN);
        let i = self.address_keys.partition_point(|&k| k < from);
        self.address_keys[i..]
            .iter()
            .take_while(|&&k| k < to)
            .any(|&k| k != key_start)
    }
}

/// A position of the sorted `positions` in `from..to`.
fn any_in(positions: &[usize], from: usize, to: usize) -> bool {
    let i = positions.partition_point(|&p| p < from);
    positions.get(i).is_some_and(|&p| p < to)
}

fn labelled(text: &str, cards: &[(usize, usize)], out: &mut Vec<Candidate>) {
    let labels = labels(text);
    if labels.is_empty() {
        return;
    }
    let near = Near {
        cards,
        card_words: card_words(text),
        address_keys: labels
            .iter()
            .filter(|l| matches!(l.field, Field::Address | Field::Locality | Field::Postcode))
            .map(|l| l.key_start)
            .collect(),
    };
    for l in &labels {
        match l.value {
            Some((vs, ve)) => {
                let card = near.card(l.key_start, ve);
                let address = near.address(l.key_start, ve);
                labelled_value(text, vs, ve, l.field, card, address, Rule::Labelled, out);
            }
            None => csv_column(text, l.key_start, l.field, &near, out),
        }
    }
}

/// Every key followed by a value or heading a CSV column, in order.
fn labels(text: &str) -> Vec<Label> {
    let b = text.as_bytes();
    let mut labels = Vec::new();
    let mut next_from = 0;
    for hit in KEY_SEARCH.find_iter(text) {
        if hit.start() < next_from {
            continue;
        }
        let Some((key_start, key_end, field)) = key_at(b, hit.start(), hit.end()) else {
            continue;
        };
        // A key inside a word ("username", "filename") is not this key.
        if key_start > 0 && (b[key_start - 1].is_ascii_alphanumeric() || b[key_start - 1] == b'_') {
            continue;
        }
        next_from = key_end;
        let mut i = key_end;
        // Closing quote of a JSON or quoted key, possibly escaped (JSON inside a JSON string).
        if b.get(i) == Some(&b'\\') && matches!(b.get(i + 1), Some(b'"')) {
            i += 2;
        } else if matches!(b.get(i), Some(b'"' | b'\'')) {
            i += 1;
        }
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let xml = key_start > 0 && b[key_start - 1] == b'<';
        match b.get(i) {
            Some(b':' | b'=') => {
                i += 1;
                if b.get(i) == Some(&b'>') {
                    i += 1;
                }
            }
            Some(b'>') if xml => i += 1,
            Some(b',' | b'\t' | b';' | b'|' | b'\r' | b'\n') | None => {
                labels.push(Label {
                    key_start,
                    field,
                    value: None,
                });
                continue;
            }
            _ => continue,
        }
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        if let Some((vs, ve)) = value_at(text, i, xml) {
            labels.push(Label {
                key_start,
                field,
                value: Some((vs, ve)),
            });
            next_from = next_from.max(ve);
        }
    }
    labels
}

/// Card words as written in lower case, capitalised and in capitals, and whether they must end
/// at a word boundary ("pan" must not match "panel"; "card" may match "cards", "cardholder").
const CARD_WORDS: &[(&str, bool)] = &[
    ("card", false),
    ("pan", true),
    ("cvv", false),
    ("cvc", false),
    ("expir", false),
    ("payment", false),
    ("billing", false),
    ("visa", true),
    ("mastercard", true),
    ("amex", true),
];

#[allow(clippy::expect_used)] // constant patterns, built by every test run
static CARD_SEARCH: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .build(CARD_WORDS.iter().flat_map(|(w, _)| case_forms(w)))
        .expect("card words build")
});

fn case_forms(w: &str) -> [String; 3] {
    let mut cap = w.to_string();
    cap[..1].make_ascii_uppercase();
    [w.to_string(), cap, w.to_ascii_uppercase()]
}

/// Where a card word starts: at a word start (or a camelCase hump: `creditCard`).
fn card_words(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    CARD_SEARCH
        .find_iter(text)
        .filter(|m| {
            let (_, whole) = CARD_WORDS[m.pattern().as_usize() / 3];
            let starts = m.start() == 0 || {
                let p = b[m.start() - 1];
                !p.is_ascii_alphabetic()
                    || (p.is_ascii_lowercase() && b[m.start()].is_ascii_uppercase())
            };
            let ends = !whole
                || b.get(m.end()).is_none_or(|c| {
                    !c.is_ascii_lowercase()
                        && (!c.is_ascii_uppercase() || b[m.end() - 1].is_ascii_lowercase())
                });
            starts && ends
        })
        .map(|m| m.start())
        .collect()
}

/// The value starting at `i`: quoted (up to its closing quote) or bare (up to the end of the
/// line or of a form field).
fn value_at(text: &str, mut i: usize, xml: bool) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut quote = None;
    if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'"') {
        i += 2;
        quote = Some(b'\\');
    } else if let Some(&q @ (b'"' | b'\'')) = b.get(i) {
        i += 1;
        quote = Some(q);
    }
    let limit = (i + MAX_VALUE).min(b.len());
    let end = match quote {
        Some(q) => i + b[i..limit].iter().position(|&c| c == q || c == b'\n')?,
        None => {
            let stop = |c: &u8| {
                matches!(c, b'\r' | b'\n' | b'&' | b'|' | b'"' | b'\t') || (xml && *c == b'<')
            };
            i + b[i..limit].iter().position(stop).unwrap_or(limit - i)
        }
    };
    let mut end = end;
    while end > i && b[end - 1] == b' ' {
        end -= 1;
    }
    while end > i && !text.is_char_boundary(end) {
        end -= 1;
    }
    (end > i).then_some((i, end))
}

#[derive(Clone, Copy)]
enum Rule {
    Labelled,
    Csv,
}

#[allow(clippy::too_many_arguments)]
fn labelled_value(
    text: &str,
    vs: usize,
    ve: usize,
    field: Field,
    card: bool,
    address: bool,
    rule: Rule,
    out: &mut Vec<Candidate>,
) {
    let (name_rule, address_rule) = match rule {
        Rule::Labelled => ("cardholder_name.labelled", "postal_address.labelled"),
        Rule::Csv => ("cardholder_name.csv_column", "postal_address.csv_column"),
    };
    match field {
        Field::Cardholder | Field::Person | Field::PersonPart => {
            let min_words = if field == Field::Person { 2 } else { 1 };
            let Some(end) = name_at(text, vs, ve, min_words, true) else {
                return;
            };
            // A quoted or CSV value is a name only as a whole ("Payment Service v2" is not).
            if text[end..ve].trim().chars().any(char::is_alphanumeric) {
                return;
            }
            let score = match (field, card) {
                (Field::Cardholder, true) => LABEL_CARDHOLDER_WITH_CARD,
                (Field::Cardholder, false) => LABEL_CARDHOLDER,
                (_, true) => LABEL_GENERIC_WITH_CARD,
                (_, false) => LABEL_GENERIC,
            };
            push(out, Entity::CardholderName, vs, end, score, name_rule);
        }
        Field::Address => {
            // A shaped address is taken as parsed; anything else must at least look postal.
            let end = match address_at(text, vs) {
                Some(end) if end <= ve => end,
                _ if postal_like(&text[vs..ve]) => ve,
                _ => return,
            };
            let score = if card {
                LABEL_ADDRESS_WITH_CARD
            } else {
                LABEL_ADDRESS
            };
            push(out, Entity::PostalAddress, vs, end, score, address_rule);
        }
        Field::Locality | Field::Postcode => {
            let v = &text[vs..ve];
            let ok = if field == Field::Postcode {
                postcode_len(v.as_bytes()) == Some(v.len())
            } else {
                name_at(text, vs, ve, 1, false) == Some(ve)
            };
            if ok && (card || address) {
                push(
                    out,
                    Entity::PostalAddress,
                    vs,
                    ve,
                    LABEL_LOCALITY,
                    address_rule,
                );
            }
        }
    }
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A CSV header field at `key_start`: the same column in the rows below it.
fn csv_column(
    text: &str,
    key_start: usize,
    field: Field,
    near: &Near<'_>,
    out: &mut Vec<Candidate>,
) {
    let b = text.as_bytes();
    let line_start = b[..key_start]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |p| p + 1);
    if key_start - line_start > CSV_SPAN {
        return;
    }
    let Some(line_end) = b[key_start..]
        .iter()
        .take(CSV_SPAN)
        .position(|&c| c == b'\n')
        .map(|p| key_start + p)
    else {
        return;
    };
    let header = &b[line_start..line_end];
    let Some(&delim) = [b',', b'\t', b';', b'|']
        .iter()
        .find(|&&d| header.contains(&d))
    else {
        return;
    };
    // The key must be a whole field (optionally quoted).
    let before = &b[line_start..key_start];
    let field_start = before
        .iter()
        .rposition(|&c| c == delim)
        .map_or(0, |p| p + 1);
    if before[field_start..]
        .iter()
        .any(|&c| !matches!(c, b'"' | b' '))
    {
        return;
    }
    let column = before.iter().filter(|&&c| c == delim).count();
    // A card column in the header makes every row card context; another address column makes
    // a city or postcode column part of an address.
    let header_card = any_in(&near.card_words, line_start, line_end);
    let header_address = near
        .address_keys
        .iter()
        .any(|&k| k != key_start && (line_start..line_end).contains(&k));
    let limit = (line_start + CSV_SPAN).min(b.len());
    let mut row = line_end + 1;
    while row < limit {
        let row_end = b[row..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |p| row + p);
        let Some((vs, ve)) = csv_field(b, row, row_end, delim, column) else {
            break;
        };
        if vs >= limit {
            break;
        }
        let card = header_card || overlaps(near.cards, row, row_end);
        let mut ve = ve;
        while ve > vs && !text.is_char_boundary(ve) {
            ve -= 1;
        }
        if text.is_char_boundary(vs) {
            labelled_value(text, vs, ve, field, card, header_address, Rule::Csv, out);
        }
        row = row_end + 1;
    }
}

/// Field `column` of one CSV row, without its quotes.
fn csv_field(
    b: &[u8],
    row: usize,
    row_end: usize,
    delim: u8,
    column: usize,
) -> Option<(usize, usize)> {
    let mut i = row;
    let mut n = 0;
    loop {
        let quoted = b.get(i) == Some(&b'"') && i < row_end;
        let (vs, ve, next) = if quoted {
            let close = i + 1 + b[i + 1..row_end].iter().position(|&c| c == b'"')?;
            let next = b[close..row_end]
                .iter()
                .position(|&c| c == delim)
                .map(|p| close + p);
            (i + 1, close, next)
        } else {
            let next = b[i..row_end]
                .iter()
                .position(|&c| c == delim)
                .map(|p| i + p);
            let ve = next.unwrap_or(row_end);
            let ve = if ve > i && b[ve - 1] == b'\r' {
                ve - 1
            } else {
                ve
            };
            (i, ve, next)
        };
        if n == column {
            return (vs < ve).then_some((vs, ve));
        }
        i = next? + 1;
        n += 1;
    }
}

// ---- shapes ---------------------------------------------------------------------------------

/// A word of `text` starting at `i`: its end (letters, digits, `'`, `’` and `-` inside).
fn word_end(text: &str, i: usize) -> usize {
    let mut end = i;
    let mut chars = text[i..].char_indices().peekable();
    while let Some((k, c)) = chars.next() {
        let joiner = matches!(c, '\'' | '’' | '-');
        if c.is_alphanumeric()
            || (joiner && k > 0 && chars.peek().is_some_and(|&(_, n)| n.is_alphabetic()))
        {
            end = i + k + c.len_utf8();
        } else {
            break;
        }
    }
    end
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Honorific,
    Initial,
    Name,
    Particle,
    Suffix,
    Other,
}

fn classify(word: &str, dotted: bool) -> Tok {
    let mut chars = word.chars();
    let Some(first) = chars.next() else {
        return Tok::Other;
    };
    let flags = word_flags(word);
    if flags & PARTICLE != 0 && word.chars().all(char::is_lowercase) {
        return Tok::Particle;
    }
    if !first.is_uppercase() {
        return Tok::Other;
    }
    if flags & HONORIFIC != 0 {
        return Tok::Honorific;
    }
    if flags & SUFFIX != 0 && (dotted || word.len() <= 3) {
        return Tok::Suffix;
    }
    if word.chars().count() == 1 {
        return Tok::Initial;
    }
    if flags & STOP != 0 {
        return Tok::Other;
    }
    if word
        .chars()
        .all(|c| c.is_uppercase() || matches!(c, '\'' | '’' | '-'))
    {
        return Tok::Name;
    }
    // Capitalised: lower case after the first letter, except right after `'`/`-` (O'Brien,
    // Smith-Jones) and after Mc/Mac (McDonald). CamelCase identifiers are not names.
    let mut prev = first;
    for (k, c) in word.char_indices().skip(1) {
        if c.is_uppercase() {
            let prefix = &word[..k];
            let ok = matches!(prev, '\'' | '’' | '-') || prefix == "Mc" || prefix == "Mac";
            if !ok {
                return Tok::Other;
            }
        } else if !(c.is_lowercase() || matches!(c, '\'' | '’' | '-')) {
            return Tok::Other;
        }
        prev = c;
    }
    Tok::Name
}

/// A person's name starting at `start` and ending by `limit`: an optional honorific, one to four
/// names and initials (at least `min_words` names), an optional suffix. Returns its end.
/// `plus` accepts `+` between words (form encoding).
fn name_at(text: &str, start: usize, limit: usize, min_words: usize, plus: bool) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = start;
    let mut names = 0;
    let mut initials = 0;
    let mut honorific = false;
    let mut end = None;
    for n in 0.. {
        if i >= limit || n > 7 {
            break;
        }
        let we = word_end(text, i);
        if we == i || we > limit {
            break;
        }
        let dotted = b.get(we) == Some(&b'.');
        let tok = classify(&text[i..we], dotted);
        let after = if dotted && matches!(tok, Tok::Honorific | Tok::Initial | Tok::Suffix) {
            we + 1
        } else {
            we
        };
        match tok {
            Tok::Honorific if n == 0 => honorific = true,
            Tok::Initial => initials += 1,
            Tok::Name => names += 1,
            Tok::Particle if names + initials > 0 => {}
            Tok::Suffix if names > 0 => {
                end = Some(after);
                break;
            }
            _ => break,
        }
        if matches!(tok, Tok::Name | Tok::Initial) {
            end = Some(after);
        }
        if names + initials > 4 {
            // A run of five capitalised words is a title or heading, not a name.
            return None;
        }
        // Next word: after one space (or `+` in a form, or `, ` never: "Smith, 12 Main St" ends).
        match b.get(after) {
            Some(b' ') if after + 1 < limit && b.get(after + 1) != Some(&b' ') => i = after + 1,
            Some(b'+') if plus => i = after + 1,
            _ => break,
        }
    }
    let end = end?;
    if names == 0 || (!honorific && names + initials < min_words) {
        return None;
    }
    // The name ends at a word boundary a value can end at, not inside an identifier or e-mail.
    let next = text[end..].chars().next();
    let ok = next.is_none_or(|c| {
        c.is_whitespace()
            || matches!(
                c,
                ',' | ';' | ':' | ')' | ']' | '}' | '"' | '\'' | '<' | '|' | '&' | '.' | '\\' | '+'
            )
    });
    if !ok
        || (next == Some('.')
            && !text[end + 1..]
                .chars()
                .next()
                .is_none_or(char::is_whitespace))
    {
        return None;
    }
    Some(end)
}

/// A word may start at `i`: the previous character ends a word and is not part of an
/// identifier, path, e-mail or number.
fn word_starts(text: &str, i: usize) -> bool {
    let Some(prev) = text[..i].chars().next_back() else {
        return true;
    };
    !(prev.is_alphanumeric()
        || matches!(
            prev,
            '_' | '-' | '.' | '/' | '@' | '\\' | '\'' | '’' | '$' | '#'
        ))
}

/// Postcode at the start of `b`: US ZIP (`62704`, `62704-1234`, also German and French five
/// digits), UK (`SW1A 1AA`), Canadian (`K1A 0B1`). Returns its length.
fn postcode_len(b: &[u8]) -> Option<usize> {
    let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let u = |i: usize| b.get(i).is_some_and(u8::is_ascii_uppercase);
    let ends = |i: usize| b.get(i).is_none_or(|c| !c.is_ascii_alphanumeric());
    if (0..5).all(d) {
        if b.get(5) == Some(&b'-') && (6..10).all(d) && ends(10) {
            return Some(10);
        }
        return ends(5).then_some(5);
    }
    // Canadian: A1A 1A1 (space optional).
    if u(0) && d(1) && u(2) {
        let s = usize::from(b.get(3) == Some(&b' '));
        if d(3 + s) && u(4 + s) && d(5 + s) && ends(6 + s) {
            return Some(6 + s);
        }
    }
    // UK outward code: A9, A99, AA9, AA99, A9A, AA9A; then inward 9AA.
    if u(0) {
        let mut i = 1;
        if u(i) {
            i += 1;
        }
        if !d(i) {
            return None;
        }
        i += 1;
        if d(i) || u(i) {
            i += 1;
        }
        let s = usize::from(b.get(i) == Some(&b' '));
        let j = i + s;
        if d(j) && u(j + 1) && u(j + 2) && ends(j + 3) {
            return Some(j + 3);
        }
    }
    None
}

/// A street address starting at `start` with its house number: `12 Main Street`, optional unit
/// (`Apt 4B`), optional locality (`Springfield IL 62704`, `London SW1A 1AA`, `10115 Berlin`).
/// Returns its end.
fn address_at(text: &str, start: usize) -> Option<usize> {
    let b = text.as_bytes();
    let limit = (start + MAX_ADDRESS).min(b.len());
    // House number: 1-5 digits, an optional letter or range (221B, 12-14).
    let mut i = start;
    while i < limit && b[i].is_ascii_digit() && i - start < 5 {
        i += 1;
    }
    if i == start || b.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    } else if b.get(i).is_some_and(u8::is_ascii_alphabetic) && b.get(i + 1) == Some(&b' ') {
        i += 1;
    }
    if b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    // Street words, then a street suffix.
    let mut street_end = None;
    for words in 0..6 {
        if i >= limit {
            break;
        }
        let we = word_end(text, i);
        if we == i {
            break;
        }
        let w = &text[i..we];
        let first = w.chars().next()?;
        let ordinal = first.is_ascii_digit()
            && ["st", "nd", "rd", "th"].iter().any(|s| w.ends_with(s))
            && w.len() <= 6;
        if !(first.is_uppercase() || ordinal) {
            break;
        }
        if words > 0 && one_of(STREET, w) {
            let mut e = we;
            // "St." abbreviates; "Street." ends a sentence.
            if b.get(e) == Some(&b'.') && w.len() <= 4 {
                e += 1;
            }
            street_end = Some(e);
            break;
        }
        match b.get(we) {
            Some(b' ') => i = we + 1,
            _ => break,
        }
    }
    let mut end = street_end?;
    // Unit: ", Apt 4B", " Suite 100", " #5".
    if let Some(e) = unit_after(text, end) {
        end = e;
    }
    if let Some(e) = locality_after(text, end, limit) {
        end = e;
    }
    Some(end)
}

fn sep_len(b: &[u8], i: usize) -> usize {
    match (b.get(i), b.get(i + 1)) {
        // A bare comma separates CSV fields, not the parts of one address.
        (Some(b','), Some(b' ' | b'\n')) => 2,
        (Some(b' ' | b'\n'), _) => 1,
        _ => 0,
    }
}

fn unit_after(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let s = sep_len(b, i);
    if s == 0 {
        return None;
    }
    let j = i + s;
    let mut k = if b.get(j) == Some(&b'#') {
        j + 1
    } else {
        let we = word_end(text, j);
        if we == j || !one_of(UNIT, &text[j..we]) {
            return None;
        }
        let mut k = we;
        if b.get(k) == Some(&b'.') {
            k += 1;
        }
        if b.get(k) == Some(&b' ') {
            k += 1;
        }
        k
    };
    let id = k;
    while k < b.len() && k - id < 6 && (b[k].is_ascii_alphanumeric() || b[k] == b'-') {
        k += 1;
    }
    (k > id && b.get(k).is_none_or(|c| !c.is_ascii_alphanumeric())).then_some(k)
}

/// `, Springfield, IL 62704`, ` London SW1A 1AA`, `, 10115 Berlin`: taken only with a postcode
/// or a two-letter region, so a street followed by an ordinary capitalised word ends at the
/// street.
fn locality_after(text: &str, i: usize, limit: usize) -> Option<usize> {
    let b = text.as_bytes();
    let s = sep_len(b, i);
    if s == 0 {
        return None;
    }
    let j = i + s;
    // Postcode first, then the city (DE, FR and many others).
    if let Some(p) = postcode_len(&b[j..]) {
        if b.get(j + p) == Some(&b' ') {
            let we = word_end(text, j + p + 1);
            if we > j + p + 1 && classify(&text[j + p + 1..we], false) == Tok::Name {
                return Some(we);
            }
        }
        return Some(j + p);
    }
    // City: one to three capitalised words.
    let mut k = j;
    let mut city_end = None;
    for _ in 0..3 {
        let we = word_end(text, k);
        if we == k || we > limit || classify(&text[k..we], false) != Tok::Name {
            break;
        }
        city_end = Some(we);
        if b.get(we) == Some(&b' ') && b.get(we + 1).is_some_and(|c| c.is_ascii_uppercase()) {
            // The next word may be the region or a postcode rather than more of the city.
            if postcode_len(&b[we + 1..]).is_some() || region_len(b, we + 1).is_some() {
                break;
            }
            k = we + 1;
        } else {
            break;
        }
    }
    let city_end = city_end?;
    let k = city_end + sep_len(b, city_end);
    if k == city_end {
        return None;
    }
    if let Some(p) = postcode_len(&b[k..]) {
        return Some(k + p);
    }
    let r = region_len(b, k)?;
    let after = k + r;
    if b.get(after) == Some(&b' ') {
        if let Some(p) = postcode_len(&b[after + 1..]) {
            return Some(after + 1 + p);
        }
    }
    Some(after)
}

/// A two-letter region code (`IL`, `ON`, `NSW` as three).
fn region_len(b: &[u8], i: usize) -> Option<usize> {
    let n = b[i.min(b.len())..]
        .iter()
        .take_while(|c| c.is_ascii_uppercase())
        .count();
    ((2..=3).contains(&n) && b.get(i + n).is_none_or(|c| !c.is_ascii_alphanumeric())).then_some(n)
}

/// A labelled value that is not a shaped street address but may still be a postal one: words and
/// a number, or a street word; not a network address, e-mail, URL or hash.
fn postal_like(v: &str) -> bool {
    let v = v.trim();
    if v.len() < 4 || v.contains('@') || v.contains("://") || v.contains('{') || v.contains('=') {
        return false;
    }
    let words: Vec<&str> = v
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() < 2 {
        return false;
    }
    let alpha_words = words
        .iter()
        .filter(|w| {
            w.chars().filter(|c| c.is_alphabetic()).count() >= 2
                && w.chars().all(|c| c.is_alphabetic() || c == '.')
        })
        .count();
    let digit = v.chars().any(|c| c.is_ascii_digit());
    // A street or unit word; a single word and a number ("localhost 8080") is not enough.
    let street = words.iter().any(|w| {
        let w = w.trim_end_matches('.');
        one_of(STREET, w) || one_of(UNIT, w)
    });
    // Dotted or coloned numbers are network addresses, versions or times.
    let network = words.iter().any(|w| {
        w.chars().filter(|&c| c == '.' || c == ':').count() >= 2
            && w.chars().any(|c| c.is_ascii_digit())
    });
    alpha_words >= 1 && ((digit && alpha_words >= 2) || street) && !network
}

// ---- near a card ----------------------------------------------------------------------------

fn near_card(
    text: &str,
    start: usize,
    end: usize,
    cards: &[(usize, usize)],
    out: &mut Vec<Candidate>,
) {
    let b = text.as_bytes();
    let overlaps_card = |s: usize, e: usize| overlaps(cards, s, e);
    // Names and addresses before the card end within NEAR_PAN of it; after it, they start within.
    let from = floor_boundary(text, start.saturating_sub(NEAR_PAN + MAX_ADDRESS));
    let to = floor_boundary(text, end.saturating_add(NEAR_PAN));
    let mut i = from;
    let mut taken_until = 0;
    while i < to {
        let Some(c) = text[i..].chars().next() else {
            break;
        };
        let here = i;
        i += c.len_utf8();
        if here < taken_until || !word_starts(text, here) || (here >= start && here < end) {
            continue;
        }
        if c.is_ascii_digit() {
            if let Some(e) = address_at(text, here) {
                let near = if e <= start {
                    e + NEAR_PAN >= start
                } else {
                    here >= end
                };
                if near && !overlaps_card(here, e) {
                    push(
                        out,
                        Entity::PostalAddress,
                        here,
                        e,
                        ADDRESS_NEAR_PAN,
                        "postal_address.near_pan",
                    );
                    taken_until = e;
                }
            }
            continue;
        }
        if !c.is_uppercase() || here + MAX_NAME + NEAR_PAN < start {
            continue;
        }
        // Start only at the first capitalised word of a run: the tail of a longer run ("Visa
        // Payment Team Lead") is not a name of its own.
        if preceded_by_capitalised(text, here) {
            continue;
        }
        let limit = if here < start {
            start
        } else {
            floor_boundary(text, (here + MAX_NAME).min(b.len()))
        };
        if let Some(e) = name_at(text, here, limit, 2, false) {
            let near = if e <= start {
                e + NEAR_PAN >= start
            } else {
                here >= end
            };
            if near && !overlaps_card(here, e) {
                push(
                    out,
                    Entity::CardholderName,
                    here,
                    e,
                    NAME_NEAR_PAN,
                    "cardholder_name.near_pan",
                );
                taken_until = e;
            }
        }
    }
}

/// The word before `i` (one space before it) is capitalised and not a stop word or honorific.
fn preceded_by_capitalised(text: &str, i: usize) -> bool {
    let b = text.as_bytes();
    if i < 2 || b[i - 1] != b' ' {
        return false;
    }
    let end = i - 1;
    let start = text[..end]
        .char_indices()
        .rev()
        .take_while(|&(_, c)| c.is_alphabetic() || matches!(c, '\'' | '’' | '-'))
        .last()
        .map_or(end, |(k, _)| k);
    start < end && word_starts(text, start) && classify(&text[start..end], false) == Tok::Name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Option<&str> {
        name_at(s, 0, s.len(), 2, false).map(|e| &s[..e])
    }

    fn address(s: &str) -> Option<&str> {
        address_at(s, 0).map(|e| &s[..e])
    }

    #[test]
    fn name_shapes() {
        assert_eq!(name("John Smith"), Some("John Smith"));
        assert_eq!(name("JOHN Q PUBLIC"), Some("JOHN Q PUBLIC"));
        assert_eq!(
            name("Dr. Jane O'Brien-Smith Jr."),
            Some("Dr. Jane O'Brien-Smith Jr.")
        );
        assert_eq!(name("Mary McDonald, 12"), Some("Mary McDonald"));
        assert_eq!(name("José Müller"), Some("José Müller"));
        assert_eq!(name("Ludwig van Beethoven"), Some("Ludwig van Beethoven"));
        assert_eq!(name("Mr Smith"), Some("Mr Smith"));
        assert_eq!(name("J. R. Tolkien wrote"), Some("J. R. Tolkien"));
        assert_eq!(name("MyClass Name"), None);
        assert_eq!(name("John"), None);
        assert_eq!(name("Alpha Beta Gamma Delta Epsilon"), None);
        assert_eq!(name("John Smith@example"), None);
        assert_eq!(name("Visa Card"), None);
    }

    #[test]
    fn address_shapes() {
        assert_eq!(
            address("12 Main Street, Springfield IL 62704 x"),
            Some("12 Main Street, Springfield IL 62704")
        );
        assert_eq!(
            address("221B Baker St, London NW1 6XE."),
            Some("221B Baker St, London NW1 6XE")
        );
        assert_eq!(
            address("5 Elm Rd, Apt 4B, Toronto, ON M5V 2T6"),
            Some("5 Elm Rd, Apt 4B, Toronto, ON M5V 2T6")
        );
        assert_eq!(
            address("7 Long Lane, 10115 Berlin"),
            Some("7 Long Lane, 10115 Berlin")
        );
        assert_eq!(address("12 Main Street. Then"), Some("12 Main Street"));
        assert_eq!(address("12 Main St. Then"), Some("12 Main St."));
        assert_eq!(address("12 Main Street Then we"), Some("12 Main Street"));
        assert_eq!(address("3 cats way"), None);
        assert_eq!(address("Main Street"), None);
        assert_eq!(address("2024 Annual Report"), None);
    }

    #[test]
    fn postcodes() {
        for (p, n) in [
            ("62704", 5),
            ("62704-1234", 10),
            ("SW1A 1AA", 8),
            ("M5V 2T6", 7),
            ("EC1A1BB", 7),
        ] {
            assert_eq!(postcode_len(p.as_bytes()), Some(n), "{p}");
        }
        assert_eq!(postcode_len(b"627041"), None);
        assert_eq!(postcode_len(b"ABC"), None);
    }

    #[test]
    fn keys_are_whole_and_normalised() {
        let t = b"Name on card: X";
        assert_eq!(key_at(t, 0, 4).map(|k| k.2), Some(Field::Cardholder));
        let t = b"please send the name: X";
        assert_eq!(
            key_at(t, 16, 20).map(|k| (k.0, k.2)),
            Some((16, Field::Person))
        );
        assert_eq!(lookup(b"billing_address"), Some(Field::Address));
        assert_eq!(lookup(b"hostname"), None);
    }

    #[test]
    fn postal_like_values() {
        assert!(postal_like("12 Main Street, Springfield"));
        assert!(postal_like("Flat 3, Rosebank Gardens"));
        assert!(!postal_like("10.0.0.1:443 host"));
        assert!(!postal_like("0x52908400098527886E0F7030069857D2E4169EE7"));
        assert!(!postal_like("ops@example.com x"));
        assert!(!postal_like("localhost 8080"));
        assert!(postal_like("Apt 3"));
    }
}
