//! One pass over the text that finds every run of digits and the separators people put between
//! digit groups, then classifies each run: payment card, SSN, phone, routing, bank account, IPv4.
//!
//! A run ("cluster") is digit groups joined by at most [`MAX_SEPARATOR_CHARS`] separator
//! characters: every Unicode space and tab, line breaks, every Unicode dash and the minus sign,
//! `.`, `/`, parentheses, `_`, `,`, `+`, and the characters that render as nothing (Unicode's
//! default-ignorable code points: zero-width spaces and joiners, soft hyphen, bidi marks,
//! variation selectors, tags). A digit is a decimal digit of any script (general category Nd):
//! ASCII, full-width, Arabic-Indic, Devanagari, mathematical... Each character is looked at a
//! bounded number of times, so the pass is linear in the text.
//!
//! `_`, `,` and `+` join digits into card numbers only. The other numbers (SSN, phone, routing,
//! bank account, IPv4) are read from the parts of a run between them, exactly as if the run ended
//! there, so that a list (`078-05-1121,219-09-9999`) is still read as its values.

use crate::entity::Entity;
use crate::finding::{Candidate, RuleId};

use super::card::{luhn_valid, CardBrand};
use super::chars::{char_at, nd_value, DIGIT_START};
use crate::prefilter::{digit_stretches, DigitNeed};

/// More than this many separator characters in a row end a run ("4111  1111" has two).
const MAX_SEPARATOR_CHARS: usize = 3;
/// A run with more digits than this is classified in pieces: what is recorded so far is checked
/// for cards and addresses, and only the tail that could start a card continuing into the next
/// digits is kept. Memory stays bounded however long the run.
const MAX_RUN_DIGITS: usize = 4096;
/// Digits recorded per group: a longer group cannot be part of any card, SSN or phone number.
const MAX_GROUP_DIGITS: usize = 20;
/// The most bytes a card number found here can span: 19 digits of up to four bytes each, with
/// up to [`MAX_SEPARATOR_CHARS`] separators of up to four bytes between every two. A streaming
/// scanner must hold back at least this much to see every card whole.
pub(crate) const MAX_CARD_BYTES: usize = 19 * 4 + 18 * MAX_SEPARATOR_CHARS * 4;
/// When a long run is classified in pieces, the groups within this many digits of its end are
/// kept: a card (at most 19 digits) still open at the cut lies entirely within them.
const KEEP_DIGITS: usize = 19;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    Space,
    Dash,
    Dot,
    Slash,
    LineBreak,
    Paren,
    /// `_`: joins digits into card numbers only.
    Underscore,
    /// `,` (also full-width, ideographic and Arabic commas and the Arabic thousands separator):
    /// joins digits into card numbers only.
    Comma,
    /// `+`: joins digits into card numbers only.
    Plus,
    /// Characters that render as nothing: they do not even split a digit group.
    Invisible,
}

impl Sep {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Separators that also write lists and sums of numbers; see the module comment.
    fn card_only(self) -> bool {
        matches!(self, Sep::Underscore | Sep::Comma | Sep::Plus)
    }
}

/// A decimal digit of any script at byte `i`: its value and length in bytes.
#[inline]
fn digit_at(b: &[u8], i: usize) -> Option<(u8, usize)> {
    let c = *b.get(i)?;
    if c.is_ascii_digit() {
        return Some((c - b'0', 1));
    }
    if c.is_ascii() || !DIGIT_START[usize::from(c)] {
        return None;
    }
    let (ch, len) = char_at(b, i)?;
    nd_value(ch).map(|d| (d, len))
}

#[inline]
fn separator_at(b: &[u8], i: usize) -> Option<(Sep, usize)> {
    let c = *b.get(i)?;
    let kind = match c {
        b' ' | b'\t' => Sep::Space,
        b'-' => Sep::Dash,
        b'.' => Sep::Dot,
        b'/' => Sep::Slash,
        // Line feed, carriage return, vertical tab, form feed.
        b'\n' | b'\r' | 0x0B | 0x0C => Sep::LineBreak,
        b'(' | b')' => Sep::Paren,
        b'_' => Sep::Underscore,
        b',' => Sep::Comma,
        b'+' => Sep::Plus,
        0x80.. => return unicode_separator_at(b, i),
        _ => return None,
    };
    Some((kind, 1))
}

/// The non-ASCII half of [`separator_at`], kept out of line so the ASCII path stays small.
#[inline(never)]
fn unicode_separator_at(b: &[u8], i: usize) -> Option<(Sep, usize)> {
    let (ch, len) = char_at(b, i)?;
    unicode_separator(ch).map(|kind| (kind, len))
}

/// The separator kind of a non-ASCII character, if it is one.
fn unicode_separator(c: char) -> Option<Sep> {
    Some(match c {
        // Spaces (general category Zs).
        '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => {
            Sep::Space
        }
        // Next line, line and paragraph separators.
        '\u{85}' | '\u{2028}' | '\u{2029}' => Sep::LineBreak,
        // Dashes (general category Pd), the minus sign and the small/full-width hyphen-minus.
        '\u{58A}'
        | '\u{5BE}'
        | '\u{1400}'
        | '\u{1806}'
        | '\u{2010}'..='\u{2015}'
        | '\u{2212}'
        | '\u{2E17}'
        | '\u{2E1A}'
        | '\u{2E3A}'
        | '\u{2E3B}'
        | '\u{2E40}'
        | '\u{2E5D}'
        | '\u{301C}'
        | '\u{3030}'
        | '\u{30A0}'
        | '\u{FE31}'
        | '\u{FE32}'
        | '\u{FE58}'
        | '\u{FE63}'
        | '\u{FF0D}'
        | '\u{10D6E}'
        | '\u{10EAD}' => Sep::Dash,
        // Full-width full stop, Arabic decimal separator.
        '\u{FF0E}' | '\u{66B}' => Sep::Dot,
        '\u{FF0F}' => Sep::Slash,
        '\u{FF3F}' => Sep::Underscore,
        // Full-width, ideographic, small and Arabic commas, Arabic thousands separator.
        '\u{FF0C}' | '\u{3001}' | '\u{FE50}' | '\u{60C}' | '\u{66C}' => Sep::Comma,
        '\u{FF0B}' | '\u{FE62}' => Sep::Plus,
        // Default_Ignorable_Code_Point (DerivedCoreProperties.txt): soft hyphen, combining
        // grapheme joiner, Arabic letter mark, Hangul fillers, Khmer inherent vowels, Mongolian
        // variation selectors and vowel separator, zero-width space/joiners and bidi marks,
        // bidi embeddings and isolates, word joiner and invisible operators, variation
        // selectors, BOM, shorthand format controls, musical formatting, tags.
        '\u{AD}'
        | '\u{34F}'
        | '\u{61C}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{17B4}'
        | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}' => Sep::Invisible,
        _ => return None,
    })
}

/// A separator run between two digit groups.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// The visible separator of the run (a card-only one if there is one); `LineBreak` only
    /// when the run is nothing else.
    kind: Sep,
    /// Exactly one separator character.
    single: bool,
    /// Two different visible separators besides line breaks ("-." or ". "); spaces next to a
    /// card-only separator do not count (", " and " + " are how those are written).
    mixed: bool,
    /// Holds `_`, `,` or `+`: other numbers than cards end here.
    card_only: bool,
}

/// Reads the separator run at `i` (at most [`MAX_SEPARATOR_CHARS`] characters): the gap it makes
/// and where it ends, or `None` when it is only invisible characters or nothing.
fn gap_at(b: &[u8], i: usize) -> Option<(Gap, usize)> {
    let mut j = i;
    let mut count = 0;
    let mut seen = 0u16;
    let mut first_visible = None;
    let mut first_card_only = None;
    let mut line_break = false;
    while count < MAX_SEPARATOR_CHARS {
        let Some((kind, len)) = separator_at(b, j) else {
            break;
        };
        match kind {
            Sep::LineBreak => line_break = true,
            Sep::Invisible => {}
            _ => {
                seen |= kind.bit();
                first_visible = first_visible.or(Some(kind));
                if kind.card_only() {
                    first_card_only = first_card_only.or(Some(kind));
                }
            }
        }
        j += len;
        count += 1;
    }
    let (kind, mixed) = match first_card_only {
        Some(k) => (Some(k), seen & !(k.bit() | Sep::Space.bit()) != 0),
        None => (first_visible, seen.count_ones() > 1),
    };
    let kind = kind.or(line_break.then_some(Sep::LineBreak))?;
    Some((
        Gap {
            kind,
            single: count == 1,
            mixed,
            card_only: first_card_only.is_some(),
        },
        j,
    ))
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
    /// The current part of the run (since its start or its last card-only gap), from which the
    /// other numbers than cards are read: its first group and its first byte.
    part_first: usize,
    part_start: usize,
    /// The part lost its first groups to [`flush_partial`]: it has more digits than any number
    /// but a card, so nothing else is read from it.
    part_cut: bool,
    /// After [`flush_partial`]: the gap before group 0, and whether the group before that gap
    /// had one digit (so a one-digit-per-group card reaching group 0 started earlier).
    head: Option<(Gap, bool)>,
}

impl Run {
    fn clear(&mut self) {
        self.digits.clear();
        self.spans.clear();
        self.group_starts.clear();
        self.gaps.clear();
        self.part_first = 0;
        self.part_start = 0;
        self.part_cut = false;
        self.head = None;
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

impl DigitEntities {
    /// The least a digit run must have to be any of the wanted numbers; see
    /// [`close_part`] and [`cards`] for where these counts are decided.
    fn need(self) -> DigitNeed {
        let digits = if self.ssn || self.phone || self.aba || self.bank {
            8
        } else if self.card {
            12
        } else {
            usize::MAX
        };
        DigitNeed {
            digits,
            ipv4: self.ipv4,
        }
    }
}

pub(crate) fn scan(text: &str, want: DigitEntities, out: &mut Vec<Candidate>) {
    let mut run = Run::default();
    digit_stretches(text.as_bytes(), want.need(), |start, end| {
        scan_range(text, start, end, want, &mut run, out);
    });
}

/// Reads every digit run that starts in `text[from..to]` (a run may read past `to`).
fn scan_range(
    text: &str,
    from: usize,
    to: usize,
    want: DigitEntities,
    run: &mut Run,
    out: &mut Vec<Candidate>,
) {
    let b = text.as_bytes();
    let mut i = from;
    while i < to {
        while i < to && !DIGIT_START[b[i] as usize] {
            i += 1;
        }
        if i >= to {
            break;
        }
        let Some((d, len)) = digit_at(b, i) else {
            i += 1;
            continue;
        };
        run.clear();
        let mut truncated = false;
        run.part_start = i;
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
            // Invisible characters between digits: the group goes on. (None of them is ASCII.)
            let mut j = i;
            let mut hidden = 0;
            if b.get(i).is_some_and(|c| !c.is_ascii()) {
                while hidden < MAX_SEPARATOR_CHARS {
                    match separator_at(b, j) {
                        Some((Sep::Invisible, len)) => {
                            j += len;
                            hidden += 1;
                        }
                        _ => break,
                    }
                }
            }
            if hidden > 0 && digit_at(b, j).is_some() {
                i = j;
                continue;
            }
            // Try a separator run followed by a digit.
            match gap_at(b, i) {
                Some((gap, j)) if digit_at(b, j).is_some() => {
                    if run.digits.len() >= MAX_RUN_DIGITS {
                        flush_partial(b, run, want, out);
                        truncated = true;
                    }
                    if gap.card_only {
                        close_part(text, run, run_end, want, out);
                        run.part_first = run.group_starts.len();
                        run.part_start = j;
                        run.part_cut = false;
                    }
                    run.gaps.push(gap);
                    run.group_starts.push(run.digits.len());
                    i = j;
                }
                _ => break,
            }
        }
        if want.card && (truncated || run.digits.len() >= 12) {
            cards(b, run, false, out);
        }
        close_part(text, run, run_end, want, out);
        i = run_end.max(i);
    }
}

/// Classifies the recorded part of an over-long run and keeps only its groups that could still
/// belong to a card number continuing into digits not read yet (the last [`KEEP_DIGITS`]).
fn flush_partial(b: &[u8], run: &mut Run, want: DigitEntities, out: &mut Vec<Candidate>) {
    if want.card {
        cards(b, run, true, out);
    }
    if want.ipv4 {
        // Only the current part can be cut; the parts before it were classified when they
        // ended. What this reads again when the part is not cut after all is deduplicated.
        ipv4(b, run, run.part_first, run.group_starts.len() - 1, out);
    }
    let total = run.digits.len();
    let keep = (0..run.group_starts.len())
        .find(|&g| total - run.group_starts[g] <= KEEP_DIGITS)
        .unwrap_or(run.group_starts.len() - 1);
    if keep == 0 {
        return;
    }
    run.head = Some((run.gaps[keep - 1], run.group_len(keep - 1) == 1));
    let offset = run.group_starts[keep];
    run.digits.drain(..offset);
    run.spans.drain(..offset);
    run.group_starts.drain(..keep);
    for s in &mut run.group_starts {
        *s -= offset;
    }
    run.gaps.drain(..keep);
    if run.part_first < keep {
        run.part_cut = true;
        run.part_first = 0;
    } else {
        run.part_first -= keep;
    }
}

fn is_alnum_before(b: &[u8], pos: usize) -> bool {
    pos > 0 && b[pos - 1].is_ascii_alphanumeric()
}

fn is_alnum_after(b: &[u8], pos: usize) -> bool {
    b.get(pos).is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Reads SSN, routing, bank, phone and IPv4 numbers from the run's current part, which ends at
/// byte `end`.
#[inline]
fn close_part(text: &str, run: &Run, end: usize, want: DigitEntities, out: &mut Vec<Candidate>) {
    let last = run.group_starts.len() - 1;
    // Most parts of a table of numbers are too short for any of these: return before the call.
    let total = run.digits.len() - run.group_starts[run.part_first];
    if total < 4 || (total < 8 && (!want.ipv4 || last - run.part_first < 3)) {
        return;
    }
    if run.part_cut {
        // Too long for anything but addresses, which are read in pieces like cards.
        if want.ipv4 {
            ipv4(text.as_bytes(), run, run.part_first, last, out);
        }
        return;
    }
    classify(
        text,
        run,
        (run.part_first, last),
        (run.part_start, end),
        want,
        out,
    );
}

/// The other numbers than cards in groups `first..=last` of the run, spanning bytes
/// `start..end`.
fn classify(
    text: &str,
    run: &Run,
    (first, last): (usize, usize),
    (start, end): (usize, usize),
    want: DigitEntities,
    out: &mut Vec<Candidate>,
) {
    let b = text.as_bytes();
    let digits = &run.digits[run.group_starts[first]..run.group_end(last)];
    let total = digits.len();
    if want.ipv4 && total >= 4 {
        ipv4(b, run, first, last, out);
    }
    let groups = last - first + 1;
    // SSN, routing, bank and phone numbers have 8-17 digits and stand on their own.
    if !(want.ssn || want.aba || want.bank || want.phone) || !(8..=17).contains(&total) {
        return;
    }
    let glued = is_alnum_before(b, start) || is_alnum_after(b, end);
    if glued {
        return;
    }
    let plus_before = start > 0 && b[start - 1] == b'+';
    let paren_before = start > 0 && b[start - 1] == b'(';
    let gaps = &run.gaps[first..last];
    let sizes: Vec<usize> = (first..=last.min(first + 7))
        .map(|g| run.group_len(g))
        .collect();
    let all_gaps_single = |kinds: &[Sep]| {
        gaps.iter()
            .all(|g| !g.mixed && g.single && kinds.contains(&g.kind))
    };
    let whole = (start, end);
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
            && gaps[0].kind == gaps[1].kind;
        if (dashed || (groups == 1 && total == 9)) && ssn_valid(digits) {
            if dashed {
                push(out, Entity::UsSsn, 0.5, "us_ssn.delimited");
            } else {
                push(out, Entity::UsSsn, 0.3, "us_ssn.digits");
            }
        }
    }
    if want.aba {
        let dashed = sizes == [4, 4, 1] && all_gaps_single(&[Sep::Dash]);
        if (dashed || (groups == 1 && total == 9)) && aba_valid(digits) {
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
        phone(digits, gaps, &sizes, plus_before, paren_before, whole, out);
    }
}

/// Card numbers in the run. `open_end`: the run goes on past its last group (a piece of an
/// over-long run), so what touches that group is read again with what follows.
fn cards(b: &[u8], run: &Run, open_end: bool, out: &mut Vec<Candidate>) {
    let groups = run.group_starts.len();
    let mut g = 0;
    while g < groups {
        let start = run.group_starts[g];
        if run.digits.len() - start < 12 {
            // No window from here on reaches the shortest PAN.
            break;
        }
        let mut best: Option<(f64, usize)> = None;
        let mut last = g;
        // The separator so far; a window that [`card_score`] rejects for its separators is
        // rejected with every longer one too, so stop there rather than check each (this keeps
        // long comma- or newline-joined tables of numbers cheap).
        let mut kind: Option<Sep> = None;
        while last < groups {
            if last > g {
                let gap = run.gaps[last - 1];
                if gap.mixed || gap.kind == Sep::Paren {
                    break;
                }
                if gap.kind != Sep::LineBreak {
                    match kind {
                        None => kind = Some(gap.kind),
                        Some(k) if k != gap.kind => break,
                        Some(_) => {}
                    }
                }
                // With `_`, `,` or `+` only a card's own grouping counts, and every one of
                // them starts with four digits.
                if kind.is_some_and(Sep::card_only) && run.group_len(g) != 4 {
                    break;
                }
            }
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
    spaced_cards(b, run, open_end, out);
}

/// Cards written with a separator between every two digits ("4 1 1 1 ...", "4_1_1_1 ..."): a
/// stretch of one-digit groups with one kind of separator, read whole and only whole, so that a
/// longer sequence of single digits (a list, a table) does not yield cards from its middle.
fn spaced_cards(b: &[u8], run: &Run, open_end: bool, out: &mut Vec<Candidate>) {
    let groups = run.group_starts.len();
    if groups < 12 {
        return;
    }
    let mut g = 0;
    while g < groups {
        if run.group_len(g) != 1 {
            g += 1;
            continue;
        }
        // Extend the stretch while groups have one digit and the separator stays the same; a
        // line break may stand in for it, as in grouped numbers.
        let mut last = g;
        let mut kind: Option<Sep> = None;
        let mut next = None;
        while last + 1 < groups && run.group_len(last + 1) == 1 {
            let gap = run.gaps[last];
            if gap.mixed || gap.kind == Sep::Paren {
                break;
            }
            if gap.kind != Sep::LineBreak {
                match kind {
                    None => kind = Some(gap.kind),
                    // The digit between two kinds of separator may begin the next stretch.
                    Some(k) if k != gap.kind => {
                        next = Some(last);
                        break;
                    }
                    Some(_) => {}
                }
            }
            last += 1;
        }
        let n = last - g + 1;
        let touches_open_end = open_end && last + 1 == groups;
        let continues_before = g == 0
            && run.head.is_some_and(|(gap, one_digit)| {
                one_digit && !gap.mixed && (gap.kind == Sep::LineBreak || Some(gap.kind) == kind)
            });
        if kind.is_some() && (12..=19).contains(&n) && !touches_open_end && !continues_before {
            let digits = &run.digits[run.group_starts[g]..run.group_end(last)];
            let (bs, be) = run.byte_span(g, last);
            let inside_token = is_alnum_before(b, bs) && is_alnum_after(b, be);
            if luhn_valid(digits) && CardBrand::of(digits).is_some() && !inside_token {
                // "+4 1 1 1..." is how international phone numbers start.
                let score = if bs > 0 && b[bs - 1] == b'+' {
                    0.2
                } else {
                    0.6
                };
                out.push(Candidate {
                    entity: Entity::CreditCard,
                    start: bs,
                    end: be,
                    score,
                    rule: RuleId::Static("credit_card.luhn_irregular"),
                });
            }
        }
        g = next.unwrap_or(last + 1);
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
    if kind.is_some_and(Sep::card_only) {
        // Thousands separators, CSV columns and sums: only a card's own grouping counts.
        return 0.0;
    }
    // Other groupings happen ("411111 1111111111") but so do tables of short numbers: accept
    // only a few groups of three or more digits.
    if sizes.len() <= 4 && sizes.iter().all(|&s| s >= 3) && !glued {
        0.6
    } else {
        0.0
    }
}

/// IPv4 addresses in groups `first..=last` of the run.
fn ipv4(b: &[u8], run: &Run, first: usize, last: usize, out: &mut Vec<Candidate>) {
    let mut g = first;
    while g + 3 <= last {
        let window = g..g + 4;
        let dots = run.gaps[g..g + 3]
            .iter()
            .all(|gap| gap.single && gap.kind == Sep::Dot);
        // The address must not continue with another dotted group ("1.2.3.4.5" is a version).
        let left_ok = g == first || run.gaps[g - 1].kind != Sep::Dot;
        let right_ok = g + 3 == last || run.gaps[g + 3].kind != Sep::Dot;
        let octets_ok = || {
            window.clone().all(|k| {
                let s = run.group_starts[k];
                let e = run.group_end(k);
                let len = e - s;
                len <= 3
                    && run.digits[s..e]
                        .iter()
                        .fold(0u32, |a, &d| a * 10 + u32::from(d))
                        <= 255
                    && !(len > 1 && run.digits[s] == 0)
            })
        };
        if dots && left_ok && right_ok && octets_ok() {
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

/// A phone number made of `digits` in groups of `sizes` (the first eight) joined by `gaps`.
fn phone(
    digits: &[u8],
    gaps: &[Gap],
    sizes: &[usize],
    plus_before: bool,
    paren_before: bool,
    whole: (usize, usize),
    out: &mut Vec<Candidate>,
) {
    let total = digits.len();
    let groups = gaps.len() + 1;
    let gaps_ok = gaps.iter().all(|g| {
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
            let d = &digits[first..];
            d.len() == 10 && d[0] >= 2 && d[3] >= 2
        };
        let nanp = match sizes {
            [3, 3, 4] => nanp_at(0),
            [1, 3, 3, 4] => digits[0] == 1 && nanp_at(1),
            _ => false,
        };
        // National formats elsewhere start with a trunk 0: "020 7946 0958", "030 901820".
        let national = groups >= 2 && digits[0] == 0 && (10..=11).contains(&total);
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
        scan(text, all(), &mut out);
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

    fn all() -> DigitEntities {
        DigitEntities {
            card: true,
            ssn: true,
            phone: true,
            aba: true,
            bank: true,
            ipv4: true,
        }
    }

    /// Every run read, without the prefilter.
    fn unfiltered(text: &str, want: DigitEntities) -> Vec<(Entity, usize, usize, u64)> {
        let mut out = Vec::new();
        scan_range(text, 0, text.len(), want, &mut Run::default(), &mut out);
        summary(out)
    }

    fn filtered(text: &str, want: DigitEntities) -> Vec<(Entity, usize, usize, u64)> {
        let mut out = Vec::new();
        scan(text, want, &mut out);
        summary(out)
    }

    fn summary(out: Vec<Candidate>) -> Vec<(Entity, usize, usize, u64)> {
        out.into_iter()
            .map(|c| (c.entity, c.start, c.end, c.score.to_bits()))
            .collect()
    }

    /// The prefilter skips only what the detectors would have rejected: on text made of card
    /// numbers, addresses, dates and the separators and scripts the scanner knows, cut and
    /// joined at random, both readings find the same candidates for every entity selection.
    #[test]
    fn prefiltered_scan_finds_what_a_full_scan_finds() {
        let pieces = [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
            "4111111111111111110",
            "4222222222222",
            "378282246310005",
            "4111\u{2013}1111\u{2013}1111\u{2013}1111",
            "\u{ff14}\u{ff11}\u{ff11}\u{ff11}",
            "\u{0664}\u{0661}\u{0661}\u{0661}",
            "1111\u{200b}1111",
            "078-05-1121",
            "10.0.0.1",
            "10.1.2.3\n2024-03-15",
            "(415) 555-2671",
            "+44 20 7946 0958",
            "011000015",
            "12345678",
            "2024-03-15T12:30:45.123Z",
            "\u{ff0e}",
            " ",
            "  ",
            "-",
            ".",
            "\n",
            ",",
            "_",
            "+",
            "x",
            "=",
            "é",
            "\u{a0}",
            "card ",
        ];
        let selections = [
            all(),
            DigitEntities {
                card: true,
                ..DigitEntities::default()
            },
            DigitEntities {
                ipv4: true,
                ..DigitEntities::default()
            },
            DigitEntities {
                ssn: true,
                ..DigitEntities::default()
            },
            DigitEntities {
                phone: true,
                card: true,
                ..DigitEntities::default()
            },
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut found_any = 0;
        for _ in 0..4000 {
            let mut text = String::new();
            for _ in 0..next(12) {
                let piece = pieces[next(pieces.len())];
                // Sometimes only part of a piece, so that numbers end anywhere.
                let cut = if next(4) == 0 {
                    next(piece.len() + 1)
                } else {
                    piece.len()
                };
                let cut = (0..=cut)
                    .rev()
                    .find(|&c| piece.is_char_boundary(c))
                    .unwrap_or(0);
                text.push_str(&piece[..cut]);
            }
            for want in selections {
                let expected = unfiltered(&text, want);
                found_any += usize::from(!expected.is_empty());
                assert_eq!(filtered(&text, want), expected, "{text:?}");
            }
        }
        assert!(found_any > 1000, "the generator finds numbers: {found_any}");
    }

    #[test]
    fn numbers_at_the_ends_of_the_text_and_of_prefilter_blocks() {
        for pad in 0..140 {
            for pan in [
                "4111111111111111",
                "4111 1111 1111 1111",
                "4111111111111111110",
            ] {
                let head = format!("{}{pan}", "x".repeat(pad));
                assert_eq!(cards(&head), vec![pan.to_string()], "{head:?}");
                let tail = format!("{pan}{}", " y".repeat(pad));
                assert_eq!(cards(&tail), vec![pan.to_string()], "{tail:?}");
            }
            let text = format!("{}ü 4111-1111-1111-1111 é", "é".repeat(pad));
            assert_eq!(cards(&text), vec!["4111-1111-1111-1111"], "{pad}");
        }
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
    fn entities_after_very_long_runs_are_found() {
        let ips = |text: &str| -> Vec<String> {
            found(text)
                .into_iter()
                .filter(|f| f.0 == Entity::IpAddress)
                .map(|f| f.1)
                .collect()
        };
        let long = "1 ".repeat(5000);
        assert_eq!(ips(&format!("{long}10.0.0.1 x")), vec!["10.0.0.1"]);
        assert_eq!(
            ips(&format!("{long}10.0.0.1,10.0.0.2 x")),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        // A comma-joined table longer than a run is read in pieces: values after it still count.
        let table = "12,".repeat(3000);
        let f = found(&format!("{table}078-05-1121,10.0.0.3"));
        assert!(
            f.iter()
                .any(|f| f.0 == Entity::UsSsn && f.1 == "078-05-1121"),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|f| f.0 == Entity::IpAddress && f.1 == "10.0.0.3"),
            "{f:?}"
        );
        // One separator between every two digits, at the end of a long run.
        let spaced = "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1";
        let text = format!("{}, {spaced}", "12 ".repeat(3000));
        assert_eq!(cards(&text), vec![spaced.to_string()]);
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
