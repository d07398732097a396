//! TLS with rustls: the gateway serves the configured certificate and picks up a replaced one
//! without a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{EchoExecutor, Gateway};
use ztee_server::ServerConfig;
use ztee_state::config::TlsConfig;

/// Writes a fresh self-signed certificate for 127.0.0.1 to `cert`/`key`; returns its PEM.
fn write_cert(cert: &Path, key: &Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let pem = ck.cert.pem();
    // Replace atomically, as a deploy tool would, so the watcher never sees half a file.
    let tmp = cert.with_extension("tmp");
    std::fs::write(&tmp, ck.signing_key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, key).unwrap();
    std::fs::write(&tmp, &pem).unwrap();
    std::fs::rename(&tmp, cert).unwrap();
    pem
}

fn client_trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn serves_tls_and_reloads_a_replaced_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = write_cert(&cert, &key);
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            reload_interval_s: 1,
        }),
        ..ServerConfig::default()
    };
    let gw = Gateway::start(config, Arc::new(EchoExecutor::default())).await;
    let url = gw.url.replace("http://", "https://") + "/healthz";

    let r = client_trusting(&first).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    assert!(reqwest::get(gw.url.clone() + "/healthz").await.is_err());

    // Make sure the new files get a later modification time than the first ones.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = write_cert(&cert, &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if client_trusting(&second).get(&url).send().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old certificate is no longer what the server presents.
    assert!(client_trusting(&first).get(&url).send().await.is_err());

    // A broken replacement is refused and the current certificate stays in use.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = client_trusting(&second).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = gw.stop().await;
}

#[tokio::test]
async fn an_unreadable_certificate_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
            reload_interval_s: 1,
        }),
        ..ServerConfig::default()
    };
    let engines = ztee_server::Engines {
        executor: Arc::new(EchoExecutor::default()),
        dlp: Arc::new(ztee_server::ZteeDlp::new(Default::default()).unwrap()),
        policy: None,
        dlp_api: None,
    };
    let listener = ztee_server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (state, _) = ztee_server::build(config, dir.path(), engines)
        .await
        .unwrap();
    let err = ztee_server::serve(state, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.crt"), "{err}");
}
