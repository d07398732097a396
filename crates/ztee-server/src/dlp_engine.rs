//! [`DlpEngine`] on top of `ztee-dlp`: its scanner for detection, PCI masking for redaction and
//! its bounded-delay stream scanner for command output.

use std::sync::Arc;

use ztee_dlp::{anonymize, MaskStyle, Operator, Operators, Scanner, ScannerConfig, StreamScanner};

use crate::dlp::{DlpEngine, Redacted, RedactionCounts, SecretScope, StreamRedactor};

pub struct ZteeDlp {
    scanner: Arc<Scanner>,
    operators: Operators,
}

impl ZteeDlp {
    /// PCI masking (first six and last four digits of a PAN kept) for every entity.
    pub fn new(config: ScannerConfig) -> Result<Self, ztee_dlp::DlpError> {
        Ok(Self {
            scanner: Arc::new(Scanner::new(config)?),
            operators: Operators::new(Operator::Mask(MaskStyle::Pci)),
        })
    }

    pub fn scanner(&self) -> Arc<Scanner> {
        self.scanner.clone()
    }
}

fn to_counts(counts: &std::collections::BTreeMap<ztee_dlp::Entity, usize>) -> RedactionCounts {
    counts
        .iter()
        .map(|(e, n)| (e.as_str().to_owned(), u64::try_from(*n).unwrap_or(u64::MAX)))
        .collect()
}

impl DlpEngine for ZteeDlp {
    fn scan(&self, text: &str) -> Vec<String> {
        self.scanner
            .scan(text)
            .into_iter()
            .map(|f| f.entity_type.as_str().to_owned())
            .collect()
    }

    fn redact(&self, text: &str) -> Redacted {
        self.redact_in(None, text)
    }

    fn redact_in(&self, scope: Option<&SecretScope>, text: &str) -> Redacted {
        let findings = match scope {
            Some(scope) => self.scanner.scan_scoped(text, scope.exact_values()),
            None => self.scanner.scan(text),
        };
        if findings.is_empty() {
            return Redacted {
                text: text.to_owned(),
                counts: RedactionCounts::new(),
            };
        }
        match anonymize(text, &findings, &self.operators) {
            Ok(a) => Redacted {
                text: a.text,
                counts: to_counts(&a.counts),
            },
            // Masking needs no keys, so this is a detector bug; withhold the text rather than
            // let it through unmasked.
            Err(e) => {
                tracing::error!(error = %e, "masking failed; withholding the text");
                let mut counts = RedactionCounts::new();
                counts.insert("WITHHELD".into(), 1);
                Redacted {
                    text: ztee_dlp::WITHHELD.into(),
                    counts,
                }
            }
        }
    }

    fn scan_in(&self, scope: Option<&SecretScope>, text: &str) -> Vec<String> {
        match scope {
            Some(scope) => self
                .scanner
                .scan_scoped(text, scope.exact_values())
                .into_iter()
                .map(|f| f.entity_type.as_str().to_owned())
                .collect(),
            None => self.scan(text),
        }
    }

    fn ztee_scanner(&self) -> Option<Arc<Scanner>> {
        Some(self.scanner.clone())
    }

    fn stream(&self) -> Box<dyn StreamRedactor> {
        self.stream_for(None)
    }

    fn stream_for(&self, scope: Option<&SecretScope>) -> Box<dyn StreamRedactor> {
        let inner = match scope {
            Some(scope) => StreamScanner::scoped(
                self.scanner.clone(),
                self.operators.clone(),
                scope.exact_values().clone(),
            ),
            None => StreamScanner::new(self.scanner.clone(), self.operators.clone()),
        };
        Box::new(ZteeStream {
            inner,
            failed: ztee_dlp::FailClosed::default(),
        })
    }

    fn secret_scope(&self, values: &[(&str, &[u8])]) -> Result<SecretScope, String> {
        SecretScope::new(values).map_err(|e| e.to_string())
    }
}

struct ZteeStream {
    inner: StreamScanner,
    failed: ztee_dlp::FailClosed,
}

impl ZteeStream {
    fn guard(&mut self, r: Result<String, ztee_dlp::DlpError>) -> String {
        self.failed.release(r, "outbound")
    }
}

impl StreamRedactor for ZteeStream {
    fn push(&mut self, chunk: &str) -> String {
        let r = self.inner.feed(chunk);
        self.guard(r)
    }

    fn finish(&mut self) -> String {
        let r = self.inner.finish();
        self.guard(r)
    }

    fn pause(&mut self) -> String {
        let r = self.inner.flush_lines();
        self.guard(r)
    }

    fn counts(&self) -> RedactionCounts {
        to_counts(self.inner.counts())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pans_are_pci_masked_whole_and_across_chunks() {
        let dlp = ZteeDlp::new(ScannerConfig::default()).unwrap();
        let r = dlp.redact("card 4111 1111 1111 1111 ok");
        assert!(!r.text.contains("1111 1111 1111"), "{}", r.text);
        assert!(r.text.contains("1111 ok"), "last four kept: {}", r.text);
        assert_eq!(r.counts.get("CREDIT_CARD"), Some(&1));

        let mut s = dlp.stream();
        let mut out = s.push("pay 411111111");
        out.push_str(&s.push("1111111 now\n"));
        out.push_str(&s.finish());
        assert!(!out.contains("4111111111111111"), "{out}");
        assert!(out.ends_with("now\n"), "{out}");
        assert_eq!(s.counts().get("CREDIT_CARD"), Some(&1));
    }

    #[test]
    fn a_scope_masks_its_values_only_where_it_is_given() {
        let dlp = ZteeDlp::new(ScannerConfig::default()).unwrap();
        let value: &[u8] = b"s3cr3t-Value-42";
        let scope = dlp.secret_scope(&[("sandbox/0", value)]).unwrap();
        assert!(!format!("{scope:?}").contains("s3cr3t"));
        let text = "say s3cr3t-Value-42 and czNjcjN0LVZhbHVlLTQy";
        let r = dlp.redact_in(Some(&scope), text);
        assert!(
            !r.text.contains("s3cr3t") && !r.text.contains("czNjcjN0"),
            "{}",
            r.text
        );
        assert_eq!(r.counts.get("SECRET"), Some(&2));
        assert_eq!(dlp.scan_in(Some(&scope), text), ["SECRET", "SECRET"]);
        // Everything without the scope: the engine knows nothing of the value.
        assert_eq!(dlp.redact(text).text, text);
        assert!(dlp.scan(text).is_empty());
        assert!(dlp.scanner().scan(text).is_empty());
        let mut plain = dlp.stream();
        let mut out = plain.push(text);
        out.push_str(&plain.finish());
        assert_eq!(out, text);
        let mut scoped = dlp.stream_for(Some(&scope));
        let mut out = scoped.push("say s3cr3t-Va");
        out.push_str(&scoped.push("lue-42 end"));
        out.push_str(&scoped.finish());
        assert!(!out.contains("s3cr3t") && out.ends_with(" end"), "{out}");
        assert!(dlp.secret_scope(&[("sandbox/0", b"abc")]).is_err());
    }
}
