//! Provisioning is one stage for every door that boots a VM: a one-shot run and a sandbox
//! creation that fail while their VM is made ready (here: the engine cannot relay the egress the
//! policy allowed) both undo what was done and leave one failure record of the same shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{client, error_body, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

/// The repository's bundle with pypi.org pre-approved, so egress to it is allowed outright.
fn policy() -> Arc<dyn ztee_server::PolicyEngine> {
    common::repository_policy(|config| {
        config["egress_preapproved"] = json!([{"host": "pypi.org", "port": 443}]);
    })
}

/// The one record of `request_id` whose type is `event_type`.
async fn record(gw: &Gateway, request_id: &str, event_type: &str) -> serde_json::Value {
    let found = gw
        .get_json(
            &gw.admin_key,
            &format!("/v1/audit?tenant=acme&request_id={request_id}&type={event_type}"),
        )
        .await;
    let events = found["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{found}");
    events[0]["event"].clone()
}

#[tokio::test]
async fn a_run_and_a_sandbox_that_cannot_be_made_ready_fail_the_same_way() {
    let executor = Arc::new(EchoExecutor::default());
    let gw = Gateway::start_with_policy(
        ServerConfig::default(),
        executor.clone(),
        tempfile::tempdir().unwrap(),
        Some(policy()),
    )
    .await;
    let acme = gw.key("acme", "agent");
    for (path, request_id, body) in [
        (
            "/v1/run",
            "prov-run",
            json!({"cmd": ["true"], "egress": ["pypi.org:443"]}),
        ),
        (
            "/v1/sandboxes",
            "prov-sbx",
            json!({"egress": ["pypi.org:443"]}),
        ),
    ] {
        let r = client()
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&acme)
            .header("x-request-id", request_id)
            .json(&body)
            .send()
            .await
            .unwrap();
        error_body(r, 503, "unavailable").await;
    }
    let run = record(&gw, "prov-run", "run").await;
    let sandbox = record(&gw, "prov-sbx", "sandbox.create").await;
    for event in [&run, &sandbox] {
        assert_eq!(event["outcome"], "failure", "{event}");
        assert!(
            event["code_sha256"]
                .as_str()
                .unwrap()
                .starts_with("sha256:"),
            "{event}"
        );
    }
    // The same shape: each names the policy decision that let it through, nothing else.
    let keys = |e: &serde_json::Value| {
        let mut k: Vec<String> = e.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&run), keys(&sandbox), "{run}\n{sandbox}");
    assert_eq!(run["decision"]["decision"], "allow");
    assert_eq!(sandbox["decision"]["decision"], "allow");
    // Both VMs were destroyed and both reservations given back: the tenant holds nothing.
    assert_eq!(*executor.destroyed.lock().unwrap(), 2);
    let listed = gw.get_json(&acme, "/v1/sandboxes").await;
    assert_eq!(
        listed["sandboxes"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
}
