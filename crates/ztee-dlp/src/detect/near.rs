//! Sensitive authentication data that is only recognisable next to a card number: an unlabelled
//! expiry date (`12/27`) or verification code (`123`) on the same line shortly after a PAN.

use std::sync::LazyLock;

use regex::Regex;

use crate::entity::Entity;
use crate::finding::{Candidate, RuleId};

/// How far after the PAN (bytes, same line) an expiry or code still counts as "with the card".
const WINDOW: usize = 48;

#[allow(clippy::expect_used)] // constant patterns, compiled by every test run
static EXPIRY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)(?:0[1-9]|1[0-2])[ ]?[/\-][ ]?(?:20)?[0-9]{2}(?-u:\b)")
        .expect("expiry pattern compiles")
});
#[allow(clippy::expect_used)]
static CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?-u:\b)[0-9]{3,4}(?-u:\b)").expect("code pattern compiles"));

pub(crate) fn after_pan(text: &str, pan_end: usize, out: &mut Vec<Candidate>) {
    let mut end = (pan_end + WINDOW).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let window = &text[pan_end..end];
    let window = match window.find(['\n', '\r']) {
        Some(nl) => &window[..nl],
        None => window,
    };
    let mut expiry = None;
    if let Some(m) = EXPIRY.find(window) {
        expiry = Some((m.start(), m.end()));
        out.push(Candidate {
            entity: Entity::CardExpiry,
            start: pan_end + m.start(),
            end: pan_end + m.end(),
            score: 0.7,
            rule: RuleId::Static("card_expiry.near_pan"),
        });
    }
    let b = window.as_bytes();
    for m in CODE.find_iter(window) {
        if expiry.is_some_and(|(s, e)| m.start() < e && s < m.end()) {
            continue;
        }
        // Part of a date, decimal, time or longer number: not a verification code.
        let before = m.start().checked_sub(1).map(|i| b[i]);
        let after = b.get(m.end()).copied();
        let joined = |c: Option<u8>| matches!(c, Some(b'/' | b'-' | b'.' | b':' | b',' | b'$'));
        if joined(before) || joined(after) {
            continue;
        }
        out.push(Candidate {
            entity: Entity::CardVerificationCode,
            start: pan_end + m.start(),
            end: pan_end + m.end(),
            score: 0.6,
            rule: RuleId::Static("card_verification_code.near_pan"),
        });
        break;
    }
}
