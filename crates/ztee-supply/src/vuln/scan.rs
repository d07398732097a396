//! Matching a catalog against the vulnerability database, and the report: table rows, JSON,
//! and cosign's vulnerability attestation predicate.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::Date;

use crate::error::Result;
use crate::sbom::purl::normalize_pypi_name;
use crate::sbom::{Catalog, Package, PackageKind};
use crate::vuln::cve5::{CveScores, ScoreSource};
use crate::vuln::cvss;
use crate::vuln::db::VulnDb;
use crate::vuln::debian::{self, ReleaseStatus, Tracker};
use crate::vuln::osv::Record;
use crate::vuln::version::Scheme;
use crate::vuln::vex::Suppression;

/// The gate ztee applies unless told otherwise: any finding scoring 7.0 or more blocks.
pub const DEFAULT_FAIL_ON_CVSS: f64 = 7.0;

/// What the gate does with a finding no source gives a CVSS score: block (the default: a
/// vulnerability nobody has scored is not known to be harmless) or warn (report it and pass).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnscoredPolicy {
    #[default]
    Block,
    Warn,
}

impl fmt::Display for UnscoredPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnscoredPolicy::Block => "block",
            UnscoredPolicy::Warn => "warn",
        })
    }
}

impl FromStr for UnscoredPolicy {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "block" => Ok(UnscoredPolicy::Block),
            "warn" => Ok(UnscoredPolicy::Warn),
            other => Err(crate::error::Error::invalid(
                "unscored policy",
                other,
                "must be \"block\" (an unscored finding fails the gate) or \"warn\" (it is reported and passes)",
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub fail_on_cvss: f64,
    /// What an unscored finding does to the gate.
    pub unscored: UnscoredPolicy,
    /// Leave out findings the data names no fixed version for.
    pub ignore_unfixed: bool,
    pub suppressions: Vec<Suppression>,
    pub today: Date,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub aliases: Vec<String>,
    pub package: String,
    pub version: String,
    pub kind: PackageKind,
    pub ecosystem: String,
    /// The name the advisory is filed under (the source package for Debian).
    pub advisory_package: String,
    pub fixed: Option<String>,
    pub cvss_vector: Option<String>,
    pub cvss_score: Option<f64>,
    /// Where the score came from: `osv`, `cve:cna`, `cve:adp:<provider>` or `none`.
    #[serde(default)]
    pub score_source: ScoreSource,
    /// The CVE whose record gave the score, when it came from a CVE record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_cve: Option<String>,
    pub rating: String,
    /// What the Debian security tracker says about this finding's CVEs in the image's release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debian_tracker: Vec<TrackerNote>,
    pub summary: String,
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<Suppression>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScanReport {
    pub subject: String,
    pub digest: Option<String>,
    pub scanned_at: String,
    pub database_updated_at: Option<String>,
    pub packages_scanned: usize,
    /// Packages skipped because another package manager owns them (see `owned_by_deb`).
    pub packages_owned_by_deb: usize,
    pub findings: Vec<Finding>,
    pub suppressed: Vec<Finding>,
    pub expired_suppressions: Vec<Suppression>,
    /// The highest CVSS base score among unsuppressed findings; 0.0 when there are none.
    pub max_cvss: f64,
    /// Unsuppressed findings no source gave a CVSS score.
    pub unscored: usize,
    #[serde(default)]
    pub unscored_policy: UnscoredPolicy,
    pub fail_on_cvss: f64,
    pub passed: bool,
}

/// The Debian security tracker's view of one CVE of a finding, for the image's release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackerNote {
    pub cve: String,
    pub release: String,
    #[serde(flatten)]
    pub status: ReleaseStatus,
}

/// The CVE ids a record is about: its own id when it embeds one (`DEBIAN-CVE-2023-4911`), and
/// its aliases, upstream and related ids.
fn cve_ids(record: &Record) -> Vec<String> {
    let own = record.id.find("CVE-").map(|at| record.id[at..].to_string());
    let mut ids: Vec<String> = own
        .into_iter()
        .chain(
            record
                .aliases
                .iter()
                .chain(&record.upstream)
                .chain(&record.related)
                .filter(|id| id.starts_with("CVE-"))
                .cloned(),
        )
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Splits a Debian finding's CVEs by what the tracker says about `version` of `source` in
/// `release`: the notes for those still affecting it, and the reasons for those that do not.
fn tracker_verdicts(
    tracker: &Tracker,
    source: &str,
    release: &str,
    version: &str,
    cves: &[String],
) -> (Vec<TrackerNote>, Vec<(String, String)>) {
    let mut notes = Vec::new();
    let mut cleared = Vec::new();
    for cve in cves {
        let Some(status) = tracker
            .get(source)
            .and_then(|issues| issues.get(cve))
            .and_then(|releases| releases.get(release))
        else {
            continue;
        };
        if status.not_affected() {
            cleared.push((
                cve.clone(),
                format!("{cve} does not affect {source} in {release}"),
            ));
            continue;
        }
        if let Some(fixed) = status
            .fixed_version
            .as_deref()
            .filter(|_| status.status == debian::Status::Resolved)
        {
            if Scheme::Dpkg
                .compare(version, fixed)
                .is_some_and(|o| o != std::cmp::Ordering::Less)
            {
                cleared.push((
                    cve.clone(),
                    format!("{cve} is fixed in {source} {fixed} in {release}"),
                ));
                continue;
            }
        }
        notes.push(TrackerNote {
            cve: cve.clone(),
            release: release.to_string(),
            status: status.clone(),
        });
    }
    (notes, cleared)
}

/// The OSV ecosystem and advisory name a package is matched under, or `None` when it must not
/// be matched on its own (a Python or npm package installed by dpkg carries Debian's patches;
/// Debian's advisories for its source package cover it).
fn match_key(p: &Package, catalog: &Catalog) -> Option<(String, String, String)> {
    if p.owned_by_deb.is_some() {
        return None;
    }
    match p.kind {
        PackageKind::Deb => {
            let distro = catalog.distro.as_ref()?;
            let family = match distro.id.as_str() {
                "debian" => "Debian",
                "ubuntu" => "Ubuntu",
                _ => return None,
            };
            let release = distro.version_id.as_deref()?;
            let (source, source_version) = p
                .source
                .clone()
                .unwrap_or((p.name.clone(), p.version.clone()));
            Some((format!("{family}:{release}"), source, source_version))
        }
        PackageKind::Python => Some((
            "PyPI".into(),
            normalize_pypi_name(&p.name),
            p.version.clone(),
        )),
        PackageKind::Npm => Some(("npm".into(), p.name.clone(), p.version.clone())),
        PackageKind::Cargo => Some(("crates.io".into(), p.name.clone(), p.version.clone())),
    }
}

fn family(ecosystem: &str) -> &str {
    ecosystem.split(':').next().unwrap_or(ecosystem)
}

/// Scans `catalog` against `db`.
pub fn scan(catalog: &Catalog, db: &VulnDb, options: &ScanOptions) -> Result<ScanReport> {
    let keys: Vec<(usize, (String, String, String))> = catalog
        .packages
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match_key(p, catalog).map(|k| (i, k)))
        .collect();
    let mut families: Vec<&str> = keys.iter().map(|(_, (eco, _, _))| family(eco)).collect();
    families.sort_unstable();
    families.dedup();

    let mut records: Vec<Record> = Vec::new();
    for f in families {
        records.extend(
            db.load_family(f)?
                .into_iter()
                .filter(|r| r.withdrawn.is_none()),
        );
    }
    // Read only when a finding needs them: the CVE scores can be large.
    let mut cve_scores: Option<HashMap<String, CveScores>> = None;
    let tracker = if keys.iter().any(|(_, (eco, _, _))| family(eco) == "Debian") {
        db.load_debian_tracker()?
    } else {
        Tracker::new()
    };
    // (ecosystem, name) -> (record, affected) pairs
    let mut index: HashMap<(String, String), Vec<(usize, usize)>> = HashMap::new();
    for (ri, r) in records.iter().enumerate() {
        for (ai, a) in r.affected.iter().enumerate() {
            if let Some(pkg) = &a.package {
                let name = if pkg.ecosystem == "PyPI" {
                    normalize_pypi_name(&pkg.name)
                } else {
                    pkg.name.clone()
                };
                index
                    .entry((pkg.ecosystem.clone(), name))
                    .or_default()
                    .push((ri, ai));
            }
        }
    }

    let mut findings = Vec::new();
    let mut suppressed = Vec::new();
    for (pi, (ecosystem, name, version)) in &keys {
        let package = &catalog.packages[*pi];
        let Some(scheme) = Scheme::for_ecosystem(ecosystem) else {
            continue;
        };
        let Some(candidates) = index.get(&(ecosystem.clone(), name.clone())) else {
            continue;
        };
        let mut seen = std::collections::HashSet::new();
        for (ri, ai) in candidates {
            let record = &records[*ri];
            let affected = &record.affected[*ai];
            let Some(m) = affected.matches(scheme, version) else {
                continue;
            };
            if !seen.insert(record.id.clone()) {
                continue;
            }
            if options.ignore_unfixed && m.fixed.is_none() {
                continue;
            }
            let mut cves = cve_ids(record);
            let mut tracker_notes = Vec::new();
            let mut cleared = Vec::new();
            if let Some(release) = ecosystem.strip_prefix("Debian:").and_then(debian::codename) {
                (tracker_notes, cleared) =
                    tracker_verdicts(&tracker, name, release, version, &cves);
                cves.retain(|c| !cleared.iter().any(|(cleared, _)| cleared == c));
            }
            // The record's own vector first; else the highest score among the CVE records of
            // the CVEs it is about (an advisory fixing several CVEs is as severe as its worst).
            let mut scored = record
                .cvss_v3_vectors(affected)
                .filter_map(|v| cvss::base_score(v).ok().map(|s| (v.to_string(), s.score)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(vector, score)| (vector, score, ScoreSource::Osv, None));
            if scored.is_none() && !cves.is_empty() {
                let scores = match &mut cve_scores {
                    Some(s) => s,
                    None => cve_scores.insert(db.load_cve_scores()?),
                };
                scored =
                    cves.iter()
                        .filter_map(|c| {
                            scores.get(c).and_then(|s| s.best()).map(|(source, m)| {
                                (m.vector.clone(), m.score, source, Some(c.clone()))
                            })
                        })
                        .max_by(|a, b| a.1.total_cmp(&b.1));
            }
            let mut aliases: Vec<String> = record
                .aliases
                .iter()
                .chain(&record.related)
                .chain(&record.upstream)
                .cloned()
                .collect();
            aliases.sort();
            aliases.dedup();
            let mut finding = Finding {
                id: record.id.clone(),
                aliases,
                package: package.name.clone(),
                version: package.version.clone(),
                kind: package.kind,
                ecosystem: ecosystem.clone(),
                advisory_package: name.clone(),
                fixed: m.fixed,
                cvss_vector: scored.as_ref().map(|s| s.0.clone()),
                cvss_score: scored.as_ref().map(|s| s.1),
                score_source: scored.as_ref().map_or(ScoreSource::None, |s| s.2.clone()),
                score_cve: scored.as_ref().and_then(|s| s.3.clone()),
                rating: scored
                    .as_ref()
                    .map_or("UNSCORED", |s| cvss::rating(s.1))
                    .to_string(),
                debian_tracker: tracker_notes,
                summary: record.summary.clone().unwrap_or_default(),
                location: package.location.clone(),
                suppressed_by: None,
            };
            let ids: Vec<&str> = std::iter::once(finding.id.as_str())
                .chain(finding.aliases.iter().map(String::as_str))
                .collect();
            // Every CVE of the finding cleared by Debian: not a vulnerability of this version.
            let not_applicable = (cves.is_empty() && !cleared.is_empty()).then(|| Suppression {
                id: finding.id.clone(),
                packages: vec![name.clone()],
                reason: cleared
                    .iter()
                    .map(|(_, why)| why.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                expires: None,
                source: "debian-security-tracker".into(),
            });
            let rule = not_applicable.or_else(|| {
                options
                    .suppressions
                    .iter()
                    .find(|s| {
                        s.applies(&ids, &finding.package, options.today)
                            || s.applies(&ids, &finding.advisory_package, options.today)
                    })
                    .cloned()
            });
            match rule {
                Some(rule) => {
                    finding.suppressed_by = Some(rule);
                    suppressed.push(finding);
                }
                None => findings.push(finding),
            }
        }
    }
    findings.sort_by(|a, b| {
        b.cvss_score
            .unwrap_or(-1.0)
            .total_cmp(&a.cvss_score.unwrap_or(-1.0))
            .then_with(|| a.package.cmp(&b.package))
            .then_with(|| a.id.cmp(&b.id))
    });
    let max_cvss = findings
        .iter()
        .filter_map(|f| f.cvss_score)
        .fold(0.0, f64::max);
    let unscored = findings.iter().filter(|f| f.cvss_score.is_none()).count();
    let passed = max_cvss < options.fail_on_cvss
        && !(options.unscored == UnscoredPolicy::Block && unscored > 0);
    Ok(ScanReport {
        subject: catalog.subject.clone(),
        digest: catalog.digest.as_ref().map(|d| d.to_string()),
        scanned_at: crate::sbom::cyclonedx::now_rfc3339(),
        database_updated_at: db.meta()?.updated_at,
        packages_scanned: keys.len(),
        packages_owned_by_deb: catalog
            .packages
            .iter()
            .filter(|p| p.owned_by_deb.is_some())
            .count(),
        unscored,
        unscored_policy: options.unscored,
        findings,
        suppressed,
        expired_suppressions: options
            .suppressions
            .iter()
            .filter(|s| s.expired(options.today))
            .cloned()
            .collect(),
        max_cvss,
        fail_on_cvss: options.fail_on_cvss,
        passed,
    })
}

/// cosign's vulnerability attestation predicate (`https://cosign.sigstore.dev/attestation/vuln/v1`),
/// with the ztee report as the scanner result.
pub fn cosign_vuln_predicate(report: &ScanReport, started_at: &str) -> serde_json::Value {
    serde_json::json!({
        "invocation": {"parameters": null, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": "pkg:cargo/ztee-supply",
            "version": env!("CARGO_PKG_VERSION"),
            "db": {"uri": "osv", "version": report.database_updated_at.clone().unwrap_or_default()},
            "result": report,
        },
        "metadata": {"scanStartedOn": started_at, "scanFinishedOn": report.scanned_at},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unscored_policy_parses_block_and_warn_only() {
        assert_eq!(
            "block".parse::<UnscoredPolicy>().unwrap(),
            UnscoredPolicy::Block
        );
        assert_eq!(
            "warn".parse::<UnscoredPolicy>().unwrap(),
            UnscoredPolicy::Warn
        );
        assert_eq!(UnscoredPolicy::default(), UnscoredPolicy::Block);
        let err = "Block ".parse::<UnscoredPolicy>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid unscored policy \"Block \": must be \"block\" (an unscored finding fails the gate) or \"warn\" (it is reported and passes)"
        );
    }

    #[test]
    fn cve_ids_come_from_the_id_aliases_upstream_and_related() {
        let record: Record = serde_json::from_value(serde_json::json!({
            "id": "DEBIAN-CVE-2023-4911", "upstream": ["CVE-2023-4911", "DEBIAN-CVE-2023-4911"],
            "aliases": ["GHSA-x"], "related": ["CVE-2023-4527"]
        }))
        .unwrap();
        assert_eq!(cve_ids(&record), ["CVE-2023-4527", "CVE-2023-4911"]);
    }
}
