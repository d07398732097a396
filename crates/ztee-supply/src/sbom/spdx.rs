//! SPDX 2.3 JSON.

use serde_json::{json, Value};

use crate::sbom::cyclonedx::{now_rfc3339, package_ref, random_uuid};
use crate::sbom::Catalog;

/// SPDX ids allow only letters, digits, `.` and `-`.
fn spdx_id(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{cleaned}")
}

/// A declared licence only when it is a bare SPDX-style identifier; free text is NOASSERTION
/// rather than an invalid licence expression.
fn license_field(license: Option<&String>) -> String {
    match license {
        Some(l)
            if !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')) =>
        {
            l.clone()
        }
        _ => "NOASSERTION".to_string(),
    }
}

pub fn document(catalog: &Catalog) -> Value {
    let subject_id = "SPDXRef-Subject";
    let mut packages = vec![json!({
        "SPDXID": subject_id,
        "name": catalog.subject,
        "versionInfo": catalog.digest.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": subject_id,
    })];
    for p in &catalog.packages {
        let id = spdx_id(&format!("Package-{}", package_ref(p)));
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license_field(p.license.as_ref()),
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("acquired package info from /{}", p.location),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": p.purl,
            }],
        }));
        relationships.push(json!({
            "spdxElementId": subject_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let name = if catalog.subject.is_empty() {
        "ztee-sbom".to_string()
    } else {
        catalog.subject.clone()
    };
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://ztee.invalid/spdx/{}", random_uuid()),
        "creationInfo": {
            "created": now_rfc3339(),
            "creators": [format!("Tool: ztee-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}
