//! Accepted risks: an allowlist (every entry with a reason and an expiry date) and OpenVEX
//! documents (`not_affected` with a justification, or `fixed`). An expired entry no longer
//! suppresses anything and is reported, so exceptions cannot quietly become permanent.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::Date;

use crate::error::{Error, Result};

/// One suppression rule, from either format.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Suppression {
    pub id: String,
    /// Package names it applies to; empty means every package.
    pub packages: Vec<String>,
    pub reason: String,
    /// Last day (UTC) the entry applies; `None` only for VEX statements, which carry no expiry.
    pub expires: Option<Date>,
    pub source: String,
}

impl Suppression {
    pub fn applies(&self, ids: &[&str], package: &str, today: Date) -> bool {
        ids.contains(&self.id.as_str())
            && (self.packages.is_empty() || self.packages.iter().any(|p| p == package))
            && self.expires.is_none_or(|e| today <= e)
    }

    pub fn expired(&self, today: Date) -> bool {
        self.expires.is_some_and(|e| today > e)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Allowlist {
    vulnerabilities: Vec<AllowEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowEntry {
    id: String,
    #[serde(default)]
    packages: Vec<String>,
    statement: String,
    expires: String,
}

#[derive(Deserialize)]
struct OpenVex {
    #[serde(rename = "@context")]
    context: String,
    statements: Vec<VexStatement>,
}

#[derive(Deserialize)]
struct VexStatement {
    vulnerability: VexVulnerability,
    #[serde(default)]
    products: Vec<serde_json::Value>,
    status: String,
    justification: Option<String>,
    impact_statement: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VexVulnerability {
    Named { name: String },
    Plain(String),
}

fn parse_date(s: &str, origin: &str) -> Result<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.trim(), &format).map_err(|_| Error::Policy {
        path: origin.to_string(),
        reason: format!("expires {s:?} is not a date like 2027-01-31"),
    })
}

/// Reads an allowlist (YAML or JSON) or an OpenVEX document.
pub fn load(path: &Path) -> Result<Vec<Suppression>> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let bad = |reason: String| Error::Policy {
        path: origin.clone(),
        reason,
    };
    let as_json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    if let Some(v) = &as_json {
        if v.get("@context")
            .and_then(|c| c.as_str())
            .is_some_and(|c| c.contains("openvex"))
        {
            let doc: OpenVex = serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("not an OpenVEX document: {e}")))?;
            let _ = doc.context;
            let mut out = Vec::new();
            for (i, st) in doc.statements.into_iter().enumerate() {
                let id = match st.vulnerability {
                    VexVulnerability::Named { name } | VexVulnerability::Plain(name) => name,
                };
                let reason = match st.status.as_str() {
                    "not_affected" => st
                        .justification
                        .or(st.impact_statement)
                        .ok_or_else(|| bad(format!("statement {i} ({id}): not_affected needs a justification or impact_statement")))?,
                    "fixed" => "fixed".to_string(),
                    // affected / under_investigation do not suppress anything.
                    _ => continue,
                };
                let packages = st
                    .products
                    .iter()
                    .filter_map(|p| p.get("@id").or(Some(p)).and_then(|x| x.as_str()))
                    .filter_map(purl_name)
                    .collect();
                out.push(Suppression {
                    id,
                    packages,
                    reason,
                    expires: None,
                    source: origin.clone(),
                });
            }
            return Ok(out);
        }
    }
    let list: Allowlist = serde_norway::from_slice(&bytes)
        .map_err(|e| bad(format!("expected `vulnerabilities: [{{id, statement, expires, packages?}}]` or OpenVEX JSON: {e}")))?;
    list.vulnerabilities
        .into_iter()
        .map(|e| {
            if e.statement.trim().is_empty() {
                return Err(bad(format!(
                    "{}: statement (the reason) must not be empty",
                    e.id
                )));
            }
            Ok(Suppression {
                expires: Some(parse_date(&e.expires, &origin)?),
                id: e.id,
                packages: e.packages,
                reason: e.statement,
                source: origin.clone(),
            })
        })
        .collect()
}

/// The package name in a purl such as `pkg:deb/debian/openssl@3.0.11`.
fn purl_name(purl: &str) -> Option<String> {
    let rest = purl.strip_prefix("pkg:")?;
    let path = rest.split(['@', '?', '#']).next()?;
    path.rsplit('/').next().map(str::to_string)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_needs_reason_and_expiry_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allow.yaml");
        std::fs::write(&path, "vulnerabilities:\n  - id: CVE-2023-5363\n    packages: [openssl]\n    statement: not reachable\n    expires: 2027-01-31\n").unwrap();
        let list = load(&path).unwrap();
        let day = |s| parse_date(s, "t").unwrap();
        assert!(list[0].applies(&["CVE-2023-5363"], "openssl", day("2027-01-31")));
        assert!(!list[0].applies(&["CVE-2023-5363"], "openssl", day("2027-02-01")));
        assert!(list[0].expired(day("2027-02-01")));
        assert!(!list[0].applies(&["CVE-2023-5363"], "zlib", day("2026-01-01")));

        std::fs::write(&path, "vulnerabilities:\n  - id: CVE-1\n    statement: x\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("expires"));
        std::fs::write(
            &path,
            "vulnerabilities:\n  - id: CVE-1\n    statement: ''\n    expires: 2027-01-01\n",
        )
        .unwrap();
        assert!(load(&path).is_err());
    }

    #[test]
    fn openvex_not_affected_needs_justification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vex.json");
        let doc = serde_json::json!({"@context": "https://openvex.dev/ns/v0.2.0", "statements": [
            {"vulnerability": {"name": "CVE-2023-5363"}, "products": [{"@id": "pkg:deb/debian/openssl@3.0.11-1~deb12u1"}],
             "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path"},
            {"vulnerability": {"name": "CVE-2", "aliases": []}, "status": "affected"}
        ]});
        std::fs::write(&path, doc.to_string()).unwrap();
        let list = load(&path).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].packages, vec!["openssl".to_string()]);
        let bad = serde_json::json!({"@context": "https://openvex.dev/ns/v0.2.0", "statements": [
            {"vulnerability": {"name": "CVE-1"}, "status": "not_affected"}]});
        std::fs::write(&path, bad.to_string()).unwrap();
        assert!(load(&path).is_err());
    }
}
