//! The build path, once: `guest/images/python.toml` built with debootstrap (minutes; the store
//! is kept under the ztee cache directory so later runs reuse it by recipe hash), then
//! inventoried, scanned, signed, attested and admitted as a whole.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::missing_tool;
use ztee_supply::admission::{admit, LoadedPolicy};
use ztee_supply::build::{build, load_recipe};
use ztee_supply::dsse::{self, PREDICATE_CYCLONEDX, PREDICATE_VULN};
use ztee_supply::sbom::{self, PackageKind};
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::vuln::scan::{cosign_vuln_predicate, scan, ScanOptions, UnscoredPolicy};
use ztee_supply::{sign, Store};

fn cache_dir() -> PathBuf {
    std::env::var_os("ZTEE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/ztee")
        })
        .join("supply-test")
}

#[test]
fn builds_the_default_image_and_admits_it() {
    if missing_tool("debootstrap") || missing_tool("mkfs.erofs") {
        return;
    }
    let recipe_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/images/python.toml");
    let recipe = load_recipe(&recipe_path).unwrap();
    let data = cache_dir();
    let store = Store::open(&data).unwrap();
    let mut log = |m: &str| eprintln!("build: {m}");
    let first = build(&store, &recipe, &data.join("work"), &mut log).unwrap();
    let again = build(&store, &recipe, &data.join("work"), &mut log).unwrap();
    assert!(again.cached, "the same recipe is not built twice");
    assert_eq!(again.descriptor.digest, first.descriptor.digest);

    let catalog = sbom::catalog_image(&store, &first.reference, &first.descriptor.digest).unwrap();
    let debs = catalog.count(PackageKind::Deb);
    assert!(debs > 50, "{debs} Debian packages");
    for wanted in ["python3", "ca-certificates", "libc6", "openssl"] {
        assert!(
            catalog
                .packages
                .iter()
                .any(|p| p.name == wanted || p.source.as_ref().is_some_and(|s| s.0 == wanted)),
            "{wanted} missing from the SBOM"
        );
    }
    assert_eq!(
        catalog
            .distro
            .as_ref()
            .and_then(|d| d.version_id.as_deref()),
        Some("12")
    );

    let (manifest, _) = store.manifest(&first.descriptor.digest).unwrap();
    let files = ztee_supply::layers::read_files(&store, &manifest, |p| {
        p == Path::new("etc/passwd") || p == Path::new("etc/resolv.conf")
    })
    .unwrap();
    let passwd = String::from_utf8_lossy(&files[Path::new("etc/passwd")]).into_owned();
    assert!(
        passwd.contains("user:x:1000:1000::/home/user:/bin/sh"),
        "{passwd}"
    );
    assert!(
        !files.contains_key(Path::new("etc/resolv.conf")),
        "the build host's resolver must not leak in"
    );

    // Sign, attest and admit the built image.
    let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let reference = first.reference.parse().unwrap();
    sign::sign(&store, &reference, &key, None, Default::default()).unwrap();
    dsse::attest(
        &store,
        &reference,
        &key,
        PREDICATE_CYCLONEDX,
        sbom::cyclonedx::document(&catalog),
    )
    .unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let db = VulnDb::open(db_dir.path());
    db.import(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/osv-debian"))
        .unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let report = scan(
        &catalog,
        &db,
        &ScanOptions {
            fail_on_cvss: 7.0,
            unscored: UnscoredPolicy::Block,
            ignore_unfixed: false,
            suppressions: vec![],
            today,
        },
    )
    .unwrap();
    assert!(
        report.passed,
        "a freshly updated bookworm has the hand-written fixes: {:#?}",
        report.findings
    );
    dsse::attest(
        &store,
        &reference,
        &key,
        PREDICATE_VULN,
        cosign_vuln_predicate(&report, &report.scanned_at),
    )
    .unwrap();
    let pem = ztee_supply::keys::public_key_pem(key.verifying_key()).unwrap();
    let policy_path = db_dir.path().join("policy.yaml");
    let indented: String = pem
        .lines()
        .map(|l| format!("                      {l}\n"))
        .collect();
    std::fs::write(
        &policy_path,
        format!(
            "spec:\n  rules:\n    - name: default-image\n      verifyImages:\n        - imageReferences: [\"python:*\"]\n          attestors:\n            - entries:\n                - keys:\n                    publicKeys: |-\n{indented}          attestations:\n            - type: {PREDICATE_CYCLONEDX}\n            - type: {PREDICATE_VULN}\n"
        ),
    )
    .unwrap();
    let policy = LoadedPolicy::load(&policy_path).unwrap();
    let verified = admit(
        &store,
        &data,
        &reference,
        &policy,
        time::OffsetDateTime::now_utc(),
        &common::rootfs_builder(),
    )
    .unwrap();
    assert_eq!(verified.digest(), &first.descriptor.digest);
    assert!(std::fs::metadata(verified.rootfs_image()).unwrap().len() > 10 << 20);
}

/// Where `common::rootfs_builder` starts this binary as the jailed unpack helper.
#[test]
fn rootfs_helper_entry() {
    common::rootfs_helper_entry();
}
