//! Property tests: valid PANs with any separators are always found, Luhn failures never are, no
//! input makes the scanner panic, and no input makes it super-linear.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ztee_dlp::{
    anonymize, luhn_valid, EncryptionKey, Entity, KeyedHasher, MaskStyle, Operator, Operators,
    Scanner, ScannerConfig, StreamScanner,
};

fn scanner() -> Scanner {
    Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("scanner: {e}"))
}

/// (prefix, length) pairs covering every brand the detector knows.
const BRANDS: &[(&str, usize)] = &[
    ("4", 16),
    ("4", 13),
    ("4", 19),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("2720", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("65", 19),
    ("3528", 16),
    ("3589", 19),
    ("36", 14),
    ("300", 14),
    ("62", 16),
    ("6759", 12),
    ("5018", 19),
    ("2200", 16),
];

const SEPARATORS: &[&str] = &[
    " ", "-", ".", "/", "  ", "\n", "\r\n", "\u{2013}", "\u{2014}", "\u{a0}", "\u{200b}", "\u{202f}",
];

fn with_check_digit(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.push(0);
    for d in 0..10 {
        let last = v.len() - 1;
        v[last] = d;
        if luhn_valid(&v) {
            break;
        }
    }
    v
}

fn valid_pan() -> impl Strategy<Value = Vec<u8>> {
    (0..BRANDS.len(), proptest::collection::vec(0u8..10, 19)).prop_map(|(b, random)| {
        let (prefix, len) = BRANDS[b];
        let mut body: Vec<u8> = prefix.bytes().map(|c| c - b'0').collect();
        body.extend_from_slice(&random[..len - 1 - body.len()]);
        with_check_digit(&body)
    })
}

fn render(digits: &[u8], cuts: &[(usize, usize)], fullwidth: bool) -> String {
    // cuts: (position after which to put a separator, separator index)
    let mut s = String::new();
    for (i, d) in digits.iter().enumerate() {
        if fullwidth {
            s.push(char::from_u32(0xFF10 + u32::from(*d)).unwrap_or('0'));
        } else {
            s.push(char::from(b'0' + d));
        }
        if let Some(&(_, sep)) = cuts.iter().find(|c| c.0 == i && i + 1 < digits.len()) {
            s.push_str(SEPARATORS[sep]);
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_pans_with_random_separators_are_always_found(
        pan in valid_pan(),
        cuts in proptest::collection::vec((0usize..19, 0..SEPARATORS.len()), 0..6),
        fullwidth in any::<bool>(),
    ) {
        let s = scanner();
        let written = render(&pan, &cuts, fullwidth);
        let text = format!("payment with {written} today");
        let found = s.scan(&text);
        let hit = found.iter().find(|f| f.entity_type == Entity::CreditCard);
        prop_assert!(hit.is_some(), "not found: {:?}", written);
        let hit = hit.unwrap_or_else(|| unreachable!());
        prop_assert_eq!(&text[hit.byte_start..hit.byte_end], written.as_str());
        prop_assert_eq!(hit.start, "payment with ".len());
        prop_assert_eq!(hit.end - hit.start, written.chars().count());
    }

    #[test]
    fn digit_strings_failing_luhn_are_never_cards(
        mut digits in proptest::collection::vec(0u8..10, 12..=19),
        sep in proptest::option::of(0..SEPARATORS.len()),
    ) {
        if luhn_valid(&digits) {
            let last = digits.len() - 1;
            digits[last] = (digits[last] + 1) % 10;
        }
        let cuts: Vec<(usize, usize)> = sep.map(|s| (0..digits.len()).step_by(4).map(|i| (i + 3, s)).collect()).unwrap_or_default();
        let text = format!("card number {} here", render(&digits, &cuts, false));
        let s = scanner();
        let found = s.scan_with(&text, Some(&[Entity::CreditCard]), Some(0.0)).unwrap_or_default();
        // Subsequences at group boundaries may pass Luhn on their own; the whole string must not.
        let whole = found.iter().any(|f| f.byte_end - f.byte_start >= text.len() - "card number  here".len());
        prop_assert!(!whole, "{text:?} -> {found:?}");
    }

    #[test]
    fn no_input_panics_and_offsets_are_consistent(
        text in "(\\PC|[0-9 \\-./@:=^%;]|AKIA|4111|-----BEGIN PRIVATE KEY-----|password=|\u{200b}|\u{ff11}){0,200}",
        chunk in 1usize..64,
    ) {
        let s = Arc::new(scanner());
        let findings = s.scan_with(&text, None, Some(0.0)).unwrap_or_default();
        for f in &findings {
            prop_assert!(text.is_char_boundary(f.byte_start) && text.is_char_boundary(f.byte_end));
            prop_assert_eq!(text[..f.byte_start].chars().count(), f.start);
            prop_assert_eq!(text[..f.byte_end].chars().count(), f.end);
            prop_assert!((0.0..=1.0).contains(&f.score));
        }
        let hash = KeyedHasher::new(&[1u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        let enc = EncryptionKey::new(&[2u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        for op in [
            Operator::Replace { new_value: None },
            Operator::Redact,
            Operator::Mask(MaskStyle::Pci),
            Operator::Hash,
            Operator::Encrypt,
            Operator::Tokenize,
        ] {
            let ops = Operators::new(op).with_hash_key(hash.clone()).with_encryption_key(enc.clone());
            prop_assert!(anonymize(&text, &findings, &ops).is_ok());
        }
        let mut st = StreamScanner::new(Arc::clone(&s), Operators::default());
        let bytes = text.as_bytes();
        for piece in bytes.chunks(chunk) {
            prop_assert!(st.feed_bytes(piece).is_ok());
        }
        prop_assert!(st.finish().is_ok());
    }
}

/// Best of three timings of one scan.
fn time_scan(s: &Scanner, text: &str) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(s.scan(std::hint::black_box(text)));
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Inputs built to defeat the scanner's anchors (digits, separators, '@', ':', rule prefixes,
/// open key blocks, base64 runs): scanning 8x the input must cost about 8x, not 64x. The bound
/// is loose (24x) because the machine is shared; a quadratic path would blow far past it.
#[test]
fn scan_time_is_linear_on_adversarial_inputs() {
    let s = scanner();
    let patterns: &[&str] = &[
        "4 ",
        "1",
        "4111-",
        "@",
        "a@",
        "a.",
        ":",
        "1:",
        "a:",
        "-----BEGIN PRIVATE KEY-----",
        "password=",
        "AKIA",
        "A",
        "DE89 ",
        "%B4111111111111111^",
        ";4111111111111111=",
        "cvv ",
        "\u{200b}1",
        "1.1.1.1.",
    ];
    for unit in patterns {
        let small = unit.repeat(8_000 / unit.len());
        let large = unit.repeat(64_000 / unit.len());
        let ts = time_scan(&s, &small).max(Duration::from_micros(100));
        let tl = time_scan(&s, &large);
        let ratio = tl.as_secs_f64() / ts.as_secs_f64();
        assert!(
            ratio < 24.0,
            "{unit:?}: 8x input took {ratio:.1}x the time ({ts:?} -> {tl:?})"
        );
    }
}
