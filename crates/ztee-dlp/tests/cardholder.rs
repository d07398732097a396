//! Cardholder names and postal addresses: found after labels and next to card numbers, never in
//! ordinary prose; redacted like every other entity, in streams too.

use std::sync::Arc;

use ztee_dlp::{
    anonymize, Entity, MaskStyle, Operator, Operators, Scanner, ScannerConfig, StreamScanner,
};

fn scanner() -> Scanner {
    Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("scanner: {e}"))
}

/// (entity, text, score) of the names and addresses found at the default threshold.
fn chd(s: &Scanner, text: &str) -> Vec<(Entity, String, f64)> {
    s.scan(text)
        .into_iter()
        .filter(|f| {
            matches!(
                f.entity_type,
                Entity::CardholderName | Entity::PostalAddress
            )
        })
        .map(|f| {
            (
                f.entity_type,
                text[f.byte_start..f.byte_end].to_string(),
                f.score,
            )
        })
        .collect()
}

fn texts(s: &Scanner, text: &str, entity: Entity) -> Vec<String> {
    chd(s, text)
        .into_iter()
        .filter(|f| f.0 == entity)
        .map(|f| f.1)
        .collect()
}

use Entity::{CardholderName as NAME, PostalAddress as ADDR};

#[test]
fn entity_names_parse_and_are_listed() {
    assert_eq!("CARDHOLDER_NAME".parse::<Entity>().ok(), Some(NAME));
    assert_eq!("postal_address".parse::<Entity>().ok(), Some(ADDR));
    assert!(Entity::ALL.contains(&NAME) && Entity::ALL.contains(&ADDR));
    assert!(NAME.is_card_data_with_pan() && !NAME.is_card_data());
    assert!(!NAME.is_sensitive_authentication_data() && !ADDR.is_sensitive_authentication_data());
}

#[test]
fn free_text_next_to_a_card() {
    let s = scanner();
    let text = "card 4111 1111 1111 1111 for John Smith, 12 Main Street, Springfield IL 62704";
    assert_eq!(texts(&s, text, NAME), vec!["John Smith"]);
    assert_eq!(
        texts(&s, text, ADDR),
        vec!["12 Main Street, Springfield IL 62704"]
    );
    // Before the card, embossed capitals, a UK address.
    let text = "JOHN Q PUBLIC 221B Baker St, London NW1 6XE pan 5500-0000-0000-0004";
    assert_eq!(texts(&s, text, NAME), vec!["JOHN Q PUBLIC"]);
    assert_eq!(texts(&s, text, ADDR), vec!["221B Baker St, London NW1 6XE"]);
    // Found by proximity alone: scored below a labelled one.
    let f = chd(&s, "4111111111111111 Mary O'Neil-Baker");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].2 >= 0.4 && f[0].2 < 0.75, "{f:?}");
}

#[test]
fn json_payment_object() {
    let s = scanner();
    let text = r#"{"payment":{"card_number":"4111111111111111","exp":"12/27","cardholder_name":"Jane A. Doe","billing_address":{"line1":"500 Oak Avenue","line2":"Apt 3","city":"Portland","state":"OR","postal_code":"97201"}}}"#;
    assert_eq!(texts(&s, text, NAME), vec!["Jane A. Doe"]);
    assert_eq!(
        texts(&s, text, ADDR),
        vec!["500 Oak Avenue", "Apt 3", "Portland", "97201"]
    );
    let f = chd(&s, text);
    assert!(f.iter().all(|f| f.2 >= 0.7), "{f:?}");
    // JSON inside a JSON string (a tool call's arguments).
    let text = r#"{"arguments":"{\"name_on_card\":\"Li Wei\",\"pan\":\"5500000000000004\"}"}"#;
    assert_eq!(texts(&s, text, NAME), vec!["Li Wei"]);
}

#[test]
fn csv_with_header() {
    let s = scanner();
    let text = "id,name,card_number,address,zip\n\
                1,Ann Lee,4111111111111111,12 Elm Rd,62704\n\
                2,\"Bob de Vries\",5500000000000004,\"7 Long Lane, Apt 2\",SW1A 1AA\n";
    assert_eq!(texts(&s, text, NAME), vec!["Ann Lee", "Bob de Vries"]);
    assert_eq!(
        texts(&s, text, ADDR),
        vec!["12 Elm Rd", "62704", "7 Long Lane, Apt 2", "SW1A 1AA"]
    );
}

#[test]
fn key_value_log_lines_and_forms() {
    let s = scanner();
    let text = r#"2024-03-15T12:00:00Z INFO charge ok cardholder="Maria Garcia" pan=4111111111111111 street="9 Hill Road""#;
    assert_eq!(texts(&s, text, NAME), vec!["Maria Garcia"]);
    assert_eq!(texts(&s, text, ADDR), vec!["9 Hill Road"]);
    let text = "cc_name=Ann+Marie+Smith&amount=12.00";
    assert_eq!(texts(&s, text, NAME), vec!["Ann+Marie+Smith"]);
    let text = "Name on card: PETER PARKER\nAddress: 1 Neverland Way, 10115 Berlin\n";
    assert_eq!(texts(&s, text, NAME), vec!["PETER PARKER"]);
    assert_eq!(texts(&s, text, ADDR), vec!["1 Neverland Way, 10115 Berlin"]);
    // first_name / last_name with a card in the same object.
    let text = r#"{"first_name":"John","last_name":"Smith","card":"4111 1111 1111 1111"}"#;
    assert_eq!(texts(&s, text, NAME), vec!["John", "Smith"]);
    // XML.
    let text = "<card><holder>Anna Schmidt</holder><number>4111111111111111</number></card>";
    assert_eq!(texts(&s, text, NAME), vec!["Anna Schmidt"]);
}

#[test]
fn a_generic_name_label_needs_a_card_nearby() {
    let s = scanner();
    // Reported only to callers that lower the threshold.
    assert!(chd(&s, r#"{"name": "Jane Doe", "role": "admin"}"#).is_empty());
    let low = s
        .scan_with(r#"{"name": "Jane Doe"}"#, Some(&[NAME]), Some(0.3))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(low.len(), 1);
    assert_eq!(
        texts(
            &s,
            r#"{"name": "Jane Doe", "card": "4111111111111111"}"#,
            NAME
        ),
        vec!["Jane Doe"]
    );
    // A card-specific label is enough on its own.
    assert_eq!(texts(&s, "Cardholder: JANE DOE", NAME), vec!["JANE DOE"]);
}

#[test]
fn prose_code_and_other_addresses_are_not_names_or_addresses() {
    let s = scanner();
    for text in [
        "Yesterday John Smith met Mary Jones at the Main Street cafe in Springfield.",
        "We walked down Main Street and turned left at the station.",
        "Ship it to 12 Main Street tomorrow, said Alice Walker.",
        "class MyClass Name extends Base { String name = \"MyClass Name\"; }",
        r#"{"name": "orders-api", "hostname": "Web Server", "username": "John Smith"}"#,
        r#"{"address": "10.0.0.12:443", "remote_addr": "192.168.1.1", "addr": "fe80::1"}"#,
        r#"{"address": "0x52908400098527886E0F7030069857D2E4169EE7"}"#,
        "user_name=John Smith file_name=Report Draft",
        "Visa Card Payment Processing Team Lead 4111 1111 1111 1111",
        "order #4111111111111111 for John Smith",
    ] {
        assert!(chd(&s, text).is_empty(), "{text}: {:?}", chd(&s, text));
    }
    // "Main Street" with no house number is no address even next to a card.
    let text = "card 4111 1111 1111 1111 used on Main Street";
    assert!(texts(&s, text, ADDR).is_empty());
    // A card far away (more than the window) does not make a name.
    let text = format!("card 4111 1111 1111 1111 {} John Smith", "x ".repeat(80));
    assert!(texts(&s, &text, NAME).is_empty());
}

#[test]
fn track_data_is_unchanged() {
    let s = scanner();
    let t1 = "%B4111111111111111^DOE/JOHN^2512101000000000000000?";
    let text = format!("swipe {t1} done");
    let f = s.scan(&text);
    let track: Vec<&str> = f
        .iter()
        .filter(|f| f.entity_type == Entity::CardTrackData)
        .map(|f| &text[f.byte_start..f.byte_end])
        .collect();
    assert_eq!(track, vec![t1]);
    assert!(chd(&s, &text).is_empty(), "{:?}", chd(&s, &text));
    // A name printed next to the swipe is still found, as its own entity.
    let text = format!("{t1} JOHN DOE");
    assert_eq!(texts(&s, &text, NAME), vec!["JOHN DOE"]);
}

#[test]
fn operators_work_on_names_and_addresses() {
    let s = scanner();
    let text = "card 4111 1111 1111 1111 for John Smith, 12 Main Street, Springfield IL 62704";
    let f = s.scan(text);
    let replaced = anonymize(text, &f, &Operators::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        replaced.text,
        "card <CREDIT_CARD> for <CARDHOLDER_NAME>, <POSTAL_ADDRESS>"
    );
    assert_eq!(replaced.counts.get(&NAME), Some(&1));
    assert_eq!(replaced.counts.get(&ADDR), Some(&1));
    let masked = anonymize(text, &f, &Operators::new(Operator::Mask(MaskStyle::Pci)))
        .unwrap_or_else(|e| panic!("{e}"))
        .text;
    assert!(
        !masked.contains("John") && !masked.contains("Main"),
        "{masked}"
    );
    assert!(masked.contains("4111 1111 **** 1111"), "{masked}");
    let mut tokens = ztee_dlp::TokenMap::new();
    let tokenized =
        ztee_dlp::anonymize_with(text, &f, &Operators::new(Operator::Tokenize), &mut tokens)
            .unwrap_or_else(|e| panic!("{e}"))
            .text;
    assert!(tokenized.contains("<CARDHOLDER_NAME_1>"), "{tokenized}");
    assert_eq!(tokens.restore(&tokenized), text);
}

fn stream(s: &Arc<Scanner>, ops: &Operators, chunks: &[&[u8]]) -> String {
    let mut st = StreamScanner::new(Arc::clone(s), ops.clone());
    let mut out = String::new();
    for c in chunks {
        out.push_str(&st.feed_bytes(c).unwrap_or_else(|e| panic!("{e}")));
    }
    out.push_str(&st.finish().unwrap_or_else(|e| panic!("{e}")));
    out
}

/// A card number written as long as the detector accepts (full-width digits, three zero-width
/// spaces between every two), labelled as an order number (so not a card), then a name at the
/// edge of the near-card window: whether the name is found depends on text about 320 bytes
/// before it, which a stream must still hold.
fn far_from_its_label() -> String {
    let pan: Vec<String> = "4111111111111111110"
        .chars()
        .map(|d| {
            char::from_u32(0xFF10 + d.to_digit(10).unwrap_or(0)).map_or(String::new(), String::from)
        })
        .collect();
    format!(
        "order #{} {} John Smith",
        pan.join("\u{200b}\u{200b}\u{200b}"),
        "a".repeat(93)
    )
}

/// Records with names and addresses before and after card numbers, labelled and not, long
/// enough that the stream releases text mid-way.
fn records(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("2024-03-15T12:30:{:02}Z INFO ü line {i} ", i % 60));
        match i % 6 {
            0 => text.push_str(
                "card 4111 1111 1111 1111 for John Smith, 12 Main Street, Springfield IL 62704",
            ),
            1 => text.push_str(r#"{"cardholder_name":"Jane A. Doe","line1":"500 Oak Avenue","card":"5500000000000004"}"#),
            2 => text.push_str("JOHN Q PUBLIC 221B Baker St, London NW1 6XE pan 5500-0000-0000-0004"),
            3 => text.push_str("Name on card: PETER PARKER é"),
            4 => text.push_str(&far_from_its_label()),
            _ => text.push_str("nothing to see: Main Street, Mary Jones"),
        }
        text.push('\n');
    }
    text
}

#[test]
fn stream_split_at_every_offset_equals_whole_text() {
    let s = Arc::new(scanner());
    let ops = Operators::default();
    let text = records(20);
    assert!(text.len() > 1600, "long enough to release mid-way");
    let whole = anonymize(&text, &s.scan(&text), &ops)
        .unwrap_or_else(|e| panic!("{e}"))
        .text;
    assert!(whole.contains("<CARDHOLDER_NAME>") && !whole.contains("Baker St"));
    // The name after the card labelled as an order number stays: that card is no card.
    assert!(whole.contains(" John Smith\n"));
    let b = text.as_bytes();
    for split in 0..=b.len() {
        let out = stream(&s, &ops, &[&b[..split], &b[split..]]);
        assert_eq!(out, whole, "split at {split}");
    }
}

#[test]
fn stream_in_4k_chunks_equals_whole_text() {
    let s = Arc::new(scanner());
    let ops = Operators::new(Operator::Mask(MaskStyle::Pci));
    let text = records(300);
    let whole = anonymize(&text, &s.scan(&text), &ops)
        .unwrap_or_else(|e| panic!("{e}"))
        .text;
    for size in [4096, 4093, 509, 61, 7] {
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
        assert_eq!(stream(&s, &ops, &chunks), whole, "chunks of {size}");
    }
}

/// The examples in docs/dlp.md, redacted with the default operator.
#[test]
fn documented_examples() {
    let s = scanner();
    let ops = Operators::default();
    let redact = |t: &str| {
        anonymize(t, &s.scan(t), &ops)
            .unwrap_or_else(|e| panic!("{e}"))
            .text
    };
    assert_eq!(
        redact(
            r#"{"card":"4111111111111111","cardholder_name":"Jane A. Doe","billing_address":{"line1":"500 Oak Avenue","city":"Portland","postal_code":"97201"}}"#
        ),
        r#"{"card":"<CREDIT_CARD>","cardholder_name":"<CARDHOLDER_NAME>","billing_address":{"line1":"<POSTAL_ADDRESS>","city":"<POSTAL_ADDRESS>","postal_code":"<POSTAL_ADDRESS>"}}"#
    );
    assert_eq!(
        redact("name,card_number,address\nAnn Lee,4111111111111111,12 Elm Rd\n"),
        "name,card_number,address\n<CARDHOLDER_NAME>,<CREDIT_CARD>,<POSTAL_ADDRESS>\n"
    );
    assert!(s
        .scan("Yesterday John Smith met Mary Jones on Main Street.")
        .is_empty());
}
