//! Egress through the gateway with real microVMs: the `egress` field of `POST /v1/run` and
//! `POST /v1/sandboxes`, the default Rego bundle deciding action `egress` (with the test's
//! destinations in its data), and the audit events of each connection. The destinations are HTTP
//! servers on loopback, named through a DNS server the test runs on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use common::{client, error_body, Gateway};
use serde_json::json;
use ztee_egress::testing::{Origin, TestDns};
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

const FETCH: &str = "import sys, urllib.request, urllib.error
for url in sys.argv[1:]:
    try:
        print(urllib.request.urlopen(url, timeout=60).read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip())
";

/// The repository's default bundle, with `allowlist` and `preapproved` added to its data.
fn bundle_with(dir: &Path, allowlist: &[(&str, u16)], preapproved: &[(&str, u16)]) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    std::fs::create_dir_all(dir.join("ztee")).unwrap();
    for file in ["ztee/main.rego", "ztee/main_test.rego"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let mut data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("data.json")).unwrap()).unwrap();
    let entries = |list: &[(&str, u16)]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|(host, port)| json!({"host": host, "port": port}))
            .collect()
    };
    let config = &mut data["ztee"]["config"];
    config["egress_allowlist"]
        .as_array_mut()
        .unwrap()
        .extend(entries(allowlist));
    config["egress_preapproved"] = json!(entries(preapproved));
    std::fs::write(dir.join("data.json"), data.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_requested_through_the_api_is_decided_relayed_and_audited() {
    if !common::vm::available("gateway VM tests") {
        return;
    }
    let origin = Origin::http(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, "hello via egress").await;
    let port = origin.addr.port();
    let dns = TestDns::start(vec![
        ("mirror.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ("other.test", vec![vec![Ipv4Addr::LOCALHOST]]),
        ("review.test", vec![vec![Ipv4Addr::LOCALHOST]]),
    ])
    .await;
    let data_dir = common::vm::data_dir("ztee-g");
    let policy_dir = data_dir.path().join("bundle");
    // mirror.test is pre-approved; review.test is allowed but needs a human approval.
    bundle_with(
        &policy_dir,
        &[("mirror.test", port), ("review.test", port)],
        &[("mirror.test", port)],
    );
    let bundle = ztee_policy::Bundle::from_dir(&policy_dir).unwrap();
    let policy = ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::compile(&bundle).unwrap(),
        ztee_server::InboundAction::Block,
    );
    let engine = common::vm::engine(data_dir.path());
    let config = ServerConfig {
        egress: ztee_egress::EgressConfig {
            // The test's server listens on 127.0.0.1: allowed as an operator allows a mirror.
            allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
            dns_servers: vec![dns.addr],
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let executor = VmExecutor::new(engine)
        .with_egress_config(config.egress.clone())
        .unwrap();
    let gw =
        Gateway::start_with_policy(config, Arc::new(executor), data_dir, Some(Arc::new(policy)))
            .await;
    let c = client();
    let agent = gw.key("acme", "agent");
    let auditor = gw.key("acme", "auditor");
    let allowed_url = format!("http://mirror.test:{port}/simple/");
    let other_url = format!("http://other.test:{port}/");

    // Pre-approved destination: the command reaches it, and only it.
    let r = c
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(&agent)
        .header("x-request-id", "req-egress-run")
        .json(&json!({
            "cmd": ["python3", "-c", FETCH, allowed_url, other_url],
            "egress": [format!("mirror.test:{port}")],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["exit_code"], 0, "{body}");
    assert_eq!(
        body["stdout"],
        format!("hello via egress\n403 ztee egress: other.test:{port} is not on this sandbox's egress allowlist\n")
    );
    assert_eq!(origin.received().len(), 1);

    // Not on the bundle's allowlist: denied by policy before any VM boots.
    let r = gw
        .post(
            &agent,
            "/v1/run",
            &json!({"cmd": ["true"], "egress": [format!("other.test:{port}")]}),
        )
        .await;
    let e = error_body(r, 403, "policy_denied").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("egress.not_allowlisted"),
        "{e}"
    );
    // Allowlisted but not pre-approved: parked for a human; once approved it runs with the
    // egress it asked for.
    let review_url = format!("http://review.test:{port}/simple/");
    let r = gw
        .post(
            &agent,
            "/v1/run",
            &json!({
                "cmd": ["python3", "-c", FETCH, review_url],
                "egress": [format!("review.test:{port}")],
            }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let held: serde_json::Value = r.json().await.unwrap();
    assert!(
        held["approval"]["rule_ids"]
            .to_string()
            .contains("risk.egress"),
        "{held}"
    );
    assert_eq!(origin.received().len(), 1, "nothing ran while held");
    let link = format!("/v1/approvals/{}", held["approval"]["id"].as_str().unwrap());
    let approver = gw.key("acme", "approver");
    let shown = gw.get_json(&approver, &link).await;
    assert_eq!(
        shown["request"]["egress"],
        json!([format!("review.test:{port}")]),
        "the approver sees where the run would connect: {shown}"
    );
    let r = gw
        .post(
            &approver,
            &format!("{link}/approve"),
            &json!({"comment": "mirror review"}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let done = gw.get_json(&agent, &format!("{link}?wait=60")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["result"]["stdout"], "hello via egress\n", "{done}");
    assert_eq!(origin.received().len(), 2);
    // A malformed destination is the caller's error.
    let r = gw
        .post(
            &agent,
            "/v1/run",
            &json!({"cmd": ["true"], "egress": ["mirror.test"]}),
        )
        .await;
    let e = error_body(r, 400, "bad_request").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("egress[0]: "),
        "{e}"
    );

    // A sandbox with egress: every command in it gets the proxy.
    let r = gw
        .post(
            &agent,
            "/v1/sandboxes",
            &json!({"egress": [format!("mirror.test:{port}")]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let sbx: serde_json::Value = r.json().await.unwrap();
    let id = sbx["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sbx["egress"],
        json!([format!("mirror.test:{port}")]),
        "{sbx}"
    );
    assert_eq!(sbx["secrets"], json!([]), "{sbx}");
    let r: serde_json::Value = gw
        .post_json(
            &agent,
            &format!("/v1/sandboxes/{id}/commands"),
            &json!({"cmd": ["python3", "-c", FETCH, allowed_url]}),
        )
        .await;
    assert_eq!(r["stdout"], "hello via egress\n", "{r}");
    let r = gw.delete(&agent, &format!("/v1/sandboxes/{id}")).await;
    assert!(r.status().is_success());

    // The audit trail: the policy decisions and the events of every connection. A connection's
    // closing event is written after it ends, so wait (bounded) for all four.
    let mut events = serde_json::Value::Null;
    for _ in 0..200 {
        events = gw
            .get_json(&auditor, "/v1/audit?type=egress&limit=100")
            .await;
        let closed = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                !e["event"]["network"].is_null() && e["event"]["network"]["phase"].is_null()
            })
            .count();
        if closed >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let events: Vec<&serde_json::Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .collect();
    let decisions: Vec<_> = events.iter().filter(|e| e["network"].is_null()).collect();
    let phase = |e: &serde_json::Value| {
        e["network"]["phase"]
            .as_str()
            .unwrap_or("closed")
            .to_owned()
    };
    let connections: Vec<_> = events
        .iter()
        .filter(|e| !e["network"].is_null() && phase(e) == "closed")
        .collect();
    let openings: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| !e["network"].is_null() && phase(e) == "opened")
        .collect();
    let outcomes: Vec<&str> = decisions
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        // run, refused run, held run, the held run once approved, sandbox
        [
            "success",
            "denied",
            "pending_approval",
            "success",
            "success"
        ],
        "{events:#?}"
    );
    assert_eq!(connections.len(), 4, "{events:#?}");
    let first = connections
        .iter()
        .find(|e| e["request_id"] == "req-egress-run" && e["outcome"] == "success")
        .expect("the allowed connection of the run");
    assert_eq!(first["network"]["host"], "mirror.test");
    assert_eq!(first["network"]["port"], port);
    assert_eq!(first["network"]["address"], "127.0.0.1");
    assert!(first["network"]["bytes_up"].as_u64().unwrap() > 0);
    assert!(first["network"]["bytes_down"].as_u64().unwrap() > 0);
    // Each allowed connection was on record before it carried a byte; a refused one never
    // opened.
    assert_eq!(openings.len(), 3, "{events:#?}");
    let (opened_at, opening) = openings
        .iter()
        .find(|(_, e)| e["request_id"] == "req-egress-run")
        .expect("the opening of the run's connection");
    let closed_at = events
        .iter()
        .position(|e| std::ptr::eq(*e, **first))
        .unwrap();
    assert!(opened_at < &closed_at, "opened before closed");
    assert_eq!(opening["outcome"], "success");
    assert_eq!(opening["network"]["host"], "mirror.test");
    assert_eq!(opening["network"]["address"], "127.0.0.1");
    assert_eq!(opening["network"]["bytes_up"], 0);
    assert_eq!(opening["network"]["bytes_down"], 0);
    assert_eq!(
        first["decision"]["rule_ids"][0],
        format!("mirror.test:{port}")
    );
    let refused = connections
        .iter()
        .find(|e| e["outcome"] == "denied")
        .expect("the refused connection");
    assert_eq!(refused["network"]["host"], "other.test");
    assert!(refused["network"]["address"].is_null());
    assert!(refused["decision"]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("not on this sandbox's egress allowlist"));

    // A sandbox asking for egress that needs a human: parked like a run; once approved it is
    // created for its requester, with the egress it asked for.
    let r = gw
        .post(
            &agent,
            "/v1/sandboxes",
            &json!({"egress": [format!("review.test:{port}")], "metadata": {"ticket": "T-7"}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let held: serde_json::Value = r.json().await.unwrap();
    let link = format!("/v1/approvals/{}", held["approval"]["id"].as_str().unwrap());
    let shown = gw.get_json(&approver, &link).await;
    assert_eq!(shown["action"], "sandbox.create", "{shown}");
    assert_eq!(
        shown["request"]["egress"],
        json!([format!("review.test:{port}")]),
        "the approver sees what the sandbox could reach: {shown}"
    );
    let listed = gw.get_json(&agent, "/v1/sandboxes").await;
    assert_eq!(
        listed["sandboxes"].as_array().unwrap().len(),
        0,
        "nothing created while held: {listed}"
    );
    let r = gw
        .post(&approver, &format!("{link}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = gw.get_json(&agent, &format!("{link}?wait=60")).await;
    assert_eq!(done["status"], "executed", "{done}");
    let sbx = &done["result"];
    assert_eq!(
        sbx["egress"],
        json!([format!("review.test:{port}")]),
        "{done}"
    );
    assert_eq!(sbx["metadata"]["ticket"], "T-7");
    let id = sbx["id"].as_str().unwrap().to_owned();
    let r = gw
        .post_json(
            &agent,
            &format!("/v1/sandboxes/{id}/commands"),
            &json!({"cmd": ["python3", "-c", FETCH, review_url]}),
        )
        .await;
    assert_eq!(
        r["stdout"], "hello via egress\n",
        "the requester uses it: {r}"
    );
    let r = gw.delete(&agent, &format!("/v1/sandboxes/{id}")).await;
    assert!(r.status().is_success());
    gw.stop().await;
}
