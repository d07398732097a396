//! The Debian security tracker's JSON (`https://security-tracker.debian.org/tracker/data/json`):
//! source package → CVE (or TEMP-) id → per-release status, fixed version, urgency and no-DSA
//! reason. ztee uses it to refine OSV matches: a release the tracker marks not affected, or fixed
//! at or below the installed version, drops the CVE; the urgency is shown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A release's status for one issue, as the tracker words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Resolved,
    Open,
    Undetermined,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub status: Status,
    /// `"0"` means the release was never affected (the tracker's `<not-affected>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_version: Option<String>,
    /// `not yet assigned`, `unimportant`, `low`, `medium`, `high`, `end-of-life`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
    /// Why no DSA is planned (`<no-dsa>`), with its reason (`ignored`, `postponed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodsa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodsa_reason: Option<String>,
}

impl ReleaseStatus {
    pub fn not_affected(&self) -> bool {
        self.status == Status::Resolved && self.fixed_version.as_deref() == Some("0")
    }
}

/// source package → issue id → release codename → status.
pub type Tracker = BTreeMap<String, BTreeMap<String, BTreeMap<String, ReleaseStatus>>>;

/// Whether a JSON document has the tracker's shape: an object of packages whose values are
/// objects of issues that carry `releases`.
pub fn is_tracker(value: &serde_json::Value) -> bool {
    let Some(packages) = value.as_object() else {
        return false;
    };
    !packages.is_empty()
        && packages.values().all(|issues| {
            issues
                .as_object()
                .is_some_and(|issues| issues.values().all(|issue| issue.get("releases").is_some()))
        })
}

#[derive(Deserialize)]
struct RawIssue {
    releases: BTreeMap<String, RawRelease>,
}

#[derive(Deserialize)]
struct RawRelease {
    status: String,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    urgency: Option<String>,
    #[serde(default)]
    nodsa: Option<String>,
    #[serde(default)]
    nodsa_reason: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// Parses the tracker document. Errors name the package, the issue and the field, e.g.
/// `glibc: CVE-2023-4911: releases.bookworm.status: "fixed" is not resolved, open or undetermined`.
pub fn parse(value: serde_json::Value) -> Result<Tracker, String> {
    let serde_json::Value::Object(packages) = value else {
        return Err("not an object of source packages".into());
    };
    let mut out = Tracker::new();
    for (package, issues) in packages {
        let serde_json::Value::Object(issues) = issues else {
            return Err(format!("{package}: not an object of issues"));
        };
        let entry = out.entry(package.clone()).or_default();
        for (issue, body) in issues {
            let raw: RawIssue = serde_path_to_error::deserialize(body)
                .map_err(|e| format!("{package}: {issue}: {}: {}", e.path(), e.inner()))?;
            let mut releases = BTreeMap::new();
            for (release, r) in raw.releases {
                let status = match r.status.as_str() {
                    "resolved" => Status::Resolved,
                    "open" => Status::Open,
                    "undetermined" => Status::Undetermined,
                    other => {
                        return Err(format!(
                            "{package}: {issue}: releases.{release}.status: {other:?} is not resolved, open or undetermined"
                        ))
                    }
                };
                let fixed_version = non_empty(r.fixed_version);
                if status == Status::Resolved && fixed_version.is_none() {
                    return Err(format!(
                        "{package}: {issue}: releases.{release}.fixed_version: a resolved issue needs one (\"0\" for not affected)"
                    ));
                }
                releases.insert(
                    release,
                    ReleaseStatus {
                        status,
                        fixed_version,
                        urgency: non_empty(r.urgency),
                        nodsa: non_empty(r.nodsa),
                        nodsa_reason: non_empty(r.nodsa_reason),
                    },
                );
            }
            entry.insert(issue, releases);
        }
    }
    Ok(out)
}

/// The codename the tracker uses for a Debian `VERSION_ID`.
pub fn codename(version_id: &str) -> Option<&'static str> {
    Some(match version_id {
        "9" => "stretch",
        "10" => "buster",
        "11" => "bullseye",
        "12" => "bookworm",
        "13" => "trixie",
        "14" => "forky",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_statuses_and_names_bad_fields() {
        let doc = serde_json::json!({"glibc": {"CVE-2023-4911": {"description": "x", "releases": {
            "bookworm": {"status": "resolved", "repositories": {"bookworm": "2.36-9+deb12u4"}, "fixed_version": "2.36-9+deb12u3", "urgency": "not yet assigned"},
            "buster": {"status": "resolved", "fixed_version": "0", "urgency": "unimportant"},
            "bullseye": {"status": "open", "urgency": "low", "nodsa": "Minor issue", "nodsa_reason": "postponed"}
        }}}});
        assert!(is_tracker(&doc));
        let t = parse(doc).unwrap();
        let r = &t["glibc"]["CVE-2023-4911"];
        assert_eq!(
            r["bookworm"].fixed_version.as_deref(),
            Some("2.36-9+deb12u3")
        );
        assert!(r["buster"].not_affected());
        assert_eq!(r["bullseye"].nodsa_reason.as_deref(), Some("postponed"));

        let bad = serde_json::json!({"glibc": {"CVE-1": {"releases": {"bookworm": {"status": "fixed"}}}}});
        let err = parse(bad).unwrap_err();
        assert!(
            err.contains("glibc: CVE-1: releases.bookworm.status: \"fixed\""),
            "{err}"
        );
        let bad = serde_json::json!({"glibc": {"CVE-1": {"releases": {"bookworm": {"status": "resolved", "urgency": 3}}}}});
        let err = parse(bad).unwrap_err();
        assert!(
            err.contains("glibc: CVE-1: releases.bookworm.urgency"),
            "{err}"
        );
        let bad = serde_json::json!({"glibc": {"CVE-1": {"releases": {"bookworm": {"status": "resolved"}}}}});
        assert!(parse(bad).unwrap_err().contains("fixed_version"));

        assert!(!is_tracker(
            &serde_json::json!({"id": "DSA-1", "affected": []})
        ));
    }
}
