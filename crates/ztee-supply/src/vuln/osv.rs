//! The OSV schema (the parts matching needs), and whether a version falls in an affected range.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::vuln::version::Scheme;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub modified: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<Severity>,
    #[serde(default)]
    pub affected: Vec<Affected>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Severity {
    #[serde(rename = "type")]
    pub kind: String,
    pub score: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Affected {
    pub package: Option<AffectedPackage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<Severity>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AffectedPackage {
    pub ecosystem: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Range {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// The outcome of checking one version against one `affected` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    /// The lowest `fixed` version above the scanned one, if the data names one.
    pub fixed: Option<String>,
}

fn cmp(scheme: Scheme, a: &str, b: &str) -> Option<Ordering> {
    // OSV's "0" means "from the first version".
    if b == "0" {
        return Some(if a == "0" {
            Ordering::Equal
        } else {
            Ordering::Greater
        });
    }
    scheme.compare(a, b)
}

impl Affected {
    /// Whether `version` is affected, evaluating ECOSYSTEM and SEMVER ranges the way the OSV
    /// specification describes (events sorted by version; introduced opens, fixed and
    /// last_affected close). GIT ranges need commit history and are not used. Explicit
    /// `versions` are consulted only when no usable range exists.
    pub fn matches(&self, scheme: Scheme, version: &str) -> Option<Match> {
        let mut usable_range = false;
        for range in &self.ranges {
            let range_scheme = match range.kind.as_str() {
                "ECOSYSTEM" => scheme,
                "SEMVER" => Scheme::SemVer,
                _ => continue,
            };
            usable_range = true;
            if let Some(m) = range_matches(range, range_scheme, version) {
                return Some(m);
            }
        }
        if !usable_range && self.versions.iter().any(|v| v == version) {
            return Some(Match { fixed: None });
        }
        None
    }
}

fn event_version(e: &Event) -> Option<&str> {
    e.introduced
        .as_deref()
        .or(e.fixed.as_deref())
        .or(e.last_affected.as_deref())
        .or(e.limit.as_deref())
}

fn range_matches(range: &Range, scheme: Scheme, version: &str) -> Option<Match> {
    // A version the scheme cannot read is not matched (and not silently treated as old).
    scheme.compare(version, version)?;
    let mut events: Vec<&Event> = range
        .events
        .iter()
        .filter(|e| event_version(e).is_some())
        .collect();
    events.sort_by(|a, b| {
        let (va, vb) = (
            event_version(a).unwrap_or("0"),
            event_version(b).unwrap_or("0"),
        );
        match (va == "0", vb == "0") {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        scheme.compare(va, vb).unwrap_or(Ordering::Equal)
    });
    let mut affected = false;
    let mut fixed_after: Option<String> = None;
    for e in &events {
        if let Some(intro) = &e.introduced {
            if cmp(scheme, version, intro).is_some_and(|o| o != Ordering::Less) {
                affected = true;
                fixed_after = None;
            }
        } else if let Some(fixed) = &e.fixed {
            match cmp(scheme, version, fixed) {
                Some(Ordering::Less) if affected && fixed_after.is_none() => {
                    fixed_after = Some(fixed.clone());
                }
                Some(Ordering::Less) => {}
                Some(_) => affected = false,
                None => {}
            }
        } else if let Some(last) = &e.last_affected {
            if cmp(scheme, version, last).is_some_and(|o| o == Ordering::Greater) {
                affected = false;
            }
        } else if let Some(limit) = &e.limit {
            if cmp(scheme, version, limit).is_some_and(|o| o != Ordering::Less) {
                affected = false;
            }
        }
        if affected && fixed_after.is_some() {
            break;
        }
    }
    affected.then_some(Match { fixed: fixed_after })
}

impl Record {
    /// CVSS v3 vectors from the record, then from the affected entry.
    pub fn cvss_v3_vectors<'a>(&'a self, affected: &'a Affected) -> impl Iterator<Item = &'a str> {
        self.severity
            .iter()
            .chain(affected.severity.iter())
            .filter(|s| s.kind == "CVSS_V3")
            .map(|s| s.score.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn affected(events: serde_json::Value) -> Affected {
        serde_json::from_value(serde_json::json!({
            "package": {"ecosystem": "Debian:12", "name": "openssl"},
            "ranges": [{"type": "ECOSYSTEM", "events": events}]
        }))
        .unwrap()
    }

    #[test]
    fn evaluates_introduced_fixed_and_last_affected() {
        let a = affected(serde_json::json!([{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]));
        assert_eq!(
            a.matches(Scheme::Dpkg, "3.0.11-1~deb12u1"),
            Some(Match {
                fixed: Some("3.0.11-1~deb12u2".into())
            })
        );
        assert_eq!(a.matches(Scheme::Dpkg, "3.0.11-1~deb12u2"), None);
        assert_eq!(a.matches(Scheme::Dpkg, "3.0.13-1~deb12u1"), None);

        // Two affected windows: [1.0, 1.5) and [2.0, 2.3].
        let a = affected(serde_json::json!([
            {"introduced": "2.0"}, {"last_affected": "2.3"}, {"introduced": "1.0"}, {"fixed": "1.5"}
        ]));
        assert!(a.matches(Scheme::Dpkg, "0.9").is_none());
        assert_eq!(
            a.matches(Scheme::Dpkg, "1.2"),
            Some(Match {
                fixed: Some("1.5".into())
            })
        );
        assert!(a.matches(Scheme::Dpkg, "1.7").is_none());
        assert_eq!(a.matches(Scheme::Dpkg, "2.3"), Some(Match { fixed: None }));
        assert!(a.matches(Scheme::Dpkg, "2.3.1").is_none());
        assert!(a.matches(Scheme::Dpkg, "garbage").is_none());
    }
}
