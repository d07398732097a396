//! The code interpreter on the `data` image, as a user of E2B's code interpreter meets it: the
//! recipe `guest/images/data.toml` (Debian's numpy, pandas, matplotlib and nodejs) is built with
//! debootstrap (minutes, once: the store is kept under the ztee cache directory and reused by recipe
//! hash), signed and given an SBOM attestation, admitted by the gateway's admission policy, and
//! booted in a real microVM as the SDK's default template `code-interpreter-v1`. The official
//! `e2b-code-interpreter` SDK then runs pandas, matplotlib and JavaScript cells through it
//! (tests/e2b/data_check.py).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;
use ztee_supply::build::{build, load_recipe};
use ztee_supply::dsse::{self, PREDICATE_CYCLONEDX};
use ztee_supply::keys::{self, Passphrase};
use ztee_supply::{sbom, sign, Reference, Store};

const IMAGE: &str = "data:bookworm";

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
        - imageReferences: ["data:*"]
          attestors:
            - entries:
                - keys:
                    publicKeys: signing.pub
          attestations:
            - type: https://cyclonedx.org/bom
"#;

/// Where the gateway starts this binary as the jailed unpack helper.
#[test]
fn rootfs_helper_entry() {
    if std::env::args_os().any(|a| a == ztee_supply::rootfs::HELPER_ARG) {
        std::process::exit(ztee_supply::rootfs::helper_main(std::env::args_os()));
    }
}

fn rootfs_builder() -> ztee_supply::rootfs::RootfsBuilder {
    ztee_supply::rootfs::RootfsBuilder::new(std::env::current_exe().unwrap())
        .arg("rootfs_helper_entry")
        .arg("--exact")
        .arg("--nocapture")
        .arg("--test-threads=1")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ZTEE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/ztee")
        })
        .join("e2b-data-image")
}

/// Builds the recipe into the cached store (a no-op when it is built from this recipe already),
/// with the work directory `ztee image build` uses there.
fn build_data_image() -> PathBuf {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/images/data.toml");
    let recipe = load_recipe(&recipe).unwrap();
    let cache = cache_dir();
    let store = Store::open(&cache).unwrap();
    let mut log = |m: &str| eprintln!("build: {m}");
    let built = build(&store, &recipe, &cache.join("build"), &mut log).unwrap();
    assert_eq!(built.reference, IMAGE);
    cache
}

/// Copies the cached store's image into `data_dir`'s store as hard links: blobs are immutable
/// and named by their digest, and the store replaces its index by renaming, so the cache never
/// sees what the test adds.
fn link_store(from: &Path, to: &Path) {
    for entry in walk(&from.join("oci")) {
        let relative = entry.strip_prefix(from).unwrap();
        let target = to.join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::hard_link(&entry, &target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Signs the image and attests its SBOM with a key the admission policy names; returns the
/// image's digest.
fn sign_and_attest(data_dir: &Path) -> String {
    let store = Store::open(data_dir).unwrap();
    let pass = Passphrase::new("a test passphrase".into());
    let generated = keys::generate_with_cost(&data_dir.join("signing"), &pass, 10).unwrap();
    let key = keys::load_signing_key(&generated.private_key, &pass).unwrap();
    let reference: Reference = IMAGE.parse().unwrap();
    sign::sign(&store, &reference, &key, None, BTreeMap::new()).unwrap();
    let digest = store.resolve(&reference).unwrap().digest;
    let catalog = sbom::catalog_image(&store, "data", &digest).unwrap();
    let names: Vec<&str> = catalog.packages.iter().map(|p| p.name.as_str()).collect();
    for wanted in ["python3-pandas", "python3-matplotlib", "nodejs"] {
        assert!(names.contains(&wanted), "{wanted} missing from the SBOM");
    }
    dsse::attest(
        &store,
        &reference,
        &key,
        PREDICATE_CYCLONEDX,
        sbom::cyclonedx::document(&catalog),
    )
    .unwrap();
    std::fs::write(data_dir.join(ztee_supply::admission::POLICY_FILE), POLICY).unwrap();
    digest.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_interpreter_runs_pandas_matplotlib_and_javascript_on_the_data_image() {
    if !common::vm::available("the data image's code interpreter test") {
        return;
    }
    let cache = tokio::task::spawn_blocking(build_data_image).await.unwrap();
    let data_dir = common::vm::data_dir("ztee-e2b-data");
    link_store(&cache, data_dir.path());
    let digest = sign_and_attest(data_dir.path());

    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine)
        .with_admission(data_dir.path())
        .with_rootfs_builder(rootfs_builder());
    let policy = Arc::new(ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    ));
    let mut config = ServerConfig::default();
    // The SDK's default template boots the data image, pinned by digest as the shipped policy
    // requires; pandas and matplotlib want more than the default 256 MiB.
    config
        .e2b
        .templates
        .insert("code-interpreter-v1".into(), format!("{IMAGE}@{digest}"));
    config.sandbox_defaults.memory_mib = 768;
    let gw = Gateway::start_with_policy(config, Arc::new(executor), data_dir, Some(policy)).await;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b");
    let python = common::venv::python(&dir.join("requirements.txt"));
    let acme = gw.key("acme", "agent");
    let mut data_check = tokio::process::Command::new(python);
    data_check
        .arg(dir.join("data_check.py"))
        .env("E2B_API_URL", &gw.url)
        .env("E2B_SANDBOX_URL", &gw.url)
        .env("E2B_API_KEY", &acme)
        .env_remove("E2B_DOMAIN");
    let report = common::checks::report(
        data_check,
        Duration::from_secs(540),
        "the data image checks",
    )
    .await;
    let passed = report["passed"].as_array().unwrap();
    assert_eq!(passed.len(), 21, "{report}");
    eprintln!("{report}");

    // The sandbox booted the admitted image, and its records hold no card number.
    let audit = gw
        .get_json(&gw.admin_key, "/v1/audit?tenant=acme&limit=1000")
        .await
        .to_string();
    assert!(audit.contains("\"image.admit\""), "no image.admit record");
    assert!(!audit.contains(&("4111".to_owned() + &"1111".repeat(3))));
}
