//! Matching a catalog against the vulnerability database, and the report: table rows, JSON,
//! and cosign's vulnerability attestation predicate.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::Date;

use crate::error::Result;
use crate::sbom::purl::normalize_pypi_name;
use crate::sbom::{Catalog, Package, PackageKind};
use crate::vuln::cvss;
use crate::vuln::db::VulnDb;
use crate::vuln::osv::Record;
use crate::vuln::version::Scheme;
use crate::vuln::vex::Suppression;

/// The gate ztee applies unless told otherwise: any finding scoring 7.0 or more blocks.
pub const DEFAULT_FAIL_ON_CVSS: f64 = 7.0;

#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub fail_on_cvss: f64,
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
    pub rating: String,
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
    pub unscored: usize,
    pub fail_on_cvss: f64,
    pub passed: bool,
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
            let scored = record
                .cvss_v3_vectors(affected)
                .filter_map(|v| cvss::base_score(v).ok().map(|s| (v.to_string(), s.score)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
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
                rating: scored
                    .as_ref()
                    .map_or("UNSCORED", |s| cvss::rating(s.1))
                    .to_string(),
                summary: record.summary.clone().unwrap_or_default(),
                location: package.location.clone(),
                suppressed_by: None,
            };
            let ids: Vec<&str> = std::iter::once(finding.id.as_str())
                .chain(finding.aliases.iter().map(String::as_str))
                .collect();
            let rule = options.suppressions.iter().find(|s| {
                s.applies(&ids, &finding.package, options.today)
                    || s.applies(&ids, &finding.advisory_package, options.today)
            });
            match rule {
                Some(rule) => {
                    finding.suppressed_by = Some(rule.clone());
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
    let passed = max_cvss < options.fail_on_cvss;
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
        unscored: findings.iter().filter(|f| f.cvss_score.is_none()).count(),
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
