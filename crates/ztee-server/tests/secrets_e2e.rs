//! Secrets end to end over real HTTP with real microVMs: stored through the API, granted by the
//! Rego policy, injected as a file and an environment variable, redacted from every output in
//! every encoding, gone when the sandbox ends, refused for a principal without a grant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{client, error_body, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

const DB_PASSWORD: &str = "pg-Pa55/word+with spaces&more";
const API_TOKEN: &str = "tok_live_51HqLyjWDarjtT1zdp7dc";

/// The repository's policy with grants: acme's agents may use both secrets; nobody else any.
fn policy_with_grants() -> Arc<dyn ztee_server::PolicyEngine> {
    common::repository_policy(|config| {
        config["secret_grants"] = json!([
            {"secret": "DB_PASSWORD", "tenants": ["acme"], "roles": ["agent"]},
            {"secret": "API_TOKEN", "tenants": ["acme"], "roles": ["agent"]},
            {"secret": "SHORT", "tenants": ["acme"]},
            {"secret": "NOT_STORED", "tenants": ["acme"]},
            {"secret": "TEAM_TOKEN", "tenants": ["acme"]}
        ]);
    })
}

fn secrets_config(key_var: &str) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.secrets.master_key = Some(ztee_secrets::MasterKeySource::Env(key_var.into()));
    config
}

async fn vm_gateway() -> Option<Gateway> {
    if !common::vm::available("secret VM tests") {
        return None;
    }
    let data_dir = common::vm::data_dir("ztee-s");
    let engine = common::vm::engine(data_dir.path());
    std::env::set_var(
        "ZTEE_TEST_MASTER_KEY_VM",
        ztee_secrets::MasterKey::generate().to_text().as_str(),
    );
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    Some(
        Gateway::start_with_policy(
            secrets_config("ZTEE_TEST_MASTER_KEY_VM"),
            Arc::new(executor),
            data_dir,
            Some(policy_with_grants()),
        )
        .await,
    )
}

/// Every form the DLP redacts a value in: raw, base64 (standard/URL-safe, padded or not), hex
/// (both cases), URL-encoded (with `%20` or `+`).
fn encodings(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::STANDARD.encode(value);
    let u = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
    let mut url = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    vec![
        value.to_owned(),
        e,
        u,
        hex::encode(value),
        hex::encode_upper(value),
        url.clone(),
        url.replace("%20", "+"),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for secret in [DB_PASSWORD, API_TOKEN] {
        for form in encodings(secret) {
            assert!(
                !text.contains(&form),
                "{what} leaks a secret as {form:?}: {text}"
            );
        }
    }
}

/// Prints the secret in every encoding, on stdout and on stderr.
const PRINT_ALL_FORMS: &str = r#"
import base64, binascii, os, sys, urllib.parse
v = open(sys.argv[1], 'rb').read()
forms = [v, base64.b64encode(v), base64.urlsafe_b64encode(v).rstrip(b'='), binascii.hexlify(v),
         binascii.hexlify(v).upper(), urllib.parse.quote(v, safe='').encode(), urllib.parse.quote_plus(v).encode()]
for f in forms:
    print('out', f.decode())
    print('err', f.decode(), file=sys.stderr)
print('env', os.environ.get(sys.argv[2], '<unset>'))
st = os.stat(sys.argv[1]); d = os.stat(os.path.dirname(sys.argv[1]))
print('mode', oct(st.st_mode & 0o777), st.st_uid, 'dir', oct(d.st_mode & 0o777), d.st_uid, 'me', os.getuid())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_vm_redacted_everywhere_and_end_with_the_sandbox() {
    let Some(gw) = vm_gateway().await else { return };
    let c = client();
    let admin = gw.admin_key.clone();
    let acme = gw.key("acme", "agent");
    let globex = gw.key("globex", "agent");
    let scanner = gw.state.dlp_api.as_ref().unwrap().scanner.clone();

    // Operators store secrets; agents cannot; nobody reads a value back.
    for (name, value) in [
        ("DB_PASSWORD", DB_PASSWORD),
        ("API_TOKEN", API_TOKEN),
        ("SHORT", "abc"),
    ] {
        let r = c
            .put(format!("{}/v1/secrets/{name}", gw.url))
            .bearer_auth(&admin)
            .json(&json!({ "value": value }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{name}");
    }
    let r = c
        .put(format!("{}/v1/secrets/X", gw.url))
        .bearer_auth(&acme)
        .json(&json!({"value": "whatever-value"}))
        .send()
        .await
        .unwrap();
    error_body(r, 403, "forbidden").await;
    let r = c
        .put(format!("{}/v1/secrets/..%2Fetc", gw.url))
        .bearer_auth(&admin)
        .json(&json!({"value": "whatever-value"}))
        .send()
        .await
        .unwrap();
    error_body(r, 400, "bad_request").await;
    let list = gw.get(&admin, "/v1/secrets").await.text().await.unwrap();
    assert!(
        list.contains("\"DB_PASSWORD\"") && list.contains("\"API_TOKEN\""),
        "{list}"
    );
    assert_clean("GET /v1/secrets", &list);
    let store = std::fs::read_to_string(gw.data_dir.path().join("secrets.json")).unwrap();
    assert_clean("the store file", &store);

    // One-shot run: file and environment variable inside the VM; every encoding redacted from
    // stdout and stderr.
    let r: serde_json::Value = gw
        .post_json(
            &acme,
            "/v1/run",
            &json!({
                "cmd": ["python3", "-c", PRINT_ALL_FORMS, "/run/secrets/DB_PASSWORD", "PGPASSWORD"],
                "secrets": ["DB_PASSWORD=PGPASSWORD"]
            }),
        )
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let stdout = r["stdout"].as_str().unwrap();
    let stderr = r["stderr"].as_str().unwrap();
    assert_clean("run stdout", stdout);
    assert_clean("run stderr", stderr);
    assert_eq!(stdout.matches("out ").count(), 7, "{stdout}");
    assert_eq!(stderr.matches("err ").count(), 7, "{stderr}");
    // Set (and masked: letters and digits become `*`, punctuation stays).
    assert!(
        stdout.contains("env **-****/****+**** ******&****\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mode 0o400 1000 dir 0o700 1000 me 1000"),
        "{stdout}"
    );
    assert!(r["redactions"]["SECRET"].as_u64().unwrap() >= 15, "{r}");
    assert!(
        scanner.secret_names().is_empty(),
        "{:?}",
        scanner.secret_names()
    );

    // A long-lived sandbox with a file-only secret: no env var, redacted from commands,
    // streams and files read back.
    let r = gw
        .post(&acme, "/v1/sandboxes", &json!({"secrets": ["API_TOKEN"]}))
        .await;
    assert_eq!(r.status(), 201);
    let created = r.text().await.unwrap();
    assert_clean("the created sandbox", &created);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // The sandbox's view names what it holds, never the value.
    assert_eq!(
        created["secrets"],
        json!([{"name": "API_TOKEN", "env": null}]),
        "{created}"
    );
    assert_eq!(created["egress"], json!([]), "no network: {created}");
    let shown = gw
        .get(&acme, &format!("/v1/sandboxes/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert_clean("GET /v1/sandboxes/{id}", &shown);
    assert!(shown.contains("\"API_TOKEN\""), "{shown}");
    // The value masks this sandbox's output only: the shared scanner (the DLP API, every other
    // caller) never holds it.
    assert!(
        scanner.secret_names().is_empty(),
        "{:?}",
        scanner.secret_names()
    );
    let cmd_url = format!("{}/v1/sandboxes/{id}/commands", gw.url);
    let r: serde_json::Value = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .json(&json!({"cmd": ["python3", "-c", PRINT_ALL_FORMS, "/run/secrets/API_TOKEN", "API_TOKEN"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_clean("sandbox stdout", r["stdout"].as_str().unwrap());
    assert_clean("sandbox stderr", r["stderr"].as_str().unwrap());
    assert!(r["stdout"].as_str().unwrap().contains("env <unset>"), "{r}");
    let streamed = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .header("accept", "application/x-ndjson")
        .json(&json!({"cmd": "cat /run/secrets/API_TOKEN; echo; base64 /run/secrets/API_TOKEN >&2; base64 -w0 /run/secrets/API_TOKEN > /tmp/copy.b64; od -An -tx1 /run/secrets/API_TOKEN | tr -d ' \\n' > /tmp/copy.hex"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(streamed.contains("\"exit\""), "{streamed}");
    assert_clean("stream", &streamed);
    for path in ["/run/secrets/API_TOKEN", "/tmp/copy.b64", "/tmp/copy.hex"] {
        let r = gw
            .get(&acme, &format!("/v1/sandboxes/{id}/files?path={path}"))
            .await;
        assert_eq!(r.status(), 200, "{path}");
        let body = r.text().await.unwrap();
        assert!(!body.is_empty(), "{path}");
        assert_clean(path, &body);
    }
    let r = gw.delete(&acme, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status(), 204);
    assert!(
        gw.state.sandboxes.get(&id).is_none(),
        "the sandbox, its lease and its DLP scope are gone"
    );

    // A new sandbox has no trace of the earlier secrets.
    let r: serde_json::Value = gw
        .post_json(
            &acme,
            "/v1/run",
            &json!({"cmd": "ls -A /run/secrets | wc -l; env | grep -c -e PGPASSWORD -e API_TOKEN"}),
        )
        .await;
    assert_eq!(r["stdout"], "0\n0\n", "{r}");

    // Policy: another tenant's agent gets nothing, and no VM boots. Unknown, too short to
    // redact, or malformed: precise 4xx.
    let refusals: [(&str, &str, u16, &str, &str); 4] = [
        (
            &globex,
            "DB_PASSWORD",
            403,
            "policy_denied",
            "secret.not_granted",
        ),
        (&acme, "NOT_STORED", 400, "unknown_secret", ""),
        (&acme, "SHORT", 400, "bad_request", "cannot be redacted"),
        (&acme, "DB_PASSWORD=1BAD", 422, "", ""),
    ];
    for (key, secret, status, code, says) in refusals {
        let r = gw
            .post(
                key,
                "/v1/run",
                &json!({"cmd": ["true"], "secrets": [secret]}),
            )
            .await;
        if code.is_empty() {
            assert_eq!(r.status(), status, "{secret}");
            continue;
        }
        let body = error_body(r, status, code).await;
        assert!(body.to_string().contains(says), "{secret}: {body}");
    }
    assert!(scanner.secret_names().is_empty());

    // The audit trail records every use and refusal by name, and never a value.
    let audit: serde_json::Value = gw
        .get_json(&admin, "/v1/audit?type=secret.use&tenant=acme")
        .await;
    let events = audit["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["event"]["outcome"] == "success"
            && e["event"]["resource"]
                .as_str()
                .unwrap()
                .starts_with("secret/DB_PASSWORD@run/")),
        "{audit}"
    );
    // The refusal is decided (and audited) with the run itself, before any secret is touched.
    let denied: serde_json::Value = gw
        .get_json(&admin, "/v1/audit?type=run&tenant=globex")
        .await;
    assert_eq!(
        denied["events"][0]["event"]["outcome"], "denied",
        "{denied}"
    );
    assert_eq!(
        denied["events"][0]["event"]["decision"]["rule_ids"][0],
        "secret.not_granted"
    );
    let data_dir = gw.stop().await;
    let mut stack = vec![data_dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let text = String::from_utf8_lossy(&bytes);
                if path.file_name().is_some_and(|n| n == "secrets.json") {
                    continue;
                }
                assert_clean(&path.display().to_string(), &text);
            }
        }
    }
}

#[tokio::test]
async fn a_wrong_master_key_stops_the_gateway_with_a_clear_error() {
    let data_dir = tempfile::tempdir().unwrap();
    let first = ztee_secrets::MasterKey::generate();
    let store = ztee_secrets::LocalStore::open(
        data_dir.path().join("secrets.json"),
        ztee_secrets::MasterKey::parse(&first.to_text()).unwrap(),
    )
    .unwrap();
    store
        .put(
            &ztee_secrets::SecretName::parse("K").unwrap(),
            &ztee_secrets::SecretValue::new(b"value-123".to_vec()).unwrap(),
        )
        .unwrap();
    std::env::set_var(
        "ZTEE_TEST_MASTER_KEY_WRONG",
        ztee_secrets::MasterKey::generate().to_text().as_str(),
    );
    let engines = ztee_server::Engines {
        executor: Arc::new(EchoExecutor::default()),
        dlp: Arc::new(ztee_server::ZteeDlp::new(Default::default()).unwrap()),
        policy: None,
        dlp_api: None,
    };
    let err = match ztee_server::build(
        secrets_config("ZTEE_TEST_MASTER_KEY_WRONG"),
        data_dir.path(),
        engines,
    )
    .await
    {
        Ok(_) => panic!("the gateway started with the wrong master key"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("master key does not match the secret store"),
        "{err}"
    );
    assert!(!err.contains("value-123"));
    assert!(
        !data_dir.path().join("state.db").exists(),
        "nothing else was touched"
    );
}

#[tokio::test]
async fn the_built_in_policy_grants_no_secrets() {
    std::env::set_var(
        "ZTEE_TEST_MASTER_KEY_BUILTIN",
        ztee_secrets::MasterKey::generate().to_text().as_str(),
    );
    let gw = Gateway::start(
        secrets_config("ZTEE_TEST_MASTER_KEY_BUILTIN"),
        Arc::new(EchoExecutor::default()),
    )
    .await;
    let c = client();
    let r = c
        .put(format!("{}/v1/secrets/DB_PASSWORD", gw.url))
        .bearer_auth(&gw.admin_key)
        .json(&json!({"value": DB_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = gw
        .post(
            &gw.admin_key,
            "/v1/run",
            &json!({"cmd": ["true"], "secrets": ["DB_PASSWORD"]}),
        )
        .await;
    let body = error_body(r, 403, "policy_denied").await;
    assert!(body.to_string().contains("secret.no_grants"), "{body}");
    let r = gw.delete(&gw.admin_key, "/v1/secrets/DB_PASSWORD").await;
    assert_eq!(r.status(), 204);
    let r = gw.delete(&gw.admin_key, "/v1/secrets/DB_PASSWORD").await;
    error_body(r, 404, "not_found").await;
}

/// A dynamic Vault secret leased for a sandbox is revoked at Vault when the sandbox is deleted.
/// Vault here is a local HTTP server implementing the three endpoints used (token auth).
#[tokio::test]
async fn a_dynamic_vault_lease_is_revoked_when_the_sandbox_ends() {
    type Revoked = Arc<std::sync::Mutex<Vec<String>>>;
    let revoked: Revoked = Arc::default();
    let keep = revoked.clone();
    let app = axum::Router::new()
        .route(
            "/v1/database/creds/readonly",
            axum::routing::get(|headers: axum::http::HeaderMap| async move {
                if headers["x-vault-token"] != "hvs.test-token" {
                    return (axum::http::StatusCode::FORBIDDEN, axum::Json(json!({"errors": ["permission denied"]})));
                }
                (axum::http::StatusCode::OK, axum::Json(json!({
                    "lease_id": "database/creds/readonly/abc123", "renewable": true, "lease_duration": 3600,
                    "data": {"username": "v-ztee-ro", "password": "dyn-Pa55-9f8e7d6c"}})))
            }),
        )
        .route(
            "/v1/sys/leases/revoke",
            axum::routing::put(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let keep = keep.clone();
                async move {
                    keep.lock().unwrap().push(body["lease_id"].as_str().unwrap().to_owned());
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vault_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    std::env::set_var("ZTEE_TEST_VAULT_TOKEN_GW", "hvs.test-token");
    let mut config = ServerConfig::default();
    config.secrets.vault = Some(
        serde_json::from_value(json!({
            "address": format!("http://{vault_addr}"),
            "auth": {"method": "token", "token_env": "ZTEE_TEST_VAULT_TOKEN_GW"},
            "secrets": {"DB_PASSWORD": {"dynamic": "database/creds/readonly", "field": "password"}}
        }))
        .unwrap(),
    );
    let executor = Arc::new(EchoExecutor::default());
    let gw = Gateway::start_with_policy(
        config,
        executor.clone(),
        tempfile::tempdir().unwrap(),
        Some(policy_with_grants()),
    )
    .await;
    let acme = gw.key("acme", "agent");
    let r = gw
        .post(
            &acme,
            "/v1/sandboxes",
            &json!({"secrets": ["DB_PASSWORD=ERR"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The echo engine prints the variable ERR on stderr: the value comes back masked.
    let r: serde_json::Value = gw.exec_json(&acme, &id, &["echo", "hello"]).await;
    assert_eq!(r["stderr"], "stderr: ***-****-********", "{r}");
    let executed = executor.executed.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        executed.env["ERR"], "dyn-Pa55-9f8e7d6c",
        "the command got the value"
    );
    assert!(revoked.lock().unwrap().is_empty());

    let r = gw.delete(&acme, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status(), 204);
    for _ in 0..50 {
        if !revoked.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(*revoked.lock().unwrap(), ["database/creds/readonly/abc123"]);
}

/// A gateway with the built-in store, the grants above and the echo engine (no VM).
async fn echo_gateway(key_var: &str) -> (Gateway, Arc<EchoExecutor>) {
    std::env::set_var(
        key_var,
        ztee_secrets::MasterKey::generate().to_text().as_str(),
    );
    let executor = Arc::new(EchoExecutor::default());
    let gw = Gateway::start_with_policy(
        secrets_config(key_var),
        executor.clone(),
        tempfile::tempdir().unwrap(),
        Some(policy_with_grants()),
    )
    .await;
    for (name, value) in [("DB_PASSWORD", DB_PASSWORD), ("TEAM_TOKEN", API_TOKEN)] {
        let r = client()
            .put(format!("{}/v1/secrets/{name}", gw.url))
            .bearer_auth(&gw.admin_key)
            .json(&json!({ "value": value }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{name}");
    }
    (gw, executor)
}

async fn create_sandbox(gw: &Gateway, key: &str, secrets: serde_json::Value) -> String {
    let r = gw
        .post(key, "/v1/sandboxes", &json!({ "secrets": secrets }))
        .await;
    assert_eq!(r.status(), 201, "{secrets}");
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A leased value is masked in the output of the sandbox that holds it, and nowhere else: the
/// DLP API and other sandboxes' traffic are not an oracle for it (guess a value, see whether it
/// is flagged), and another tenant's own text is not rewritten because of it.
#[tokio::test]
async fn a_sandbox_secret_is_masked_only_in_that_sandbox() {
    let (gw, _executor) = echo_gateway("ZTEE_TEST_MASTER_KEY_SCOPE").await;
    let acme = gw.key("acme", "agent");
    let globex = gw.key("globex", "agent");
    let holder = create_sandbox(&gw, &acme, json!(["DB_PASSWORD=ERR"])).await;

    // The holder's own output: the value is masked on stderr (the echo engine prints ERR there)
    // and on stdout, and in a file read back.
    let r: serde_json::Value = gw.exec_json(&acme, &holder, &["echo", "hello"]).await;
    assert_eq!(r["stderr"], "stderr: **-****/****+**** ******&****", "{r}");
    let r = gw
        .get(
            &acme,
            &format!("/v1/sandboxes/{holder}/files?path=/run/secrets/DB_PASSWORD"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(!body.contains(DB_PASSWORD), "{body}");
    assert_eq!(body, "**-****/****+**** ******&****");

    // Another tenant asks the DLP API whether its guess is flagged: it is not.
    let r = gw
        .post(
            &globex,
            "/v1/dlp/analyze",
            &json!({"text": format!("guess: {DB_PASSWORD}"), "language": "en"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let found: serde_json::Value = r.json().await.unwrap();
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["entity_type"] != "SECRET"),
        "the DLP API reveals that a guess is a live secret: {found}"
    );

    // Another tenant's own command carrying the same text: admitted (not flagged inbound) and
    // its output not rewritten.
    let other = create_sandbox(&gw, &globex, json!([])).await;
    let r = gw.exec(&globex, &other, &["echo", DB_PASSWORD]).await;
    assert_eq!(
        r.status(),
        200,
        "another tenant's command is judged by A's secret"
    );
    let r: serde_json::Value = r.json().await.unwrap();
    assert_eq!(r["stdout"], DB_PASSWORD, "{r}");
    assert!(r["redactions"].as_object().unwrap().is_empty(), "{r}");
    // A one-shot run of the same tenant is not masked by the holder's lease either.
    let r: serde_json::Value = gw
        .post_json(&acme, "/v1/run", &json!({"cmd": ["echo", DB_PASSWORD]}))
        .await;
    assert_eq!(r["stdout"], DB_PASSWORD, "{r}");

    // The holder still masks the value however it reaches its output.
    let r: serde_json::Value = gw.exec_json(&acme, &holder, &["echo", DB_PASSWORD]).await;
    assert_eq!(r["stdout"], "**-****/****+**** ******&****", "{r}");
    assert!(r["redactions"]["SECRET"].as_u64().unwrap() >= 2, "{r}");
    let streamed = client()
        .post(format!("{}/v1/sandboxes/{holder}/commands", gw.url))
        .bearer_auth(&acme)
        .header("accept", "application/x-ndjson")
        .json(&json!({"cmd": ["echo", DB_PASSWORD]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(streamed.contains("\"exit\""), "{streamed}");
    assert!(!streamed.contains(DB_PASSWORD), "{streamed}");

    // Once the sandbox is gone, nothing is masked for its old value anywhere.
    let r = gw.delete(&acme, &format!("/v1/sandboxes/{holder}")).await;
    assert_eq!(r.status(), 204);
    let r: serde_json::Value = gw.exec_json(&globex, &other, &["echo", DB_PASSWORD]).await;
    assert_eq!(r["stdout"], DB_PASSWORD, "{r}");
}

/// A colleague who may manage every sandbox of the tenant (`developer`: sandbox:admin) cannot
/// run code or read or write files in a sandbox someone else created with secrets, even when a
/// grant would let them use the same secret in a sandbox of their own. The holder still can,
/// and a sandbox without secrets stays open to the tenant's sandbox admins.
#[tokio::test]
async fn only_the_holder_runs_code_or_reads_files_where_secrets_are() {
    let (gw, executor) = echo_gateway("ZTEE_TEST_MASTER_KEY_OWNER").await;
    let owner = gw.key("acme", "agent");
    let colleague = gw.key("acme", "developer");
    let outsider = gw.key("globex", "developer");

    for secrets in [json!(["DB_PASSWORD=ERR"]), json!(["TEAM_TOKEN=ERR"])] {
        let id = create_sandbox(&gw, &owner, secrets.clone()).await;
        let name = secrets[0].as_str().unwrap().split('=').next().unwrap();
        let commands = format!("/v1/sandboxes/{id}/commands");
        let ran = executor.executed.lock().unwrap().len();

        // Exec, as a plain command and as a stream: refused before anything runs.
        let r = gw
            .post(
                &colleague,
                &commands,
                &json!({"cmd": ["rev", format!("/run/secrets/{name}")]}),
            )
            .await;
        let body = error_body(r, 403, "secrets_owner_only").await;
        assert!(!body.to_string().contains(DB_PASSWORD), "{body}");
        let r = client()
            .post(format!("{}{commands}", gw.url))
            .bearer_auth(&colleague)
            .header("accept", "application/x-ndjson")
            .json(&json!({"cmd": "base32 /run/secrets/X"}))
            .send()
            .await
            .unwrap();
        error_body(r, 403, "secrets_owner_only").await;
        // Files: no download, no upload (a planted script would run with the secrets).
        let r = gw
            .get(
                &colleague,
                &format!("/v1/sandboxes/{id}/files?path=/run/secrets/{name}"),
            )
            .await;
        error_body(r, 403, "secrets_owner_only").await;
        let r = client()
            .put(format!("{}/v1/sandboxes/{id}/files?path=/tmp/x.sh", gw.url))
            .bearer_auth(&colleague)
            .body("cat /run/secrets/*")
            .send()
            .await
            .unwrap();
        error_body(r, 403, "secrets_owner_only").await;
        assert_eq!(
            executor.executed.lock().unwrap().len(),
            ran,
            "nothing ran for the colleague"
        );
        // Another tenant does not even see the sandbox.
        let r = gw
            .post(&outsider, &commands, &json!({"cmd": ["true"]}))
            .await;
        error_body(r, 404, "not_found").await;

        // The holder still runs commands and reads files.
        let r = gw
            .post(&owner, &commands, &json!({"cmd": ["echo", "hi"]}))
            .await;
        assert_eq!(r.status(), 200, "{name}");
        let r = gw
            .get(
                &owner,
                &format!("/v1/sandboxes/{id}/files?path=/run/secrets/{name}"),
            )
            .await;
        assert_eq!(r.status(), 200, "{name}");
        // The colleague still manages it: sees it (names only) and may delete it.
        let shown = gw
            .get(&colleague, &format!("/v1/sandboxes/{id}"))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            shown.contains(name) && !shown.contains(DB_PASSWORD),
            "{shown}"
        );
        let r = gw.delete(&colleague, &format!("/v1/sandboxes/{id}")).await;
        assert_eq!(r.status(), 204);
    }

    // The refusals are in the audit trail, by name of the rule.
    let audit: serde_json::Value = gw
        .get_json(&gw.admin_key, "/v1/audit?type=sandbox.exec&tenant=acme")
        .await;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["outcome"] == "denied"
                && e["event"]["decision"]["rule_ids"][0] == "secret.owner_only"),
        "{audit}"
    );

    // The holder's own commands are decided by policy with the secret names too.
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["outcome"] == "success"
                && e["event"]["decision"]["rule_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == "risk.code_with_secrets")),
        "{audit}"
    );

    // Without secrets, a sandbox admin may still exec into a colleague's sandbox.
    let plain = create_sandbox(&gw, &owner, json!([])).await;
    let r = gw.exec(&colleague, &plain, &["echo", "hi"]).await;
    assert_eq!(r.status(), 200);
}
