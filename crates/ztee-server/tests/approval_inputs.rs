//! An approval binds the files a held sandbox command runs on (review finding 13), and what an
//! approval shows outside the gateway carries env names, never env values (finding 18b).
//!
//! On the echo executor (no VM): the record lists the script with its sha256, the sandbox
//! refuses every other command and upload while the approval is pending, a script changed in
//! the guest refuses the approved run, delete expires the hold, and webhooks, the link page
//! and the API show `[set]` for env values. On a real VM: a script rewritten by a process in
//! the guest between hold and approval is refused with `inputs_changed` and does not run; an
//! unchanged one runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use common::{client, error_body, EchoExecutor, Gateway};
use serde_json::json;
use sha2::Digest;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

const HOOK_SECRET: &str = "webhook-signing-secret-0123456789";
const PAN: &str = "4111111111111111";
const SCRIPT: &str = "touch /home/user/ran\n";
/// An env value no DLP detector recognises.
const ENV_VALUE: &str = "hunter2-not-a-pattern";

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

/// The first delivery to `path` of event `kind` about approval `id`.
async fn delivery(got: &Received, path: &str, kind: &str, id: &str) -> String {
    for _ in 0..100 {
        if let Some((_, _, b)) = got
            .lock()
            .unwrap()
            .iter()
            .find(|(p, h, b)| p == path && h["x-ztee-event"] == kind && b.contains(id))
        {
            return b.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {kind} webhook for {id} at /{path}");
}

fn default_policy() -> Arc<dyn ztee_server::PolicyEngine> {
    Arc::new(ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    ))
}

/// The digest approvers see: keyed with the node's content key, never a plain hash.
fn keyed(gw: &Gateway, data: &[u8]) -> String {
    format!(
        "hmac-sha256:{}",
        hex::encode(gw.state.pipeline.content_key.digest(data))
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

struct Setup {
    gw: Gateway,
    agent: String,
    /// Another caller of the same tenant who may use every sandbox (role admin).
    acme_admin: String,
    alice: String,
    hooks: Received,
}

/// A gateway (default policy, one approver per hold) whose JSON and Slack webhooks carry signed
/// links acting for alice.
async fn setup(
    executor: Arc<dyn ztee_server::exec::Executor>,
    data_dir: tempfile::TempDir,
) -> Setup {
    use ztee_server::apikey::create;
    let (hooks_url, hooks) = receiver().await;
    let store = ztee_state::Store::open(&ztee_state::state_db_path(data_dir.path())).unwrap();
    let admin = create(&store, "default", "platform-admin", "test").unwrap();
    let agent = create(&store, "acme", "agent", "agent").unwrap();
    let acme_admin = create(&store, "acme", "admin", "acme admin").unwrap();
    let alice = create(&store, "acme", "approver", "alice").unwrap();
    drop(store);
    std::env::set_var("ZTEE_TEST_HOOK_SECRET", HOOK_SECRET);
    let mut config = ServerConfig::default();
    config.approvals.ttl_s = 300;
    config.quotas.requests_per_second = 10_000.0;
    config.quotas.burst = 10_000;
    let alice_subject = format!("apikey:{}", alice.record.id);
    config.approvals.webhooks = serde_json::from_value(json!([
        {"url": format!("{hooks_url}/n8n"), "secret_env": "ZTEE_TEST_HOOK_SECRET",
         "approver": alice_subject},
        {"url": format!("{hooks_url}/slack"), "secret_env": "ZTEE_TEST_HOOK_SECRET",
         "format": "slack", "approver": alice_subject},
    ]))
    .unwrap();
    let mut gw =
        Gateway::start_with_policy(config, executor, data_dir, Some(default_policy())).await;
    gw.admin_key = admin.key;
    Setup {
        gw,
        agent: agent.key,
        acme_admin: acme_admin.key,
        alice: alice.key,
        hooks,
    }
}

async fn get(gw: &Gateway, key: &str, path: &str) -> serde_json::Value {
    let r = gw.get(key, path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn new_sandbox(gw: &Gateway, key: &str) -> String {
    let r = gw.post(key, "/v1/sandboxes", &json!({})).await;
    assert_eq!(r.status(), 201);
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn upload(
    gw: &Gateway,
    key: &str,
    sandbox: &str,
    path: &str,
    body: &str,
) -> reqwest::Response {
    client()
        .put(format!(
            "{}/v1/sandboxes/{sandbox}/files?path={path}",
            gw.url
        ))
        .bearer_auth(key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Holds `sh x.sh <PAN>` (card data in argv: policy asks for an approval); the approval id.
async fn hold_script(gw: &Gateway, key: &str, sandbox: &str, env: serde_json::Value) -> String {
    let r = gw
        .post(
            key,
            &format!("/v1/sandboxes/{sandbox}/commands"),
            &json!({"cmd": ["sh", "x.sh", PAN], "env": env}),
        )
        .await;
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["approval"]["id"].as_str().unwrap().to_owned()
}

/// Audit events of `kind` whose text mentions `needle`, as the platform admin reads them.
async fn audit_events(gw: &Gateway, kind: &str, needle: &str) -> Vec<serde_json::Value> {
    let audit = get(gw, &gw.admin_key, "/v1/audit?tenant=acme&limit=1000").await;
    audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == kind && e.to_string().contains(needle))
        .cloned()
        .collect()
}

fn executed_scripts(exec: &EchoExecutor) -> usize {
    exec.executed
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.argv.iter().any(|a| a == "x.sh"))
        .count()
}

/// (a) the record lists the script with its sha256; the sandbox refuses other commands,
/// uploads and holds while the approval is pending; (b) a script changed in the guest after the
/// hold refuses the approved run (`inputs_changed`, audited with both digests), nothing runs;
/// (c) held again, unchanged, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_command_is_bound_to_the_script_it_names() {
    let exec = Arc::new(EchoExecutor::default());
    let t = setup(exec.clone(), tempfile::tempdir().unwrap()).await;
    let gw = &t.gw;
    let sbx = new_sandbox(gw, &t.agent).await;
    let r = upload(gw, &t.agent, &sbx, "/home/user/x.sh", SCRIPT).await;
    assert_eq!(r.status(), 200);

    let id = hold_script(gw, &t.agent, &sbx, json!({})).await;
    let apr = format!("/v1/approvals/{id}");
    let shown = get(gw, &t.alice, &apr).await;
    assert_eq!(
        shown["inputs"],
        json!([{"path": "/home/user/x.sh", "digest": keyed(gw, SCRIPT.as_bytes()),
                "size": SCRIPT.len()}]),
        "{shown}"
    );
    // A plain hash of the content is nowhere: it could be reversed for a file holding a card.
    assert!(!shown.to_string().contains(&sha256_hex(SCRIPT.as_bytes())));
    // The webhooks and the signed link's page carry the binding too.
    let digest = keyed(gw, SCRIPT.as_bytes());
    let hook = delivery(&t.hooks, "n8n", "approval.requested", &id).await;
    assert!(hook.contains(&digest), "{hook}");
    let slack = delivery(&t.hooks, "slack", "approval.requested", &id).await;
    assert!(
        slack.contains(&digest) && slack.contains("/home/user/x.sh"),
        "{slack}"
    );
    let payload: serde_json::Value = serde_json::from_str(&hook).unwrap();
    let link = payload["links"]["approve"].as_str().unwrap();
    let link = format!("{}{}", gw.url, &link[link.find("/v1/").unwrap()..]);
    let page = client()
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&digest) && page.contains("/home/user/x.sh"),
        "{page}"
    );

    // While it is pending, nobody uses the sandbox through the gateway.
    let held = error_body(
        upload(
            gw,
            &t.acme_admin,
            &sbx,
            "/home/user/x.sh",
            "touch /home/user/evil\n",
        )
        .await,
        409,
        "sandbox_held",
    )
    .await;
    assert!(
        held["error"]["message"].as_str().unwrap().contains(&id),
        "{held}"
    );
    error_body(
        gw.exec(&t.agent, &sbx, &["true"]).await,
        409,
        "sandbox_held",
    )
    .await;
    error_body(
        gw.exec(&t.acme_admin, &sbx, &["echo", PAN]).await,
        409,
        "sandbox_held",
    )
    .await;
    assert_eq!(executed_scripts(&exec), 0);

    // A process in the guest rewrites the script (the double's files are the guest's).
    let live = gw.state.sandboxes.get(&sbx).unwrap();
    let evil = "touch /home/user/ran; curl evil\n";
    live.handle
        .write_file("/home/user/x.sh", Bytes::from(evil), 0o644)
        .await
        .unwrap();
    let r = gw
        .post(&t.alice, &format!("{apr}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(gw, &t.agent, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["result"]["error"]["code"], "inputs_changed", "{done}");
    assert!(
        done["status_reason"]
            .as_str()
            .unwrap()
            .starts_with("inputs_changed"),
        "{done}"
    );
    assert_eq!(executed_scripts(&exec), 0, "the changed script ran");
    let refused = audit_events(gw, "sandbox.exec", "approval.inputs_changed").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let text = refused[0].to_string();
    assert!(
        text.contains(&keyed(gw, SCRIPT.as_bytes())) && text.contains(&keyed(gw, evil.as_bytes())),
        "{text}"
    );

    // The approval ended: the sandbox is usable again; held again, unchanged, it runs.
    let id = hold_script(gw, &t.agent, &sbx, json!({})).await;
    let apr = format!("/v1/approvals/{id}");
    let shown = get(gw, &t.alice, &apr).await;
    assert_eq!(
        shown["inputs"][0]["digest"],
        keyed(gw, evil.as_bytes()).as_str(),
        "{shown}"
    );
    let r = gw
        .post(&t.alice, &format!("{apr}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(gw, &t.agent, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(executed_scripts(&exec), 1);
}

/// A file argv names that did not exist at the hold and appears before the run is a change
/// too; a second hold on a held sandbox is refused; deleting the sandbox expires its hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_appearing_refuses_the_run_and_delete_expires_a_hold() {
    let exec = Arc::new(EchoExecutor::default());
    let t = setup(exec.clone(), tempfile::tempdir().unwrap()).await;
    let gw = &t.gw;
    let sbx = new_sandbox(gw, &t.agent).await;
    let id = hold_script(gw, &t.agent, &sbx, json!({})).await;
    let apr = format!("/v1/approvals/{id}");
    assert_eq!(get(gw, &t.alice, &apr).await["inputs"], json!([]));
    let live = gw.state.sandboxes.get(&sbx).unwrap();
    live.handle
        .write_file("/home/user/x.sh", Bytes::from(SCRIPT), 0o644)
        .await
        .unwrap();
    let r = gw
        .post(&t.alice, &format!("{apr}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(gw, &t.agent, &format!("{apr}?wait=30")).await;
    assert_eq!(done["result"]["error"]["code"], "inputs_changed", "{done}");
    assert_eq!(executed_scripts(&exec), 0);

    let id = hold_script(gw, &t.agent, &sbx, json!({})).await;
    let r = gw
        .post(
            &t.agent,
            &format!("/v1/sandboxes/{sbx}/commands"),
            &json!({"cmd": ["sh", "x.sh", PAN]}),
        )
        .await;
    error_body(r, 409, "sandbox_held").await;
    let r = gw.delete(&t.agent, &format!("/v1/sandboxes/{sbx}")).await;
    assert_eq!(r.status(), 204);
    let gone = get(gw, &t.alice, &format!("/v1/approvals/{id}")).await;
    assert_eq!(gone["status"], "expired", "{gone}");
    assert!(
        gone["status_reason"].as_str().unwrap().contains("deleted"),
        "{gone}"
    );
}

/// Finding 18b: an env value DLP does not recognise never leaves the gateway with an approval:
/// not in the webhook bodies a real listener receives, not on the signed link's page, not in
/// the API view; the env names do, with `[set]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_carry_env_names_never_env_values() {
    let exec = Arc::new(EchoExecutor::default());
    let t = setup(exec.clone(), tempfile::tempdir().unwrap()).await;
    let gw = &t.gw;
    let env = json!({"DEPLOY_TOKEN": ENV_VALUE});
    let r = gw
        .post(
            &t.agent,
            "/v1/run",
            &json!({"cmd": format!("echo {PAN}"), "env": env}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let run_id = r.json::<serde_json::Value>().await.unwrap()["approval"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sbx = new_sandbox(gw, &t.agent).await;
    let cmd_id = hold_script(gw, &t.agent, &sbx, env.clone()).await;

    for id in [&run_id, &cmd_id] {
        for path in ["n8n", "slack"] {
            let body = delivery(&t.hooks, path, "approval.requested", id).await;
            assert!(!body.contains(ENV_VALUE), "env value in a webhook: {body}");
        }
        let body = delivery(&t.hooks, "n8n", "approval.requested", id).await;
        let payload: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            payload["approval"]["request"]["env"],
            json!({"DEPLOY_TOKEN": "[set]"}),
            "{payload}"
        );
        let link = payload["links"]["approve"].as_str().unwrap();
        let link = format!("{}{}", gw.url, &link[link.find("/v1/").unwrap()..]);
        let page = client()
            .get(&link)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("DEPLOY_TOKEN"), "{page}");
        assert!(
            !page.contains(ENV_VALUE),
            "env value on the link page: {page}"
        );
        let shown = get(gw, &t.alice, &format!("/v1/approvals/{id}")).await;
        assert!(!shown.to_string().contains(ENV_VALUE), "{shown}");
    }
    // The value still reaches the command once approved.
    let apr = format!("/v1/approvals/{run_id}");
    let r = gw
        .post(&t.alice, &format!("{apr}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(gw, &t.agent, &format!("{apr}?wait=30")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert!(exec.executed.lock().unwrap().iter().any(|s| s
        .env
        .get("DEPLOY_TOKEN")
        .map(String::as_str)
        == Some(ENV_VALUE)));
}

/// On a real VM: a process already running in the guest rewrites the script after the hold;
/// the approved run is refused and the script did not run (no marker file). Held again with
/// nothing changing, it runs (the marker appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_vm_a_script_rewritten_after_the_hold_does_not_run() {
    if !common::vm::available("approval input binding VM test") {
        return;
    }
    let data_dir = common::vm::data_dir("ztee-i");
    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    let t = setup(Arc::new(executor), data_dir).await;
    let gw = &t.gw;
    let sbx = new_sandbox(gw, &t.agent).await;
    let r = upload(gw, &t.agent, &sbx, "/home/user/x.sh", SCRIPT).await;
    assert_eq!(r.status(), 200);
    let ls = || async {
        let r = gw.exec_json(&t.agent, &sbx, &["ls", "/home/user"]).await;
        r["stdout"].as_str().unwrap_or_default().to_owned()
    };

    // A command started before the hold rewrites the script five seconds after it started.
    let rewriter = {
        let (url, key, sbx) = (gw.url.clone(), t.agent.clone(), sbx.clone());
        tokio::spawn(async move {
            client()
                .post(format!("{url}/v1/sandboxes/{sbx}/commands"))
                .bearer_auth(key)
                .json(&json!({"cmd": "touch /home/user/started; sleep 5; \
                                      printf 'touch /home/user/ran\\n# v2\\n' > /home/user/x.sh"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Held only once the rewriter runs in the guest (else the hold would refuse it).
    let started = format!(
        "{}/v1/sandboxes/{sbx}/files?path=/home/user/started",
        gw.url
    );
    for _ in 0..300 {
        let r = client()
            .get(&started)
            .bearer_auth(&t.agent)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = hold_script(gw, &t.agent, &sbx, json!({})).await;
    let apr = format!("/v1/approvals/{id}");
    let shown = get(gw, &t.alice, &apr).await;
    assert_eq!(
        shown["inputs"],
        json!([{"path": "/home/user/x.sh", "digest": keyed(gw, SCRIPT.as_bytes()),
                "size": SCRIPT.len()}]),
        "{shown}"
    );
    assert_eq!(rewriter.await.unwrap(), 200);
    let r = gw
        .post(&t.alice, &format!("{apr}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(gw, &t.agent, &format!("{apr}?wait=60")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["result"]["error"]["code"], "inputs_changed", "{done}");
    let files = ls().await;
    assert!(files.contains("x.sh") && !files.contains("ran"), "{files}");

    let id = hold_script(gw, &t.agent, &sbx, json!({})).await;
    let apr = format!("/v1/approvals/{id}");
    let r = gw
        .post(&t.alice, &format!("{apr}/approve"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let done = get(gw, &t.agent, &format!("{apr}?wait=60")).await;
    assert_eq!(done["status"], "executed", "{done}");
    assert!(ls().await.contains("ran"));
    let r = gw.delete(&t.agent, &format!("/v1/sandboxes/{sbx}")).await;
    assert!(r.status().is_success(), "{}", r.status());
}

/// More files than an approval can bind: the hold is refused with a precise error, audited, and
/// nothing is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_naming_too_many_files_is_not_held() {
    let exec = Arc::new(EchoExecutor::default());
    let t = setup(exec.clone(), tempfile::tempdir().unwrap()).await;
    let gw = &t.gw;
    let sbx = new_sandbox(gw, &t.agent).await;
    let live = gw.state.sandboxes.get(&sbx).unwrap();
    let mut cmd = vec!["cat".to_owned()];
    for i in 0..17 {
        let path = format!("/home/user/f{i}.txt");
        live.handle
            .write_file(&path, Bytes::from("x"), 0o644)
            .await
            .unwrap();
        cmd.push(path);
    }
    cmd.push(PAN.to_owned());
    let r = gw
        .post(
            &t.agent,
            &format!("/v1/sandboxes/{sbx}/commands"),
            &json!({ "cmd": cmd }),
        )
        .await;
    let body = error_body(r, 422, "inputs_unbindable").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("16"),
        "{body}"
    );
    let pending = get(gw, &t.alice, "/v1/approvals?status=pending").await;
    assert_eq!(pending["approvals"], json!([]), "{pending}");
    let refused = audit_events(gw, "sandbox.exec", "approval.inputs_unbindable").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    // Nothing holds the sandbox.
    let r = gw.exec(&t.agent, &sbx, &["true"]).await;
    assert_eq!(r.status(), 200);
}
