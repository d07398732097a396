//! Exact values registered at run time (secrets the broker injects into sandboxes), found in their
//! raw form and the encodings programs commonly print them in: base64 (standard and URL-safe,
//! with or without padding), hex (both cases) and URL encoding.
//!
//! Two holders: [`ExactSecrets`], registered on a [`crate::Scanner`] and matched by every scan it
//! makes (for a scanner that serves one principal, such as the CLI's run), and [`ExactValues`],
//! the values of one scope (one sandbox of a multi-tenant gateway), matched only by the scans
//! that are handed that scope, so no other caller can test a guess against them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

use crate::entity::Entity;
use crate::error::DlpError;
use crate::finding::{Candidate, RuleId};

/// Shorter values would redact ordinary words and numbers everywhere.
pub const MIN_SECRET_LEN: usize = 6;

/// RFC 3986 unreserved characters stay as they are.
const URL_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

struct Compiled {
    automaton: Option<AhoCorasick>,
    /// Length of the longest pattern (for the stream scanner's hold-back).
    longest: usize,
    /// Rule id (`secret.exact:<name>`) for each automaton pattern.
    rules: Vec<Arc<str>>,
}

/// The registered values. Reads (every scan) take a cheap snapshot; writes rebuild the automaton.
pub(crate) struct ExactSecrets {
    values: RwLock<BTreeMap<String, Zeroizing<Vec<u8>>>>,
    compiled: RwLock<Arc<Compiled>>,
}

fn encodings(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(value.to_vec())];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(Zeroizing::new(engine.encode(value).into_bytes()));
    }
    forms.push(Zeroizing::new(hex::encode(value).into_bytes()));
    forms.push(Zeroizing::new(hex::encode_upper(value).into_bytes()));
    if let Ok(s) = std::str::from_utf8(value) {
        let url = utf8_percent_encode(s, URL_ESCAPED).to_string();
        forms.push(Zeroizing::new(url.replace("%20", "+").into_bytes()));
        forms.push(Zeroizing::new(url.into_bytes()));
    }
    forms.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
    forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
    forms
}

/// A registration's name must be a valid identifier and its value long enough to match only
/// itself.
fn check_registration(name: &str, value: &[u8]) -> Result<(), DlpError> {
    if !valid_name(name) {
        return Err(DlpError::SecretName(name.chars().take(64).collect()));
    }
    if value.len() < MIN_SECRET_LEN {
        return Err(DlpError::SecretTooShort {
            name: name.to_string(),
            len: value.len(),
            min: MIN_SECRET_LEN,
        });
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/'))
}

impl ExactSecrets {
    pub fn new() -> ExactSecrets {
        ExactSecrets {
            values: RwLock::new(BTreeMap::new()),
            compiled: RwLock::new(Arc::new(Compiled {
                automaton: None,
                longest: 0,
                rules: Vec::new(),
            })),
        }
    }

    pub fn register(&self, name: &str, value: &[u8]) -> Result<(), DlpError> {
        check_registration(name, value)?;
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        values.insert(name.to_string(), Zeroizing::new(value.to_vec()));
        self.rebuild(&values);
        Ok(())
    }

    pub fn unregister(&self, name: &str) -> bool {
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        let removed = values.remove(name).is_some();
        if removed {
            self.rebuild(&values);
        }
        removed
    }

    pub fn names(&self) -> Vec<String> {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        values.keys().cloned().collect()
    }

    fn rebuild(&self, values: &BTreeMap<String, Zeroizing<Vec<u8>>>) {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut rules = Vec::new();
        for (name, value) in values {
            let rule: Arc<str> = Arc::from(format!("secret.exact:{name}"));
            for form in encodings(value) {
                patterns.push(form);
                rules.push(rule.clone());
            }
        }
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let automaton = if patterns.is_empty() {
            None
        } else {
            // Leftmost-longest: the base64 form with padding wins over the one without.
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns.iter().map(|p| p.as_slice()))
                .ok()
        };
        let mut compiled = self.compiled.write().unwrap_or_else(|e| e.into_inner());
        *compiled = Arc::new(Compiled {
            automaton,
            longest,
            rules,
        });
    }

    pub fn longest(&self) -> usize {
        let compiled = self.compiled.read().unwrap_or_else(|e| e.into_inner());
        compiled.longest
    }

    pub fn is_empty(&self) -> bool {
        let compiled = self.compiled.read().unwrap_or_else(|e| e.into_inner());
        compiled.automaton.is_none()
    }

    pub fn scan(&self, text: &str, out: &mut Vec<Candidate>) {
        let compiled = {
            let guard = self.compiled.read().unwrap_or_else(|e| e.into_inner());
            Arc::clone(&guard)
        };
        let Some(automaton) = &compiled.automaton else {
            return;
        };
        for m in automaton.find_iter(text.as_bytes()) {
            let Some(rule) = compiled.rules.get(m.pattern().as_usize()) else {
                continue;
            };
            push_match(text, m.start(), m.end(), rule, out);
        }
    }
}

/// Reports a match of an exact value at bytes `start..end`. A value with non-ASCII bytes may
/// match mid-character in its raw form; the span is widened to character boundaries so offsets
/// stay valid.
fn push_match(text: &str, mut start: usize, mut end: usize, rule: &str, out: &mut Vec<Candidate>) {
    while start > 0 && !text.is_char_boundary(start) {
        start -= 1;
    }
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    out.push(Candidate {
        entity: Entity::Secret,
        start,
        end,
        score: 1.0,
        rule: RuleId::Owned(rule.to_string()),
    });
}

/// The exact values of one scope (one sandbox), in every encoding [`ExactSecrets`] knows, matched
/// only by the scans given this set ([`crate::Scanner::scan_scoped`],
/// [`crate::StreamScanner::scoped`]). Immutable once built; every copy of a value it holds is
/// wiped when it is dropped. `Debug` shows names, never values.
pub struct ExactValues {
    /// Every encoded form with the rule id (`secret.exact:<name>`) it is reported under.
    forms: Vec<(Zeroizing<Vec<u8>>, Arc<str>)>,
    names: Vec<String>,
    longest: usize,
}

impl ExactValues {
    /// Builds the set from `(name, value)` pairs. Names follow the same rules as
    /// [`crate::Scanner::register_secret`]: 1-64 characters of `A-Za-z0-9_-./`, unique; values
    /// must be at least [`MIN_SECRET_LEN`] bytes.
    pub fn new<'a>(
        values: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<ExactValues, DlpError> {
        let mut forms = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (name, value) in values {
            if names.iter().any(|n| n == name) {
                return Err(DlpError::SecretName(name.chars().take(64).collect()));
            }
            check_registration(name, value)?;
            let rule: Arc<str> = Arc::from(format!("secret.exact:{name}"));
            for form in encodings(value) {
                forms.push((form, rule.clone()));
            }
            names.push(name.to_string());
        }
        let longest = forms.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
        Ok(ExactValues {
            forms,
            names,
            longest,
        })
    }

    /// Names of the values (never the values).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Length in bytes of the longest encoded form.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Leftmost-longest, non-overlapping matches, as [`ExactSecrets::scan`] reports them. Plain
    /// substring search per form (a scope holds a few dozen forms at most), so no search
    /// structure keeps a copy of a value that could not be wiped.
    pub(crate) fn scan(&self, text: &str, out: &mut Vec<Candidate>) {
        let bytes = text.as_bytes();
        let mut found: Vec<(usize, usize, &Arc<str>)> = Vec::new();
        for (form, rule) in &self.forms {
            let finder = memchr::memmem::Finder::new(form.as_slice());
            found.extend(
                finder
                    .find_iter(bytes)
                    .map(|start| (start, start + form.len(), rule)),
            );
        }
        // Leftmost first; at one start the longest form (padded base64 over unpadded) wins.
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut taken_until = 0;
        for (start, end, rule) in found {
            if start < taken_until {
                continue;
            }
            taken_until = end;
            push_match(text, start, end, rule, out);
        }
    }
}

impl std::fmt::Debug for ExactValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactValues")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}
