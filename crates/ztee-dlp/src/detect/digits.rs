//! One pass over the text that finds every run of digits and the separators people put between
//! digit groups, then classifies each run: payment card, SSN, phone, routing, bank account, IPv4.
//!
//! A run ("cluster") is digit groups joined by at most [`MAX_SEPARATOR_CHARS`] separator
//! characters: ASCII space, tab, line breaks, `-`, `.`, `/`, parentheses, no-break and zero-width
//! spaces, en/em dashes and similar. ASCII and full-width digits both count. Each character is
//! looked at a bounded number of times, so the pass is linear in the text.

use crate::entity::Entity;
use crate::finding::{Candidate, RuleId};

use super::card::{luhn_valid, CardBrand};

/// More than this many separator characters in a row end a run ("4111  1111" has two).
const MAX_SEPARATOR_CHARS: usize = 3;
/// A run with more digits than this is classified in pieces: what is recorded so far is checked
/// for cards and addresses, and only the tail that could start a card continuing into the next
/// digits is kept. Memory stays bounded however long the run.
const MAX_RUN_DIGITS: usize = 4096;
/// Digits recorded per group: a longer group cannot be part of any card, SSN or phone number.
const MAX_GROUP_DIGITS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    Space,
    Dash,
    Dot,
    Slash,
    LineBreak,
    Paren,
    /// Zero-width spaces and joiners: invisible, so they do not even split a digit group.
    Invisible,
}

/// Bytes that may start a digit: ASCII digits and the lead byte of full-width digits (U+FF10..).
static DIGIT_START: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = b'0';
    while b <= b'9' {
        t[b as usize] = true;
        b += 1;
    }
    t[0xEF] = true;
    t
};

#[inline]
fn digit_at(b: &[u8], i: usize) -> Option<(u8, usize)> {
    let c = *b.get(i)?;
    if c.is_ascii_digit() {
        return Some((c - b'0', 1));
    }
    // Full-width digits U+FF10..U+FF19 are EF BC 90..99 in UTF-8.
    if c == 0xEF && b.get(i + 1) == Some(&0xBC) {
        if let Some(&t) = b.get(i + 2) {
            if (0x90..=0x99).contains(&t) {
                return Some((t - 0x90, 3));
            }
        }
    }
    None
}

#[inline]
fn separator_at(b: &[u8], i: usize) -> Option<(Sep, usize)> {
    let c = *b.get(i)?;
    match c {
        b' ' | b'\t' => Some((Sep::Space, 1)),
        b'-' => Some((Sep::Dash, 1)),
        b'.' => Some((Sep::Dot, 1)),
        b'/' => Some((Sep::Slash, 1)),
        b'\n' | b'\r' => Some((Sep::LineBreak, 1)),
        b'(' | b')' => Some((Sep::Paren, 1)),
        // No-break space.
        0xC2 if b.get(i + 1) == Some(&0xA0) => Some((Sep::Space, 2)),
        0xE2 => match (b.get(i + 1), b.get(i + 2)) {
            // U+2000..U+200A Unicode spaces, U+202F narrow no-break space.
            (Some(0x80), Some(0x80..=0x8A | 0xAF)) => Some((Sep::Space, 3)),
            // U+200B..U+200D zero-width space and joiners.
            (Some(0x80), Some(0x8B..=0x8D)) => Some((Sep::Invisible, 3)),
            // U+2010..U+2015 hyphens and dashes (en dash, em dash, figure dash...).
            (Some(0x80), Some(0x90..=0x95)) => Some((Sep::Dash, 3)),
            // U+2060 word joiner.
            (Some(0x81), Some(0xA0)) => Some((Sep::Invisible, 3)),
            // U+2212 minus sign.
            (Some(0x88), Some(0x92)) => Some((Sep::Dash, 3)),
            _ => None,
        },
        // U+3000 ideographic space.
        0xE3 if b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0x80) => Some((Sep::Space, 3)),
        0xEF => match (b.get(i + 1), b.get(i + 2)) {
            // U+FEFF zero-width no-break space.
            (Some(0xBB), Some(0xBF)) => Some((Sep::Invisible, 3)),
            // U+FF0D full-width hyphen-minus.
            (Some(0xBC), Some(0x8D)) => Some((Sep::Dash, 3)),
            _ => None,
        },
        _ => None,
    }
}

/// A separator run between two digit groups.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// The visible separator of the run; `LineBreak` only when the run is nothing else.
    kind: Sep,
    /// Exactly one separator character.
    single: bool,
    /// Two different visible separators besides line breaks ("-." or ". ").
    mixed: bool,
}

/// The reusable buffers for one digit run.
#[derive(Default)]
struct Run {
    digits: Vec<u8>,
    /// Byte span of each digit.
    spans: Vec<(usize, usize)>,
    /// Index into `digits` where each group starts; groups end where the next starts.
    group_starts: Vec<usize>,
    /// `gaps[g]` sits between group `g` and `g + 1`.
    gaps: Vec<Gap>,
}

impl Run {
    fn clear(&mut self) {
        self.digits.clear();
        self.spans.clear();
        self.group_starts.clear();
        self.gaps.clear();
    }

    fn group_end(&self, g: usize) -> usize {
        self.group_starts
            .get(g + 1)
            .copied()
            .unwrap_or(self.digits.len())
    }

    fn group_len(&self, g: usize) -> usize {
        self.group_end(g) - self.group_starts[g]
    }

    fn byte_span(&self, g_first: usize, g_last: usize) -> (usize, usize) {
        let first = self.group_starts[g_first];
        let last = self.group_end(g_last) - 1;
        (self.spans[first].0, self.spans[last].1)
    }
}

/// Which entities the caller wants from this pass.
#[derive(Clone, Copy, Default)]
pub(crate) struct DigitEntities {
    pub card: bool,
    pub ssn: bool,
    pub phone: bool,
    pub aba: bool,
    pub bank: bool,
    pub ipv4: bool,
}

impl DigitEntities {
    pub fn any(self) -> bool {
        self.card || self.ssn || self.phone || self.aba || self.bank || self.ipv4
    }
}

pub(crate) fn scan(text: &str, want: DigitEntities, out: &mut Vec<Candidate>) {
    let b = text.as_bytes();
    let n = b.len();
    let mut run = Run::default();
    let mut i = 0;
    while i < n {
        // Fast skip to the next byte that can start a digit.
        while i < n && !DIGIT_START[b[i] as usize] {
            i += 1;
        }
        if i >= n {
            break;
        }
        let Some((d, len)) = digit_at(b, i) else {
            i += 1;
            continue;
        };
        run.clear();
        let mut truncated = false;
        let run_start = i;
        run.group_starts.push(0);
        run.digits.push(d);
        run.spans.push((i, i + len));
        i += len;
        let mut run_end = i;
        loop {
            if let Some((d, len)) = digit_at(b, i) {
                let current = run.group_starts.len() - 1;
                if run.digits.len() - run.group_starts[current] < MAX_GROUP_DIGITS {
                    run.digits.push(d);
                    run.spans.push((i, i + len));
                }
                i += len;
                run_end = i;
                continue;
            }
            // Zero-width characters between digits are invisible: the group goes on.
            let mut j = i;
            let mut hidden = 0;
            while hidden < MAX_SEPARATOR_CHARS {
                match separator_at(b, j) {
                    Some((Sep::Invisible, len)) => {
                        j += len;
                        hidden += 1;
                    }
                    _ => break,
                }
            }
            if hidden > 0 && digit_at(b, j).is_some() {
                i = j;
                continue;
            }
            // Try a separator run followed by a digit.
            let mut j = i;
            let mut count = 0;
            let mut visible: Option<Sep> = None;
            let mut line_break = false;
            let mut mixed = false;
            while count < MAX_SEPARATOR_CHARS {
                match separator_at(b, j) {
                    Some((kind, len)) => {
                        match kind {
                            Sep::LineBreak => line_break = true,
                            Sep::Invisible => {}
                            _ => match visible {
                                None => visible = Some(kind),
                                Some(k) if k != kind => mixed = true,
                                Some(_) => {}
                            },
                        }
                        j += len;
                        count += 1;
                    }
                    None => break,
                }
            }
            let first_kind = visible.or(line_break.then_some(Sep::LineBreak));
            match (first_kind, digit_at(b, j)) {
                (Some(kind), Some(_)) => {
                    if run.digits.len() >= MAX_RUN_DIGITS {
                        flush_partial(b, &mut run, want, out);
                        truncated = true;
                    }
                    run.gaps.push(Gap {
                        kind,
                        single: count == 1,
                        mixed,
                    });
                    run.group_starts.push(run.digits.len());
                    i = j;
                }
                _ => break,
            }
        }
        if truncated {
            // Only cards and addresses can sit inside a run this long.
            if want.card {
                cards(b, &run, out);
            }
            if want.ipv4 {
                ipv4(b, &run, out);
            }
        } else {
            classify(text, &run, run_start, run_end, want, out);
        }
        i = run_end.max(i);
    }
}

/// Classifies the recorded part of an over-long run and keeps only its last groups that could
/// still begin a card number continuing into digits not read yet (the last 18 digits).
fn flush_partial(b: &[u8], run: &mut Run, want: DigitEntities, out: &mut Vec<Candidate>) {
    if want.card {
        cards(b, run, out);
    }
    if want.ipv4 {
        ipv4(b, run, out);
    }
    let total = run.digits.len();
    let keep = (0..run.group_starts.len())
        .find(|&g| total - run.group_starts[g] <= 18)
        .unwrap_or(run.group_starts.len() - 1);
    let offset = run.group_starts[keep];
    run.digits.drain(..offset);
    run.spans.drain(..offset);
    run.group_starts.drain(..keep);
    for s in &mut run.group_starts {
        *s -= offset;
    }
    run.gaps.drain(..keep);
}

fn is_alnum_before(b: &[u8], pos: usize) -> bool {
    pos > 0 && b[pos - 1].is_ascii_alphanumeric()
}

fn is_alnum_after(b: &[u8], pos: usize) -> bool {
    b.get(pos).is_some_and(|c| c.is_ascii_alphanumeric())
}

fn classify(
    text: &str,
    run: &Run,
    run_start: usize,
    run_end: usize,
    want: DigitEntities,
    out: &mut Vec<Candidate>,
) {
    let b = text.as_bytes();
    let total = run.digits.len();
    if want.card && total >= 12 {
        cards(b, run, out);
    }
    if want.ipv4 && total >= 4 {
        ipv4(b, run, out);
    }
    let groups = run.group_starts.len();
    // SSN, routing, bank and phone numbers have 8-17 digits and stand on their own.
    if !(want.ssn || want.aba || want.bank || want.phone) || !(8..=17).contains(&total) {
        return;
    }
    let glued = is_alnum_before(b, run_start) || is_alnum_after(b, run_end);
    if glued {
        return;
    }
    let plus_before = run_start > 0 && b[run_start - 1] == b'+';
    let paren_before = run_start > 0 && b[run_start - 1] == b'(';
    let sizes: Vec<usize> = (0..groups.min(8)).map(|g| run.group_len(g)).collect();
    let all_gaps_single = |kinds: &[Sep]| {
        run.gaps
            .iter()
            .all(|g| !g.mixed && g.single && kinds.contains(&g.kind))
    };
    let whole = (run_start, run_end);
    let push = |out: &mut Vec<Candidate>, entity, score, rule| {
        out.push(Candidate {
            entity,
            start: whole.0,
            end: whole.1,
            score,
            rule: RuleId::Static(rule),
        });
    };

    if want.ssn {
        let dashed = sizes == [3, 2, 4]
            && all_gaps_single(&[Sep::Dash, Sep::Space, Sep::Dot])
            && run.gaps[0].kind == run.gaps[1].kind;
        if (dashed || (groups == 1 && total == 9)) && ssn_valid(&run.digits) {
            if dashed {
                push(out, Entity::UsSsn, 0.5, "us_ssn.delimited");
            } else {
                push(out, Entity::UsSsn, 0.3, "us_ssn.digits");
            }
        }
    }
    if want.aba {
        let dashed = sizes == [4, 4, 1] && all_gaps_single(&[Sep::Dash]);
        if (dashed || (groups == 1 && total == 9)) && aba_valid(&run.digits) {
            let (score, rule) = if dashed {
                (0.5, "aba_routing.delimited")
            } else {
                (0.3, "aba_routing.digits")
            };
            push(out, Entity::AbaRoutingNumber, score, rule);
        }
    }
    if want.bank && groups == 1 && (8..=17).contains(&total) {
        push(out, Entity::UsBankNumber, 0.05, "us_bank.digits");
    }
    if want.phone {
        phone(run, &sizes, plus_before, paren_before, whole, out);
    }
}

fn cards(b: &[u8], run: &Run, out: &mut Vec<Candidate>) {
    let groups = run.group_starts.len();
    let mut g = 0;
    while g < groups {
        let start = run.group_starts[g];
        let mut best: Option<(f64, usize)> = None;
        let mut last = g;
        while last < groups {
            let end = run.group_end(last);
            let count = end - start;
            if count > 19 {
                break;
            }
            if count >= 12 {
                let digits = &run.digits[start..end];
                if luhn_valid(digits) && CardBrand::of(digits).is_some() {
                    // Where a shorter and a longer reading are both valid PANs, report the
                    // longer one (with the better score): over-redacting a few digits is safe,
                    // leaving the tail of a real PAN is not.
                    let score = card_score(b, run, g, last);
                    if score > 0.0 {
                        let best_score = best.map_or(score, |(s, _)| s.max(score));
                        best = Some((best_score, last));
                    }
                }
            }
            last += 1;
        }
        match best {
            Some((score, last)) => {
                let (bs, be) = run.byte_span(g, last);
                out.push(Candidate {
                    entity: Entity::CreditCard,
                    start: bs,
                    end: be,
                    score,
                    rule: RuleId::Static(if score >= 0.8 {
                        "credit_card.luhn"
                    } else {
                        "credit_card.luhn_irregular"
                    }),
                });
                g = last + 1;
            }
            None => g += 1,
        }
    }
}

/// Structure score of a Luhn- and range-valid candidate spanning groups `first..=last`.
fn card_score(b: &[u8], run: &Run, first: usize, last: usize) -> f64 {
    let (bs, be) = run.byte_span(first, last);
    let glued_before = is_alnum_before(b, bs);
    let glued_after = is_alnum_after(b, be);
    if glued_before && glued_after {
        // Digits inside a longer token (hex digest, base64, identifier): not a card.
        return 0.0;
    }
    if bs > 0 && b[bs - 1] == b'+' {
        // "+4111..." is how international phone numbers start.
        return 0.2;
    }
    let sizes: Vec<usize> = (first..=last).map(|g| run.group_len(g)).collect();
    let gaps = &run.gaps[first..last];
    // One visible separator throughout; a line break may stand in for any of them ("4111 1111\n
    // 1111 1111"). Mixed separators ("10.1.2.3\n2024-03-15") are different numbers side by side.
    let mut kind = None;
    for g in gaps {
        if g.mixed || g.kind == Sep::Paren {
            return 0.0;
        }
        if g.kind == Sep::LineBreak {
            continue;
        }
        match kind {
            None => kind = Some(g.kind),
            Some(k) if k != g.kind => return 0.0,
            Some(_) => {}
        }
    }
    let canonical = sizes.len() == 1
        || matches!(sizes.as_slice(), [4, 6, 5] | [4, 6, 4] | [4, 4, 4, 4, 3])
        || (sizes[..sizes.len() - 1].iter().all(|&s| s == 4)
            && (1..=4).contains(&sizes[sizes.len() - 1]));
    let glued = glued_before || glued_after;
    if canonical {
        return if glued { 0.8 } else { 1.0 };
    }
    // Other groupings happen ("411111 1111111111") but so do tables of short numbers: accept
    // only a few groups of three or more digits.
    if sizes.len() <= 4 && sizes.iter().all(|&s| s >= 3) && !glued {
        0.6
    } else {
        0.0
    }
}

fn ipv4(b: &[u8], run: &Run, out: &mut Vec<Candidate>) {
    let groups = run.group_starts.len();
    if groups < 4 {
        return;
    }
    let mut g = 0;
    while g + 3 < groups {
        let window = g..g + 4;
        let dots = run.gaps[g..g + 3]
            .iter()
            .all(|gap| gap.single && gap.kind == Sep::Dot);
        // The address must not continue with another dotted group ("1.2.3.4.5" is a version).
        let left_ok = g == 0 || run.gaps[g - 1].kind != Sep::Dot;
        let right_ok = g + 4 == groups || run.gaps[g + 3].kind != Sep::Dot;
        let octets_ok = window.clone().all(|k| {
            let s = run.group_starts[k];
            let e = run.group_end(k);
            let len = e - s;
            len <= 3
                && run.digits[s..e]
                    .iter()
                    .fold(0u32, |a, &d| a * 10 + u32::from(d))
                    <= 255
                && !(len > 1 && run.digits[s] == 0)
        });
        if dots && left_ok && right_ok && octets_ok {
            let (bs, be) = run.byte_span(g, g + 3);
            let bounded = !(bs > 0 && (b[bs - 1].is_ascii_alphanumeric() || b[bs - 1] == b'.'))
                && !is_alnum_after(b, be);
            if bounded {
                out.push(Candidate {
                    entity: Entity::IpAddress,
                    start: bs,
                    end: be,
                    score: 0.6,
                    rule: RuleId::Static("ip_address.v4"),
                });
            }
            g += 4;
        } else {
            g += 1;
        }
    }
}

fn phone(
    run: &Run,
    sizes: &[usize],
    plus_before: bool,
    paren_before: bool,
    whole: (usize, usize),
    out: &mut Vec<Candidate>,
) {
    let total = run.digits.len();
    let groups = run.group_starts.len();
    let gaps_ok = run.gaps.iter().all(|g| {
        matches!(
            g.kind,
            Sep::Space | Sep::Dash | Sep::Dot | Sep::Paren | Sep::Invisible
        )
    });
    if !gaps_ok {
        return;
    }
    let (start, rule) = if plus_before && (8..=15).contains(&total) && groups >= 1 {
        (whole.0 - 1, "phone.international")
    } else {
        // North American numbering plan: optional 1, area code, exchange, four-digit line number.
        let nanp_at = |first: usize| {
            let d = &run.digits[first..];
            d.len() == 10 && d[0] >= 2 && d[3] >= 2
        };
        let nanp = match sizes {
            [3, 3, 4] => nanp_at(0),
            [1, 3, 3, 4] => run.digits[0] == 1 && nanp_at(1),
            _ => false,
        };
        // National formats elsewhere start with a trunk 0: "020 7946 0958", "030 901820".
        let national = groups >= 2 && run.digits[0] == 0 && (10..=11).contains(&total);
        if nanp {
            let start = if paren_before { whole.0 - 1 } else { whole.0 };
            (start, "phone.nanp")
        } else if national {
            (whole.0, "phone.national")
        } else {
            return;
        }
    };
    out.push(Candidate {
        entity: Entity::PhoneNumber,
        start,
        end: whole.1,
        score: 0.4,
        rule: RuleId::Static(rule),
    });
}

/// SSA rules: no 000/666/9xx area, no 00 group, no 0000 serial, not one repeated digit, and not
/// the numbers published in advertising ("078-05-1120", "123-45-6789").
fn ssn_valid(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = d[..3].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let group = d[3..5].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let repeated = d.iter().all(|&x| x == d[0]);
    let advertised = d == [0, 7, 8, 0, 5, 1, 1, 2, 0] || d == [1, 2, 3, 4, 5, 6, 7, 8, 9];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !repeated && !advertised
}

/// ABA routing number: valid Federal Reserve prefix and the 3-7-1 weighted checksum.
fn aba_valid(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let prefix = u32::from(d[0]) * 10 + u32::from(d[1]);
    let prefix_ok = matches!(prefix, 0..=12 | 21..=32 | 61..=72 | 80);
    let w = [3u32, 7, 1, 3, 7, 1, 3, 7, 1];
    let sum: u32 = d.iter().zip(w).map(|(&x, w)| u32::from(x) * w).sum();
    prefix_ok && sum % 10 == 0 && !d.iter().all(|&x| x == d[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Entity, String, f64)> {
        let mut out = Vec::new();
        scan(
            text,
            DigitEntities {
                card: true,
                ssn: true,
                phone: true,
                aba: true,
                bank: true,
                ipv4: true,
            },
            &mut out,
        );
        out.into_iter()
            .map(|c| (c.entity, text[c.start..c.end].to_string(), c.score))
            .collect()
    }

    fn cards(text: &str) -> Vec<String> {
        found(text)
            .into_iter()
            .filter(|f| f.0 == Entity::CreditCard && f.2 >= 0.5)
            .map(|f| f.1)
            .collect()
    }

    #[test]
    fn separators_people_use_inside_a_pan() {
        for text in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111.1111.1111.1111",
            "4111/1111/1111/1111",
            "4111\u{2013}1111\u{2013}1111\u{2013}1111",
            "4111\u{2014}1111\u{2014}1111\u{2014}1111",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            "4111\u{200b}1111\u{200b}1111\u{200b}1111",
            "4111  1111  1111  1111",
            "4111 1111\n1111 1111",
            "4111-1111-\r\n1111-1111",
            "\u{ff14}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}\u{ff11}",
        ] {
            assert_eq!(cards(text), vec![text.to_string()], "{text:?}");
        }
    }

    #[test]
    fn pan_glued_to_letters_is_found_but_not_inside_a_token() {
        assert_eq!(cards("card4111111111111111"), vec!["4111111111111111"]);
        assert_eq!(cards("pan=4111111111111111&x=1"), vec!["4111111111111111"]);
        assert!(cards("a4111111111111111f").is_empty());
    }

    #[test]
    fn long_digit_strings_and_wrong_lengths_are_not_cards() {
        assert!(cards("41111111111111111111111").is_empty());
        assert!(cards("4111111111111112").is_empty());
        assert!(cards("1700000000000 20240115123045").is_empty());
    }

    #[test]
    fn other_digit_entities() {
        let f = found("ssn 078-05-1121 ip 10.0.0.1/24 phone (415) 555-2671 +44 20 7946 0958");
        let kinds: Vec<_> = f.iter().map(|f| (f.0, f.1.as_str())).collect();
        assert!(kinds.contains(&(Entity::UsSsn, "078-05-1121")));
        assert!(kinds.contains(&(Entity::IpAddress, "10.0.0.1")));
        assert!(kinds.contains(&(Entity::PhoneNumber, "(415) 555-2671")));
        assert!(kinds.contains(&(Entity::PhoneNumber, "+44 20 7946 0958")));
        assert!(found("1.2.3.4.5 999.1.1.1")
            .iter()
            .all(|f| f.0 != Entity::IpAddress));
        assert!(aba_valid(&[0, 1, 1, 0, 0, 0, 0, 1, 5]));
        assert!(!aba_valid(&[0, 1, 1, 0, 0, 0, 0, 1, 6]));
    }
}
