#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Vault / OpenBao client against a local HTTP server started here that implements the
//! endpoints the client uses (AppRole login, KV v2 read, a dynamic secret, lease revocation),
//! with Vault's paths, headers and JSON shapes. No real Vault runs on the test machines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use ztee_secrets::{
    LocalStore, MasterKey, SecretBroker, SecretName, SecretRequest, SecretSource, SecretValue,
    VaultAuth, VaultClient, VaultConfig, VaultMapping,
};

#[derive(Default)]
struct FakeVault {
    /// Tokens currently valid.
    tokens: Mutex<Vec<String>>,
    logins: Mutex<u32>,
    issued: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
    namespaces: Mutex<Vec<String>>,
}

const ROLE_ID: &str = "role-1234";
const SECRET_ID: &str = "secret-id-5678";

fn authorized(v: &FakeVault, headers: &HeaderMap) -> bool {
    if let Some(ns) = headers.get("x-vault-namespace") {
        v.namespaces
            .lock()
            .unwrap()
            .push(ns.to_str().unwrap().to_owned());
    }
    headers
        .get("x-vault-token")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| v.tokens.lock().unwrap().iter().any(|k| k == t))
}

fn denied() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"errors": ["permission denied"]})),
    )
}

async fn login(
    State(v): State<Arc<FakeVault>>,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    if body["role_id"] != ROLE_ID || body["secret_id"] != SECRET_ID {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": ["invalid role or secret ID"]})),
        );
    }
    let mut n = v.logins.lock().unwrap();
    *n += 1;
    let token = format!("hvs.approle-{n}");
    v.tokens.lock().unwrap().push(token.clone());
    (
        StatusCode::OK,
        Json(
            json!({"auth": {"client_token": token, "lease_duration": 3600, "renewable": true, "policies": ["ztee"]}}),
        ),
    )
}

async fn kv(
    State(v): State<Arc<FakeVault>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<serde_json::Value>) {
    if !authorized(&v, &headers) {
        return denied();
    }
    match path.as_str() {
        "payments/db" => (
            StatusCode::OK,
            Json(
                json!({"request_id": "r1", "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": {"data": {"password": "kv-db-password-9f8e7d", "port": 5432},
                         "metadata": {"version": 3, "destroyed": false}}}),
            ),
        ),
        _ => (StatusCode::NOT_FOUND, Json(json!({"errors": []}))),
    }
}

async fn creds(
    State(v): State<Arc<FakeVault>>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<serde_json::Value>) {
    if !authorized(&v, &headers) {
        return denied();
    }
    let mut issued = v.issued.lock().unwrap();
    let lease = format!("database/creds/{role}/lease-{}", issued.len());
    issued.push(lease.clone());
    (
        StatusCode::OK,
        Json(
            json!({"lease_id": lease, "renewable": true, "lease_duration": 3600,
            "data": {"username": "v-approle-ro-abc", "password": format!("dyn-pass-{}", issued.len())}}),
        ),
    )
}

async fn revoke(
    State(v): State<Arc<FakeVault>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> StatusCode {
    if !authorized(&v, &headers) {
        return StatusCode::FORBIDDEN;
    }
    let id = body["lease_id"].as_str().unwrap_or_default().to_owned();
    if !v.issued.lock().unwrap().contains(&id) {
        return StatusCode::BAD_REQUEST;
    }
    v.revoked.lock().unwrap().push(id);
    StatusCode::NO_CONTENT
}

async fn start() -> (String, Arc<FakeVault>) {
    let v = Arc::new(FakeVault::default());
    let app = Router::new()
        .route("/v1/auth/approle/login", post(login))
        .route("/v1/secret/data/{*path}", get(kv))
        .route("/v1/database/creds/{role}", get(creds))
        .route("/v1/sys/leases/revoke", put(revoke))
        .with_state(v.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), v)
}

fn mappings() -> BTreeMap<SecretName, VaultMapping> {
    let mut m = BTreeMap::new();
    m.insert(
        SecretName::parse("DB_PASSWORD").unwrap(),
        VaultMapping::Kv {
            kv: "payments/db".into(),
            field: "password".into(),
            mount: "secret".into(),
        },
    );
    m.insert(
        SecretName::parse("DB_DYNAMIC").unwrap(),
        VaultMapping::Dynamic {
            dynamic: "database/creds/readonly".into(),
            field: "password".into(),
        },
    );
    m.insert(
        SecretName::parse("MISSING_FIELD").unwrap(),
        VaultMapping::Kv {
            kv: "payments/db".into(),
            field: "nope".into(),
            mount: "secret".into(),
        },
    );
    m
}

fn approle_config(address: &str, dir: &std::path::Path) -> VaultConfig {
    let secret_id_file = dir.join("secret-id");
    std::fs::write(&secret_id_file, format!("{SECRET_ID}\n")).unwrap();
    VaultConfig {
        address: address.into(),
        namespace: Some("payments".into()),
        auth: VaultAuth::AppRole {
            role_id: ROLE_ID.into(),
            secret_id_env: None,
            secret_id_file: Some(secret_id_file),
            mount: "approle".into(),
        },
        secrets: mappings(),
        timeout_s: 5,
    }
}

#[tokio::test]
async fn approle_login_kv_read_and_dynamic_lease_revoked_on_release() {
    let (address, vault) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = VaultClient::new(approle_config(&address, dir.path())).unwrap();
    let store = LocalStore::open(dir.path().join("s.json"), MasterKey::generate()).unwrap();
    store
        .put(
            &SecretName::parse("LOCAL_KEY").unwrap(),
            &SecretValue::new(b"local-value-1".to_vec()).unwrap(),
        )
        .unwrap();
    let broker = SecretBroker::new(Some(store), Some(client));

    let requests: Vec<SecretRequest> = ["DB_PASSWORD=PGPASSWORD", "DB_DYNAMIC", "LOCAL_KEY"]
        .iter()
        .map(|r| SecretRequest::parse(r).unwrap())
        .collect();
    let lease = broker.lease(&requests).await.unwrap();
    let got: Vec<(&str, &[u8], SecretSource)> = lease
        .secrets
        .iter()
        .map(|s| (s.request.name.as_str(), s.value.expose(), s.source))
        .collect();
    assert_eq!(
        got,
        [
            (
                "DB_PASSWORD",
                &b"kv-db-password-9f8e7d"[..],
                SecretSource::VaultKv
            ),
            ("DB_DYNAMIC", &b"dyn-pass-1"[..], SecretSource::VaultDynamic),
            ("LOCAL_KEY", &b"local-value-1"[..], SecretSource::Store),
        ]
    );
    assert_eq!(
        *vault.logins.lock().unwrap(),
        1,
        "one login serves both reads"
    );
    assert!(vault
        .namespaces
        .lock()
        .unwrap()
        .iter()
        .all(|n| n == "payments"));
    assert_eq!(lease.backend_leases(), 1);
    assert!(vault.revoked.lock().unwrap().is_empty());

    assert_eq!(broker.release(lease).await, 0);
    assert_eq!(
        *vault.revoked.lock().unwrap(),
        ["database/creds/readonly/lease-0"]
    );
}

#[tokio::test]
async fn an_expired_token_triggers_one_fresh_approle_login() {
    let (address, vault) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = VaultClient::new(approle_config(&address, dir.path())).unwrap();
    let name = SecretName::parse("DB_PASSWORD").unwrap();
    client.read(&name).await.unwrap();
    vault.tokens.lock().unwrap().clear();
    let again = client.read(&name).await.unwrap();
    assert_eq!(again.value.expose(), b"kv-db-password-9f8e7d");
    assert_eq!(*vault.logins.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_failed_lease_revokes_what_it_already_took_and_errors_name_no_values() {
    let (address, vault) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = SecretBroker::new(
        None,
        Some(VaultClient::new(approle_config(&address, dir.path())).unwrap()),
    );
    let requests: Vec<SecretRequest> = ["DB_DYNAMIC", "MISSING_FIELD"]
        .iter()
        .map(|r| SecretRequest::parse(r).unwrap())
        .collect();
    let err = broker.lease(&requests).await.unwrap_err().to_string();
    assert!(err.contains("no field \"nope\""), "{err}");
    assert!(!err.contains("kv-db-password"), "{err}");
    assert_eq!(
        *vault.revoked.lock().unwrap(),
        ["database/creds/readonly/lease-0"]
    );

    let unknown = broker
        .lease(&[SecretRequest::parse("NOT_MAPPED").unwrap()])
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no secret backend serves"),
        "{unknown}"
    );
}

#[tokio::test]
async fn a_bad_token_and_a_bad_approle_are_reported() {
    let (address, _vault) = start().await;
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("ZTEE_TEST_VAULT_TOKEN", "hvs.not-a-valid-token");
    let token_client = VaultClient::new(VaultConfig {
        address: address.clone(),
        namespace: None,
        auth: VaultAuth::Token {
            token_env: Some("ZTEE_TEST_VAULT_TOKEN".into()),
            token_file: None,
        },
        secrets: mappings(),
        timeout_s: 5,
    })
    .unwrap();
    let err = token_client
        .read(&SecretName::parse("DB_PASSWORD").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403") && err.contains("permission denied"),
        "{err}"
    );
    assert!(!err.contains("hvs.not-a-valid-token"), "{err}");

    let mut config = approle_config(&address, dir.path());
    config.auth = VaultAuth::AppRole {
        role_id: "wrong-role".into(),
        secret_id_env: None,
        secret_id_file: Some(dir.path().join("secret-id")),
        mount: "approle".into(),
    };
    let err = VaultClient::new(config)
        .unwrap()
        .read(&SecretName::parse("DB_PASSWORD").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("AppRole login refused: 400"), "{err}");
}

#[test]
fn configuration_parses_from_toml_and_rejects_bad_paths() {
    let config: VaultConfig = serde_json::from_value(json!({
        "address": "https://vault.internal:8200/",
        "auth": {"method": "approle", "role_id": "r", "secret_id_file": "/etc/ztee/secret-id"},
        "secrets": {
            "DB_PASSWORD": {"kv": "payments/db", "field": "password"},
            "DB_DYNAMIC": {"dynamic": "database/creds/readonly", "field": "password"}
        }
    }))
    .unwrap();
    let client = VaultClient::new(config.clone()).unwrap();
    assert_eq!(client.address(), "https://vault.internal:8200");
    let mut bad = config;
    bad.secrets.insert(
        SecretName::parse("X").unwrap(),
        VaultMapping::Dynamic {
            dynamic: "database/../sys/raw".into(),
            field: "f".into(),
        },
    );
    assert!(VaultClient::new(bad)
        .unwrap_err()
        .to_string()
        .contains("`..`"));
    let wrong: Result<VaultConfig, _> = serde_json::from_value(json!({
        "address": "https://v", "auth": {"method": "token", "token_env": "T"},
        "secrets": {"../x": {"kv": "a", "field": "b"}}
    }));
    assert!(wrong.is_err());
}

/// #22: a Vault token never travels in clear text to a remote host.
#[test]
fn plain_http_is_refused_unless_vault_is_on_loopback() {
    let config = |address: &str| VaultConfig {
        address: address.into(),
        namespace: None,
        auth: VaultAuth::Token {
            token_env: Some("VAULT_TOKEN".into()),
            token_file: None,
        },
        secrets: BTreeMap::new(),
        timeout_s: 5,
    };
    let err = VaultClient::new(config("http://u5er:pw9@vault.example.com:8200/?x=q9zq"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("secrets.vault.address")
            && err.contains("vault.example.com")
            && err.contains("https://"),
        "{err}"
    );
    for secret in ["u5er", "pw9", "q9zq"] {
        assert!(!err.contains(secret), "{secret} in {err}");
    }
    for (bad, expect) in [
        ("vault.example.com:8200", "https://"),
        ("ftp://vault.example.com", "ftp"),
        ("http://192.168.1.10:8200", "192.168.1.10"),
    ] {
        let err = VaultClient::new(config(bad)).unwrap_err().to_string();
        assert!(
            err.contains("secrets.vault.address") && err.contains(expect),
            "{bad}: {err}"
        );
    }
    for fine in [
        "https://vault.example.com:8200",
        "http://127.0.0.1:8200",
        "http://localhost:8200/",
        "http://[::1]:8200",
    ] {
        assert!(VaultClient::new(config(fine)).is_ok(), "{fine}");
        assert!(config(fine).validate().is_ok(), "{fine}");
    }
    // Vault takes its token in a header; credentials in the address would only end up in logs.
    let err = VaultClient::new(config("https://user:pw@vault.example.com"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("secrets.vault.address") && err.contains("user name or password"),
        "{err}"
    );
    assert!(!err.contains("pw"), "{err}");
}
