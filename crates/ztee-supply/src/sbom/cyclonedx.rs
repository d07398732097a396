//! CycloneDX 1.5 JSON.

use serde_json::{json, Value};

use crate::sbom::{Catalog, Package};

pub const SPEC_VERSION: &str = "1.5";

pub fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub(crate) fn random_uuid() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A `bom-ref`/SPDX id unique per package even when one purl is found at two paths.
pub(crate) fn package_ref(p: &Package) -> String {
    let digest = crate::digest::Digest::of(format!("{}\n{}", p.purl, p.location).as_bytes());
    format!("{}-{}", p.kind.as_str(), &digest.hex()[..16])
}

pub fn document(catalog: &Catalog) -> Value {
    let components: Vec<Value> = catalog
        .packages
        .iter()
        .map(|p| {
            let mut properties = vec![
                json!({"name": "ztee:package:type", "value": p.kind.as_str()}),
                json!({"name": "ztee:location:0:path", "value": format!("/{}", p.location)}),
            ];
            if let Some((name, version)) = &p.source {
                properties
                    .push(json!({"name": "ztee:deb:source", "value": format!("{name} {version}")}));
            }
            if let Some(owner) = &p.owned_by_deb {
                properties.push(json!({"name": "ztee:owned-by-deb", "value": owner}));
            }
            let mut c = json!({
                "bom-ref": package_ref(p),
                "type": "library",
                "name": p.name,
                "version": p.version,
                "purl": p.purl,
                "properties": properties,
            });
            if let Some(license) = &p.license {
                c["licenses"] = json!([{"license": {"name": license}}]);
            }
            c
        })
        .collect();
    let subject_ref = "ztee-subject";
    let mut subject = json!({
        "bom-ref": subject_ref,
        "type": "container",
        "name": catalog.subject,
    });
    if let Some(d) = &catalog.digest {
        subject["version"] = json!(d.to_string());
    }
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": format!("urn:uuid:{}", random_uuid()),
        "version": 1,
        "metadata": {
            "timestamp": now_rfc3339(),
            "tools": {"components": [{"type": "application", "name": "ztee", "version": env!("CARGO_PKG_VERSION")}]},
            "component": subject,
        },
        "components": components,
        "dependencies": [{
            "ref": subject_ref,
            "dependsOn": catalog.packages.iter().map(package_ref).collect::<Vec<_>>(),
        }],
    })
}
