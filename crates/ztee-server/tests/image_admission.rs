//! The image-admission stage over real HTTP, deciding with the repository's Rego bundle: the
//! bundle's `image.admit` rules run, the engine's supply-chain admission runs, both are one
//! `image.admit` audit record, and nothing is leased or booted for a refused image. The engine
//! is a test double here; `vm_e2e.rs` and the CLI's `cli_admission.rs` boot admitted images in
//! real VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{error_body, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

const DIGEST: &str = "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270";
const OTHER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// The repository's bundle, with acme's agents granted one secret.
fn repository_policy() -> Arc<dyn ztee_server::PolicyEngine> {
    common::repository_policy(|config| {
        config["secret_grants"] =
            json!([{"secret": "DB_PASSWORD", "tenants": ["acme"], "roles": ["agent"]}]);
    })
}

async fn gateway(executor: Arc<EchoExecutor>) -> Gateway {
    std::env::set_var(
        "ZTEE_TEST_MASTER_KEY_IMAGES",
        ztee_secrets::MasterKey::generate().to_text().as_str(),
    );
    let mut config = ServerConfig::default();
    config.secrets.master_key = Some(ztee_secrets::MasterKeySource::Env(
        "ZTEE_TEST_MASTER_KEY_IMAGES".into(),
    ));
    Gateway::start_with_policy(
        config,
        executor,
        tempfile::tempdir().unwrap(),
        Some(repository_policy()),
    )
    .await
}

/// The audit events of one request, in order, as `(type, outcome, resource, rule ids)`.
async fn trail(gw: &Gateway, request_id: &str) -> Vec<(String, String, String, Vec<String>)> {
    let events = gw
        .get_json(
            &gw.admin_key,
            &format!("/v1/audit?tenant=acme&request_id={request_id}"),
        )
        .await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let e = &e["event"];
            let rules = e["decision"]["rule_ids"]
                .as_array()
                .map(|r| r.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            (
                e["type"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["resource"].as_str().unwrap_or_default().to_owned(),
                rules,
            )
        })
        .collect()
}

async fn create(
    gw: &Gateway,
    key: &str,
    request_id: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    common::client()
        .post(format!("{}/v1/sandboxes", gw.url))
        .bearer_auth(key)
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_image_is_admitted_by_the_bundle_and_the_engine_before_anything_is_leased() {
    let executor = Arc::new(EchoExecutor::default());
    executor
        .admitted_images
        .lock()
        .unwrap()
        .insert(format!("tiny@{DIGEST}"), DIGEST.to_owned());
    let gw = gateway(executor.clone()).await;
    let acme = gw.key("acme", "agent");
    let r = common::client()
        .put(format!("{}/v1/secrets/DB_PASSWORD", gw.url))
        .bearer_auth(&gw.admin_key)
        .json(&json!({"value": "pg-Pa55/word"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // A tag can move: the bundle's `image.not_pinned` refuses it before the engine is asked.
    let r = create(
        &gw,
        &acme,
        "img-tag",
        json!({"image": "tiny:1", "secrets": ["DB_PASSWORD"]}),
    )
    .await;
    let body = error_body(r, 403, "policy_denied").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image.not_pinned"),
        "{body}"
    );
    let events = trail(&gw, "img-tag").await;
    assert_eq!(
        events,
        vec![(
            "image.admit".into(),
            "denied".into(),
            "image/tiny:1".into(),
            vec!["image.not_pinned".into()]
        ),],
        "the request's own decision is not a success record, and no secret was used"
    );

    // Pinned, but the engine's supply chain refuses it: one denied record naming its rule, and
    // the secret the request asked for is never leased.
    let r = create(
        &gw,
        &acme,
        "img-refused",
        json!({"image": format!("tiny@{OTHER}"), "secrets": ["DB_PASSWORD"]}),
    )
    .await;
    let body = error_body(r, 403, "image_refused").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-policy"),
        "{body}"
    );
    let events = trail(&gw, "img-refused").await;
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(types, ["image.admit"], "{events:?}");
    assert_eq!(events[0].1, "denied");
    assert_eq!(events[0].3, ["admission.no-policy"]);
    assert!(executor.created.lock().unwrap().is_empty());

    // Pinned and admitted: the admission record comes first and names the digest, then the
    // secret is used, then the sandbox is created from exactly that digest.
    let r = create(
        &gw,
        &acme,
        "img-ok",
        json!({"image": format!("tiny@{DIGEST}"), "secrets": ["DB_PASSWORD"]}),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let events = trail(&gw, "img-ok").await;
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(types.first(), Some(&"image.admit"), "{events:?}");
    assert_eq!(events[0].1, "success");
    assert_eq!(events[0].2, format!("image/tiny@{DIGEST}"));
    assert!(
        types.iter().position(|t| *t == "secret.use") > Some(0),
        "the secret is used after admission: {events:?}"
    );
    assert_eq!(types.last(), Some(&"sandbox.create"), "{events:?}");
    let created = executor.created.lock().unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].image.as_ref().unwrap().digest(), DIGEST);
}

#[tokio::test]
async fn a_one_shot_run_admits_its_image_the_same_way() {
    let executor = Arc::new(EchoExecutor::default());
    let gw = gateway(executor.clone()).await;
    let acme = gw.key("acme", "agent");
    let r = common::client()
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(&acme)
        .header("x-request-id", "run-tag")
        .json(&json!({"image": "tiny:1", "cmd": ["echo", "hi"]}))
        .send()
        .await
        .unwrap();
    error_body(r, 403, "policy_denied").await;
    let events = trail(&gw, "run-tag").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "image.admit");
    assert_eq!(events[0].3, ["image.not_pinned"]);
    assert!(executor.created.lock().unwrap().is_empty());

    // Without an image the node's default boots and no admission record is written.
    let r = common::client()
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(&acme)
        .header("x-request-id", "run-default")
        .json(&json!({"cmd": ["echo", "hi"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let types: Vec<String> = trail(&gw, "run-default")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(types, ["run"]);
}
