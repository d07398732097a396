//! The MCP guard in front of a real third-party MCP server (Python `mcp` MCPServer on
//! loopback), driven by the official `mcp` client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};

use common::{EchoExecutor, Gateway};
use ztee_server::ServerConfig;

/// Starts `upstream.py` on `port` (`changed`: the same server with one definition changed).
async fn start_upstream(
    python: &Path,
    dir: &Path,
    port: u16,
    calls: &Path,
    changed: bool,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(dir.join("upstream.py"))
        .arg(port.to_string())
        .arg(calls)
        .kill_on_drop(true);
    if changed {
        command.arg("changed");
    }
    let upstream = command.spawn().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return upstream;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the upstream MCP server did not start");
}

/// Runs `guard_client.py` with `args` as the holder of `key`; returns its JSON output.
async fn guard_client(
    python: &Path,
    dir: &Path,
    gw: &Gateway,
    key: &str,
    args: &[&str],
) -> serde_json::Value {
    let out = tokio::process::Command::new(python)
        .arg(dir.join("guard_client.py"))
        .args(args)
        .env("ZTEE_URL", &gw.url)
        .env("ZTEE_KEY", key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "guard_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The approval id a held tool list names.
fn approval_in(message: &str) -> String {
    let at = message.find("apr_").expect(message);
    message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_checked_before_and_results_after() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let python = common::venv::python(&dir.join("requirements.txt"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = tempfile::tempdir().unwrap();
    let calls = work.path().join("calls.txt");
    let mut upstream = start_upstream(&python, &dir, port, &calls, false).await;

    let config = ServerConfig::from_toml(&format!(
        "[[mcp.upstreams]]\nname = \"records\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n"
    ))
    .unwrap();
    let gw = Gateway::start(config, Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let approver = gw.key("default", "approver");

    // A new upstream's tool definitions wait for a person: the list is held, and no tool is
    // called before it is approved.
    let first = guard_client(&python, &dir, &gw, &agent, &["list"]).await;
    let held = first["held"].as_str().expect("the first list was not held");
    assert!(held.contains("not been approved yet"), "{held}");
    let id = approval_in(held);
    let early = guard_client(&python, &dir, &gw, &agent, &["call", "lookup_customer"]).await;
    assert!(
        early["call"]["text"]
            .as_str()
            .unwrap()
            .contains("mcp.tool_not_pinned"),
        "{early}"
    );
    // The approver sees the set by name and digest; the poisoned definition is not in it.
    let approval = gw.get_json(&approver, &format!("/v1/approvals/{id}")).await;
    assert_eq!(approval["action"], "tool.pin", "{approval}");
    assert_eq!(
        approval["request"]["tools"],
        serde_json::json!([
            "delete_file",
            "fetch_page",
            "lookup_customer",
            "post_message"
        ]),
        "{approval}"
    );
    let r = gw
        .post(
            &approver,
            &format!("/v1/approvals/{id}/approve"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let done = gw
        .get_json(&agent, &format!("/v1/approvals/{id}?wait=30"))
        .await;
    assert_eq!(done["status"], "executed", "{done}");

    let r = guard_client(&python, &dir, &gw, &agent, &["full"]).await;
    assert_eq!(
        r["tools"],
        serde_json::json!([
            "delete_file",
            "fetch_page",
            "lookup_customer",
            "post_message"
        ])
    );
    // The tool whose description hides instructions never reached the model, nor runs.
    let poisoned = &r["poisoned"];
    assert_eq!(poisoned["refused"], true, "{poisoned}");
    assert!(
        poisoned["text"]
            .as_str()
            .unwrap()
            .contains("mcp.tool_not_pinned"),
        "{poisoned}"
    );
    // The result passed, with the card number masked.
    let lookup = &r["lookup"];
    assert_eq!(lookup["error"], false, "{lookup}");
    let text = lookup["text"].as_str().unwrap();
    assert!(
        text.contains("Customer Ada") && !text.contains("4111 1111 1111 1111"),
        "{text}"
    );
    assert!(
        text.contains("1111, status active"),
        "last four kept: {text}"
    );
    // The injection hidden in an HTML comment never reaches the caller.
    let injection = &r["injection"];
    assert_eq!(injection["error"], true, "{injection}");
    let text = injection["text"].as_str().unwrap();
    assert!(
        text.contains("withheld") && text.contains("injection."),
        "{text}"
    );
    assert!(!text.contains("evil.example"), "{text}");
    // Rules over the session's trace: the same message to an outside channel goes out before
    // the agent read the poisoned page, and is refused after it (the result was withheld, but
    // the session read an injection and an untrusted source).
    assert_eq!(r["post_before"]["error"], false, "{}", r["post_before"]);
    let after = &r["post_after"];
    assert_eq!(after["refused"], true, "{after}");
    assert!(
        after["text"]
            .as_str()
            .unwrap()
            .contains("flow.injection_then_sink"),
        "{after}"
    );
    // A destructive tool and raw card data in arguments are refused before forwarding.
    for key in ["destructive", "pan_in_args"] {
        let refused = &r[key];
        assert_eq!(refused["refused"], true, "{key}: {refused}");
    }
    assert!(r["destructive"]["text"]
        .as_str()
        .unwrap()
        .contains("risk.destructive_tool"));
    assert!(r["pan_in_args"]["text"]
        .as_str()
        .unwrap()
        .contains("pci.raw_pan_in_tool_call"));
    let ran = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["lookup_customer", "post_message", "fetch_page"],
        "only allowed calls reached the upstream"
    );

    // Every decision is in the audit trail.
    let audit = gw
        .get(&gw.admin_key, "/v1/audit?type=tool.call&limit=100")
        .await
        .text()
        .await
        .unwrap();
    assert!(audit.contains("mcp/records/delete_file"), "{audit}");
    assert!(audit.contains("mcp/records/lookup_customer"), "{audit}");
    // Without a key: 401, nothing forwarded.
    let resp = common::client()
        .post(format!("{}/v1/mcp-guard/records", gw.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = common::client()
        .post(format!("{}/v1/mcp-guard/nope", gw.url))
        .bearer_auth(&agent)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The poisoned definition was recorded, with the rules it broke.
    let listed = gw
        .get(&gw.admin_key, "/v1/audit?type=tool.list&limit=100")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("add_numbers") && listed.contains("mcp.definition.sensitive_file"),
        "{listed}"
    );

    // A rug pull: the same server, one definition quietly changed. The new set is held, and
    // the upstream's tools are not called until a person approves it.
    upstream.kill().await.unwrap();
    let _ = upstream.wait().await;
    let mut upstream = start_upstream(&python, &dir, port, &calls, true).await;
    let changed = guard_client(&python, &dir, &gw, &agent, &["list"]).await;
    let held = changed["held"]
        .as_str()
        .expect("a changed list was not held");
    assert!(held.contains("changed since they were approved"), "{held}");
    let after = guard_client(&python, &dir, &gw, &agent, &["call", "lookup_customer"]).await;
    assert!(
        after["call"]["text"]
            .as_str()
            .unwrap()
            .contains("mcp.tools_changed"),
        "{after}"
    );
    let ran = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["lookup_customer", "post_message", "fetch_page"],
        "nothing more reached the upstream"
    );
    gw.stop().await;
    upstream.kill().await.unwrap();
}

/// What the recording upstream received: (method, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// The digits of the card numbers these tests put in requests and results.
const PAN_DIGITS: [&str; 4] = [
    "4111111111111111",
    "4916009824516534",
    "4916019649033060",
    "5500000000000004",
];

/// True when `body` holds one of [`PAN_DIGITS`] in any common form (spaced, dashed, plain).
fn holds_a_pan(body: &str) -> bool {
    let squeezed: String = body.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    PAN_DIGITS.iter().any(|d| squeezed.contains(d))
}

/// An MCP server stand-in that records every request and answers each JSON-RPC request with a
/// result holding a card number (a tool, a prompt and a resource all answer alike); `ping` is
/// answered in plain text.
async fn recording_upstream(
    State(received): State<Received>,
    method: Method,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    received
        .lock()
        .unwrap()
        .push((method.to_string(), text.clone()));
    let Ok(message) = serde_json::from_str::<serde_json::Value>(&text) else {
        return (axum::http::StatusCode::ACCEPTED, "").into_response();
    };
    if message["method"] == "tools/list" {
        return axum::Json(
            serde_json::json!({"jsonrpc": "2.0", "id": message["id"], "result": {
            "tools": [{"name": "lookup", "description": "Look a record up.",
                       "inputSchema": {"type": "object"}}]}}),
        )
        .into_response();
    }
    if message["method"] == "ping" {
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            "pong from card 5500 0000 0000 0004",
        )
            .into_response();
    }
    axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": message["id"], "result": {
        "content": [{"type": "text", "text": "on file: card 5500 0000 0000 0004"}],
        "messages": [{"role": "user", "content": {"type": "text", "text": "card 5500-0000-0000-0004"}}],
        "_meta": {"card 5500 0000 0000 0004": true},
    }}))
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_string_of_a_relayed_message_is_scanned_and_bad_bodies_are_refused() {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .fallback(recording_upstream)
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = ServerConfig::from_toml(&format!(
        "[[mcp.upstreams]]\nname = \"rec\"\nurl = \"http://{addr}/mcp\"\npin = \"first_use\"\n"
    ))
    .unwrap();
    let gw = Gateway::start(config, Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let url = format!("{}/v1/mcp-guard/rec", gw.url);
    let post = |content_type: &'static str, body: Vec<u8>| {
        common::client()
            .post(&url)
            .bearer_auth(&agent)
            .header("content-type", content_type)
            .header("accept", "application/json, text/event-stream")
            .body(body)
    };

    // Bodies that are not one JSON-RPC message (or a batch of them) are refused, not relayed.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"lookup","arguments":{{"q":"{}"}}}}}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    for (what, content_type, body, status) in [
        (
            "not JSON",
            "application/json",
            b"card 4111 1111 1111 1111".to_vec(),
            400,
        ),
        (
            "truncated JSON",
            "application/json",
            br#"{"jsonrpc":"2.0","id":1,"#.to_vec(),
            400,
        ),
        (
            "a bare string",
            "application/json",
            br#""card 4111 1111 1111 1111""#.to_vec(),
            400,
        ),
        (
            "a batch holding a number",
            "application/json",
            b"[1]".to_vec(),
            400,
        ),
        (
            "not declared JSON",
            "text/plain",
            br#"{"jsonrpc":"2.0","method":"ping","id":1}"#.to_vec(),
            415,
        ),
    ] {
        let resp = post(content_type, body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let text = resp.text().await.unwrap();
        assert!(
            !holds_a_pan(&text),
            "{what}: the refusal echoes the card: {text}"
        );
    }
    // Too large: a 413, or the connection closed while the rest was still being sent.
    match post("application/json", big.into_bytes()).send().await {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 413, "too large"),
        Err(e) => eprintln!("too large: the gateway closed the connection: {e}"),
    }
    let resp = common::client()
        .delete(&url)
        .bearer_auth(&agent)
        .body("card 4111 1111 1111 1111")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "a DELETE with a body");
    assert!(
        received.lock().unwrap().is_empty(),
        "a refused body reached the upstream: {:?}",
        received.lock().unwrap()
    );

    // Trusted on first use (`pin = "first_use"`): the first list pins the upstream's tools.
    let listed = post(
        "application/json",
        br#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#.to_vec(),
    )
    .send()
    .await
    .unwrap();
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(listed["result"]["tools"][0]["name"], "lookup", "{listed}");
    let pinned = gw
        .get(&gw.admin_key, "/v1/audit?type=tool.pin&limit=10")
        .await
        .text()
        .await
        .unwrap();
    assert!(pinned.contains("mcp.tools_first_use"), "{pinned}");
    received.lock().unwrap().clear();

    // Card numbers outside a tool's arguments are masked before the message is relayed:
    // `_meta` of a tools/call, a prompt's arguments, a key, a notification.
    let messages = [
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "lookup", "arguments": {"q": "Ada"},
            "_meta": {"progressToken": "card 4916 0098 2451 6534",
                      "card 4916-0196-4903-3060": "key"}}}),
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {
            "name": "refund", "arguments": {"card": "4111111111111111"}}}),
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {
            "level": "info", "data": {"text": "card 4111 1111 1111 1111"}}}),
    ];
    for message in &messages {
        let resp = post("application/json", serde_json::to_vec(message).unwrap())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{message}: {}", resp.status());
        let text = resp.text().await.unwrap();
        assert!(
            !holds_a_pan(&text),
            "{message}: the answer holds a card: {text}"
        );
    }
    // A card number in the keys of a tool's arguments is decided like one in the values.
    let keyed = serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "lookup", "arguments": {"filter": {"card 4111 1111 1111 1111": true}}}});
    let resp = post("application/json", serde_json::to_vec(&keyed).unwrap())
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("pci.raw_pan_in_tool_call"),
        "a card in an argument key is refused: {text}"
    );
    assert!(!holds_a_pan(&text), "{text}");

    // A plain-text answer from the upstream is masked too.
    let resp = post(
        "application/json",
        br#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#.to_vec(),
    )
    .send()
    .await
    .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.contains("pong") && !holds_a_pan(&text), "{text}");

    let seen = received.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        4,
        "three messages and the ping were relayed: {seen:?}"
    );
    for (_, body) in &seen {
        assert!(
            !holds_a_pan(body),
            "the upstream received a card number: {body}"
        );
    }
    assert!(
        seen[0].1.contains("6534") && seen[0].1.contains("progressToken"),
        "masked, last four kept: {}",
        seen[0].1
    );
    gw.stop().await;
}
