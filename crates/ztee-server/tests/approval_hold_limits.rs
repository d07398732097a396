//! Review #11: requests held for approval are kept in memory, so how many a principal and a
//! tenant may have pending (and how many bytes they hold) is capped. Over a cap the request is
//! refused with 429 `approval_hold_limit` naming the cap, audited once, and a slot comes back
//! when an approval ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{error_body, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

/// Held by the default policy: raw card data in the code.
const PAN_CMD: &str = "echo 4111111111111111 | wc -c";

fn default_policy() -> Arc<dyn ztee_server::PolicyEngine> {
    Arc::new(ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    ))
}

async fn gateway(limits: serde_json::Value) -> Gateway {
    let mut config = ServerConfig::default();
    config.approvals.ttl_s = 300;
    config.approvals.hold_limits = serde_json::from_value(limits).unwrap();
    config.quotas.requests_per_second = 10_000.0;
    config.quotas.burst = 10_000;
    Gateway::start_with_policy(
        config,
        Arc::new(EchoExecutor::default()),
        tempfile::tempdir().unwrap(),
        Some(default_policy()),
    )
    .await
}

async fn run(gw: &Gateway, key: &str, cmd: &str) -> reqwest::Response {
    gw.post(key, "/v1/run", &json!({ "cmd": cmd })).await
}

async fn held(gw: &Gateway, key: &str) -> String {
    let r = run(gw, key, PAN_CMD).await;
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    body["approval"]["id"].as_str().unwrap().to_owned()
}

async fn refused(gw: &Gateway, key: &str, cmd: &str, cap: &str) {
    let r = run(gw, key, cmd).await;
    let body = error_body(r, 429, "approval_hold_limit").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(cap), "{body}");
    assert!(!message.contains("4111111111111111"), "{body}");
}

/// The refusals in the audit trail: one `approval.request` denial per refused request.
async fn refusals(gw: &Gateway, tenant: &str) -> Vec<serde_json::Value> {
    let r = gw
        .get(
            &gw.admin_key,
            &format!("/v1/audit?tenant={tenant}&type=approval.request&limit=1000"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let audit: serde_json::Value = r.json().await.unwrap();
    audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.to_string().contains("approval_hold_limit"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_capped_per_principal_and_tenant_and_a_decision_frees_a_slot() {
    let gw = gateway(json!({"max_per_principal": 2, "max_per_tenant": 3})).await;
    let (a, b, c) = (
        gw.key("acme", "agent"),
        gw.key("acme", "agent"),
        gw.key("acme", "agent"),
    );
    let approver = gw.key("acme", "approver");
    let first = held(&gw, &a).await;
    held(&gw, &a).await;
    refused(&gw, &a, PAN_CMD, "max_per_principal").await;
    // Another principal of the tenant is still held, up to the tenant's cap.
    held(&gw, &b).await;
    refused(&gw, &b, PAN_CMD, "max_per_tenant").await;
    refused(&gw, &c, PAN_CMD, "max_per_tenant").await;
    // Another tenant is not affected.
    held(&gw, &gw.key("globex", "agent")).await;

    // A request that needs no approval is never counted.
    let r = run(&gw, &a, "echo hello").await;
    assert_eq!(r.status(), 200);

    // A denial ends the approval and gives its slot back.
    let r = gw
        .post(
            &approver,
            &format!("/v1/approvals/{first}/deny"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    held(&gw, &a).await;
    refused(&gw, &a, PAN_CMD, "max_per_principal").await;

    // Each refusal is audited once, naming the cap, and carries no content.
    let audited = refusals(&gw, "acme").await;
    assert_eq!(audited.len(), 4, "{audited:?}");
    for e in &audited {
        let text = e.to_string();
        assert!(text.contains("\"denied\""), "{text}");
        assert!(!text.contains("4111111111111111"), "{text}");
    }
    assert!(audited.iter().any(|e| e
        .to_string()
        .contains("approval_hold_limit.principal_count")));
    assert!(audited
        .iter()
        .any(|e| e.to_string().contains("approval_hold_limit.tenant_count")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_are_capped_per_principal() {
    let gw = gateway(json!({"max_bytes_per_principal": 64 * 1024})).await;
    let a = gw.key("acme", "agent");
    // About 40 KiB of code each: the second would pass the principal's 64 KiB.
    let big = format!("{PAN_CMD} # {}", "x".repeat(40 * 1024));
    let r = run(&gw, &a, &big).await;
    assert_eq!(r.status(), 202);
    refused(&gw, &a, &big, "max_bytes_per_principal").await;
    // A small one still fits.
    held(&gw, &a).await;
    let audited = refusals(&gw, "acme").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert!(audited[0]
        .to_string()
        .contains("approval_hold_limit.principal_bytes"));
}
