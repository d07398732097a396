//! ztee's signatures checked by sigstore-rs, the Sigstore project's Rust implementation of
//! cosign verification: it fetches the `.sig` artifact from a real registry, checks each layer's
//! payload against the image digest, and verifies the signature with the PEM public key.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use common::{missing_tool, sample_image, Registry};
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{verify_constraints, ClientBuilder, CosignCapabilities};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use ztee_supply::keys::{self, Passphrase};
use ztee_supply::registry::{push, RegistryOptions};
use ztee_supply::{sign, Reference, Store};

#[test]
fn sigstore_rs_verifies_ztee_signatures() {
    if missing_tool("docker-registry") {
        return;
    }
    let registry = Registry::start(None);
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let pass = Passphrase::new("sigstore test passphrase".into());
    let good = keys::generate_with_cost(&data.path().join("good"), &pass, 10).unwrap();
    let other = keys::generate_with_cost(&data.path().join("other"), &pass, 10).unwrap();
    let key = keys::load_signing_key(&good.private_key, &pass).unwrap();
    let repo = format!("{}/vm/python", registry.host);
    sign::sign(
        &store,
        &"python:1".parse().unwrap(),
        &key,
        Some(&repo),
        Default::default(),
    )
    .unwrap();
    let dest: Reference = format!("{repo}:1").parse().unwrap();
    push(
        &store,
        &"python:1".parse().unwrap(),
        &dest,
        RegistryOptions {
            credentials: None,
            plain_http: true,
        },
    )
    .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layers = runtime.block_on(async {
        let mut client = ClientBuilder::default()
            .with_oci_client_config(ClientConfig {
                protocol: ClientProtocol::Http,
                ..Default::default()
            })
            .build()
            .unwrap();
        let reference: OciReference = format!("{repo}@{}", image.digest).parse().unwrap();
        client
            .trusted_signature_layers(&Auth::Anonymous, &reference)
            .await
            .unwrap()
    });
    assert_eq!(layers.len(), 1, "one signature layer for the image digest");

    let verify_with = |public: &std::path::Path| {
        let pem = std::fs::read(public).unwrap();
        let constraints: VerificationConstraintVec =
            vec![Box::new(PublicKeyVerifier::try_from(&pem).unwrap())];
        verify_constraints(&layers, constraints.iter()).is_ok()
    };
    assert!(
        verify_with(&good.public_key),
        "sigstore-rs rejected ztee's signature"
    );
    assert!(
        !verify_with(&other.public_key),
        "sigstore-rs accepted another key"
    );
}
