//! Admission end to end, including every tampering case the issue names: a changed layer, a
//! changed manifest, a signature by another key, a swapped tag, an expired scan and a missing
//! SBOM are each refused, naming the rule and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::{missing_tool, sample_image};
use p256::ecdsa::SigningKey;
use ztee_supply::admission::{admit, AdmissionError, Denial, LoadedPolicy};
use ztee_supply::dsse::{self, PREDICATE_CYCLONEDX, PREDICATE_VULN};
use ztee_supply::keys::{self, Passphrase};
use ztee_supply::vuln::db::VulnDb;
use ztee_supply::vuln::scan::{cosign_vuln_predicate, scan, ScanOptions, UnscoredPolicy};
use ztee_supply::{sbom, sign, Reference, Store};

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    key: SigningKey,
    other: SigningKey,
    policy: PathBuf,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

const POLICY: &str = r#"
apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata:
  name: ztee-images
spec:
  validationFailureAction: Enforce
  rules:
    - name: signed-scanned-inventoried
      verifyImages:
        - imageReferences: ["python:*"]
          attestors:
            - entries:
                - keys:
                    publicKeys: signing.pub
          attestations:
            - type: https://cyclonedx.org/bom
            - type: https://cosign.sigstore.dev/attestation/vuln/v1
              conditions:
                - all:
                    - key: "{{ time_since('', '{{ metadata.scanFinishedOn }}', '') }}"
                      operator: LessThanOrEquals
                      value: "168h"
                    - key: "{{ scanner.result.max_cvss }}"
                      operator: LessThan
                      value: 7.0
"#;

fn reference() -> Reference {
    "python:1".parse().unwrap()
}

fn vuln_predicate(
    store: &Store,
    finished: time::OffsetDateTime,
    max_cvss: f64,
) -> serde_json::Value {
    let digest = store.resolve(&reference()).unwrap().digest;
    let catalog = sbom::catalog_image(store, "python", &digest).unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let today = finished.date();
    let mut report = scan(
        &catalog,
        &VulnDb::open(db_dir.path()),
        &ScanOptions {
            fail_on_cvss: 7.0,
            unscored: UnscoredPolicy::Block,
            ignore_unfixed: false,
            suppressions: vec![],
            today,
        },
    )
    .unwrap();
    report.scanned_at = rfc3339(finished);
    report.max_cvss = max_cvss;
    cosign_vuln_predicate(&report, &report.scanned_at)
}

/// A signed image with an SBOM and a fresh, clean scan attested by the trusted key.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    sample_image(&store, "python:1");
    let pass = Passphrase::new("fixture passphrase".into());
    let generated = keys::generate_with_cost(&dir.path().join("signing"), &pass, 10).unwrap();
    let key = keys::load_signing_key(&generated.private_key, &pass).unwrap();
    let other = SigningKey::random(&mut rand_core::OsRng);
    sign::sign(&store, &reference(), &key, None, Default::default()).unwrap();
    let digest = store.resolve(&reference()).unwrap().digest;
    let catalog = sbom::catalog_image(&store, "python", &digest).unwrap();
    dsse::attest(
        &store,
        &reference(),
        &key,
        PREDICATE_CYCLONEDX,
        sbom::cyclonedx::document(&catalog),
    )
    .unwrap();
    dsse::attest(
        &store,
        &reference(),
        &key,
        PREDICATE_VULN,
        vuln_predicate(&store, now(), 0.0),
    )
    .unwrap();
    let policy = dir.path().join("admission.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    Fixture {
        dir,
        store,
        key,
        other,
        policy,
    }
}

fn try_admit(f: &Fixture) -> Result<ztee_supply::admission::VerifiedImage, AdmissionError> {
    let policy = LoadedPolicy::load(&f.policy).unwrap();
    admit(
        &f.store,
        f.dir.path(),
        &reference(),
        &policy,
        now(),
        &common::rootfs_builder(),
    )
}

fn denial(f: &Fixture) -> Denial {
    match try_admit(f) {
        Err(AdmissionError::Denied(d)) => d,
        Err(AdmissionError::Failed(e)) => panic!("expected a denial, got an error: {e}"),
        Ok(v) => panic!("expected a denial, but {} was admitted", v.digest()),
    }
}

fn erofs_ok() -> bool {
    !missing_tool("mkfs.erofs")
}

/// Where `common::rootfs_builder` starts this binary as the jailed unpack helper.
#[test]
fn rootfs_helper_entry() {
    common::rootfs_helper_entry();
}

#[test]
fn a_signed_scanned_inventoried_image_is_admitted_once_per_digest() {
    if !erofs_ok() {
        return;
    }
    let f = fixture();
    let verified = try_admit(&f).unwrap();
    let digest = f.store.resolve(&reference()).unwrap().digest;
    assert_eq!(verified.digest(), &digest);
    let image = std::fs::read(verified.rootfs_image()).unwrap();
    assert_eq!(
        &image[1024..1028],
        &0xE0F5_E1E2u32.to_le_bytes(),
        "an erofs superblock"
    );
    let record = verified.record();
    assert_eq!(record.rules[0].rule, "signed-scanned-inventoried");
    assert_eq!(record.rules[0].attestations.len(), 2);
    assert!(serde_json::to_string(record)
        .unwrap()
        .contains(&digest.to_string()));

    // Cached per digest; a cached image edited on disk is detected and rebuilt.
    let again = try_admit(&f).unwrap();
    assert_eq!(again.record().rootfs_sha256, record.rootfs_sha256);
    std::fs::write(verified.rootfs_image(), b"tampered").unwrap();
    let rebuilt = try_admit(&f).unwrap();
    assert_eq!(rebuilt.record().rootfs_sha256, record.rootfs_sha256);
}

#[test]
fn a_changed_layer_is_refused() {
    let f = fixture();
    let digest = f.store.resolve(&reference()).unwrap().digest;
    let (manifest, _) = f.store.manifest(&digest).unwrap();
    let layer = f.store.blob_path(&manifest.layers[1].digest);
    let mut bytes = std::fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let d = denial(&f);
    assert_eq!(d.rule, "(integrity)");
    assert!(
        d.reason.contains("layer") && d.reason.contains("integrity"),
        "{}",
        d.reason
    );
}

#[test]
fn a_changed_manifest_is_refused() {
    let f = fixture();
    let digest = f.store.resolve(&reference()).unwrap().digest;
    let path = f.store.blob_path(&digest);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push(' ');
    std::fs::write(&path, text).unwrap();
    let d = denial(&f);
    assert_eq!(d.rule, "(integrity)");

    // A manifest that is well-formed but different (re-pointed tag) has no signature.
    let f = fixture();
    let old = f.store.resolve(&reference()).unwrap();
    let (mut manifest, _) = f.store.manifest(&old.digest).unwrap();
    manifest.annotations.insert("evil".into(), "yes".into());
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let desc = f.store.put_manifest(&old.media_type, &bytes).unwrap();
    f.store.tag("python:1", desc).unwrap();
    let d = denial(&f);
    assert_eq!(d.rule, "signed-scanned-inventoried");
    assert!(d.reason.contains("no signature"), "{}", d.reason);
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    // Replace the signature with one by an untrusted key.
    untag_cosign(&f.store, "sig");
    sign::sign(&f.store, &reference(), &f.other, None, Default::default()).unwrap();
    let d = denial(&f);
    assert_eq!(d.rule, "signed-scanned-inventoried");
    assert!(
        d.reason.contains("0 of 1") && d.reason.contains("does not verify with any trusted key"),
        "{}",
        d.reason
    );
    drop(dir);
}

#[test]
fn a_signature_for_another_repository_is_refused() {
    let f = fixture();
    // The trusted key signed this digest, but as another repository's image.
    untag_cosign(&f.store, "sig");
    sign::sign(
        &f.store,
        &reference(),
        &f.key,
        Some("registry.example/payments/ledger"),
        Default::default(),
    )
    .unwrap();
    let d = denial(&f);
    assert!(
        d.reason.contains("0 of 1")
            && d.reason
                .contains("docker-reference \"registry.example/payments/ledger\""),
        "{}",
        d.reason
    );
}

#[test]
fn a_swapped_tag_with_a_copied_signature_is_refused() {
    let f = fixture();
    let signed = f.store.resolve(&reference()).unwrap();
    // Another image, retagged as python:1, with python's signature artifact copied onto it.
    sample_image_variant(&f.store, "python:1");
    let swapped = f.store.resolve(&reference()).unwrap();
    assert_ne!(swapped.digest, signed.digest);
    let sig = f
        .store
        .lookup_tag(&format!("python:{}", signed.digest.cosign_tag("sig")))
        .unwrap()
        .unwrap();
    f.store
        .tag(&format!("python:{}", swapped.digest.cosign_tag("sig")), sig)
        .unwrap();
    let d = denial(&f);
    assert!(
        d.reason.contains("copied from another image"),
        "{}",
        d.reason
    );
    assert_eq!(d.digest, Some(swapped.digest));
}

/// Removes the image's cosign artifact `suffix` (`sig`, `att`) so a test can put another in its
/// place.
fn untag_cosign(store: &Store, suffix: &str) {
    let digest = store.resolve(&reference()).unwrap().digest;
    store
        .untag(&format!("python:{}", digest.cosign_tag(suffix)))
        .unwrap();
}

fn sample_image_variant(store: &Store, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payload"), b"malicious").unwrap();
    let layer = ztee_supply::layers::pack_directory(store, dir.path(), 0).unwrap();
    ztee_supply::layers::commit_image(
        store,
        name,
        &[layer],
        Default::default(),
        Default::default(),
    )
    .unwrap();
}

#[test]
fn an_expired_scan_is_refused() {
    let f = fixture();
    let old = now() - time::Duration::days(30);
    dsse::attest(
        &f.store,
        &reference(),
        &f.key,
        PREDICATE_VULN,
        vuln_predicate(&f.store, old, 0.0),
    )
    .unwrap();
    let d = denial(&f);
    assert_eq!(d.rule, "signed-scanned-inventoried");
    assert!(
        d.reason.contains(PREDICATE_VULN) && d.reason.contains("168h"),
        "{}",
        d.reason
    );
}

#[test]
fn a_scan_with_a_high_score_is_refused() {
    let f = fixture();
    dsse::attest(
        &f.store,
        &reference(),
        &f.key,
        PREDICATE_VULN,
        vuln_predicate(&f.store, now(), 8.1),
    )
    .unwrap();
    let d = denial(&f);
    assert!(
        d.reason.contains("max_cvss") && d.reason.contains("8.1"),
        "{}",
        d.reason
    );
}

#[test]
fn a_missing_sbom_is_refused() {
    let f = fixture();
    // Rebuild the attestations without the SBOM.
    untag_cosign(&f.store, "att");
    dsse::attest(
        &f.store,
        &reference(),
        &f.key,
        PREDICATE_VULN,
        vuln_predicate(&f.store, now(), 0.0),
    )
    .unwrap();
    let d = denial(&f);
    assert!(
        d.reason.contains("https://cyclonedx.org/bom is missing"),
        "{}",
        d.reason
    );

    // An SBOM attested by an untrusted key does not count either.
    dsse::attest(
        &f.store,
        &reference(),
        &f.other,
        PREDICATE_CYCLONEDX,
        serde_json::json!({"bomFormat": "CycloneDX"}),
    )
    .unwrap();
    let d = denial(&f);
    assert!(
        d.reason.contains("https://cyclonedx.org/bom is missing"),
        "{}",
        d.reason
    );
}

#[test]
fn images_no_rule_covers_are_denied_and_bad_policies_do_not_load() {
    let f = fixture();
    sample_image_variant(&f.store, "other:1");
    let policy = LoadedPolicy::load(&f.policy).unwrap();
    match admit(
        &f.store,
        f.dir.path(),
        &"other:1".parse().unwrap(),
        &policy,
        now(),
        &common::rootfs_builder(),
    ) {
        Err(AdmissionError::Denied(d)) => assert_eq!(d.rule, "(no matching rule)"),
        other => panic!("{other:?}"),
    }
    let bad = |text: &str| {
        let p = f.dir.path().join("bad.yaml");
        std::fs::write(&p, text).unwrap();
        LoadedPolicy::load(&p).map(|_| ()).unwrap_err().to_string()
    };
    assert!(bad(&POLICY.replace("Enforce", "Audit")).contains("Enforce"));
    assert!(bad(&POLICY.replace("LessThanOrEquals", "Roughly")).contains("operator"));
    assert!(bad(&POLICY.replace("signing.pub", "missing.pub")).contains("missing.pub"));
    let no_attestors =
        "spec:\n  rules:\n    - name: r\n      verifyImages:\n        - imageReferences: ['*']\n";
    assert!(bad(no_attestors).contains("no attestors"));
    let _ = Path::new("");
}
