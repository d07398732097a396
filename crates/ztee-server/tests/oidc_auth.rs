//! OIDC bearer tokens from a real OpenID Provider (npm `oidc-provider`) on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::oidc::Provider;
use common::{client, error_body, EchoExecutor, Gateway};
use ztee_server::ServerConfig;

fn oidc_config(issuer: &str) -> ServerConfig {
    ServerConfig {
        oidc: Some(
            toml::from_str(&format!(
                "issuer = \"{issuer}\"\naudience = \"urn:ztee\"\nleeway_s = 0\nmin_refresh_interval_s = 0"
            ))
            .unwrap(),
        ),
        ..ServerConfig::default()
    }
}

/// `None` (with a loud SKIPPED line) only when node/npm cannot run on this machine.
fn provider(key_file: &std::path::Path) -> Option<Provider> {
    match Provider::start(key_file) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("ZTEE_REQUIRE_OIDC_TESTS").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("SKIPPED: OIDC provider cannot run here: {e}");
            None
        }
    }
}

#[tokio::test]
async fn tokens_from_a_real_provider_are_accepted_and_bad_ones_refused() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("signing.jwk");
    let Some(idp) = provider(&key_file) else {
        return;
    };
    let gw = Gateway::start(oidc_config(&idp.issuer), Arc::new(EchoExecutor::default())).await;
    let c = client();
    let list = |token: String| {
        c.get(format!("{}/v1/sandboxes", gw.url))
            .bearer_auth(token)
            .send()
    };

    // A good token: roles from realm_access.roles, tenant from `tenant`.
    let acme = idp.token("agent-acme", "urn:ztee").await;
    let r = list(acme.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .post(&acme, "/v1/sandboxes", &serde_json::json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let sbx: serde_json::Value = r.json().await.unwrap();
    assert_eq!(sbx["tenant"], "acme");
    assert_eq!(sbx["owner"], "oidc:agent-acme");
    let id = sbx["id"].as_str().unwrap();
    // Tenant isolation holds for OIDC principals too.
    let globex = idp.token("agent-globex", "urn:ztee").await;
    let r = gw.get(&globex, &format!("/v1/sandboxes/{id}")).await;
    error_body(r, 404, "not_found").await;
    // Roles map to permissions: the auditor reads the audit trail, and may not run code.
    let auditor = idp.token("auditor-acme", "urn:ztee").await;
    let r = gw.get(&auditor, "/v1/audit").await;
    assert_eq!(r.status(), 200);
    let r = gw
        .post(&auditor, "/v1/run", &serde_json::json!({"cmd": ["x"]}))
        .await;
    error_body(r, 403, "forbidden").await;

    // Wrong audience.
    let other_aud = idp.token("agent-acme", "urn:other-service").await;
    let body = error_body(list(other_aud).await.unwrap(), 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audience"),
        "{body}"
    );
    // No tenant claim.
    let no_tenant = idp.token("no-tenant", "urn:ztee").await;
    error_body(list(no_tenant).await.unwrap(), 401, "unauthenticated").await;
    // Forged: same header (kid, alg), claims changed to another tenant, original signature.
    let parts: Vec<&str> = acme.split('.').collect();
    let mut claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap();
    claims["tenant"] = "globex".into();
    let forged_claims = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&claims).unwrap(),
    );
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let body = error_body(list(forged).await.unwrap(), 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{body}"
    );
    // Forged: signed with an attacker's own RSA key under the provider's kid.
    let header = jsonwebtoken::decode_header(&acme).unwrap();
    let attacker = rsa_private_pem();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = header.kid.clone();
    let self_signed = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(attacker.as_bytes()).unwrap(),
    )
    .unwrap();
    error_body(list(self_signed).await.unwrap(), 401, "unauthenticated").await;
    // `alg: none` and HS256 signed with the public key as secret.
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "kid": header.kid})),
        forged_claims
    );
    error_body(list(none).await.unwrap(), 401, "unauthenticated").await;
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = header.kid.clone();
    let jwks = reqwest::get(format!("{}/jwks", idp.issuer))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hs_token = jsonwebtoken::encode(
        &hs,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()),
    )
    .unwrap();
    let body = error_body(list(hs_token).await.unwrap(), 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("algorithm"),
        "{body}"
    );

    // Wrong issuer: a second provider signing with the same key (so only `iss` differs).
    let Some(idp2) = provider(&key_file) else {
        return;
    };
    let foreign = idp2.token("agent-acme", "urn:ztee").await;
    let body = error_body(list(foreign).await.unwrap(), 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("issuer"),
        "{body}"
    );

    // Expired: this client's tokens live 2 s and the gateway allows no clock skew here.
    let short = idp.token("short-lived", "urn:ztee").await;
    assert_eq!(list(short.clone()).await.unwrap().status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let body = error_body(list(short).await.unwrap(), 401, "unauthenticated").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    let scraper = gw.key("default", "metrics");
    let metrics = gw.get(&scraper, "/metrics").await.text().await.unwrap();
    assert!(metrics.contains("reason=\"invalid_token\""), "{metrics}");
    let _ = gw.stop().await;
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up_on_an_unknown_kid() {
    let keys = tempfile::tempdir().unwrap();
    let Some(first) = provider(&keys.path().join("k1.jwk")) else {
        return;
    };
    let gw = Gateway::start(
        oidc_config(&first.issuer),
        Arc::new(EchoExecutor::default()),
    )
    .await;
    let token = first.token("agent-acme", "urn:ztee").await;
    let r = gw.get(&token, "/v1/sandboxes").await;
    assert_eq!(r.status(), 200);
    // Restart the provider on the same port with a new key: same issuer, new kid.
    let port = first.issuer.rsplit(':').next().unwrap().to_owned();
    drop(first);
    let second = Provider::start_on(&keys.path().join("k2.jwk"), &port).unwrap();
    assert_eq!(second.issuer, format!("http://127.0.0.1:{port}"));
    let rotated = second.token("agent-acme", "urn:ztee").await;
    assert_ne!(
        jsonwebtoken::decode_header(&rotated).unwrap().kid,
        jsonwebtoken::decode_header(&token).unwrap().kid
    );
    let r = gw.get(&rotated, "/v1/sandboxes").await;
    assert_eq!(r.status(), 200, "new kid fetched from the issuer");
    // The old key is gone from the issuer's set, so its tokens no longer validate.
    let r = gw.get(&token, "/v1/sandboxes").await;
    error_body(r, 401, "unauthenticated").await;
    let _ = gw.stop().await;
}

#[tokio::test]
async fn required_amr_admits_only_tokens_that_show_multi_factor_authentication() {
    let keys = tempfile::tempdir().unwrap();
    let Some(idp) = provider(&keys.path().join("k.jwk")) else {
        return;
    };
    let mut config = oidc_config(&idp.issuer);
    if let Some(oidc) = config.oidc.as_mut() {
        oidc.required_amr = vec!["otp".into(), "hwk".into(), "mfa".into()];
    }
    let gw = Gateway::start(config, Arc::new(EchoExecutor::default())).await;
    let c = client();
    let list = |token: String| {
        c.get(format!("{}/v1/sandboxes", gw.url))
            .bearer_auth(token)
            .send()
    };
    let r = list(idp.token("person-mfa", "urn:ztee").await)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for client_id in ["person-password-only", "agent-acme"] {
        let r = list(idp.token(client_id, "urn:ztee").await).await.unwrap();
        error_body(r, 401, "unauthenticated").await;
    }
    let scraper = gw.key("default", "metrics");
    let metrics = gw.get(&scraper, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("reason=\"token_without_mfa\""),
        "{metrics}"
    );
    let _ = gw.stop().await;
}

fn b64(v: &serde_json::Value) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        v.to_string(),
    )
}

/// A fresh RSA key in PKCS#8 PEM, made by the provider's own runtime (node) so the test needs
/// no extra Rust crypto crates.
fn rsa_private_pem() -> String {
    let out = std::process::Command::new("node")
        .args([
            "-e",
            "const {generateKeyPairSync}=require('crypto');const {privateKey}=generateKeyPairSync('rsa',{modulusLength:2048});process.stdout.write(privateKey.export({type:'pkcs8',format:'pem'}))",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
