//! Redaction of output that arrives in chunks (sandbox stdout/stderr, LLM token streams).
//!
//! The scanner holds back the last `hold` bytes of what it has seen, so a card number or secret
//! split across chunks is still seen whole; everything before that is scanned, redacted and
//! released. Memory is bounded by `hold + MIN_EMIT + chunk size`, plus [`MAX_PENDING`] while a
//! private key block is open; the delay is at most `hold + MIN_EMIT` bytes. Text already released
//! is remembered (the last `hold` bytes, unredacted, in memory only) as context for the next part.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::detect::chd;
use crate::detect::digits::MAX_CARD_BYTES;
use crate::detect::exact::ExactValues;
use crate::entity::Entity;
use crate::error::DlpError;
use crate::finding::Finding;
use crate::operators::{anonymize_with, Operators};
use crate::scanner::Scanner;
use crate::tokens::TokenMap;
use crate::utf8::Utf8Stream;

/// Longer than any card number with separators ([`MAX_CARD_BYTES`]: 19 digits of up to four bytes,
/// three separators of up to four bytes between every two), than the near-PAN window, and than
/// the text a cardholder name or address depends on ([`chd::REACH`]: a card number up to
/// [`chd::NEAR_PAN`] bytes away, with its own context), kept on both sides of what is released.
const DEFAULT_HOLD: usize = 512;
const _: () = assert!(DEFAULT_HOLD >= MAX_CARD_BYTES);
const _: () = assert!(DEFAULT_HOLD >= chd::REACH);
/// Release in batches of at least this much, so tiny chunks do not rescan the held text each time.
/// With the hold, this bounds the delay at 704 bytes.
const MIN_EMIT: usize = 192;
/// A finding still open after this much pending text (an unterminated private key block) is
/// released redacted up to the cut, and redaction continues until the block ends.
pub const MAX_PENDING: usize = 64 * 1024;

pub struct StreamScanner {
    scanner: Arc<Scanner>,
    /// The exact values of the scope this stream belongs to (one sandbox's secrets).
    exact: Option<Arc<ExactValues>>,
    operators: Operators,
    tokens: TokenMap,
    hold: usize,
    /// Released text kept as context (unredacted, never released again), `buf[..base]`, then
    /// the text not released yet. One buffer, so a chunk is copied once on its way in and the
    /// scan reads it in place.
    buf: String,
    base: usize,
    /// Bytes of an incomplete UTF-8 sequence at the end of the last byte chunk.
    utf8: Utf8Stream,
    /// A private key block was cut while open: redact until its END line.
    in_key_block: bool,
    /// While a finding holds everything back, wait for the pending text to double before
    /// rescanning, so a long open block costs linear, not quadratic, time.
    next_process: usize,
    counts: BTreeMap<Entity, usize>,
}

impl StreamScanner {
    pub fn new(scanner: Arc<Scanner>, operators: Operators) -> StreamScanner {
        StreamScanner::with_tokens(scanner, operators, TokenMap::new())
    }

    /// A stream of one scope (one sandbox's output): the shared detectors plus `exact`, the
    /// values of that scope only.
    pub fn scoped(scanner: Arc<Scanner>, operators: Operators, exact: Arc<ExactValues>) -> Self {
        let mut stream = StreamScanner::with_tokens(scanner, operators, TokenMap::new());
        stream.hold = stream.hold.max(exact.longest() + 16);
        stream.exact = Some(exact);
        stream
    }

    /// Tokenizes with an existing map, e.g. the one used for the request this stream answers.
    pub fn with_tokens(scanner: Arc<Scanner>, operators: Operators, tokens: TokenMap) -> Self {
        let hold = DEFAULT_HOLD.max(scanner.longest_exact_secret() + 16);
        StreamScanner {
            scanner,
            exact: None,
            operators,
            tokens,
            hold,
            buf: String::new(),
            base: 0,
            utf8: Utf8Stream::default(),
            in_key_block: false,
            next_process: 0,
            counts: BTreeMap::new(),
        }
    }

    /// Adds a text chunk; returns the redacted output that is ready (possibly empty).
    pub fn feed(&mut self, chunk: &str) -> Result<String, DlpError> {
        self.buf.push_str(chunk);
        self.process(Release::Held)
    }

    /// Adds raw bytes (process output): UTF-8 split across chunks is reassembled; invalid bytes
    /// become U+FFFD.
    pub fn feed_bytes(&mut self, chunk: &[u8]) -> Result<String, DlpError> {
        self.utf8.push(chunk, &mut self.buf);
        self.process(Release::Held)
    }

    /// Releases everything still held, redacted. The scanner can be fed again afterwards.
    pub fn finish(&mut self) -> Result<String, DlpError> {
        self.utf8.finish(&mut self.buf);
        self.process(Release::All)
    }

    /// For a source that has paused (an interactive program waiting for input): releases the
    /// complete lines held back, redacted, up to the last line break that no card number can
    /// run across (the last character before it, separators aside, is not a digit). A finding
    /// that may still grow is never cut, and the hold is kept as context for what follows.
    /// What a pause can cost: context for a cardholder name printed before it and a card
    /// number printed after it.
    pub fn flush_lines(&mut self) -> Result<String, DlpError> {
        self.process(Release::Lines)
    }

    /// What was redacted so far, per entity.
    pub fn counts(&self) -> &BTreeMap<Entity, usize> {
        &self.counts
    }

    /// The placeholders issued so far (for restoring them downstream).
    pub fn tokens(&self) -> &TokenMap {
        &self.tokens
    }

    fn process(&mut self, release: Release) -> Result<String, DlpError> {
        let base = self.base;
        let pending = self.buf.len() - base;
        let final_ = release == Release::All;
        let line_cut = match release {
            Release::Lines => match safe_line_end(&self.buf[base..]) {
                Some(end) => Some(base + end),
                None => return Ok(String::new()),
            },
            _ => None,
        };
        if release == Release::Held && pending < (self.hold + MIN_EMIT).max(self.next_process) {
            return Ok(String::new());
        }
        let text = self.buf.as_str();
        let mut findings = match &self.exact {
            Some(exact) => self.scanner.scan_scoped(text, exact),
            None => self.scanner.scan(text),
        };

        let mut key_block_until = None;
        if self.in_key_block {
            // The block's header was released earlier; redact up to and including its END line.
            let end = match text[base..].find("-----END") {
                Some(i) => {
                    let after = base + i + "-----END".len();
                    text[after..]
                        .find("-----")
                        .map_or(text.len(), |j| after + j + "-----".len())
                }
                None => text.len(),
            };
            key_block_until = Some(end);
            findings.push(Finding {
                entity_type: Entity::Secret,
                start: 0,
                end: 0,
                byte_start: base,
                byte_end: end,
                score: 1.0,
                rule_id: "secret.private_key".to_string(),
            });
        }

        let mut cut = match (final_, line_cut) {
            (true, _) => text.len(),
            (false, Some(end)) => end,
            (false, None) => floor_char_boundary(text, text.len().saturating_sub(self.hold)),
        };
        if !final_ {
            // Never release part of a finding that may still grow.
            for f in &findings {
                if f.byte_start < cut && f.byte_end > cut && f.byte_start >= base {
                    cut = cut.min(f.byte_start);
                }
            }
            if key_block_until.is_some_and(|end| end > cut) {
                // The open block is redacted up to the cut, whatever the cut.
                cut = line_cut.unwrap_or_else(|| {
                    floor_char_boundary(text, text.len().saturating_sub(self.hold))
                });
            }
            if cut <= base && pending > MAX_PENDING {
                // A finding (an open key block) has held back too much: release up to the
                // hold, redacting the cut finding's released part.
                cut = floor_char_boundary(text, text.len() - self.hold);
            }
        }
        if cut <= base {
            if release == Release::Held {
                self.next_process = (pending * 2).min(MAX_PENDING + 1);
            }
            return Ok(String::new());
        }
        self.next_process = 0;

        // Findings clipped to the part being released, rebased to it.
        let mut clipped = Vec::new();
        let mut cut_open_key = false;
        for f in &findings {
            let s = f.byte_start.max(base);
            let e = f.byte_end.min(cut);
            if s >= e {
                continue;
            }
            if f.byte_end > cut && f.rule_id == "secret.private_key" {
                cut_open_key = true;
            }
            let mut g = f.clone();
            g.byte_start = s - base;
            g.byte_end = e - base;
            clipped.push(g);
        }
        self.in_key_block = cut_open_key;
        let released = &text[base..cut];
        let out = anonymize_with(released, &clipped, &self.operators, &mut self.tokens)?;
        for (entity, n) in out.counts {
            *self.counts.entry(entity).or_insert(0) += n;
        }
        let keep_from = floor_char_boundary(text, cut.saturating_sub(self.hold));
        self.buf.drain(..keep_from);
        self.base = cut - keep_from;
        Ok(out.text)
    }
}

/// How much of the pending text a pass may release.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// All but the hold.
    Held,
    /// Complete lines, at a break no card number runs across.
    Lines,
    /// Everything: the stream has ended.
    All,
}

/// The end (just after the line break) of the longest prefix of `text` made of complete lines
/// whose last character before the break, separators aside, is not a digit: no card number can
/// continue across it.
fn safe_line_end(text: &str) -> Option<usize> {
    let mut end = text.len();
    while let Some(at) = text[..end].rfind('\n') {
        let before =
            text[..at].trim_end_matches(|c: char| c.is_whitespace() || "-./(),+_".contains(c));
        match before.chars().next_back() {
            Some(c) if c.is_numeric() => end = at,
            _ => return Some(at + 1),
        }
    }
    None
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::anonymize;
    use crate::scanner::ScannerConfig;

    /// A paused program's complete lines come out at once, masked; a card number that may go on
    /// across the line break is held until it is complete.
    #[test]
    fn a_pause_releases_complete_lines_but_never_half_a_card() {
        let scanner =
            Arc::new(Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("{e}")));
        let mut s = StreamScanner::new(scanner, Operators::default());
        assert_eq!(s.feed("{\"id\": 1}\n{\"id\"").unwrap(), "");
        assert_eq!(s.flush_lines().unwrap(), "{\"id\": 1}\n");
        assert_eq!(s.flush_lines().unwrap(), "");
        // Digits before the break may continue on the next line: nothing is released.
        assert_eq!(s.feed(": 2, \"card\": \"4111 1111\n").unwrap(), "");
        assert_eq!(s.flush_lines().unwrap(), "");
        s.feed("1111 1111\"}\n").unwrap();
        assert_eq!(
            s.flush_lines().unwrap(),
            "{\"id\": 2, \"card\": \"<CREDIT_CARD>\"}\n"
        );
        assert_eq!(s.finish().unwrap(), "");
        assert_eq!(s.counts()[&Entity::CreditCard], 1);
    }

    #[test]
    fn safe_line_ends() {
        assert_eq!(safe_line_end("a\nb"), Some(2));
        assert_eq!(safe_line_end("a\n12\n"), Some(2));
        assert_eq!(safe_line_end("12 -\n"), None);
        assert_eq!(safe_line_end("no break"), None);
        assert_eq!(safe_line_end("x}\n"), Some(3));
    }

    /// Log text fed in 4 KiB byte chunks (the size a process pipe delivers) comes out exactly as
    /// the whole text redacted at once, with card numbers and multi-byte characters cut by the
    /// chunk edges and kept across the buffer's drains.
    #[test]
    fn chunked_output_equals_whole_text_redaction() {
        let scanner =
            Arc::new(Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("{e}")));
        let mut text = String::new();
        for i in 0..400 {
            text.push_str(&format!(
                "2024-03-15T12:30:{:02}Z ü ip=10.0.{}.1 ",
                i % 60,
                i % 256
            ));
            match i % 7 {
                0 => text.push_str("card=4111 1111 1111 1111"),
                3 => text.push_str("card=4111111111111111110 é"),
                5 => text.push_str("pan \u{ff14}\u{ff11}\u{ff11}\u{ff11}-1111-1111-1111"),
                _ => {}
            }
            text.push('\n');
        }
        let ops = Operators::default();
        let whole = anonymize(&text, &scanner.scan(&text), &ops)
            .unwrap_or_else(|e| panic!("{e}"))
            .text;
        for chunk in [4096, 4093, 61] {
            let mut stream = StreamScanner::new(Arc::clone(&scanner), ops.clone());
            let mut out = String::new();
            for part in text.as_bytes().chunks(chunk) {
                out.push_str(&stream.feed_bytes(part).unwrap_or_else(|e| panic!("{e}")));
            }
            out.push_str(&stream.finish().unwrap_or_else(|e| panic!("{e}")));
            assert_eq!(out, whole, "chunks of {chunk}");
            assert!(!out.contains("4111"), "chunks of {chunk}");
        }
    }
}
