//! SBOM catalogers on a real layered image, and the CycloneDX and SPDX documents checked against
//! the official CycloneDX 1.5 JSON schema and by the SPDX project's own validator.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::sample_image;
use ztee_supply::sbom::{self, catalog::cargo_lock_packages, PackageKind};
use ztee_supply::Store;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema")
}

fn load(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(schema_dir().join(name)).unwrap()).unwrap()
}

fn cyclonedx_validator() -> jsonschema::Validator {
    let mut options = jsonschema::options();
    options.with_draft(jsonschema::Draft::Draft7);
    for name in ["spdx.schema.json", "jsf-0.82.schema.json"] {
        options.with_resource(
            format!("http://cyclonedx.org/schema/{name}"),
            jsonschema::Resource::from_contents(load(name)).unwrap(),
        );
    }
    options.build(&load("bom-1.5.schema.json")).unwrap()
}

#[test]
fn catalogs_every_kind_through_the_layer_stack() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let catalog = sbom::catalog_image(&store, "python:1", &image.digest).unwrap();

    let distro = catalog.distro.clone().unwrap();
    assert_eq!(
        (distro.id.as_str(), distro.version_id.as_deref()),
        ("debian", Some("12"))
    );
    assert_eq!(
        catalog.count(PackageKind::Deb),
        3,
        "config-files-only packages are not installed"
    );
    assert_eq!(catalog.count(PackageKind::Python), 2);
    assert_eq!(catalog.count(PackageKind::Npm), 2);

    let find = |name: &str| catalog.packages.iter().find(|p| p.name == name).unwrap();
    assert_eq!(
        find("libssl3").purl,
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64&distro=debian-12&upstream=openssl"
    );
    assert_eq!(
        find("zlib1g").source,
        Some(("zlib".into(), "1:1.2.13.dfsg-1".into()))
    );
    assert_eq!(
        find("urllib3").owned_by_deb.as_deref(),
        Some("python3-urllib3")
    );
    assert_eq!(find("requests").owned_by_deb, None, "pip-installed");
    assert_eq!(find("requests").purl, "pkg:pypi/requests@2.19.0");
    assert_eq!(find("@scope/pkg").purl, "pkg:npm/%40scope/pkg@1.0.0");
}

#[test]
fn the_guest_agent_crates_come_from_the_workspace_lock_file() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let agent = cargo_lock_packages(&text, "Cargo.lock", Some("ztee-agent")).unwrap();
    let everything = cargo_lock_packages(&text, "Cargo.lock", None).unwrap();
    assert!(agent.iter().all(|p| p.purl.starts_with("pkg:cargo/")));
    assert!(
        agent.len() < everything.len(),
        "the agent uses a subset of the workspace's crates"
    );
    assert!(
        !everything.iter().any(|p| p.name.starts_with("ztee")),
        "first-party crates are not components"
    );
}

#[test]
fn cyclonedx_output_validates_against_the_official_schema() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let catalog = sbom::catalog_image(&store, "python:1", &image.digest).unwrap();
    let doc = sbom::cyclonedx::document(&catalog);
    let validator = cyclonedx_validator();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        doc["components"].as_array().unwrap().len(),
        catalog.packages.len()
    );

    // The validator is not a rubber stamp: a broken document fails it.
    let mut broken = doc.clone();
    broken["components"][0]["type"] = serde_json::json!("not-a-type");
    assert!(!validator.is_valid(&broken));
}

/// The SPDX project's `spdx-tools` (PyPI) in a virtualenv under the ztee cache directory.
fn pyspdxtools() -> Option<PathBuf> {
    let cache = std::env::var_os("ZTEE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ztee")))?;
    let venv = cache.join("venv-supply");
    let tool = venv.join("bin/pyspdxtools");
    if !tool.is_file() {
        let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("requirements-test.txt");
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "-r"])
                .arg(&requirements)
                .status()
                .is_ok_and(|s| s.success());
        if !created {
            eprintln!(
                "SKIPPED: could not install spdx-tools into {} (needs python3-venv and PyPI)",
                venv.display()
            );
            return None;
        }
    }
    Some(tool)
}

#[test]
fn spdx_output_passes_the_spdx_validator() {
    let Some(tool) = pyspdxtools() else { return };
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let catalog = sbom::catalog_image(&store, "python:1", &image.digest).unwrap();
    let doc = sbom::spdx::document(&catalog);
    let path = data.path().join("sbom.spdx.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(&tool).arg("-i").arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "spdx-tools rejected the document:\n{text}"
    );

    let mut broken = doc.clone();
    broken["packages"][1]["SPDXID"] = serde_json::json!("no spaces allowed");
    std::fs::write(&path, serde_json::to_vec_pretty(&broken).unwrap()).unwrap();
    let out = Command::new(&tool).arg("-i").arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("ERROR") || text.contains("invalid"),
        "a broken document passed:\n{text}"
    );
}
