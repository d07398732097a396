//! Everything found by regular expression: secrets, IBANs, magnetic-stripe track data and
//! labelled sensitive authentication data (CVV, expiry, PIN). All rules are compiled into one
//! alternation, so the text is walked once by one automaton whatever the number of rules.
//! Open-ended repetitions (`+`, `*`) are used where a bounded one (`{1,64}`) would multiply the
//! automaton's states on long runs of matching characters.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use regex::{Match, Regex};

use crate::entity::Entity;
use crate::finding::{Candidate, RuleId};

use super::card::{luhn_valid, CardBrand};
use super::iban;
use crate::prefilter::b64_runs;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The whole match is the finding.
    Whole,
    /// Only the `v` group is the finding (the label stays readable).
    Value,
    /// `v` is an IBAN candidate: country length and mod-97 decide.
    Iban,
    /// Track data: the PAN in `v` must pass Luhn and an issuer range.
    Track,
    /// `v` is a password-like value: placeholders are skipped.
    Password,
    /// `v` is a token-like value: it must look random (entropy) to count.
    HighEntropy,
}

struct Rule {
    id: &'static str,
    entity: Option<Entity>,
    score: f64,
    check: Check,
    pattern: &'static str,
}

const LABEL_SEP: &str = r#"["']?[ \t]*[:=#]?[ \t]*["']?"#;

fn rules() -> Vec<Rule> {
    use Check::*;
    let secret = Some(Entity::Secret);
    vec![
        Rule {
            id: "secret.private_key",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?s:.)*?(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\z)",
        },
        Rule {
            id: "secret.aws_access_key_id",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}(?-u:\b)",
        },
        Rule {
            id: "secret.aws_secret_access_key",
            entity: secret,
            score: 1.0,
            check: Value,
            pattern: r#"(?i-u:aws_?secret_?access_?key|aws_?secret_?key|secretaccesskey)["']?[ \t]*[:=][ \t]*["']?(?P<v>[A-Za-z0-9/+=]{40})"#,
        },
        Rule {
            id: "secret.gcp_api_key",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"AIza[0-9A-Za-z_\-]{35}",
        },
        Rule {
            id: "secret.gcp_oauth_client_secret",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"GOCSPX-[0-9A-Za-z_\-]{28}",
        },
        Rule {
            id: "secret.azure_storage_key",
            entity: secret,
            score: 1.0,
            check: Value,
            pattern: r"(?i-u:accountkey)=(?P<v>[A-Za-z0-9+/]{86}==)",
        },
        Rule {
            id: "secret.azure_sas_signature",
            entity: secret,
            score: 0.9,
            check: Value,
            pattern: r"[?&]sig=(?P<v>[A-Za-z0-9%+/=]{40,})",
        },
        Rule {
            id: "secret.github_token",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{82})(?-u:\b)",
        },
        Rule {
            id: "secret.gitlab_token",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"(?-u:\b)glpat-[A-Za-z0-9_\-]{20,}",
        },
        Rule {
            id: "secret.slack_token",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"(?-u:\b)xox[abposr]-[A-Za-z0-9\-]{10,}",
        },
        Rule {
            id: "secret.slack_webhook",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}",
        },
        Rule {
            id: "secret.stripe_key",
            entity: secret,
            score: 1.0,
            check: Whole,
            pattern: r"(?-u:\b)(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})",
        },
        Rule {
            id: "secret.jwt",
            entity: secret,
            score: 0.9,
            check: Whole,
            pattern: r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
        },
        Rule {
            id: "secret.url_password",
            entity: secret,
            score: 0.9,
            check: Password,
            pattern: r"(?-u:\b)[a-zA-Z][a-zA-Z0-9+.\-]*://[^/ \t\r\n:@]+:(?P<v>[^/ \t\r\n@]+)@",
        },
        Rule {
            id: "secret.password_assignment",
            entity: secret,
            score: 0.8,
            check: Password,
            pattern: r#"(?i-u:password|passwd|passphrase|pwd)["']?[ \t]*[:=][ \t]*["']?(?P<v>[^ \t\r\n"',;&<>]{6,})"#,
        },
        Rule {
            id: "secret.key_assignment",
            entity: secret,
            score: 0.7,
            check: HighEntropy,
            pattern: r#"(?i-u:secret|api[_\-]?key|access[_\-]?key|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|private[_\-]?key|token|bearer)["']?[ \t]*[:= ][ \t]*["']?(?P<v>[A-Za-z0-9_\-+/=.~]{16,})"#,
        },
        Rule {
            id: "card_track_data.track1",
            entity: Some(Entity::CardTrackData),
            score: 1.0,
            check: Track,
            pattern: r"%?B(?P<v>[0-9]{12,19})\^[^\^\r\n]+\^[0-9]{7}[^?\r\n]*\??",
        },
        Rule {
            id: "card_track_data.track2",
            entity: Some(Entity::CardTrackData),
            score: 1.0,
            check: Track,
            pattern: r";?(?P<v>[0-9]{12,19})[=D][0-9]{7}[0-9]*\??",
        },
        Rule {
            id: "card_verification_code.labelled",
            entity: Some(Entity::CardVerificationCode),
            score: 0.9,
            check: Value,
            pattern: r"(?i-u:\b(?:cvv2?|cvc2?|cvn|cid|cav2|csc|security[ _\-]?code|card[ _\-]?verification(?:[ _\-]?(?:code|value))?)(?:[ _\-]?(?:code|number|no|num))?)",
        },
        Rule {
            id: "card_expiry.labelled",
            entity: Some(Entity::CardExpiry),
            score: 0.9,
            check: Value,
            pattern: r"(?i-u:\b(?:exp(?:iry|iration|ires)?(?:[ _\-]?date)?|valid[ _\-](?:thru|through|until|to)|good[ _\-]thru))\.?",
        },
        Rule {
            id: "card_pin_block.labelled",
            entity: Some(Entity::CardPinBlock),
            score: 0.95,
            check: Value,
            pattern: r"(?i-u:\bpin[ _\-]?block)",
        },
        Rule {
            id: "card_pin.labelled",
            entity: Some(Entity::CardPinBlock),
            score: 0.85,
            check: Value,
            pattern: r#"(?i-u:\bpin(?:[ _\-]?(?:code|number|no))?)["']?[ \t]*[:=][ \t]*["']?(?P<v>[0-9]{4,12})(?-u:\b)"#,
        },
        Rule {
            id: "iban.mod97",
            entity: Some(Entity::IbanCode),
            score: 1.0,
            check: Iban,
            pattern: r"(?-u:\b)(?P<v>[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4})+(?: ?[A-Z0-9]{1,3})?)",
        },
    ]
}

/// The value part that follows a label for the labelled SAD rules.
fn labelled_value(id: &str) -> Option<&'static str> {
    match id {
        "card_verification_code.labelled" => Some(r"(?P<v>[0-9]{3,4})(?-u:\b)"),
        "card_expiry.labelled" => Some(
            r"(?P<v>(?:0[1-9]|1[0-2])[ ]?[/\-][ ]?(?:20)?[0-9]{2}|20[0-9]{2}[/\-](?:0[1-9]|1[0-2])|(?:0[1-9]|1[0-2])[0-9]{2})(?-u:\b)",
        ),
        "card_pin_block.labelled" => Some(r"(?P<v>[0-9A-Fa-f]{16})(?-u:\b)"),
        _ => None,
    }
}

pub(crate) struct Patterns {
    regex: Regex,
    rules: Vec<Rule>,
    /// Capture group index of each rule's whole match (`r<i>`) and value (`v<i>`).
    groups: Vec<(usize, Option<usize>)>,
    base64: GeneralPurpose,
}

impl Patterns {
    pub fn new() -> Patterns {
        let rules = rules();
        let mut alternation = String::new();
        for (i, rule) in rules.iter().enumerate() {
            if i > 0 {
                alternation.push('|');
            }
            let mut pattern = rule.pattern.to_string();
            if let Some(value) = labelled_value(rule.id) {
                pattern.push_str(LABEL_SEP);
                pattern.push_str(value);
            }
            let pattern = pattern.replace("(?P<v>", &format!("(?P<v{i}>"));
            alternation.push_str(&format!("(?P<r{i}>{pattern})"));
        }
        // The rules are fixed in this file and covered by tests; a failure here is a programming
        // error found by the first test run, not an input-dependent condition.
        #[allow(clippy::expect_used)]
        let regex = Regex::new(&alternation).expect("built-in DLP rules compile");
        let index_of = |name: &str| regex.capture_names().position(|n| n == Some(name));
        let groups = (0..rules.len())
            .map(|i| {
                let whole = index_of(&format!("r{i}")).unwrap_or(0);
                (whole, index_of(&format!("v{i}")))
            })
            .collect();
        Patterns {
            regex,
            rules,
            groups,
            base64: GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                GeneralPurposeConfig::new()
                    .with_decode_padding_mode(DecodePaddingMode::Indifferent),
            ),
        }
    }

    /// Runs every rule whose entity `want` accepts.
    pub fn scan(&self, text: &str, want: impl Fn(Entity) -> bool, out: &mut Vec<Candidate>) {
        for caps in self.regex.captures_iter(text) {
            let Some((rule, whole, value)) =
                self.rules
                    .iter()
                    .zip(&self.groups)
                    .find_map(|(rule, &(w, v))| {
                        caps.get(w).map(|m| (rule, m, v.and_then(|v| caps.get(v))))
                    })
            else {
                continue;
            };
            let Some(entity) = rule.entity else { continue };
            if !want(entity) {
                continue;
            }
            if let Some((start, end)) = accept(rule, whole, value, text) {
                out.push(Candidate {
                    entity,
                    start,
                    end,
                    score: rule.score,
                    rule: RuleId::Static(rule.id),
                });
            }
        }
    }

    /// Base64 blobs (24+ characters from the standard alphabet, starting at a word boundary,
    /// optional `=` padding), decoded, with their byte spans. Runs of the alphabet too short to
    /// be a blob (nearly every word) are skipped a block at a time.
    pub fn base64_blobs(&self, text: &str, mut on_blob: impl FnMut(usize, usize, &[u8])) {
        const MIN_BLOB: usize = 24;
        let b = text.as_bytes();
        let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
        b64_runs(b, MIN_BLOB, |start| {
            let mut i = start;
            while i < b.len() && is_b64(b[i]) {
                i += 1;
            }
            let mut end = i;
            while end < b.len() && end - i < 2 && b[end] == b'=' {
                end += 1;
            }
            let word_start =
                start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
            let body = i - start;
            if word_start && body % 4 != 1 {
                if let Ok(decoded) = self.base64.decode(&b[start..i]) {
                    on_blob(start, end, &decoded);
                }
            }
        });
    }
}

impl Default for Patterns {
    fn default() -> Self {
        Patterns::new()
    }
}

fn accept(
    rule: &Rule,
    whole: Match<'_>,
    value: Option<Match<'_>>,
    text: &str,
) -> Option<(usize, usize)> {
    match rule.check {
        Check::Whole => Some((whole.start(), whole.end())),
        Check::Value => value.map(|v| (v.start(), v.end())),
        Check::Password => {
            let v = value?;
            (!is_placeholder(v.as_str())).then_some((v.start(), v.end()))
        }
        Check::HighEntropy => {
            let v = value?;
            let s = v.as_str();
            (!is_placeholder(s) && shannon_entropy(s.as_bytes()) >= 3.5 && has_mixed_classes(s))
                .then_some((v.start(), v.end()))
        }
        Check::Track => {
            let v = value?;
            let digits: Vec<u8> = v.as_str().bytes().map(|b| b - b'0').collect();
            (luhn_valid(&digits) && CardBrand::of(&digits).is_some())
                .then_some((whole.start(), whole.end()))
        }
        Check::Iban => {
            let v = value?;
            let len = iban::valid_prefix_len(&text[v.start()..])?;
            Some((v.start(), v.start() + len))
        }
    }
}

/// Values that are obviously not real credentials: variables, templates, masks.
fn is_placeholder(v: &str) -> bool {
    let b = v.as_bytes();
    b.first()
        .is_some_and(|c| matches!(c, b'$' | b'<' | b'{' | b'%' | b'['))
        || b.iter().all(|&c| c == b[0])
        || v.eq_ignore_ascii_case("redacted")
        || v.contains("****")
}

fn has_mixed_classes(v: &str) -> bool {
    let lower = v.bytes().any(|c| c.is_ascii_lowercase());
    let upper = v.bytes().any(|c| c.is_ascii_uppercase());
    let digit = v.bytes().any(|c| c.is_ascii_digit());
    usize::from(lower) + usize::from(upper) + usize::from(digit) >= 2
}

/// Shannon entropy in bits per byte.
pub(crate) fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}
