//! Push and pull against a real CNCF distribution registry, and interoperability with skopeo in
//! both directions, including skopeo verifying ztee's cosign signature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup step is a failed test

mod common;

use std::process::Command;

use common::{missing_tool, sample_image, Registry};
use ztee_supply::keys::{self, Passphrase};
use ztee_supply::registry::{pull, push, Credentials, RegistryOptions};
use ztee_supply::{layers, sign, Reference, Store};

fn open_registry() -> RegistryOptions {
    RegistryOptions {
        credentials: None,
        plain_http: true,
    }
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("running skopeo")
}

#[test]
fn push_pull_round_trip_with_basic_auth() {
    if missing_tool("docker-registry") {
        return;
    }
    let registry = Registry::start(Some(("ci", "s3cret-pass")));
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let local = sample_image(&store, "python:1");
    let dest: Reference = format!("{}/vm/python:1", registry.host).parse().unwrap();

    let anonymous = push(&store, &"python:1".parse().unwrap(), &dest, open_registry());
    let err = anonymous.unwrap_err().to_string();
    assert!(err.contains("authentication required"), "{err}");

    let wrong = RegistryOptions {
        credentials: Some(Credentials {
            username: "ci".into(),
            password: "wrong".to_string().into(),
        }),
        plain_http: true,
    };
    let err = push(&store, &"python:1".parse().unwrap(), &dest, wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && !err.contains("wrong"), "{err}");

    let creds = RegistryOptions {
        credentials: Some(Credentials {
            username: "ci".into(),
            password: "s3cret-pass".to_string().into(),
        }),
        plain_http: true,
    };
    let pushed = push(&store, &"python:1".parse().unwrap(), &dest, creds.clone()).unwrap();
    assert_eq!(pushed.digest, local.digest);
    assert_eq!(pushed.blobs, 3, "config and two layers");

    let other = tempfile::tempdir().unwrap();
    let other_store = Store::open(other.path()).unwrap();
    let pulled = pull(&other_store, &dest, creds).unwrap();
    assert_eq!(
        pulled.digest, local.digest,
        "what was pulled is what was pushed"
    );
    let (manifest, _) = other_store.manifest(&pulled.digest).unwrap();
    let files = layers::read_files(&other_store, &manifest, |p| p.ends_with("motd")).unwrap();
    assert_eq!(
        files.values().next().map(Vec::as_slice),
        Some(&b"hello\n"[..])
    );
}

#[test]
fn skopeo_reads_what_ztee_pushed_and_ztee_reads_what_skopeo_pushed() {
    if missing_tool("docker-registry") || missing_tool("skopeo") {
        return;
    }
    let registry = Registry::start(None);
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let local = sample_image(&store, "python:1");
    let dest: Reference = format!("{}/vm/python:1", registry.host).parse().unwrap();
    push(&store, &"python:1".parse().unwrap(), &dest, open_registry()).unwrap();

    // skopeo sees the same manifest bytes ztee pushed.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(ztee_supply::Digest::of(&raw.stdout), local.digest);

    // skopeo copies it into its own OCI layout, which ztee's store opens as-is.
    let layout = tempfile::tempdir().unwrap();
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{dest}"),
        &format!("oci:{}:python:1", layout.path().display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = Store::open_layout(layout.path()).unwrap();
    let resolved = theirs.resolve(&"python:1".parse().unwrap()).unwrap();
    assert_eq!(resolved.digest, local.digest);

    // The reverse: skopeo pushes ztee's local OCI layout; ztee pulls it back.
    let again: Reference = format!("{}/vm/copied:2", registry.host).parse().unwrap();
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:python:1", store.root().display()),
        &format!("docker://{again}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = tempfile::tempdir().unwrap();
    let fresh_store = Store::open(fresh.path()).unwrap();
    let pulled = pull(&fresh_store, &again, open_registry()).unwrap();
    let (manifest, _) = fresh_store.manifest(&pulled.digest).unwrap();
    assert_eq!(manifest.layers.len(), 2);
    let files =
        layers::read_files(&fresh_store, &manifest, |p| p.ends_with("dpkg/status")).unwrap();
    assert_eq!(files.len(), 1);
}

/// ztee's signature as another implementation sees it: skopeo fetches the `.sig` artifact from
/// the registry, and OpenSSL checks the ECDSA signature over the simple-signing payload against
/// the PEM public key, exactly as cosign's format documents it. (Debian builds skopeo with
/// sigstore verification disabled, so skopeo cannot check it itself.)
#[test]
fn ztee_cosign_signature_verifies_with_openssl_as_stored_in_the_registry() {
    if missing_tool("docker-registry") || missing_tool("skopeo") || missing_tool("openssl") {
        return;
    }
    let registry = Registry::start(None);
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    sample_image(&store, "python:1");
    let keydir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("test passphrase".into());
    let good = keys::generate_with_cost(&keydir.path().join("good"), &pass, 10).unwrap();
    let other = keys::generate_with_cost(&keydir.path().join("other"), &pass, 10).unwrap();
    let key = keys::load_signing_key(&good.private_key, &pass).unwrap();

    // OpenSSL decrypts the private key file and derives the same public key.
    let derived = Command::new("openssl")
        .args(["pkey", "-pubout", "-passin", "pass:test passphrase", "-in"])
        .arg(&good.private_key)
        .output()
        .unwrap();
    assert!(
        derived.status.success(),
        "{}",
        String::from_utf8_lossy(&derived.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&derived.stdout),
        std::fs::read_to_string(&good.public_key).unwrap()
    );

    let repo = format!("{}/vm/python", registry.host);
    let dest: Reference = format!("{repo}:1").parse().unwrap();
    sign::sign(
        &store,
        &"python:1".parse().unwrap(),
        &key,
        Some(&repo),
        Default::default(),
    )
    .unwrap();
    let pushed = push(&store, &"python:1".parse().unwrap(), &dest, open_registry()).unwrap();
    let sig_tag = pushed.digest.cosign_tag("sig");
    assert_eq!(pushed.attachments, vec![sig_tag.clone()]);

    let out = tempfile::tempdir().unwrap();
    let copied = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{repo}:{sig_tag}"),
        &format!("dir:{}", out.path().display()),
    ]);
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload_path = out.path().join(
        layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&payload_path).unwrap()).unwrap();
    assert_eq!(
        payload["critical"]["type"],
        "cosign container image signature"
    );
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        pushed.digest.to_string()
    );
    assert_eq!(payload["critical"]["identity"]["docker-reference"], repo);
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let sig_path = out.path().join("sig.der");
    std::fs::write(&sig_path, sig).unwrap();
    let verify_with = |public: &std::path::Path| {
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(public)
            .arg("-signature")
            .arg(&sig_path)
            .arg(&payload_path)
            .output()
            .unwrap()
    };
    let ok = verify_with(&good.public_key);
    assert!(
        ok.status.success(),
        "openssl rejected ztee's signature: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(
        !verify_with(&other.public_key).status.success(),
        "openssl accepted another key"
    );
}

/// A token service for the registry's bearer auth: checks basic credentials and issues an ES256
/// JWT (with the signing certificate in `x5c`) granting the scope asked for. Serves at most
/// `max_requests` requests.
fn token_service(
    key: p256::ecdsa::SigningKey,
    cert_der: Vec<u8>,
    issuer: String,
    service: String,
    max_requests: usize,
) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let authorized = request.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization: basic ")
                    && STANDARD.decode(l[21..].trim()).ok().as_deref()
                        == Some(b"ci:token-pass".as_slice())
            });
            let scope = target
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("scope="))
                .map(|s| {
                    s.replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",")
                })
                .unwrap_or_default();
            let (status, body) = if !authorized {
                (
                    "401 Unauthorized",
                    r#"{"details":"bad credentials"}"#.to_string(),
                )
            } else {
                let access: Vec<serde_json::Value> = scope
                    .split(' ')
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(&cert_der)]});
                let claims = serde_json::json!({
                    "iss": issuer, "sub": "ci", "aud": service, "iat": now, "nbf": now - 10, "exp": now + 300,
                    "jti": format!("{now}-{}", access.len()), "access": access,
                });
                let signing_input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header.to_string()),
                    URL_SAFE_NO_PAD.encode(claims.to_string())
                );
                let signature: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
                let jwt = format!(
                    "{signing_input}.{}",
                    URL_SAFE_NO_PAD.encode(signature.to_bytes())
                );
                ("200 OK", serde_json::json!({"token": jwt}).to_string())
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    format!("http://{addr}/token")
}

#[test]
fn push_pull_round_trip_with_bearer_token_auth() {
    if missing_tool("docker-registry") || missing_tool("openssl") {
        return;
    }
    use p256::pkcs8::DecodePrivateKey;
    let pki = tempfile::tempdir().unwrap();
    let key_pem = pki.path().join("token.key");
    let cert_pem = pki.path().join("token.crt");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ztee-test-token",
        ])
        .arg("-keyout")
        .arg(&key_pem)
        .arg("-out")
        .arg(&cert_pem)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert_pem)
        .output()
        .unwrap()
        .stdout;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key_pem).unwrap())
        .unwrap();
    let realm = token_service(
        key,
        der,
        "ztee-test-issuer".into(),
        "ztee-test-registry".into(),
        16,
    );
    let registry = Registry::start_with(
        None,
        Some((
            realm,
            "ztee-test-issuer".into(),
            "ztee-test-registry".into(),
            cert_pem.clone(),
        )),
    );

    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let local = sample_image(&store, "python:1");
    let dest: Reference = format!("{}/vm/python:1", registry.host).parse().unwrap();

    let wrong = RegistryOptions {
        credentials: Some(Credentials {
            username: "ci".into(),
            password: "nope".to_string().into(),
        }),
        plain_http: true,
    };
    let err = push(&store, &"python:1".parse().unwrap(), &dest, wrong)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused the credentials") && !err.contains("nope"),
        "{err}"
    );

    let creds = RegistryOptions {
        credentials: Some(Credentials {
            username: "ci".into(),
            password: "token-pass".to_string().into(),
        }),
        plain_http: true,
    };
    let pushed = push(&store, &"python:1".parse().unwrap(), &dest, creds.clone()).unwrap();
    assert_eq!(pushed.digest, local.digest);
    let other = tempfile::tempdir().unwrap();
    let pulled = pull(&Store::open(other.path()).unwrap(), &dest, creds).unwrap();
    assert_eq!(pulled.digest, local.digest);
}

/// The reverse direction: a cosign-format signature made by another implementation (OpenSSL
/// signing a payload ztee did not serialize), stored as cosign stores it, verifies in ztee; the
/// same signature over an edited payload does not.
#[test]
fn ztee_verifies_a_cosign_signature_made_by_openssl() {
    if missing_tool("openssl") {
        return;
    }
    use base64::Engine as _;
    use ztee_supply::oci::{self, Descriptor, ImageManifest};
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let image = sample_image(&store, "python:1");
    let pem = data.path().join("foreign.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(made.status.success());
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&pem)
        .output()
        .unwrap()
        .stdout;
    let public_key =
        keys::parse_public_key(&String::from_utf8(public).unwrap(), "openssl").unwrap();

    let sign_payload = |payload: &str| -> (Vec<u8>, String) {
        let path = data.path().join("payload.json");
        std::fs::write(&path, payload).unwrap();
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&pem)
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            payload.as_bytes().to_vec(),
            base64::engine::general_purpose::STANDARD.encode(out.stdout),
        )
    };
    let store_signature = |payload: &[u8], sig: &str| {
        let mut layer = Descriptor::new(sign::MEDIA_TYPE_SIMPLE_SIGNING, payload);
        layer
            .annotations
            .insert(sign::ANNOTATION_SIGNATURE.into(), sig.into());
        store.put_blob(payload).unwrap();
        let config =
            br#"{"architecture":"","config":{},"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
        store.put_blob(config).unwrap();
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(oci::MEDIA_TYPE_OCI_CONFIG, config),
            layers: vec![layer],
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let desc = store
            .put_manifest(oci::MEDIA_TYPE_OCI_MANIFEST, &bytes)
            .unwrap();
        store
            .tag(&format!("python:{}", image.digest.cosign_tag("sig")), desc)
            .unwrap();
    };
    // Different key order and spacing from ztee's own serialization, as another tool may write it.
    let payload = format!(
        r#"{{ "optional": null, "critical": {{ "type": "cosign container image signature", "image": {{ "docker-manifest-digest": "{}" }}, "identity": {{ "docker-reference": "registry.example/vm/python" }} }} }}"#,
        image.digest
    );
    let (bytes, sig) = sign_payload(&payload);
    store_signature(&bytes, &sig);
    let verified = sign::verify(&store, "python", &image.digest, &[public_key]).unwrap();
    assert_eq!(verified[0].docker_reference, "registry.example/vm/python");

    let edited = payload.replace("registry.example", "evil.example");
    store_signature(edited.as_bytes(), &sig);
    let err = sign::verify(&store, "python", &image.digest, &[public_key])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not verify with any trusted key"),
        "{err}"
    );
}
