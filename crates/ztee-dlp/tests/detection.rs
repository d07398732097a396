//! Detection behaviour: Presidio's own recognizer test cases (ztee must find at least what
//! Presidio finds on them), the hard card-number cases, sensitive authentication data, secrets,
//! and negatives that must not fire.

use ztee_dlp::{Entity, Finding, Scanner, ScannerConfig};

fn scanner() -> Scanner {
    Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("scanner: {e}"))
}

/// (entity, matched text, score) at the default threshold.
fn found(s: &Scanner, text: &str) -> Vec<(Entity, String, f64)> {
    s.scan(text)
        .into_iter()
        .map(|f| {
            (
                f.entity_type,
                text[f.byte_start..f.byte_end].to_string(),
                f.score,
            )
        })
        .collect()
}

/// Spans of `entity` in `text` at threshold 0 (everything any rule reports), as char offsets.
fn spans_any_score(s: &Scanner, text: &str, entity: Entity) -> Vec<(usize, usize, f64)> {
    s.scan_with(text, Some(&[entity]), Some(0.0))
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|f| f.entity_type == entity)
        .map(|f| (f.start, f.end, f.score))
        .collect()
}

fn texts_of(s: &Scanner, text: &str, entity: Entity) -> Vec<String> {
    found(s, text)
        .into_iter()
        .filter(|f| f.0 == entity)
        .map(|f| f.1)
        .collect()
}

// ---- Presidio's recognizer test cases -------------------------------------------------------

#[test]
fn presidio_credit_card_cases() {
    let s = scanner();
    let three = "4012888888881881 4012-8888-8888-1881 4012 8888 8888 1881";
    let got = spans_any_score(&s, three, Entity::CreditCard);
    assert_eq!(
        got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
        vec![(0, 16), (17, 36), (37, 56)]
    );
    assert!(got.iter().all(|g| g.2 == 1.0), "{got:?}");
    for number in [
        "122000000000003",
        "371449635398431",
        "5555555555554444",
        "5019717010103742",
        "30569309025904",
        "6011000400000000",
        "3528000700000000",
        "6759649826438453",
        "4111111111111111",
        "4917300800000000",
        "4484070000000000",
    ] {
        let got = spans_any_score(&s, number, Entity::CreditCard);
        assert_eq!(got.len(), 1, "{number}: {got:?}");
        assert_eq!((got[0].0, got[0].1), (0, number.len()), "{number}");
        assert_eq!(got[0].2, 1.0, "{number}");
    }
    let with_context = "my credit card: 122000000000003";
    assert_eq!(
        spans_any_score(&s, with_context, Entity::CreditCard)
            .iter()
            .map(|g| (g.0, g.1))
            .collect::<Vec<_>>(),
        vec![(16, 31)]
    );
    for invalid in [
        "4012-8888-8888-1882",
        "my credit card number is 4012-8888-8888-1882",
        "36168002586008",
        "my credit card number is 36168002586008",
    ] {
        assert!(
            spans_any_score(&s, invalid, Entity::CreditCard).is_empty(),
            "{invalid}"
        );
    }
}

#[test]
fn presidio_aba_routing_cases() {
    let s = scanner();
    for (text, span) in [
        ("121000358", (0, 9)),
        ("3222-7162-7", (0, 11)),
        ("121042882", (0, 9)),
        ("0711-0130-7", (0, 11)),
    ] {
        let got = spans_any_score(&s, text, Entity::AbaRoutingNumber);
        assert_eq!(
            got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            vec![span],
            "{text}"
        );
    }
    for text in ["421042111", "1234-0000-0"] {
        assert!(
            spans_any_score(&s, text, Entity::AbaRoutingNumber).is_empty(),
            "{text}"
        );
    }
    let labelled = found(&s, "routing number 121000358");
    assert!(labelled.contains(&(Entity::AbaRoutingNumber, "121000358".into(), 0.65)));
}

#[test]
fn presidio_us_ssn_cases() {
    let s = scanner();
    for (text, lo, hi) in [
        ("078051121", 0.3, 0.4),
        ("078-05-1123", 0.5, 0.6),
        ("078.05.1123", 0.5, 0.6),
        ("078 05 1123", 0.5, 0.6),
    ] {
        let got = spans_any_score(&s, text, Entity::UsSsn);
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        assert_eq!((got[0].0, got[0].1), (0, text.len()), "{text}");
        assert!((lo..=hi).contains(&got[0].2), "{text}: {}", got[0].2);
    }
    for text in [
        "0780511201",
        "078051120",
        "000000000",
        "666000000",
        "078-05-0000",
        "078 00 1123",
        "693-09.4444",
    ] {
        assert!(
            spans_any_score(&s, text, Entity::UsSsn).is_empty(),
            "{text}"
        );
    }
    assert_eq!(
        texts_of(&s, "my ssn is 078-05-1123", Entity::UsSsn),
        vec!["078-05-1123"]
    );
}

#[test]
fn presidio_iban_email_ip_phone_cases() {
    let s = scanner();
    for iban in [
        "AL47212110090000000235698741",
        "AD1200012030200359100100",
        "AT611904300234573201",
        "BE68539007547034",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "NL91ABNA0417164300",
        "NO9386011117947",
    ] {
        assert_eq!(
            texts_of(&s, &format!("pay to {iban} today"), Entity::IbanCode),
            vec![iban],
            "{iban}"
        );
    }
    for bad in [
        "DE89370400440532013001",
        "GB82WEST1234569876543",
        "XX82WEST12345698765432",
    ] {
        assert!(texts_of(&s, bad, Entity::IbanCode).is_empty(), "{bad}");
    }
    assert_eq!(
        texts_of(
            &s,
            "info@presidio.site and my@domain.com",
            Entity::EmailAddress
        ),
        vec!["info@presidio.site", "my@domain.com"]
    );
    assert!(texts_of(&s, "my email is info@presidio.", Entity::EmailAddress).is_empty());
    assert_eq!(
        texts_of(
            &s,
            "microsoft.com:192.168.0.1 and ::1 and 684D:1111:222:3333:4444:5555:6:77",
            Entity::IpAddress
        ),
        vec!["192.168.0.1", "::1", "684D:1111:222:3333:4444:5555:6:77"]
    );
    assert!(texts_of(&s, "my ip is 192.168.0", Entity::IpAddress).is_empty());
    for phone in [
        "(425) 882-9090",
        "425-882-9090",
        "+1 425 882 9090",
        "+44 20 7946 0958",
    ] {
        assert_eq!(
            texts_of(
                &s,
                &format!("my phone number is {phone}"),
                Entity::PhoneNumber
            ),
            vec![phone],
            "{phone}"
        );
    }
}

// ---- Card numbers: the hard cases ----------------------------------------------------------

#[test]
fn every_brand_and_length() {
    let s = scanner();
    for pan in [
        "4222222222222",       // Visa 13
        "4111111111111111",    // Visa 16
        "4111111111111111110", // Visa 19
        "5500000000000004",    // Mastercard 51-55
        "2223003122003222",    // Mastercard 2-series
        "378282246310005",     // Amex
        "6011000990139424",    // Discover
        "3530111333300000",    // JCB
        "30569309025904",      // Diners 14
        "6200000000000005",    // UnionPay
        "6759649826438453",    // Maestro 16
        "675964982648",        // Maestro 12
        "2200000000000004",    // Mir
    ] {
        assert_eq!(
            texts_of(&s, &format!("charged {pan} ok"), Entity::CreditCard),
            vec![pan],
            "{pan}"
        );
    }
}

#[test]
fn separators_as_written() {
    let s = scanner();
    for pan in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111.1111.1111.1111",
        "4111/1111/1111/1111",
        "4111\u{2013}1111\u{2013}1111\u{2013}1111",
        "4111\u{2014}1111\u{2014}1111\u{2014}1111",
        "4111\u{a0}1111\u{a0}1111\u{a0}1111",
        "4111\u{202f}1111\u{202f}1111\u{202f}1111",
        "4111\u{200b}1111\u{200b}1111\u{200b}1111",
        "4111\u{200b}1111111111\u{200b}11",
        "4111  1111  1111  1111",
        "4111 1111\n1111 1111",
        "4111 1111\r\n1111 1111",
        "3782 822463 10005",
        "\u{ff14}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}",
    ] {
        let text = format!("card: {pan}.");
        assert_eq!(texts_of(&s, &text, Entity::CreditCard), vec![pan], "{pan:?}");
    }
    assert_eq!(
        texts_of(&s, "card4111111111111111", Entity::CreditCard),
        vec!["4111111111111111"]
    );
    assert_eq!(
        texts_of(&s, "PAN:4111111111111111;", Entity::CreditCard),
        vec!["4111111111111111"]
    );
}

#[test]
fn look_alikes_are_ruled_out() {
    let s = scanner();
    for text in [
        // IMEI (Luhn-valid by design) under its label.
        "IMEI: 490154203237518",
        "imei 356938035643809",
        // Order and invoice numbers that pass Luhn and fall in an issuer range.
        "Order #4111111111111111 shipped",
        "invoice 5500000000000004",
        // Epoch milliseconds, compact timestamps, long IDs.
        "ts=1700000000000 at 20240115123045",
        "id 41111111111111111111",
        // Digits inside hex digests and tokens.
        "sha a4111111111111111f0",
        // Phone numbers.
        "call +14155552671 or (415) 555-2671",
        // Luhn failures.
        "4111 1111 1111 1112",
    ] {
        assert!(
            texts_of(&s, text, Entity::CreditCard).is_empty(),
            "{text}: {:?}",
            found(&s, text)
        );
    }
    // Card context overrides a contradicting label.
    assert_eq!(
        texts_of(
            &s,
            "order paid by card 4111111111111111",
            Entity::CreditCard
        ),
        vec!["4111111111111111"]
    );
}

// ---- Sensitive authentication data ----------------------------------------------------------

#[test]
fn track_data() {
    let s = scanner();
    let t1 = "%B4111111111111111^DOE/JOHN^2512101000000000000000?";
    let t2 = ";4111111111111111=25121010000000000000?";
    assert_eq!(
        texts_of(&s, &format!("swipe {t1} done"), Entity::CardTrackData),
        vec![t1]
    );
    assert_eq!(
        texts_of(&s, &format!("swipe {t2} done"), Entity::CardTrackData),
        vec![t2]
    );
    assert_eq!(
        texts_of(
            &s,
            "tag57 4111111111111111D25121010000000000",
            Entity::CardTrackData
        ),
        vec!["4111111111111111D25121010000000000"]
    );
    assert!(texts_of(
        &s,
        ";4111111111111112=25121010000000000000?",
        Entity::CardTrackData
    )
    .is_empty());
}

#[test]
fn verification_codes_expiry_and_pin_blocks() {
    let s = scanner();
    assert_eq!(
        texts_of(&s, "CVV: 123", Entity::CardVerificationCode),
        vec!["123"]
    );
    assert_eq!(
        texts_of(&s, "cvc2=4567", Entity::CardVerificationCode),
        vec!["4567"]
    );
    assert_eq!(
        texts_of(&s, "security code 999", Entity::CardVerificationCode),
        vec!["999"]
    );
    assert_eq!(texts_of(&s, "exp 12/27", Entity::CardExpiry), vec!["12/27"]);
    assert_eq!(
        texts_of(&s, "Expiry date: 01/2029", Entity::CardExpiry),
        vec!["01/2029"]
    );
    assert_eq!(
        texts_of(&s, "valid thru 0928", Entity::CardExpiry),
        vec!["0928"]
    );
    let near = "4111 1111 1111 1111 12/27 123";
    assert_eq!(texts_of(&s, near, Entity::CardExpiry), vec!["12/27"]);
    assert_eq!(
        texts_of(&s, near, Entity::CardVerificationCode),
        vec!["123"]
    );
    assert_eq!(
        texts_of(&s, "PIN block: 041274EDCBA9876F", Entity::CardPinBlock),
        vec!["041274EDCBA9876F"]
    );
    assert_eq!(texts_of(&s, "pin=4821", Entity::CardPinBlock), vec!["4821"]);
    // Unlabelled three-digit numbers and dates away from a card are not SAD.
    let plain = "retry 123 times on 12/27 with code path 404";
    assert!(texts_of(&s, plain, Entity::CardVerificationCode).is_empty());
    assert!(texts_of(&s, plain, Entity::CardExpiry).is_empty());
}

// ---- Secrets --------------------------------------------------------------------------------

#[test]
fn secrets_by_kind() {
    let s = scanner();
    let cases = [
        ("AKIAIOSFODNN7EXAMPLE", "secret.aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "secret.aws_secret_access_key",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (
            "key=AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
            "secret.gcp_api_key",
            "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
        ),
        (
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            "secret.github_token",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
        ),
        ("glpat-abcdefghij0123456789", "secret.gitlab_token", "glpat-abcdefghij0123456789"),
        (
            "xoxb-123456789012-abcdefghijkl",
            "secret.slack_token",
            "xoxb-123456789012-abcdefghijkl",
        ),
        (
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "secret.stripe_key",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        ),
        (
            "Authorization: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "secret.jwt",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
        ("DB_PASSWORD=hunter2hunter2", "secret.password_assignment", "hunter2hunter2"),
        (
            "api_key: 9f8e7d6c5b4a3f2e1d0cAbCdEf",
            "secret.key_assignment",
            "9f8e7d6c5b4a3f2e1d0cAbCdEf",
        ),
        (
            "postgres://app:s3cr3t-pw@db.internal:5432/app",
            "secret.url_password",
            "s3cr3t-pw",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
            "secret.azure_storage_key",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        ),
    ];
    for (text, rule, value) in cases {
        let f: Vec<Finding> = s.scan(text);
        let hit = f
            .iter()
            .find(|f| f.entity_type == Entity::Secret && f.rule_id == rule)
            .unwrap_or_else(|| panic!("{rule} not found in {text:?}: {f:?}"));
        assert_eq!(&text[hit.byte_start..hit.byte_end], value, "{rule}");
    }
    let pem = "x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----\ny";
    assert_eq!(
        texts_of(&s, pem, Entity::Secret),
        vec![
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----"
        ]
    );
    for benign in [
        "password=${DB_PASSWORD}",
        "password: <redacted>",
        "token = abcdefabcdefabcdef",
        "the secret is out",
        "AKIA1234",
    ] {
        assert!(texts_of(&s, benign, Entity::Secret).is_empty(), "{benign}");
    }
}

#[test]
fn registered_secret_values_and_their_encodings() {
    use base64::Engine as _;
    let s = scanner();
    let value = "Pa55:w0rd/with spaces";
    s.register_secret("db-password", value.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let forms = [
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(value),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
        hex::encode(value),
        hex::encode_upper(value),
        "Pa55%3Aw0rd%2Fwith%20spaces".to_string(),
        "Pa55%3Aw0rd%2Fwith+spaces".to_string(),
    ];
    for form in &forms {
        let text = format!("out: {form} end");
        let f = s.scan(&text);
        let hit = f
            .iter()
            .find(|f| f.rule_id == "secret.exact:db-password")
            .unwrap_or_else(|| panic!("{form} not found: {f:?}"));
        assert_eq!(&text[hit.byte_start..hit.byte_end], form.as_str());
        assert!(!format!("{hit:?} {hit}").contains("Pa55"));
    }
    assert_eq!(s.secret_names(), vec!["db-password"]);
    assert!(s.unregister_secret("db-password"));
    assert!(s
        .scan(value)
        .iter()
        .all(|f| f.rule_id != "secret.exact:db-password"));
    assert!(s.register_secret("short", b"abc").is_err());
    assert!(s.register_secret("bad name!", b"abcdefgh").is_err());
}

#[test]
fn base64_blobs_are_decoded_and_scanned() {
    use base64::Engine as _;
    let s = scanner();
    let inner = "customer card 4111 1111 1111 1111 exp 12/27";
    let blob = base64::engine::general_purpose::STANDARD.encode(inner);
    let text = format!("payload={blob} end");
    let f = s.scan(&text);
    let card = f
        .iter()
        .find(|f| f.entity_type == Entity::CreditCard)
        .unwrap_or_else(|| panic!("no card in blob: {f:?}"));
    assert_eq!(&text[card.byte_start..card.byte_end], blob);
    assert_eq!(card.rule_id, "base64.credit_card.luhn");
    // Binary blobs and hex digests are left alone.
    let digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert!(s.scan(digest).is_empty());
}

#[test]
fn entity_filter_threshold_and_custom_context() {
    let cfg = ScannerConfig {
        entities: vec![Entity::UsBankNumber],
        score_threshold: 0.4,
        context_words: [(Entity::UsBankNumber, vec!["kontonummer".to_string()])]
            .into_iter()
            .collect(),
        decode_base64: false,
    };
    let s = Scanner::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.scan("4111111111111111 and 12345678").is_empty());
    assert_eq!(found(&s, "Kontonummer 12345678").len(), 1);
    assert!(Scanner::new(ScannerConfig {
        score_threshold: 1.5,
        ..ScannerConfig::default()
    })
    .is_err());
    assert!("NOT_AN_ENTITY".parse::<Entity>().is_err());
}

#[test]
fn a_card_after_a_very_long_digit_run_is_still_found() {
    let s = scanner();
    let text = format!("{}4111 1111 1111 1111 x", "1 ".repeat(10_000));
    let f = s
        .scan_with(&text, Some(&[Entity::CreditCard]), None)
        .unwrap_or_default();
    assert!(
        f.iter()
            .any(|f| text[f.byte_start..f.byte_end].ends_with("4111 1111 1111 1111")),
        "{:?}",
        f.len()
    );
}

// ---- Separators and digits outside ASCII --------------------------------------------------

/// Test PANs of three networks and lengths (16, 16, 15 digits).
const REVIEW_PANS: &[&str] = &["4111111111111111", "5555555555554444", "378282246310005"];

/// Separators people and programs put between digits that are neither spaces nor the usual
/// punctuation: `_`, `,`, `+`, and characters that are invisible when rendered (soft hyphen,
/// zero-width space, word joiner, BOM, bidi marks, the Mongolian vowel separator, a variation
/// selector, a tag character), other dashes (Pd) and spaces (Zs).
const REVIEW_SEPARATORS: &[&str] = &[
    "_",
    ",",
    "+",
    ", ",
    "\u{ad}",
    "\u{200b}",
    "\u{200e}",
    "\u{200f}",
    "\u{2060}",
    "\u{2063}",
    "\u{feff}",
    "\u{61c}",
    "\u{180e}",
    "\u{fe0f}",
    "\u{e0020}",
    "\u{2011}",
    "\u{2e3a}",
    "\u{fe63}",
    "\u{30a0}",
    "\u{205f}",
    "\u{1680}",
    "\u{ff0c}",
    "\u{66c}",
];

/// Zero code points of decimal digit (Nd) scripts: Arabic-Indic, Extended Arabic-Indic, NKo,
/// Devanagari, Bengali, Tamil, Thai, Myanmar, Khmer, Mongolian, Osmanya, mathematical bold and
/// monospace, Adlam, segmented.
const REVIEW_ZEROS: &[u32] = &[
    0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xbe6, 0xe50, 0x1040, 0x17e0, 0x1810, 0x104a0, 0x1d7ce,
    0x1d7f6, 0x1e950, 0x1fbf0,
];

/// The PAN in its usual groups (4-4-4-4, or 4-6-5 for 15 digits) joined by `sep`.
fn grouped(pan: &str, sep: &str) -> String {
    let sizes: &[usize] = if pan.len() == 15 {
        &[4, 6, 5]
    } else {
        &[4, 4, 4, 4]
    };
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes {
        out.push(&pan[at..at + n]);
        at += n;
    }
    out.join(sep)
}

/// `sep` between every two digits.
fn every_digit(pan: &str, sep: &str) -> String {
    pan.chars().map(String::from).collect::<Vec<_>>().join(sep)
}

/// Each ASCII digit of `text` written as the digit of the same value in the script of `zero`.
fn in_script(text: &str, zero: u32) -> String {
    text.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from_u32(zero + d).unwrap_or(c),
            None => c,
        })
        .collect()
}

fn assert_one_card(s: &Scanner, written: &str) {
    let text = format!("card: {written} ok");
    let got = texts_of(s, &text, Entity::CreditCard);
    assert_eq!(
        got,
        vec![written.to_string()],
        "{written:?}: {:?}",
        found(s, &text)
    );
}

#[test]
fn pans_with_underscore_comma_plus_and_invisible_separators_are_found() {
    let s = scanner();
    for pan in REVIEW_PANS {
        for sep in REVIEW_SEPARATORS {
            assert_one_card(&s, &grouped(pan, sep));
            assert_one_card(&s, &every_digit(pan, sep));
        }
    }
}

#[test]
fn pans_in_every_decimal_digit_script_are_found() {
    let s = scanner();
    for pan in REVIEW_PANS {
        for &zero in REVIEW_ZEROS {
            assert_one_card(&s, &in_script(pan, zero));
            assert_one_card(&s, &in_script(&grouped(pan, " "), zero));
            assert_one_card(&s, &in_script(&grouped(pan, "-"), zero));
            assert_one_card(&s, &in_script(&every_digit(pan, "\u{ad}"), zero));
            assert_one_card(&s, &in_script(&grouped(pan, "\u{66c}"), zero));
        }
        // Scripts mixed inside one number.
        let mixed: String = pan
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let zero = REVIEW_ZEROS[i % REVIEW_ZEROS.len()];
                in_script(&c.to_string(), zero)
            })
            .collect();
        assert_one_card(&s, &mixed);
    }
}

#[test]
fn new_separators_do_not_make_lists_of_numbers_into_cards() {
    let s = scanner();
    for text in [
        // Luhn failures, written with the new separators.
        "4111_1111_1111_1112",
        "4,1,1,1,1,1,1,1,1,1,1,1,1,1,1,2",
        "\u{664}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{662}",
        // Comma lists in unusual groupings (thousands separators, CSV columns).
        "4,111,111,111,111,111",
        "411111,1111111111",
        "totals 4111,11111,1111111",
        // A spaced-digit sequence longer than any card.
        "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        // Sums are not cards unless grouped like one.
        "41+11+11+11+11+11+11+11",
    ] {
        assert!(
            texts_of(&s, text, Entity::CreditCard).is_empty(),
            "{text}: {:?}",
            found(&s, text)
        );
    }
}

#[test]
fn comma_separated_values_keep_their_own_entities() {
    let s = scanner();
    // Before `,` joined digit groups, each of these was its own number; it still is.
    let f = found(&s, "ssn 078-05-1121,219-09-9999 ip 10.0.0.1,10.0.0.2");
    let kinds: Vec<_> = f.iter().map(|f| (f.0, f.1.as_str())).collect();
    assert!(kinds.contains(&(Entity::UsSsn, "078-05-1121")), "{kinds:?}");
    assert!(kinds.contains(&(Entity::UsSsn, "219-09-9999")), "{kinds:?}");
    assert!(
        kinds.contains(&(Entity::IpAddress, "10.0.0.1")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(Entity::IpAddress, "10.0.0.2")),
        "{kinds:?}"
    );
    // A long CSV row: every SSN is still found, and a card in it too.
    let row: String = (0..600).map(|_| "078-05-1121,").collect::<String>() + "4111,1111,1111,1111";
    let f = found(&s, &row);
    assert_eq!(f.iter().filter(|f| f.0 == Entity::UsSsn).count(), 600);
    assert_eq!(
        texts_of(&s, &row, Entity::CreditCard),
        vec!["4111,1111,1111,1111"]
    );
}

/// Values of one scope are found only by the scans given that scope: a plain scan (what the DLP
/// API serves every caller) and another scope's scan do not know them.
#[test]
fn scoped_values_are_found_only_in_their_scope() {
    use base64::Engine as _;
    use std::sync::Arc;
    let s = Arc::new(scanner());
    let value = "Pa55:w0rd/with spaces";
    let mine = ztee_dlp::ExactValues::new([("sandbox/0", value.as_bytes())])
        .unwrap_or_else(|e| panic!("{e}"));
    let theirs = ztee_dlp::ExactValues::new([("sandbox/0", b"other-value-123".as_slice())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{mine:?}").contains("Pa55"), "{mine:?}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    for form in [value.to_string(), b64.clone(), hex::encode(value)] {
        let text = format!("out: {form} end");
        let hits: Vec<_> = s
            .scan_scoped(&text, &mine)
            .into_iter()
            .filter(|f| f.rule_id == "secret.exact:sandbox/0")
            .collect();
        assert_eq!(hits.len(), 1, "{form}: {hits:?}");
        assert_eq!(&text[hits[0].byte_start..hits[0].byte_end], form.as_str());
        assert!(s
            .scan(&text)
            .iter()
            .all(|f| f.entity_type != Entity::Secret));
        assert!(s
            .scan_scoped(&text, &theirs)
            .iter()
            .all(|f| f.entity_type != Entity::Secret));
    }
    // Padded base64 is one finding, the padded form: not the unpadded one besides.
    let short = ztee_dlp::ExactValues::new([("sandbox/1", b"abcdefg".as_slice())])
        .unwrap_or_else(|e| panic!("{e}"));
    let text = "x YWJjZGVmZw== y";
    let f = s.scan_scoped(text, &short);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(&text[f[0].byte_start..f[0].byte_end], "YWJjZGVmZw==");

    // A stream of the scope masks the value split across chunks; a plain stream does not.
    let ops = ztee_dlp::Operators::new(ztee_dlp::Operator::Redact);
    let mut scoped = ztee_dlp::StreamScanner::scoped(s.clone(), ops.clone(), Arc::new(mine));
    let mut plain = ztee_dlp::StreamScanner::new(s.clone(), ops);
    let (mut a, mut b) = (String::new(), String::new());
    for chunk in ["x Pa55:w0", "rd/with sp", "aces y"] {
        a.push_str(&scoped.feed(chunk).unwrap_or_else(|e| panic!("{e}")));
        b.push_str(&plain.feed(chunk).unwrap_or_else(|e| panic!("{e}")));
    }
    a.push_str(&scoped.finish().unwrap_or_else(|e| panic!("{e}")));
    b.push_str(&plain.finish().unwrap_or_else(|e| panic!("{e}")));
    assert!(
        !a.contains("Pa55") && a.starts_with("x ") && a.ends_with(" y"),
        "{a}"
    );
    assert_eq!(b, format!("x {value} y"));

    assert!(ztee_dlp::ExactValues::new([("short", b"abc".as_slice())]).is_err());
    assert!(ztee_dlp::ExactValues::new([("bad name!", b"abcdefgh".as_slice())]).is_err());
    assert!(ztee_dlp::ExactValues::new([
        ("a", b"abcdefgh".as_slice()),
        ("a", b"ijklmnop".as_slice())
    ])
    .is_err());
}
