//! Every door hands the same action to the same core: a run asked for directly over REST and a
//! run held for approval and resumed by the approval gate pass the same stages, so the policy
//! sees inputs of the same shape and the trail keeps records of the same shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{client, EchoExecutor, Gateway};
use serde_json::{json, Value};
use ztee_server::ServerConfig;
use ztee_server::{Decision, PolicyEngine, PolicyInput};

/// The repository's policy, remembering every input it was asked to decide.
struct Recording {
    inner: Arc<dyn PolicyEngine>,
    seen: Mutex<Vec<Value>>,
}

impl PolicyEngine for Recording {
    fn decide(&self, input: &PolicyInput) -> Decision {
        self.seen
            .lock()
            .unwrap()
            .push(serde_json::to_value(input).unwrap());
        self.inner.decide(input)
    }

    fn decide_egress(
        &self,
        input: &PolicyInput,
        targets: &[ztee_policy::EgressTarget],
    ) -> Decision {
        self.inner.decide_egress(input, targets)
    }

    fn rego(&self) -> Option<&ztee_policy::PolicyEngine> {
        self.inner.rego()
    }
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// The one audit record of type `event_type` for `request_id`.
async fn record(gw: &Gateway, request_id: &str, event_type: &str) -> Value {
    let path = format!("/v1/audit?tenant=acme&request_id={request_id}&type={event_type}");
    let found = gw.get_json(&gw.admin_key, &path).await;
    let events = found["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{found}");
    events[0]["event"].clone()
}

async fn post(gw: &Gateway, key: &str, path: &str, request_id: &str, body: &Value) -> Value {
    let r = client()
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .header("x-request-id", request_id)
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_run_and_an_approved_run_pass_the_same_stages() {
    let policy = Arc::new(Recording {
        inner: common::repository_policy(|_| {}),
        seen: Mutex::new(Vec::new()),
    });
    let mut config = ServerConfig::default();
    config.approvals.two_person_rules.clear();
    let gw = Gateway::start_with_policy(
        config,
        Arc::new(EchoExecutor::default()),
        tempfile::tempdir().unwrap(),
        Some(policy.clone()),
    )
    .await;
    let agent = gw.key("acme", "agent");
    let approver = gw.key("acme", "approver");

    // Door 1: REST, allowed outright.
    let direct = post(
        &gw,
        &agent,
        "/v1/run",
        "door-direct",
        &json!({"cmd": ["true"]}),
    )
    .await;
    assert_eq!(direct["exit_code"], 0, "{direct}");
    let direct_input = policy.seen.lock().unwrap().last().cloned().unwrap();

    // Door 2: the same action with a card number in it is held; the approval gate resumes
    // the parked action through the core once approved.
    let held = json!({"cmd": ["sh", "-c", "echo 4111111111111111 >/dev/null"]});
    let parked = post(&gw, &agent, "/v1/run", "door-held", &held).await;
    let id = parked["approval"]["id"].as_str().unwrap().to_owned();
    let at_hold = policy.seen.lock().unwrap().last().cloned().unwrap();
    let decided = post(
        &gw,
        &approver,
        &format!("/v1/approvals/{id}/approve"),
        "door-approve",
        &json!({}),
    )
    .await;
    assert_eq!(decided["status"], "approved", "{decided}");
    let done = gw
        .get_json(&agent, &format!("/v1/approvals/{id}?wait=30"))
        .await;
    assert_eq!(done["status"], "executed", "{done}");
    let at_resume = policy.seen.lock().unwrap().last().cloned().unwrap();

    // The policy saw inputs of one shape, and the resumed action is the held one.
    assert_eq!(direct_input["action"], "run");
    assert_eq!(keys(&direct_input), keys(&at_hold));
    assert_eq!(at_hold, at_resume, "the resumed action is the parked one");
    assert!(
        !at_hold.to_string().contains("4111111111111111"),
        "{at_hold}"
    );

    // The trail: one run record each, of the same shape, each naming its decision.
    let direct_record = record(&gw, "door-direct", "run").await;
    let held_record = record(&gw, "door-held", "approval.request").await;
    assert_eq!(held_record["outcome"], "pending_approval", "{held_record}");
    let runs = gw
        .get_json(&gw.admin_key, "/v1/audit?tenant=acme&type=run")
        .await;
    let runs = runs["events"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "direct, held (pending), approved: {runs:?}");
    let approved_record = runs
        .iter()
        .map(|e| e["event"].clone())
        .find(|e| e["outcome"] == "success" && e["request_id"] != "door-direct")
        .expect("the approved run's record");
    // Fields that depend on content (what was masked) or on the door (who approved) aside,
    // the records are of one shape.
    let core = |e: &Value| {
        keys(e)
            .into_iter()
            .filter(|k| k != "redactions" && k != "approval")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        core(&direct_record),
        core(&approved_record),
        "{direct_record}\n{approved_record}"
    );
    assert_eq!(direct_record["decision"]["decision"], "allow");
    assert_eq!(approved_record["principal"], direct_record["principal"]);
    assert_eq!(approved_record["request_id"], "door-held");
    // What ran names the people who let it run; a direct run names no approval.
    assert!(direct_record.get("approval").is_none(), "{direct_record}");
    assert_eq!(approved_record["approval"]["id"], id.as_str());
    let approver_subject = decided["decisions"][0]["by"].as_str().unwrap();
    assert_eq!(
        approved_record["approval"]["approved_by"],
        json!([approver_subject]),
        "{approved_record}"
    );
}

/// A model provider and an MCP tool server on loopback. The model answers every chat with a
/// tool call whose arguments hold a card verification code; the tool server echoes calls.
async fn start_upstreams() -> String {
    async fn chat() -> axum::Json<Value> {
        axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "charge", "arguments": "{\"order\": 7, \"cvv\": \"737\"}"}}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }))
    }
    async fn mcp(axum::Json(message): axum::Json<Value>) -> axum::Json<Value> {
        if message["method"] == "tools/list" {
            return axum::Json(json!({"jsonrpc": "2.0", "id": message["id"], "result": {
                "tools": [{"name": "charge", "description": "Charge an order.",
                           "inputSchema": {"type": "object"}}]}}));
        }
        axum::Json(json!({"jsonrpc": "2.0", "id": message["id"],
            "result": {"content": [{"type": "text", "text": "done"}]}}))
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/mcp", axum::routing::post(mcp));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_and_mcp_doors_hand_their_actions_to_the_same_core() {
    let upstream = start_upstreams().await;
    let config = ServerConfig::from_toml(&format!(
        r#"
[llm]
tenant_tiers = {{ acme = "pci" }}

[[llm.providers]]
name = "local"
api = "openai"
base_url = "{upstream}/v1"
external = false

[[mcp.upstreams]]
name = "tools"
url = "{upstream}/mcp"
pin = "first_use"
"#
    ))
    .unwrap();
    let gw = Gateway::start_with_policy(
        config,
        Arc::new(EchoExecutor::default()),
        tempfile::tempdir().unwrap(),
        Some(common::repository_policy(|_| {})),
    )
    .await;
    let agent = gw.key("acme", "agent");

    // A REST run: the record every other door's records are compared with.
    post(
        &gw,
        &agent,
        "/v1/run",
        "core-run",
        &json!({"cmd": ["true"]}),
    )
    .await;
    let run = record(&gw, "core-run", "run").await;

    // The LLM door: the model's tool call carries a CVV. The one DLP summary marks it as
    // sensitive authentication data, so `pci.sad_present` denies the call and the answer is
    // withheld, in OpenAI's error shape.
    let answer = client()
        .post(format!("{}/v1/openai/chat/completions", gw.url))
        .bearer_auth(&agent)
        .header("x-request-id", "core-llm")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "charge order 7"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let body: Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("pci.sad_present"), "{message}");
    assert!(!message.contains("737"), "{message}");
    let llm = record(&gw, "core-llm", "llm.chat").await;
    assert_eq!(llm["outcome"], "denied", "{llm}");
    assert!(
        llm["decision"]["rule_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("pci.sad_present")),
        "{llm}"
    );

    // The MCP guard: a tool call with a CVV in its arguments, decided by the same core (once
    // the upstream's tools are pinned, here on first use).
    let listed = client()
        .post(format!("{}/v1/mcp-guard/tools", gw.url))
        .bearer_auth(&agent)
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["result"]["tools"][0]["name"], "charge", "{listed}");
    let refused = client()
        .post(format!("{}/v1/mcp-guard/tools", gw.url))
        .bearer_auth(&agent)
        .header("x-request-id", "core-mcp")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "charge", "arguments": {"cvv": "737"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 200);
    let refused: Value = refused.json().await.unwrap();
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("pci.sad_present"), "{refused}");
    let tool = record(&gw, "core-mcp", "tool.call").await;
    assert_eq!(tool["outcome"], "denied", "{tool}");

    // The records are built by one conversion: the same principal, the same decision shape,
    // and no field a run's record lacks beyond what the action carries (content digests).
    for other in [&llm, &tool] {
        assert_eq!(other["principal"], run["principal"], "{other}");
        assert_eq!(keys(&other["decision"]), keys(&run["decision"]), "{other}");
        let extra: Vec<String> = keys(other)
            .into_iter()
            .filter(|k| !keys(&run).contains(k) && k != "redactions")
            .collect();
        assert!(extra.is_empty(), "{extra:?} in {other}");
    }

    // Provider protocol headers are tokens, never free text carried upstream.
    let rejected = client()
        .post(format!("{}/v1/anthropic/v1/messages", gw.url))
        .header("x-api-key", &agent)
        .header("anthropic-beta", "4111111111111111")
        .json(&json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 400);
    let text = rejected.text().await.unwrap();
    assert!(
        text.contains("anthropic-beta") && !text.contains("4111111111111111"),
        "{text}"
    );
    gw.stop().await;
}
