//! Operators, overlap resolution, tokenization, streaming and JSON-aware redaction.

use std::sync::Arc;

use ztee_dlp::{
    anonymize, anonymize_with, deanonymize, json, resolve_overlaps, EncryptionKey, Entity, Finding,
    KeyedHasher, MaskStyle, Operator, Operators, Scanner, ScannerConfig, StreamScanner, TokenMap,
};

fn scanner() -> Scanner {
    Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("scanner: {e}"))
}

fn redact_with(text: &str, ops: &Operators) -> String {
    let s = scanner();
    let f = s.scan(text);
    anonymize(text, &f, ops)
        .unwrap_or_else(|e| panic!("{e}"))
        .text
}

#[test]
fn replace_redact_and_counts() {
    let s = scanner();
    let text = "card 4111 1111 1111 1111, mail a@b.io, card 5500-0000-0000-0004";
    let f = s.scan(text);
    let out = anonymize(text, &f, &Operators::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.text,
        "card <CREDIT_CARD>, mail <EMAIL_ADDRESS>, card <CREDIT_CARD>"
    );
    assert_eq!(out.counts.get(&Entity::CreditCard), Some(&2));
    assert_eq!(out.counts.get(&Entity::EmailAddress), Some(&1));
    assert_eq!(out.items[1].start, 25);
    assert_eq!(out.items[1].end, 40);
    let redacted = redact_with(text, &Operators::new(Operator::Redact));
    assert_eq!(redacted, "card , mail , card ");
}

#[test]
fn pci_mask_keeps_bin_last_four_and_separators() {
    let ops = Operators::new(Operator::Mask(MaskStyle::Pci));
    assert_eq!(
        redact_with("pan 4111 1111 1111 1111", &ops),
        "pan 4111 1111 **** 1111"
    );
    assert_eq!(
        redact_with("pan 4111-1111-1111-1111", &ops),
        "pan 4111-1111-****-1111"
    );
    assert_eq!(
        redact_with("amex 3782 822463 10005", &ops),
        "amex 3782 82**** *0005"
    );
    assert_eq!(redact_with("pan 4222222222222", &ops), "pan 4222*****2222");
    assert_eq!(redact_with("CVV: 123", &ops), "CVV: ***");
    let presidio_style = Operators::new(Operator::Mask(MaskStyle::Chars {
        masking_char: '#',
        chars_to_mask: 12,
        from_end: false,
    }));
    assert_eq!(
        redact_with("pan 4111111111111111", &presidio_style),
        "pan ############1111"
    );
}

#[test]
fn keyed_hash_and_encryption_round_trip() {
    let s = scanner();
    let key = KeyedHasher::new(b"audit-key-0123456789").unwrap_or_else(|e| panic!("{e}"));
    let ops = Operators::new(Operator::Hash).with_hash_key(key.clone());
    let out = redact_with("pan 4111-1111-1111-1111", &ops);
    assert_eq!(out, format!("pan {}", key.hash_pan("4111111111111111")));
    assert!(anonymize(
        "pan 4111111111111111",
        &s.scan("pan 4111111111111111"),
        &Operators::new(Operator::Hash)
    )
    .is_err());

    let ek = EncryptionKey::new(&[9u8; 32]).unwrap_or_else(|e| panic!("{e}"));
    let ops = Operators::new(Operator::Encrypt).with_encryption_key(ek.clone());
    let text = "pan 4111 1111 1111 1111 mail a@b.io";
    let out = anonymize(text, &s.scan(text), &ops).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !out.text.contains("4111") && !out.text.contains("a@b.io"),
        "encrypted text {:?}, findings {:?}",
        out.text,
        s.scan(text)
            .iter()
            .map(|f| (f.entity_type, f.start, f.end))
            .collect::<Vec<_>>()
    );
    let spans: Vec<(usize, usize)> = out.items.iter().map(|i| (i.start, i.end)).collect();
    assert_eq!(
        deanonymize(&out.text, &spans, &ek).unwrap_or_else(|e| panic!("{e}")),
        text
    );
    let other = EncryptionKey::new(&[8u8; 32]).unwrap_or_else(|e| panic!("{e}"));
    assert!(deanonymize(&out.text, &spans, &other).is_err());
}

#[test]
fn tokenization_across_request_and_response() {
    let s = scanner();
    let ops = Operators::new(Operator::Tokenize);
    let mut tokens = TokenMap::new();
    let request = "refund 4111 1111 1111 1111 and 5500000000000004, again 4111111111111111";
    let out = anonymize_with(request, &s.scan(request), &ops, &mut tokens)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.text,
        "refund <CREDIT_CARD_1> and <CREDIT_CARD_2>, again <CREDIT_CARD_1>"
    );
    let response = "Refunded <CREDIT_CARD_2>; <CREDIT_CARD_1> declined.";
    assert_eq!(
        tokens.restore(response),
        "Refunded 5500000000000004; 4111 1111 1111 1111 declined."
    );
    // The one-shot form returns its map.
    let one = anonymize(request, &s.scan(request), &ops).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one.tokens.len(), 2);
}

#[test]
fn overlaps_resolve_deterministically_to_the_union() {
    let f = |e, bs, be, score: f64, rule: &str| Finding {
        entity_type: e,
        start: bs,
        end: be,
        byte_start: bs,
        byte_end: be,
        score,
        rule_id: rule.to_string(),
    };
    let a = vec![
        f(Entity::CreditCard, 5, 21, 1.0, "a"),
        f(Entity::UsBankNumber, 5, 21, 0.4, "b"),
        f(Entity::CardTrackData, 4, 30, 1.0, "c"),
        f(Entity::EmailAddress, 40, 45, 1.0, "d"),
    ];
    let mut b = a.clone();
    b.reverse();
    let ra = resolve_overlaps(&a);
    assert_eq!(ra, resolve_overlaps(&b));
    assert_eq!(ra.len(), 2);
    assert_eq!((ra[0].byte_start, ra[0].byte_end), (4, 30));
    assert_eq!(ra[0].entity_type, Entity::CardTrackData);
    let text = "x".repeat(50);
    let out = anonymize(&text, &a, &Operators::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.counts.values().sum::<usize>(), 2);
    let bad = vec![f(Entity::CreditCard, 45, 60, 1.0, "x")];
    assert!(anonymize(&text, &bad, &Operators::default()).is_err());
}

fn stream_all(s: &Arc<Scanner>, ops: &Operators, chunks: &[&str]) -> String {
    let mut st = StreamScanner::new(Arc::clone(s), ops.clone());
    let mut out = String::new();
    for c in chunks {
        out.push_str(&st.feed(c).unwrap_or_else(|e| panic!("{e}")));
    }
    out.push_str(&st.finish().unwrap_or_else(|e| panic!("{e}")));
    out
}

#[test]
fn stream_finds_a_pan_split_at_every_position() {
    let s = Arc::new(scanner());
    let ops = Operators::default();
    let text = format!(
        "{}card 4111 1111 1111 1111 exp 12/27 and key AKIAIOSFODNN7EXAMPLE{}",
        "log line\n".repeat(60),
        " tail".repeat(100)
    );
    let whole = redact_with(&text, &ops);
    assert!(whole.contains("<CREDIT_CARD>") && whole.contains("<SECRET>"));
    let pan_at = text.find("4111").unwrap_or(0);
    // Every split around the card, expiry and key; a sample elsewhere.
    let splits =
        (0..text.len()).filter(|&i| (pan_at - 40..pan_at + 120).contains(&i) || i % 97 == 0);
    for split in splits {
        if !text.is_char_boundary(split) {
            continue;
        }
        let out = stream_all(&s, &ops, &[&text[..split], &text[split..]]);
        assert_eq!(out, whole, "split at {split}");
    }
    // Byte-at-a-time, with multi-byte characters split across chunks.
    let text = format!(
        "{}4111\u{2013}1111\u{2013}1111\u{2013}1111 é",
        "ü".repeat(300)
    );
    let mut st = StreamScanner::new(Arc::clone(&s), ops.clone());
    let mut out = String::new();
    for b in text.as_bytes() {
        out.push_str(&st.feed_bytes(&[*b]).unwrap_or_else(|e| panic!("{e}")));
    }
    out.push_str(&st.finish().unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(out, redact_with(&text, &ops));
    assert_eq!(st.counts().get(&Entity::CreditCard), Some(&1));
}

#[test]
fn stream_memory_and_delay_are_bounded() {
    let s = Arc::new(scanner());
    let mut st = StreamScanner::new(Arc::clone(&s), Operators::default());
    let line = "2024-01-15T10:00:00Z INFO request served in 12 ms\n";
    let mut released = 0usize;
    let mut fed = 0usize;
    for _ in 0..2000 {
        released += st.feed(line).unwrap_or_else(|e| panic!("{e}")).len();
        fed += line.len();
        assert!(
            fed - released <= 704 + line.len(),
            "held {} bytes",
            fed - released
        );
    }
    released += st.finish().unwrap_or_else(|e| panic!("{e}")).len();
    assert_eq!(released, fed);
}

#[test]
fn stream_redacts_a_long_open_private_key_block() {
    let s = Arc::new(scanner());
    let mut st = StreamScanner::new(Arc::clone(&s), Operators::default());
    let mut out = st
        .feed("start\n-----BEGIN PRIVATE KEY-----\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n";
    for _ in 0..2000 {
        out.push_str(&st.feed(body).unwrap_or_else(|e| panic!("{e}")));
    }
    out.push_str(
        &st.feed("-----END PRIVATE KEY-----\nafter\n")
            .unwrap_or_else(|e| panic!("{e}")),
    );
    out.push_str(&st.finish().unwrap_or_else(|e| panic!("{e}")));
    assert!(!out.contains("MIIEvQ"), "key material leaked");
    assert!(
        out.starts_with("start\n") && out.ends_with("after\n"),
        "{}",
        &out[..60]
    );
}

#[test]
fn json_mode_reports_paths_and_redacts_values() {
    let s = scanner();
    let doc = r#"{"order": {"id": 4111111111111111, "payment": {"card": "4111\u00201111\u00201111\u00201111", "holder email": "a@b.io"}}, "items": ["ok", "AKIAIOSFODNN7EXAMPLE"]}"#;
    let found = json::scan(&s, doc).unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<(&str, Entity)> = found
        .iter()
        .map(|f| (f.path.as_str(), f.finding.entity_type))
        .collect();
    assert!(
        paths.contains(&("$.order.payment.card", Entity::CreditCard)),
        "{paths:?}"
    );
    assert!(paths.contains(&("$.order.payment[\"holder email\"]", Entity::EmailAddress)));
    assert!(paths.contains(&("$.items[1]", Entity::Secret)));
    assert!(paths.contains(&("$.order.id", Entity::CreditCard)));
    let mut value = json::parse(doc).unwrap_or_else(|e| panic!("{e}"));
    let counts = json::redact(&s, &mut value, &Operators::default(), &mut TokenMap::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value["order"]["payment"]["card"], "<CREDIT_CARD>");
    assert_eq!(counts.get(&Entity::Secret), Some(&1));
    let err = json::scan(&s, "{\"a\": [1,}").err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("line 1, column")));
}

// ---- Separators and digits outside ASCII --------------------------------------------------

/// `4111111111111111` written in ways that hide it from a detector that knows only ASCII and
/// full-width digits and the usual separators.
fn unusual_pans() -> Vec<String> {
    let arabic = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from_u32(0x660 + d).unwrap_or(c),
                None => c,
            })
            .collect()
    };
    vec![
        "4111_1111_1111_1111".to_string(),
        "4111,1111,1111,1111".to_string(),
        "4111+1111+1111+1111".to_string(),
        "4\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1\u{ad}1"
            .to_string(),
        "4111\u{200b}1111\u{2060}1111\u{feff}1111".to_string(),
        "4_1_1_1_1_1_1_1_1_1_1_1_1_1_1_1".to_string(),
        arabic("4111111111111111"),
        arabic("4111 1111 1111 1111"),
        // Extended Arabic-Indic, Devanagari and Bengali digits.
        "\u{6f4}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}\u{6f1}"
            .to_string(),
        "\u{96a}\u{967}\u{967}\u{967}-\u{967}\u{967}\u{967}\u{967}-\u{967}\u{967}\u{967}\u{967}-\u{967}\u{967}\u{967}\u{967}"
            .to_string(),
        "\u{9ea}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}\u{9e7}"
            .to_string(),
    ]
}

/// No decimal digit of any script is left in `s`.
fn has_no_digit(s: &str) -> bool {
    !s.chars().any(|c| c.is_numeric())
}

#[test]
fn unusual_pans_are_replaced_and_redacted_whole() {
    for pan in unusual_pans() {
        let text = format!("paid with {pan} today");
        assert_eq!(
            redact_with(&text, &Operators::default()),
            "paid with <CREDIT_CARD> today",
            "{pan:?}"
        );
        let removed = redact_with(&text, &Operators::new(Operator::Redact));
        assert_eq!(removed, "paid with  today", "{pan:?}");
        assert!(has_no_digit(&removed), "{pan:?}");
    }
}

#[test]
fn unusual_pans_are_masked_hashed_and_tokenized_by_their_digits() {
    let ops = Operators::new(Operator::Mask(MaskStyle::Pci));
    // The BIN and last four stay, in the script they were written in; the rest is masked.
    assert_eq!(
        redact_with("pan \u{664}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661}", &ops),
        "pan \u{664}\u{661}\u{661}\u{661} \u{661}\u{661}\u{661}\u{661} **** \u{661}\u{661}\u{661}\u{661}"
    );
    assert_eq!(
        redact_with("pan 4111\u{ad}1111\u{ad}1111\u{ad}1111", &ops),
        "pan 4111\u{ad}1111\u{ad}****\u{ad}1111"
    );
    assert_eq!(
        redact_with("pan 4111_1111_1111_1111", &ops),
        "pan 4111_1111_****_1111"
    );
    let key = KeyedHasher::new(b"audit-key-0123456789").unwrap_or_else(|e| panic!("{e}"));
    let hash = Operators::new(Operator::Hash).with_hash_key(key.clone());
    let tokenize = Operators::new(Operator::Tokenize);
    let s = scanner();
    for pan in unusual_pans() {
        let text = format!("pan {pan}");
        assert_eq!(
            redact_with(&text, &hash),
            format!("pan {}", key.hash_pan("4111111111111111")),
            "{pan:?}"
        );
        // One PAN written two ways gets one placeholder.
        let both = format!("{pan} and 4111 1111 1111 1111");
        let out = anonymize(&both, &s.scan(&both), &tokenize).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.text, "<CREDIT_CARD_1> and <CREDIT_CARD_1>", "{pan:?}");
    }
}

#[test]
fn stream_finds_unusual_pans_split_anywhere() {
    let s = Arc::new(scanner());
    let ops = Operators::default();
    for pan in unusual_pans() {
        let text = format!(
            "{}card {pan} done{}",
            "log line\n".repeat(40),
            " tail".repeat(80)
        );
        let whole = redact_with(&text, &ops);
        assert!(whole.contains("card <CREDIT_CARD> done"), "{pan:?}");
        let pan_at = text.find(&pan).unwrap_or(0);
        for split in pan_at.saturating_sub(8)..pan_at + pan.len() + 8 {
            // Byte chunks: the split may fall inside a multi-byte digit or separator.
            let mut st = StreamScanner::new(Arc::clone(&s), ops.clone());
            let mut out = st
                .feed_bytes(&text.as_bytes()[..split])
                .unwrap_or_else(|e| panic!("{e}"));
            out.push_str(
                &st.feed_bytes(&text.as_bytes()[split..])
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            out.push_str(&st.finish().unwrap_or_else(|e| panic!("{e}")));
            assert_eq!(out, whole, "{pan:?} split at byte {split}");
        }
    }
}

#[test]
fn stream_holds_back_the_longest_pan_that_can_be_written() {
    // 19 digits of four bytes each with three four-byte invisible characters between every two:
    // the longest card number, in bytes, that the detector accepts.
    let pan = "4111111111111111110";
    assert!(ztee_dlp::luhn_valid(
        &pan.bytes().map(|b| b - b'0').collect::<Vec<_>>()
    ));
    let written = pan
        .chars()
        .filter_map(|c| c.to_digit(10))
        .filter_map(|d| char::from_u32(0x1d7ce + d))
        .map(String::from)
        .collect::<Vec<_>>()
        .join("\u{e0020}\u{e0020}\u{e0020}");
    assert_eq!(written.len(), 19 * 4 + 18 * 12);
    let s = Arc::new(scanner());
    let ops = Operators::default();
    let text = format!(
        "{}card {written} done{}",
        "x".repeat(600),
        " tail".repeat(80)
    );
    let whole = redact_with(&text, &ops);
    assert!(whole.contains("card <CREDIT_CARD> done"));
    for chunk in [1, 7, 64, 255, 300] {
        let mut st = StreamScanner::new(Arc::clone(&s), ops.clone());
        let mut out = String::new();
        for piece in text.as_bytes().chunks(chunk) {
            out.push_str(&st.feed_bytes(piece).unwrap_or_else(|e| panic!("{e}")));
        }
        out.push_str(&st.finish().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(out, whole, "chunks of {chunk} bytes");
    }
}
