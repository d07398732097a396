//! Approvals end to end over real HTTP with real microVMs: a held request (raw card data in the
//! code) parks with 202, webhooks reach a real receiver on loopback with valid signatures, two
//! approvers (one through the signed callback link) release it, and the requester long-polls
//! the result of the real run. Also: a denial, an expiry, self-approval refused, a tampered
//! callback refused, and the records surviving a gateway restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use common::{client, error_body, EchoExecutor, Gateway};
use hmac::{Hmac, Mac};
use serde_json::json;
use ztee_server::vm::VmExecutor;
use ztee_server::ServerConfig;

const HOOK_SECRET: &str = "webhook-signing-secret-0123456789";
const PAN_CMD: &str = "echo 4111111111111111 | tr -d '\\n' | wc -c";

type Received = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

/// A webhook receiver on loopback that keeps what it gets.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/{path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: HeaderMap,
                  body: String| {
                let keep = keep.clone();
                async move {
                    keep.lock().unwrap().push((path, headers, body));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

fn config(hooks: &str) -> ServerConfig {
    std::env::set_var("ZTEE_TEST_HOOK_SECRET", HOOK_SECRET);
    let mut config = ServerConfig::default();
    config.approvals.ttl_s = 6;
    config.approvals.two_person_rules = vec!["pci.raw_pan_in_code".into()];
    config.approvals.webhooks = serde_json::from_value(json!([
        {"url": format!("{hooks}/n8n"), "secret_env": "ZTEE_TEST_HOOK_SECRET"},
        {"url": format!("{hooks}/slack"), "secret_env": "ZTEE_TEST_HOOK_SECRET", "format": "slack"}
    ]))
    .unwrap();
    config
}

fn default_policy() -> Arc<dyn ztee_server::policy::PolicyEngine> {
    Arc::new(ztee_server::rego_policy::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    ))
}

async fn vm_gateway(hooks: &str) -> Option<Gateway> {
    if !common::vm::available("approval VM tests") {
        return None;
    }
    let data_dir = common::vm::data_dir("ztee-a");
    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    Some(
        Gateway::start_with_policy(
            config(hooks),
            Arc::new(executor),
            data_dir,
            Some(default_policy()),
        )
        .await,
    )
}

fn valid_signature(headers: &HeaderMap, body: &str) -> bool {
    let ts = headers["x-ztee-timestamp"].to_str().unwrap();
    let sig = headers["x-ztee-signature"].to_str().unwrap();
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The first delivery to `path` of event `kind` about approval `id`.
async fn delivery(got: &Received, path: &str, kind: &str, id: &str) -> (HeaderMap, String) {
    for _ in 0..100 {
        if let Some((_, h, b)) = got
            .lock()
            .unwrap()
            .iter()
            .find(|(p, h, b)| p == path && h["x-ztee-event"] == kind && b.contains(id))
        {
            return (h.clone(), b.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {kind} webhook for {id} at /{path}");
}

async fn hold(gw: &Gateway, key: &str) -> String {
    let r = gw.post(key, "/v1/run", &json!({"cmd": PAN_CMD})).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    let id = body["approval"]["id"].as_str().unwrap().to_owned();
    assert!(
        location.ends_with(&format!("/v1/approvals/{id}")),
        "{location}"
    );
    assert_eq!(body["approval"]["status"], "pending");
    assert_eq!(
        body["approval"]["rule_ids"][0], "pci.raw_pan_in_code",
        "{body}"
    );
    id
}

async fn get(gw: &Gateway, key: &str, path: &str) -> serde_json::Value {
    let r = gw.get(key, path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_approved_denied_expired_and_survive_a_restart() {
    let (hooks, got) = receiver().await;
    let Some(gw) = vm_gateway(&hooks).await else {
        return;
    };
    let agent = gw.key("acme", "agent");
    let alice = gw.key("acme", "approver");
    let bob = gw.key("acme", "approver");
    let acme_admin = gw.key("acme", "admin");
    let globex = gw.key("globex", "approver");

    // Request -> 202; nothing ran.
    let id = hold(&gw, &agent).await;
    let apr = format!("/v1/approvals/{id}");

    // Webhooks: signed, masked, with signed approve/deny links; Slack gets its template.
    let (headers, body) = delivery(&got, "n8n", "approval.requested", &id).await;
    assert!(valid_signature(&headers, &body), "signature");
    assert!(
        !body.contains("4111111111111111"),
        "raw PAN in a webhook: {body}"
    );
    let payload: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(payload["approval"]["required_approvals"], 2);
    let approve_link = payload["links"]["approve"].as_str().unwrap().to_owned();
    let (slack_headers, slack) = delivery(&got, "slack", "approval.requested", &id).await;
    assert!(valid_signature(&slack_headers, &slack));
    let slack: serde_json::Value = serde_json::from_str(&slack).unwrap();
    assert!(
        slack["text"].as_str().unwrap().contains("|Approve>"),
        "{slack}"
    );

    // Who may see and decide.
    let r = gw.post(&agent, &format!("{apr}/approve"), &json!({})).await;
    error_body(r, 403, "forbidden").await;
    let r = client()
        .get(format!("{}{apr}", gw.url))
        .bearer_auth(&globex)
        .send()
        .await
        .unwrap();
    error_body(r, 404, "not_found").await;
    let listed = get(&gw, &alice, "/v1/approvals?status=pending").await;
    assert!(listed.to_string().contains(&id), "{listed}");
    let shown = get(&gw, &alice, &apr).await;
    let masked = shown["request"].to_string();
    assert!(
        !masked.contains("4111111111111111") && masked.contains("1111"),
        "{masked}"
    );

    // Two-person rule: the first approval leaves it pending; nobody decides twice.
    let r = gw
        .post(
            &alice,
            &format!("{apr}/approve"),
            &json!({"comment": "checked the job"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let after_one: serde_json::Value = r.json().await.unwrap();
    assert_eq!(after_one["status"], "pending", "{after_one}");
    let r = gw.post(&alice, &format!("{apr}/approve"), &json!({})).await;
    error_body(r, 409, "approval_not_pending").await;

    // The signed callback: tampering is refused; the genuine link is the second approval.
    let callback = approve_link.replacen(
        &approve_link[..approve_link.find("/v1/").unwrap()],
        &gw.url,
        1,
    );
    let mut tampered = callback.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let r = client().post(&tampered).send().await.unwrap();
    error_body(r, 403, "invalid_callback").await;
    let r = client()
        .get(callback.replace("decision=approve", "decision=deny"))
        .send()
        .await
        .unwrap();
    error_body(r, 403, "invalid_callback").await;
    let r = client().post(&callback).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The requester long-polls the result of the real run.
    let done = get(&gw, &agent, &format!("{apr}?wait=60")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    assert_eq!(done["result"]["stdout"], "16\n", "{done}");
    let (decided_headers, decided) = delivery(&got, "n8n", "approval.executed", &id).await;
    assert!(valid_signature(&decided_headers, &decided));

    // A denial.
    let denied = hold(&gw, &agent).await;
    let r = gw
        .post(
            &bob,
            &format!("/v1/approvals/{denied}/deny"),
            &json!({"comment": "not today"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let shown = get(&gw, &agent, &format!("/v1/approvals/{denied}?wait=5")).await;
    assert_eq!(shown["status"], "denied");
    assert_eq!(shown["decisions"][0]["comment"], "not today");
    assert!(shown.get("result").is_none(), "{shown}");
    let r = gw
        .post(
            &alice,
            &format!("/v1/approvals/{denied}/approve"),
            &json!({}),
        )
        .await;
    error_body(r, 409, "approval_not_pending").await;

    // The requester can never approve their own request, whatever their roles.
    let own = hold(&gw, &acme_admin).await;
    let r = gw
        .post(
            &acme_admin,
            &format!("/v1/approvals/{own}/approve"),
            &json!({}),
        )
        .await;
    error_body(r, 403, "self_approval").await;

    // An expiry: nobody decides within the 6 s TTL.
    let expiring = hold(&gw, &agent).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let shown = get(&gw, &agent, &format!("/v1/approvals/{expiring}")).await;
    assert_eq!(shown["status"], "expired", "{shown}");
    let r = gw
        .post(
            &alice,
            &format!("/v1/approvals/{expiring}/approve"),
            &json!({}),
        )
        .await;
    error_body(r, 409, "approval_not_pending").await;
    // The self-approval one expired as well by now.

    // Everything is audited.
    let audit = get(
        &gw,
        &gw.admin_key.clone(),
        "/v1/audit?tenant=acme&limit=1000",
    )
    .await;
    let types: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    for t in ["approval.request", "approval.grant", "approval.reject"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }

    // A restart keeps the records, results included.
    let fresh = hold(&gw, &agent).await;
    let data_dir = gw.stop().await;
    let gw = Gateway::start_with_policy(
        config(&hooks),
        Arc::new(EchoExecutor::default()),
        data_dir,
        Some(default_policy()),
    )
    .await;
    let kept = get(&gw, &agent, &apr).await;
    assert_eq!(kept["status"], "executed");
    assert_eq!(kept["result"]["stdout"], "16\n");
    let lost = get(&gw, &agent, &format!("/v1/approvals/{fresh}")).await;
    assert_eq!(lost["status"], "expired", "{lost}");
    assert!(
        lost["status_reason"]
            .as_str()
            .unwrap()
            .contains("restarted"),
        "{lost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_sandbox_command_runs_in_its_sandbox_once_approved() {
    let (hooks, _got) = receiver().await;
    let Some(gw) = vm_gateway(&hooks).await else {
        return;
    };
    let agent = gw.key("acme", "agent");
    let alice = gw.key("acme", "approver");
    let bob = gw.key("acme", "approver");
    let r = gw.post(&agent, "/v1/sandboxes", &json!({})).await;
    assert_eq!(r.status(), 201);
    let sbx = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let commands = format!("/v1/sandboxes/{sbx}/commands");
    // State the approved command will find: it runs in this sandbox, not a fresh one.
    let r = gw
        .post(&agent, &commands, &json!({"cmd": "echo kept > mark"}))
        .await;
    assert_eq!(r.status(), 200);

    let held = json!({"cmd": format!("cat mark; {PAN_CMD}")});
    // A stream cannot wait for a human.
    let r = client()
        .post(format!("{}{commands}", gw.url))
        .bearer_auth(&agent)
        .header("accept", "application/x-ndjson")
        .json(&held)
        .send()
        .await
        .unwrap();
    error_body(r, 403, "approval_required").await;
    // Without streaming it is parked.
    let r = gw.post(&agent, &commands, &held).await;
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    let apr = format!("/v1/approvals/{}", body["approval"]["id"].as_str().unwrap());
    let shown = get(&gw, &alice, &apr).await;
    assert_eq!(shown["action"], "sandbox.exec", "{shown}");
    assert_eq!(shown["request"]["sandbox"], sbx.as_str());
    assert!(
        !shown["request"].to_string().contains("4111111111111111"),
        "{shown}"
    );

    // Two approvers (the rule is on the two-person list), then the command runs.
    let r = gw.post(&alice, &format!("{apr}/approve"), &json!({})).await;
    assert_eq!(r.status(), 200);
    let r = gw
        .post(&bob, &format!("{apr}/approve"), &json!({"comment": "ok"}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(&gw, &agent, &format!("{apr}?wait=60")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["result"]["stdout"], "kept\n16\n", "{done}");
    let r = gw.delete(&agent, &format!("/v1/sandboxes/{sbx}")).await;
    assert!(r.status().is_success(), "{}", r.status());
}
