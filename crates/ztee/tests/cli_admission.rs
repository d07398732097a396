//! `ztee run --image`: only an image that passes the admission policy boots, and what boots is
//! the root file system of exactly the verified digest. A tiny image (one static program) is built
//! in the test, signed and attested with ztee-supply, and run in a real microVM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ztee_supply::dsse::{self, PREDICATE_CYCLONEDX};
use ztee_supply::keys::{self, Passphrase};
use ztee_supply::oci::ImageConfig;
use ztee_supply::{layers, sbom, sign, Reference, Store};

const POLICY: &str = r#"
apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata:
  name: ztee-images
spec:
  validationFailureAction: Enforce
  rules:
    - name: signed-and-inventoried
      verifyImages:
        - imageReferences: ["tiny:*"]
          attestors:
            - entries:
                - keys:
                    publicKeys: signing.pub
          attestations:
            - type: https://cyclonedx.org/bom
"#;

fn guest_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".local/share/ztee/guest")
}

fn ztee(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztee"))
        .args(args)
        .env("ZTEE_DATA_DIR", data_dir)
        .env("ZTEE_GUEST_DIR", guest_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// An image whose only file is a static program printing a greeting.
fn tiny_image(store: &Store, name: &str, greeting: &str) {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("hello.c");
    std::fs::write(
        &source,
        format!("#include <stdio.h>\nint main(void) {{ puts(\"{greeting}\"); return 0; }}\n"),
    )
    .unwrap();
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let built = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("bin/hello"))
        .arg(&source)
        .status()
        .unwrap();
    assert!(built.success(), "gcc -static failed");
    let layer = layers::pack_directory(store, &root, 1_700_000_000).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    layers::commit_image(store, name, &[layer], config, BTreeMap::new()).unwrap();
}

#[test]
fn only_admitted_images_boot() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run");
        return;
    }
    let data = tempfile::Builder::new()
        .prefix("ztee-a")
        .tempdir_in("/tmp")
        .unwrap();
    let store = Store::open(data.path()).unwrap();
    tiny_image(&store, "tiny:1", "hello from an admitted image");
    tiny_image(&store, "tiny:2", "hello from an unsigned image");

    let keys_dir = data.path().join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let pass = Passphrase::new("a test passphrase".into());
    let generated = keys::generate_with_cost(&keys_dir.join("signing"), &pass, 10).unwrap();
    let key = keys::load_signing_key(&generated.private_key, &pass).unwrap();
    let reference: Reference = "tiny:1".parse().unwrap();
    sign::sign(&store, &reference, &key, None, BTreeMap::new()).unwrap();
    let digest = store.resolve(&reference).unwrap().digest;
    let pinned = format!("tiny@{digest}");
    let unsigned = format!(
        "tiny@{}",
        store.resolve(&"tiny:2".parse().unwrap()).unwrap().digest
    );
    let catalog = sbom::catalog_image(&store, "tiny", &digest).unwrap();
    dsse::attest(
        &store,
        &reference,
        &key,
        PREDICATE_CYCLONEDX,
        sbom::cyclonedx::document(&catalog),
    )
    .unwrap();
    let policy = keys_dir.join("admission.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy = policy.to_str().unwrap();

    // The data directory's policy bundle decides first, as at the gateway: its `image.admit`
    // rule wants images named by digest, so a tag is refused before admission looks at it.
    let out = ztee(
        data.path(),
        &[
            "run",
            "--image",
            "tiny:1",
            "--policy",
            policy,
            "--",
            "/bin/hello",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("image.not_pinned"), "{err}");

    // Signed and inventoried: it boots, and the program from the image runs.
    let out = ztee(
        data.path(),
        &[
            "run",
            "--image",
            &pinned,
            "--policy",
            policy,
            "--",
            "/bin/hello",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from an admitted image\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // Unsigned: refused before any VM starts, naming the rule.
    let out = ztee(
        data.path(),
        &[
            "run",
            "--image",
            &unsigned,
            "--policy",
            policy,
            "--",
            "/bin/hello",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&unsigned) && err.contains("signed-and-inventoried"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let vms = std::fs::read_dir(data.path().join("run/vms"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(vms, 0, "a refused image started a VM");

    // No policy: nothing boots by default.
    let out = ztee(
        data.path(),
        &["run", "--image", &pinned, "--", "/bin/hello"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no admission policy"), "{err}");

    // Sandboxes are admitted the same way.
    let out = ztee(
        data.path(),
        &[
            "sandbox", "create", "--image", &unsigned, "--policy", policy,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ztee(
        data.path(),
        &["sandbox", "create", "--image", "tiny:1", "--policy", policy],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("image.not_pinned"), "{err}");
    let out = ztee(
        data.path(),
        &["sandbox", "create", "--image", &pinned, "--policy", policy],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = ztee(data.path(), &["sandbox", "exec", &id, "--", "/bin/hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from an admitted image\n"
    );
    assert_eq!(
        ztee(data.path(), &["sandbox", "rm", &id]).status.code(),
        Some(0)
    );

    // Every decision on an image is an `image.admit` record, as at the gateway: refused by the
    // bundle, refused by the admission policy, or admitted naming the digest that boots.
    let found = ztee(
        data.path(),
        &[
            "--format",
            "json",
            "audit",
            "search",
            "--type",
            "image.admit",
        ],
    );
    assert_eq!(found.status.code(), Some(0));
    let records: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let events: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["event"]["outcome"].as_str().unwrap().to_owned(),
                r["event"]["resource"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        events.contains(&("denied".into(), "image/tiny:1".into())),
        "{records}"
    );
    assert!(
        events.contains(&("denied".into(), format!("image/{unsigned}"))),
        "{records}"
    );
    assert!(
        events.contains(&("success".into(), format!("image/{pinned}"))),
        "{records}"
    );
    assert_eq!(
        ztee(data.path(), &["audit", "verify"]).status.code(),
        Some(0)
    );
}
