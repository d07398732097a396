//! Approvals end to end over real HTTP with real microVMs: a held request (raw card data in the
//! code) parks with 202, webhooks reach a real receiver on loopback with valid signatures, two
//! approvers (one through the signed callback link named for them) release it, and the
//! requester long-polls the result of the real run. Also: a denial, an expiry, self-approval
//! refused, a tampered callback refused, and the records surviving a gateway restart.
//! Then, on the echo executor (no VM): the four-eyes rule across API and links, links that ask
//! on GET and decide on POST, approve/deny races, and requesters whose key is revoked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use common::{client, error_body, EchoExecutor, Gateway};
use hmac::{Hmac, Mac};
use serde_json::json;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

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

/// Both webhooks carry signed links acting for `approver` (an `apikey:<id>` subject).
fn config(hooks: &str, approver: &str) -> ServerConfig {
    std::env::set_var("ZTEE_TEST_HOOK_SECRET", HOOK_SECRET);
    let mut config = ServerConfig::default();
    config.approvals.ttl_s = 6;
    config.approvals.two_person_rules = vec!["pci.raw_pan_in_code".into()];
    config.approvals.webhooks = serde_json::from_value(json!([
        {"url": format!("{hooks}/n8n"), "secret_env": "ZTEE_TEST_HOOK_SECRET",
         "approver": approver},
        {"url": format!("{hooks}/slack"), "secret_env": "ZTEE_TEST_HOOK_SECRET", "format": "slack",
         "approver": approver}
    ]))
    .unwrap();
    config
}

/// Keys written into `data_dir`'s state database before a gateway starts there (as
/// `ztee apikey create` does), so the configuration can name one as a link approver: an
/// operator key and an approver of tenant acme.
fn keys_before_start(
    data_dir: &std::path::Path,
) -> (
    ztee_server::apikey::NewApiKey,
    ztee_server::apikey::NewApiKey,
) {
    let store = ztee_state::Store::open(&ztee_state::state_db_path(data_dir)).unwrap();
    let admin = ztee_server::apikey::create(&store, "default", "platform-admin", "test").unwrap();
    let approver = ztee_server::apikey::create(&store, "acme", "approver", "bob").unwrap();
    (admin, approver)
}

fn default_policy() -> Arc<dyn ztee_server::PolicyEngine> {
    Arc::new(ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    ))
}

/// A gateway on real VMs and the key of bob, the approver its webhooks' links act for.
async fn vm_gateway(hooks: &str) -> Option<(Gateway, ztee_server::apikey::NewApiKey)> {
    if !common::vm::available("approval VM tests") {
        return None;
    }
    let data_dir = common::vm::data_dir("ztee-a");
    let (admin, bob) = keys_before_start(data_dir.path());
    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    let mut gw = Gateway::start_with_policy(
        config(hooks, &format!("apikey:{}", bob.record.id)),
        Arc::new(executor),
        data_dir,
        Some(default_policy()),
    )
    .await;
    gw.admin_key = admin.key;
    Some((gw, bob))
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
    let Some((gw, bob_key)) = vm_gateway(&hooks).await else {
        return;
    };
    let bob_subject = format!("apikey:{}", bob_key.record.id);
    let bob = bob_key.key.clone();
    let agent = gw.key("acme", "agent");
    let alice = gw.key("acme", "approver");
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
    assert_eq!(payload["links"]["approver"], bob_subject.as_str());
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

    // The signed callback (bob's): tampering is refused; the genuine link, POSTed, is bob's
    // approval, the second one.
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
    let r = client()
        .get(callback.replace(&bob_subject, &format!("apikey:{}", "0".repeat(12))))
        .send()
        .await
        .unwrap();
    error_body(r, 403, "invalid_callback").await;
    let r = client().post(&callback).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The requester long-polls the result of the real run.
    let done = get(&gw, &agent, &format!("{apr}?wait=60")).await;
    assert_eq!(done["decisions"][1]["by"], bob_subject.as_str(), "{done}");
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

    // A restart keeps the records, results included, and the held request itself: sealed
    // beside its record (the database holds no card number), parked again, and run once
    // approved.
    let fresh = hold(&gw, &agent).await;
    let data_dir = gw.stop().await;
    for file in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(data_dir.path().join(file)) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("4111111111111111"),
                "a card number in {file}"
            );
        }
    }
    let gw = Gateway::start_with_policy(
        config(&hooks, &bob_subject),
        Arc::new(EchoExecutor::default()),
        data_dir,
        Some(default_policy()),
    )
    .await;
    let kept = get(&gw, &agent, &apr).await;
    assert_eq!(kept["status"], "executed");
    assert_eq!(kept["result"]["stdout"], "16\n");
    let waiting = format!("/v1/approvals/{fresh}");
    assert_eq!(get(&gw, &agent, &waiting).await["status"], "pending");
    for approver in [&alice, &bob] {
        let r = gw
            .post(approver, &format!("{waiting}/approve"), &json!({}))
            .await;
        assert_eq!(r.status(), 200);
    }
    // This gateway's executor echoes the command: the held command itself ran, masked.
    let done = get(&gw, &agent, &format!("{waiting}?wait=60")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    let stdout = done["result"]["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("wc -c") && !stdout.contains("4111111111111111"),
        "{done}"
    );

    // A gateway whose seal key is another cannot open a held request: it ends, saying why.
    let orphan = hold(&gw, &agent).await;
    let data_dir = gw.stop().await;
    std::fs::write(data_dir.path().join("approvals-seal.key"), "ab".repeat(32)).unwrap();
    let gw = Gateway::start_with_policy(
        config(&hooks, &bob_subject),
        Arc::new(EchoExecutor::default()),
        data_dir,
        Some(default_policy()),
    )
    .await;
    let lost = get(&gw, &agent, &format!("/v1/approvals/{orphan}")).await;
    assert_eq!(lost["status"], "expired", "{lost}");
    assert!(
        lost["status_reason"].as_str().unwrap().contains("seal key"),
        "{lost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_sandbox_command_runs_in_its_sandbox_once_approved() {
    let (hooks, _got) = receiver().await;
    let Some((gw, bob)) = vm_gateway(&hooks).await else {
        return;
    };
    let bob = bob.key;
    let agent = gw.key("acme", "agent");
    let alice = gw.key("acme", "approver");
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

/// Keys made before the gateway starts, so a webhook can name the approver its links act for.
struct EchoGateway {
    gw: Gateway,
    exec: Arc<EchoExecutor>,
    agent: ztee_server::apikey::NewApiKey,
    acme_admin: String,
    alice: String,
    alice_subject: String,
    bob: String,
    _hooks: Received,
}

/// A gateway on the echo executor (no VM) with the default policy. The `n8n` webhook's signed
/// links act for alice; the `self` webhook's for acme's admin (to try a requester's own link).
async fn echo_gateway(two_person: bool) -> EchoGateway {
    use ztee_server::apikey::create;
    let (hooks, got) = receiver().await;
    let data_dir = tempfile::tempdir().unwrap();
    let store = ztee_state::Store::open(&ztee_state::state_db_path(data_dir.path())).unwrap();
    let admin = create(&store, "default", "platform-admin", "test").unwrap();
    let agent = create(&store, "acme", "agent", "agent").unwrap();
    let acme_admin = create(&store, "acme", "admin", "acme admin").unwrap();
    let alice = create(&store, "acme", "approver", "alice").unwrap();
    let bob = create(&store, "acme", "approver", "bob").unwrap();
    drop(store);
    let alice_subject = format!("apikey:{}", alice.record.id);
    let mut config = config(&hooks, &alice_subject);
    config.approvals.ttl_s = 300;
    if !two_person {
        config.approvals.two_person_rules.clear();
    }
    config.quotas.requests_per_second = 10_000.0;
    config.quotas.burst = 10_000;
    config.approvals.webhooks = serde_json::from_value(json!([
        {"url": format!("{hooks}/n8n"), "secret_env": "ZTEE_TEST_HOOK_SECRET",
         "approver": alice_subject},
        {"url": format!("{hooks}/self"), "secret_env": "ZTEE_TEST_HOOK_SECRET",
         "approver": format!("apikey:{}", acme_admin.record.id)},
    ]))
    .unwrap();
    let exec = Arc::new(EchoExecutor::default());
    let mut gw =
        Gateway::start_with_policy(config, exec.clone(), data_dir, Some(default_policy())).await;
    gw.admin_key = admin.key;
    EchoGateway {
        gw,
        exec,
        agent,
        acme_admin: acme_admin.key,
        alice: alice.key,
        alice_subject,
        bob: bob.key,
        _hooks: got,
    }
}

/// The signed link `which` (`approve` or `deny`) the webhook at `path` got for approval `id`,
/// pointed at the test gateway.
async fn signed_link(t: &EchoGateway, path: &str, id: &str, which: &str) -> String {
    let (_, body) = delivery(&t._hooks, path, "approval.requested", id).await;
    let payload: serde_json::Value = serde_json::from_str(&body).unwrap();
    let link = payload["links"][which]
        .as_str()
        .unwrap_or_else(|| panic!("no {which} link in {payload}"))
        .to_owned();
    let at = link.find("/v1/").unwrap();
    format!("{}{}", t.gw.url, &link[at..])
}

fn runs(t: &EchoGateway) -> usize {
    t.exec.created.lock().unwrap().len()
}

/// Audit events of `kind` about approval `id`, as the admin reads them.
async fn audit_events(t: &EchoGateway, kind: &str, id: &str) -> Vec<serde_json::Value> {
    let audit = get(&t.gw, &t.gw.admin_key, "/v1/audit?tenant=acme&limit=1000").await;
    audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == kind && e.to_string().contains(&format!("approval/{id}")))
        .cloned()
        .collect()
}

/// Review #12: a tenant's `admin` sees its own tenant's approvals only; a platform admin (an API
/// key with role `platform-admin`) sees every tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_sees_no_other_tenants_approvals() {
    let t = echo_gateway(false).await;
    let id = hold(&t.gw, &t.agent.key).await;
    let other_admin = t.gw.key("globex", "admin");
    let listed = get(&t.gw, &other_admin, "/v1/approvals").await;
    assert_eq!(listed["approvals"].as_array().unwrap().len(), 0, "{listed}");
    let r = t.gw.get(&other_admin, &format!("/v1/approvals/{id}")).await;
    assert_eq!(r.status(), 404);
    // acme's own admin sees it; so does the platform admin.
    let own = get(&t.gw, &t.acme_admin, "/v1/approvals").await;
    assert!(own.to_string().contains(&id), "{own}");
    let platform = get(&t.gw, &t.gw.admin_key, "/v1/approvals").await;
    assert!(platform.to_string().contains(&id), "{platform}");
}

/// Review #4: one person approving through the API and again through a signed link is one
/// approver, not two; and a requester's own link never approves their request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_counts_once_whether_it_approves_by_api_or_by_link() {
    let t = echo_gateway(true).await;
    let id = hold(&t.gw, &t.agent.key).await;
    let apr = format!("/v1/approvals/{id}");
    let link = signed_link(&t, "n8n", &id, "approve").await;

    let r =
        t.gw.post(&t.alice, &format!("{apr}/approve"), &json!({}))
            .await;
    assert_eq!(r.status(), 200);
    // Alice's link is alice: she has decided already.
    let r = client().post(&link).send().await.unwrap();
    error_body(r, 409, "approval_not_pending").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = get(&t.gw, &t.alice, &apr).await;
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["decisions"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(runs(&t), 0, "the held request ran with one approver");

    // A second, distinct approver completes the quorum.
    let r =
        t.gw.post(&t.bob, &format!("{apr}/approve"), &json!({}))
            .await;
    assert_eq!(r.status(), 200);
    let done = get(&t.gw, &t.agent.key, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(runs(&t), 1);

    // The requester's own link (acme's admin holds, the `self` webhook's links act for them).
    let own = hold(&t.gw, &t.acme_admin).await;
    let own_link = signed_link(&t, "self", &own, "approve").await;
    let r = client().post(&own_link).send().await.unwrap();
    error_body(r, 403, "self_approval").await;
    let shown = get(&t.gw, &t.acme_admin, &format!("/v1/approvals/{own}")).await;
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["decisions"].as_array().unwrap().len(), 0, "{shown}");
}

/// Review #4: a GET on a link (a mail scanner, a chat unfurler) shows a page and decides
/// nothing; the POST decides, and the record and the audit trail name the approver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_asks_on_get_and_decides_on_post_in_its_approvers_name() {
    let t = echo_gateway(false).await;
    let id = hold(&t.gw, &t.agent.key).await;
    let apr = format!("/v1/approvals/{id}");
    let link = signed_link(&t, "n8n", &id, "approve").await;

    for _ in 0..3 {
        let r = client().get(&link).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let html = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(html.starts_with("text/html"), "{html}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let page = r.text().await.unwrap();
        assert!(
            page.contains(&id) && page.contains(&t.alice_subject),
            "{page}"
        );
        assert!(page.contains("method=\"post\""), "{page}");
        assert!(!page.contains("4111111111111111"), "{page}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = get(&t.gw, &t.alice, &apr).await;
    assert_eq!(shown["status"], "pending", "a GET decided: {shown}");
    assert_eq!(runs(&t), 0);

    let r = client().post(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let done = get(&t.gw, &t.agent.key, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(
        done["decisions"][0]["by"],
        t.alice_subject.as_str(),
        "{done}"
    );
    let grants = audit_events(&t, "approval.grant", &id).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(
        grants[0]["event"]["principal"]["subject"],
        t.alice_subject.as_str(),
        "{grants:?}"
    );
}

/// Review #19: the second decision on a decided approval is a 409 that says how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_after_the_deciding_one_is_a_conflict_naming_the_final_state() {
    let t = echo_gateway(false).await;
    let id = hold(&t.gw, &t.agent.key).await;
    let apr = format!("/v1/approvals/{id}");
    let r =
        t.gw.post(&t.alice, &format!("{apr}/approve"), &json!({}))
            .await;
    assert_eq!(r.status(), 200);
    let r = t.gw.post(&t.bob, &format!("{apr}/deny"), &json!({})).await;
    let body = error_body(r, 409, "approval_not_pending").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("approved") || message.contains("executed"),
        "{message}"
    );
    let done = get(&t.gw, &t.agent.key, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(runs(&t), 1);
}

/// Review #19: an approve and a deny at the same moment: exactly one wins, the other is told
/// 409, and the request runs if and only if the approval won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approve_and_deny_have_exactly_one_winner() {
    let t = echo_gateway(false).await;
    let mut approvals_won = 0;
    for round in 0..30 {
        let id = hold(&t.gw, &t.agent.key).await;
        let apr = format!("/v1/approvals/{id}");
        let before = runs(&t);
        let approve_path = format!("{apr}/approve");
        let deny_path = format!("{apr}/deny");
        let empty = json!({});
        let (a, d) = tokio::join!(
            t.gw.post(&t.alice, &approve_path, &empty),
            t.gw.post(&t.bob, &deny_path, &empty),
        );
        let (a, d) = (a.status().as_u16(), d.status().as_u16());
        assert!(
            (a, d) == (200, 409) || (a, d) == (409, 200),
            "round {round}: approve {a}, deny {d}"
        );
        let done = get(&t.gw, &t.agent.key, &format!("{apr}?wait=30")).await;
        if a == 200 {
            approvals_won += 1;
            assert_eq!(done["status"], "executed", "round {round}: {done}");
            assert_eq!(runs(&t), before + 1, "round {round}");
        } else {
            assert_eq!(done["status"], "denied", "round {round}: {done}");
            assert_eq!(runs(&t), before, "round {round}: a denied request ran");
        }
    }
    eprintln!("approve won {approvals_won} of 30 rounds");
}

/// Review #6: revoking the requester's key expires their pending approvals; an approval that
/// reaches its run after the key was revoked does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_requester_key_expires_its_holds_and_never_runs_approved_ones() {
    let t = echo_gateway(false).await;
    let first = hold(&t.gw, &t.agent.key).await;
    let apr = format!("/v1/approvals/{first}");
    ztee_server::apikey::revoke(&t.gw.state.store, &t.agent.record.id).unwrap();
    let shown = get(&t.gw, &t.alice, &apr).await;
    assert_eq!(shown["status"], "expired", "{shown}");
    assert!(
        shown["status_reason"].as_str().unwrap().contains("revoked"),
        "{shown}"
    );
    let r =
        t.gw.post(&t.alice, &format!("{apr}/approve"), &json!({}))
            .await;
    error_body(r, 409, "approval_not_pending").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&t), 0, "a revoked key's request ran");

    // A key revoked behind the approvals' back (the revocation lands between the approval and
    // the run): the run re-checks the requester and refuses.
    let other = ztee_server::apikey::create(&t.gw.state.store, "acme", "agent", "").unwrap();
    let id = hold(&t.gw, &other.key).await;
    let apr = format!("/v1/approvals/{id}");
    assert!(t.gw.state.store.revoke_api_key(&other.record.id).unwrap());
    let r =
        t.gw.post(&t.alice, &format!("{apr}/approve"), &json!({}))
            .await;
    assert_eq!(r.status(), 200);
    let done = get(&t.gw, &t.alice, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done.to_string().contains("revoked"), "{done}");
    assert_eq!(runs(&t), 0, "a revoked key's approved request ran");

    // Both ends are audited as rejections by the system, with the reason's rule id (the
    // revocation's through the audit outbox, which the gateway drains within seconds).
    for id in [&first, &id] {
        let mut found = Vec::new();
        for _ in 0..100 {
            found = audit_events(&t, "approval.reject", id).await;
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(found.len(), 1, "{id}: {found:?}");
        assert!(found[0].to_string().contains("apikey.revoked"), "{found:?}");
    }
}

/// Review #6, OIDC: a request held for a token holder never outlives the token. Its approval
/// expires when the token does; approving it after that is a 409 and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_for_an_oidc_token_expires_with_the_token() {
    let keys = tempfile::tempdir().unwrap();
    let idp = match common::oidc::Provider::start(&keys.path().join("signing.jwk")) {
        Ok(p) => p,
        Err(e) if std::env::var_os("ZTEE_REQUIRE_OIDC_TESTS").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("SKIPPED: OIDC provider cannot run here: {e}");
            return;
        }
    };
    let (hooks, _got) = receiver().await;
    let data_dir = tempfile::tempdir().unwrap();
    let (admin, alice) = keys_before_start(data_dir.path());
    let mut config = config(&hooks, &format!("apikey:{}", alice.record.id));
    config.approvals.ttl_s = 300;
    config.approvals.two_person_rules.clear();
    config.oidc = Some(
        toml::from_str(&format!(
            "issuer = \"{}\"\naudience = \"urn:ztee\"\nleeway_s = 0\nmin_refresh_interval_s = 0",
            idp.issuer
        ))
        .unwrap(),
    );
    let exec = Arc::new(EchoExecutor::default());
    let mut gw =
        Gateway::start_with_policy(config, exec.clone(), data_dir, Some(default_policy())).await;
    gw.admin_key = admin.key;

    // A token valid for 2 s (the provider's `short-lived` client).
    let token = idp.token("short-lived", "urn:ztee").await;
    let id = hold(&gw, &token).await;
    let apr = format!("/v1/approvals/{id}");
    let shown = get(&gw, &alice.key, &apr).await;
    let (created, expires) = (
        shown["created_at"].as_u64().unwrap(),
        shown["expires_at"].as_u64().unwrap(),
    );
    assert!(
        expires <= created + 3,
        "held past the token's expiry: {shown}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let shown = get(&gw, &alice.key, &apr).await;
    assert_eq!(shown["status"], "expired", "{shown}");
    let r = gw
        .post(&alice.key, &format!("{apr}/approve"), &json!({}))
        .await;
    error_body(r, 409, "approval_not_pending").await;
    assert!(
        exec.created.lock().unwrap().is_empty(),
        "an expired token's request ran"
    );

    // A token that outlives the approval window keeps the configured window.
    let token = idp.token("agent-acme", "urn:ztee").await;
    let id = hold(&gw, &token).await;
    let shown = get(&gw, &alice.key, &format!("/v1/approvals/{id}")).await;
    assert_eq!(
        shown["expires_at"].as_u64().unwrap(),
        shown["created_at"].as_u64().unwrap() + 300,
        "{shown}"
    );
}
