//! The LLM proxy end to end: the official `openai` and `anthropic` Python SDKs, changed only in
//! base URL and key, talk to `ztee serve`, which forwards to a real HTTP server on loopback that
//! records what it receives and answers in each provider's shape (streaming and not).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use common::{client, EchoExecutor, Gateway};
use ztee_server::ServerConfig;

const PAN: &str = "4111 1111 1111 1111";
/// A card number the "model" writes on its own; the proxy must mask it.
const MODEL_PAN: &str = "5500 0000 0000 0004";

/// What the upstream received: (path, body).
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A provider stand-in on loopback: real HTTP, records every request, answers like the provider.
/// The answer echoes the placeholder the request carried (as a model would) and writes a card
/// number of its own, split across stream chunks.
async fn upstream(State(received): State<Received>, uri: Uri, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    received.lock().unwrap().push((uri.path().to_owned(), text));
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let pieces = [
        "Refunded <CREDIT_",
        "CARD_1>. Replacement card 5500 00",
        "00 0000 0004 issued.",
    ];
    if uri.path().ends_with("/responses") {
        return responses_answer(stream, &pieces);
    }
    if uri.path().ends_with("/chat/completions") {
        if let Some(answer) = agent_turn(&request) {
            return axum::Json(answer).into_response();
        }
        if !stream {
            return axum::Json(serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": pieces.concat(),
                    "tool_calls": [{"id": "call_9", "type": "function", "function": {
                        "name": "issue_refund",
                        "arguments": "{\"card\": \"<CREDIT_CARD_1>\", \"new\": \"5500000000000004\"}"}}]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            }))
            .into_response();
        }
        let mut sse = String::new();
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": "test-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        sse.push_str(&chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ));
        for p in pieces {
            sse.push_str(&chunk(
                serde_json::json!({"content": p}),
                serde_json::Value::Null,
            ));
        }
        sse.push_str(&chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                "function": {"name": "issue_refund", "arguments": "{\"order\": "}}]}),
            serde_json::Value::Null,
        ));
        sse.push_str(&chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": "42}"}}]}),
            serde_json::Value::Null,
        ));
        sse.push_str(&chunk(serde_json::json!({}), "tool_calls".into()));
        sse.push_str("data: [DONE]\n\n");
        return ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response();
    }
    // Anthropic messages.
    if !stream {
        return axum::Json(serde_json::json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "test-model",
            "content": [{"type": "text", "text": pieces.concat()}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 1}
        }))
        .into_response();
    }
    let mut sse = String::new();
    let mut event = |name: &str, data: serde_json::Value| {
        sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "test-model", "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 0}}}),
    );
    event(
        "content_block_start",
        serde_json::json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    );
    event("ping", serde_json::json!({"type": "ping"}));
    for p in pieces {
        event(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": p}}),
        );
    }
    event(
        "content_block_stop",
        serde_json::json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        "message_delta",
        serde_json::json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 3}}),
    );
    event("message_stop", serde_json::json!({"type": "message_stop"}));
    ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
}

/// An answer of OpenAI's Responses API: a message and a function call whose arguments carry a
/// card number split across two deltas.
fn responses_answer(stream: bool, pieces: &[&str]) -> Response {
    let args = [
        "{\"card\": \"<CREDIT_CARD_1>\", \"new\": \"55000000",
        "00000004\"}",
    ];
    let message = |text: &str| {
        serde_json::json!({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let call = |arguments: &str| {
        serde_json::json!({"id": "fc_1", "type": "function_call", "call_id": "call_9",
            "name": "issue_refund", "arguments": arguments, "status": "completed"})
    };
    let response = |status: &str, output: serde_json::Value| {
        serde_json::json!({"id": "resp_1", "object": "response", "created_at": 1, "status": status,
            "model": "test-model", "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
            "tools": [], "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}})
    };
    let full_text = pieces.concat();
    let full_args = args.concat();
    let done = response(
        "completed",
        serde_json::json!([message(&full_text), call(&full_args)]),
    );
    if !stream {
        return axum::Json(done).into_response();
    }
    let mut sse = String::new();
    let mut seq = 0;
    let mut event = |data: serde_json::Value| {
        let mut data = data;
        data["sequence_number"] = seq.into();
        seq += 1;
        sse.push_str(&format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        ));
    };
    event(
        serde_json::json!({"type": "response.created", "response": response("in_progress", serde_json::json!([]))}),
    );
    event(
        serde_json::json!({"type": "response.in_progress", "response": response("in_progress", serde_json::json!([]))}),
    );
    let mut empty = message("");
    empty["content"] = serde_json::json!([]);
    empty["status"] = "in_progress".into();
    event(
        serde_json::json!({"type": "response.output_item.added", "output_index": 0, "item": empty}),
    );
    event(
        serde_json::json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    for p in pieces {
        event(
            serde_json::json!({"type": "response.output_text.delta", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "delta": p, "logprobs": []}),
        );
    }
    event(
        serde_json::json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "text": full_text, "logprobs": []}),
    );
    event(
        serde_json::json!({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0,
        "content_index": 0, "part": {"type": "output_text", "text": full_text, "annotations": []}}),
    );
    event(
        serde_json::json!({"type": "response.output_item.done", "output_index": 0, "item": message(&full_text)}),
    );
    event(
        serde_json::json!({"type": "response.output_item.added", "output_index": 1, "item": call("")}),
    );
    for a in args {
        event(
            serde_json::json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1",
            "output_index": 1, "delta": a}),
        );
    }
    event(
        serde_json::json!({"type": "response.function_call_arguments.done", "item_id": "fc_1",
        "output_index": 1, "arguments": full_args}),
    );
    event(
        serde_json::json!({"type": "response.output_item.done", "output_index": 1, "item": call(&full_args)}),
    );
    event(serde_json::json!({"type": "response.completed", "response": done}));
    ([(header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
}

/// A model acting as an agent when offered `send_email` (the `flow-*` scenarios): it looks the
/// customer up first, then e-mails what the lookup returned, as a model copies what it read.
fn agent_turn(request: &serde_json::Value) -> Option<serde_json::Value> {
    let tools = request["tools"].as_array()?;
    if !tools.iter().any(|t| t["function"]["name"] == "send_email") {
        return None;
    }
    let last_result = request["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .and_then(|m| m["content"].as_str());
    let (id, name, arguments) = match last_result {
        None => ("call_1", "lookup_customer", serde_json::json!({"q": "42"})),
        Some(found) => (
            "call_2",
            "send_email",
            serde_json::json!({"to": "jane@example.com", "body": format!("Update: {found}")}),
        ),
    };
    Some(serde_json::json!({
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": id, "type": "function", "function": {
                "name": name, "arguments": arguments.to_string()}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
}

async fn start_upstream() -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(upstream))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

/// The SDKs in a virtualenv under the cache directory, keyed by the requirement list.
fn python() -> PathBuf {
    common::venv::python(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm/requirements.txt"))
}

/// Runs one scenario of client.py; returns its JSON output.
async fn sdk(gw: &Gateway, key: &str, scenario: &str, provider: Option<&str>) -> serde_json::Value {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm/client.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script)
        .arg(scenario)
        .env("ZTEE_URL", &gw.url)
        .env("ZTEE_KEY", key)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL");
    if let Some(p) = provider {
        cmd.env("ZTEE_PROVIDER", p);
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "client.py {scenario} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client.py {scenario} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn config(upstream: &str) -> ServerConfig {
    ServerConfig::from_toml(&format!(
        r#"
[llm]
tenant_tiers = {{ pay = "pci" }}

[[llm.providers]]
name = "openai"
api = "openai"
base_url = "{upstream}/ext/v1"
external = true

[[llm.providers]]
name = "local"
api = "openai"
base_url = "{upstream}/local/v1"
external = false

[[llm.providers]]
name = "anthropic"
api = "anthropic"
base_url = "{upstream}/anthropic"
external = true
"#
    ))
    .unwrap()
}

/// Every trace, as the admin exports them; none holds a card number.
async fn traces(gw: &Gateway) -> Vec<serde_json::Value> {
    let resp = gw.get(&gw.admin_key, "/v1/traces").await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains("4111") && !body.contains(MODEL_PAN),
        "{body}"
    );
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn all_received(received: &Received) -> String {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(p, b)| format!("{p} {b}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_through_the_proxy() {
    let (up, received) = start_upstream().await;
    let gw = Gateway::start(config(&up), Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let operator = gw.key("default", "pci-operator");

    for api in ["openai", "anthropic"] {
        for stream in [false, true] {
            let scenario = if stream {
                format!("{api}-stream")
            } else {
                api.to_string()
            };
            // An agent sees placeholders; the model's own card number is masked.
            let out = sdk(&gw, &agent, &scenario, None).await;
            let text = out["text"]
                .as_str()
                .unwrap_or_else(|| panic!("{scenario}: {out}"));
            assert!(
                text.contains("Refunded <CREDIT_CARD_1>."),
                "{scenario}: {text}"
            );
            assert!(
                !text.contains(MODEL_PAN),
                "{scenario}: model PAN not masked: {text}"
            );
            assert!(text.contains("0004 issued."), "{scenario}: {text}");
            // The pci-operator role gets the number back.
            let out = sdk(&gw, &operator, &scenario, None).await;
            let text = out["text"].as_str().unwrap();
            assert!(
                text.contains(&format!("Refunded {PAN}.")),
                "{scenario}: {text}"
            );
            assert!(!text.contains(MODEL_PAN), "{scenario}: {text}");
        }
    }
    // Tool-call arguments in the answer are scanned too.
    let out = sdk(&gw, &agent, "openai", None).await;
    let args = out["tool_calls"][0]["arguments"].as_str().unwrap();
    assert!(
        args.contains("<CREDIT_CARD_1>") && !args.contains("5500000000000004"),
        "{args}"
    );

    let seen = all_received(&received);
    assert!(!seen.is_empty());
    assert!(
        !seen.contains("4111"),
        "the upstream received a PAN: {seen}"
    );
    assert!(seen.contains("<CREDIT_CARD_1>"), "{seen}");
    assert!(
        seen.contains("/ext/v1/chat/completions"),
        "standard tier goes to the first provider"
    );
    assert!(seen.contains("/anthropic/v1/messages"));

    // Traces: masked, in OpenAI message format, with decisions, linked by request id.
    let traces = traces(&gw).await;
    assert_eq!(traces.len(), 9, "{traces:#?}");
    let t = &traces[0];
    assert_eq!(t["kind"], "llm.chat");
    assert_eq!(t["provider"], "openai");
    assert_eq!(t["decisions"][0]["action"], "llm.chat");
    assert_eq!(t["decisions"][0]["verdict"], "allow");
    assert_eq!(t["messages"][0]["role"], "user");
    assert_eq!(
        t["messages"].as_array().unwrap().last().unwrap()["role"],
        "assistant"
    );
    assert!(traces.iter().any(|t| t["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["action"] == "tool.call" && d["target"] == "issue_refund")));
    let rid = t["request_id"].as_str().unwrap();
    let audit = gw
        .get(&gw.admin_key, "/v1/audit")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains(rid) && audit.contains("llm.chat"),
        "audit has the exchange"
    );
    // An agent cannot read traces.
    let resp = gw.get(&agent, "/v1/traces").await;
    assert_eq!(resp.status(), 403);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_through_the_proxy() {
    let (up, received) = start_upstream().await;
    let gw = Gateway::start(config(&up), Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let operator = gw.key("default", "pci-operator");

    for scenario in ["openai-responses", "openai-responses-stream"] {
        let out = sdk(&gw, &agent, scenario, None).await;
        let text = out["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{scenario}: {out}"));
        assert_eq!(
            text, "Refunded <CREDIT_CARD_1>. Replacement card 5500 0000 **** 0004 issued.",
            "{scenario}: {out}"
        );
        let args = out["tool_calls"][0]["arguments"].as_str().unwrap();
        assert_eq!(out["tool_calls"][0]["name"], "issue_refund", "{out}");
        assert!(
            args.contains("<CREDIT_CARD_1>") && !args.contains("5500000000000004"),
            "{scenario}: {args}"
        );
        if scenario.ends_with("stream") {
            // What the SDK accumulated from the deltas is what the final response says.
            assert_eq!(out["final_text"], text, "{out}");
            assert_eq!(out["streamed_arguments"], args, "{out}");
        }
        // The pci-operator role gets the caller's number back, never the model's own.
        let out = sdk(&gw, &operator, scenario, None).await;
        let text = out["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("Refunded {PAN}.")),
            "{scenario}: {text}"
        );
        assert!(!text.contains(MODEL_PAN), "{scenario}: {text}");
    }

    // The upstream saw placeholders in the user message, the tool call and the tool output.
    let seen = all_received(&received);
    assert!(seen.contains("/ext/v1/responses"), "{seen}");
    assert!(
        !seen.contains("4111"),
        "the upstream received a PAN: {seen}"
    );
    let first: serde_json::Value = serde_json::from_str(&received.lock().unwrap()[0].1).unwrap();
    assert_eq!(first["instructions"], "You issue refunds.");
    assert!(first["input"][0]["content"]
        .as_str()
        .unwrap()
        .contains("<CREDIT_CARD_1>"));
    assert!(first["input"][1]["arguments"]
        .as_str()
        .unwrap()
        .contains("<CREDIT_CARD_1>"));
    assert_eq!(
        first["input"][2]["output"],
        "Order 42 found, paid with <CREDIT_CARD_1>."
    );

    // Traced in OpenAI message format with the tool-call decision; nothing unmasked.
    let traces = traces(&gw).await;
    assert_eq!(traces.len(), 4, "{traces:#?}");
    for t in &traces {
        let roles: Vec<&str> = t["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "assistant"],
            "{t}"
        );
        assert!(
            t["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["action"] == "tool.call" && d["target"] == "issue_refund"),
            "{t}"
        );
    }

    // Malformed input is refused before anything leaves, in OpenAI's error shape.
    let before = received.lock().unwrap().len();
    for (body, expected) in [
        (r#"{"model": "m"}"#, "`input` must be a string or an array"),
        (r#"{"model": "m", "input": []}"#, "at least one item"),
        (
            r#"{"model": "m", "input": [{"role": "wizard", "content": "x"}]}"#,
            "input[0].role \"wizard\"",
        ),
        (
            r#"{"model": "m", "input": [{"type": "function_call", "arguments": 7}]}"#,
            "input[0].arguments must be a string",
        ),
        (
            r#"{"model": "m", "input": "x", "instructions": 1}"#,
            "`instructions` must be a string",
        ),
    ] {
        let r = gw
            .post(
                &agent,
                "/v1/openai/responses",
                &serde_json::from_str::<serde_json::Value>(body).unwrap(),
            )
            .await;
        assert_eq!(r.status(), 400, "{body}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
    }
    assert_eq!(received.lock().unwrap().len(), before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tool_call_withholds_the_answer_streamed_or_not() {
    // The default bundle plus an operator's rule: agents may not issue refunds.
    let data_dir = tempfile::tempdir().unwrap();
    let bundle_dir = data_dir.path().join("bundle");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    std::fs::create_dir_all(bundle_dir.join("ztee")).unwrap();
    std::fs::copy(source.join("data.json"), bundle_dir.join("data.json")).unwrap();
    std::fs::copy(
        source.join("ztee/main.rego"),
        bundle_dir.join("ztee/main.rego"),
    )
    .unwrap();
    std::fs::write(
        bundle_dir.join("ztee/refunds.rego"),
        r#"package ztee.main

import rego.v1

deny contains {"rule": "ops.no_agent_refunds", "message": "agents do not issue refunds"} if {
	input.action == "tool.call"
	input.request.tool.name == "issue_refund"
}
"#,
    )
    .unwrap();
    let bundle = ztee_policy::Bundle::from_dir(&bundle_dir).unwrap();
    let policy = ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::compile(&bundle).unwrap(),
        ztee_server::InboundAction::Block,
    );
    let (up, _received) = start_upstream().await;
    let gw = Gateway::start_with_policy(
        config(&up),
        Arc::new(EchoExecutor::default()),
        data_dir,
        Some(Arc::new(policy)),
    )
    .await;
    let agent = gw.key("default", "agent");
    // Not streamed: the answer is withheld (403 in the provider's shape).
    for scenario in ["openai", "openai-responses"] {
        let out = sdk(&gw, &agent, scenario, None).await;
        assert_eq!(out["status"], 403, "{scenario}: {out}");
        let message = out["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("policy denied a tool call")
                && message.contains("ops.no_agent_refunds"),
            "{scenario}: {message}"
        );
    }
    // Streamed: the stream ends with the provider's error event, not with `[DONE]` or
    // `response.completed`; the SDK raises instead of handing over the answer.
    for scenario in ["openai-stream", "openai-responses-stream"] {
        let out = sdk(&gw, &agent, scenario, None).await;
        let error = out["stream_error"]
            .as_str()
            .unwrap_or_else(|| panic!("{scenario}: the SDK completed the stream: {out}"));
        assert!(
            error.contains("policy denied a tool call") && error.contains("ops.no_agent_refunds"),
            "{scenario}: {error}"
        );
    }
    // Traced as denied, with the decision.
    let outcomes: Vec<serde_json::Value> = traces(&gw)
        .await
        .into_iter()
        .map(|t| t["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec![serde_json::json!("tool_call_denied"); 4]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_dlp_cannot_read_stays_off_external_models() {
    let (up, received) = start_upstream().await;
    let gw = Gateway::start(config(&up), Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let with_image = serde_json::json!({"model": "test-model", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What does this card say?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    // The first provider is external: refused for the image; the local one takes it.
    let r = gw
        .post(&agent, "/v1/openai/chat/completions", &with_image)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let paths: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(paths, ["/local/v1/chat/completions"]);
    // Pinned to the external provider: refused, naming the part and the rule; nothing sent.
    let r = client()
        .post(format!("{}/v1/openai/chat/completions", gw.url))
        .bearer_auth(&agent)
        .header("x-ztee-provider", "openai")
        .json(&with_image)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let err: serde_json::Value = r.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("image content at messages[0].content[1] cannot be scanned")
            && message.contains("llm.unscanned_content_external"),
        "{message}"
    );
    assert_eq!(received.lock().unwrap().len(), 1);
    // Text alone still goes to the first provider.
    let r = gw
        .post(
            &agent,
            "/v1/openai/chat/completions",
            &serde_json::json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(received.lock().unwrap()[1].0, "/ext/v1/chat/completions");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_injection_and_malformed_requests() {
    let (up, received) = start_upstream().await;
    let gw = Gateway::start(config(&up), Arc::new(EchoExecutor::default())).await;
    let pci_agent = gw.key("pay", "agent");
    let agent = gw.key("default", "agent");

    // The PCI tier goes to the local endpoint, never the external one.
    let out = sdk(&gw, &pci_agent, "openai", None).await;
    assert!(out["text"].as_str().is_some(), "{out}");
    assert!(all_received(&received).contains("/local/v1/chat/completions"));
    let before = received.lock().unwrap().len();
    let out = sdk(&gw, &pci_agent, "openai", Some("openai")).await;
    assert_eq!(out["status"], 403, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tier.provider_not_allowed"),
        "{out}"
    );
    let out = sdk(&gw, &pci_agent, "anthropic", None).await;
    assert_eq!(out["status"], 403, "{out}");
    assert_eq!(
        out["error"]["type"], "error",
        "Anthropic's error shape: {out}"
    );
    assert_eq!(
        received.lock().unwrap().len(),
        before,
        "nothing reached an external provider"
    );

    // An injection in a tool result is refused before anything leaves.
    for scenario in ["openai-tool-result", "anthropic-tool-result"] {
        let out = sdk(&gw, &agent, scenario, None).await;
        assert_eq!(out["status"], 403, "{scenario}: {out}");
        let text = out.to_string();
        assert!(text.contains("injection.detected"), "{scenario}: {text}");
    }
    assert_eq!(received.lock().unwrap().len(), before);

    // Malformed bodies: 4xx in the provider's shape.
    let client = common::client();
    let cases: [(&str, &str, &str); 5] = [
        ("/v1/openai/chat/completions", "not json", "not valid JSON"),
        ("/v1/openai/chat/completions", "[1]", "JSON object"),
        (
            "/v1/openai/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            "at least one",
        ),
        (
            "/v1/openai/chat/completions",
            r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
            "wizard",
        ),
        (
            "/v1/anthropic/v1/messages",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            "max_tokens",
        ),
    ];
    for (path, body, expect) in cases {
        let resp = client
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&agent)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path} {body}");
        let err: serde_json::Value = resp.json().await.unwrap();
        let message = if path.contains("anthropic") {
            assert_eq!(err["type"], "error");
            err["error"]["message"].as_str().unwrap().to_owned()
        } else {
            assert_eq!(err["error"]["type"], "invalid_request_error");
            err["error"]["message"].as_str().unwrap().to_owned()
        };
        assert!(message.contains(expect), "{body}: {message}");
    }
    // Those the wire format's check refused (the last three; the first two never became a
    // request) are in the trail, with the rule and the field that was wrong.
    let audit = gw
        .get(&gw.admin_key, "/v1/audit?type=llm.chat&limit=1000")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(audit.matches("llm.malformed_request").count(), 3, "{audit}");
    // No key: 401; auditor role: no llm:chat.
    let resp = client
        .post(format!("{}/v1/openai/chat/completions", gw.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let auditor = gw.key("default", "auditor");
    let resp = client
        .post(format!("{}/v1/openai/chat/completions", gw.url))
        .bearer_auth(&auditor)
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(received.lock().unwrap().len(), before);
    gw.stop().await;
}

/// True when `body` holds `digits` in any form people write a card number in: plain, spaced or
/// dashed.
fn holds_digits(body: &str, digits: &str) -> bool {
    let squeezed: String = body.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    squeezed.contains(digits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_tokenized_before_an_external_provider() {
    let (up, received) = start_upstream().await;
    let gw = Gateway::start(config(&up), Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let mut all_pans: Vec<String> = Vec::new();
    let mut expected_counts: Vec<usize> = Vec::new();
    for (scenario, path) in [
        ("openai-fields", "/ext/v1/chat/completions"),
        ("openai-responses-fields", "/ext/v1/responses"),
        ("anthropic-fields", "/anthropic/v1/messages"),
        ("anthropic-fields-system-string", "/anthropic/v1/messages"),
    ] {
        let before = received.lock().unwrap().len();
        let out = sdk(&gw, &agent, scenario, None).await;
        let text = out["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{scenario}: {out}"));
        assert!(
            text.contains("Refunded <CREDIT_CARD_"),
            "{scenario}: {text}"
        );
        let sent = received.lock().unwrap()[before..].to_vec();
        assert_eq!(sent.len(), 1, "{scenario}: {sent:?}");
        let (got_path, body) = &sent[0];
        assert_eq!(got_path, path, "{scenario}");
        let pans = out["pans"].as_object().unwrap();
        assert!(!pans.is_empty(), "{scenario}: {out}");
        let leaked: Vec<&String> = pans
            .iter()
            .filter(|(_, digits)| holds_digits(body, digits.as_str().unwrap()))
            .map(|(field, _)| field)
            .collect();
        assert!(
            leaked.is_empty(),
            "{scenario}: the external provider received raw card numbers in {leaked:?}: {body}"
        );
        assert!(body.contains("<CREDIT_CARD_"), "{scenario}: {body}");
        all_pans.extend(pans.values().map(|d| d.as_str().unwrap().to_owned()));
        expected_counts.push(pans.len());
    }
    // The DLP summary counts every field's number, as policy and the audit see it.
    let counts: Vec<usize> = traces(&gw)
        .await
        .iter()
        .map(|t| {
            t["redactions"]["inbound"]["CREDIT_CARD"]
                .as_u64()
                .unwrap_or(0) as usize
        })
        .collect();
    assert_eq!(counts, expected_counts);
    // Opaque values reach the provider byte for byte.
    let seen = all_received(&received);
    assert!(seen.contains("\"EqQBCkYIARgCIkBzaWduYXR1cmU=\""), "{seen}");
    assert!(seen.contains("\"gAAAAABoZm9vYmFyYmF6\""), "{seen}");

    // A card number inside an opaque value cannot be tokenized: the request is refused, in the
    // provider's error shape, naming the field but not the number.
    let before = received.lock().unwrap().len();
    for (scenario, field) in [
        ("openai-responses-opaque", "input[1].encrypted_content"),
        ("anthropic-opaque", "messages[1].content[0].signature"),
    ] {
        let out = sdk(&gw, &agent, scenario, None).await;
        assert_eq!(out["status"], 400, "{scenario}: {out}");
        let error = out["error"].to_string();
        assert!(
            error.contains(field) && error.contains("card number"),
            "{scenario}: {error}"
        );
        let digits = out["pans"]["opaque"].as_str().unwrap();
        assert!(!holds_digits(&error, digits), "{scenario}: {error}");
        all_pans.push(digits.to_owned());
    }
    assert_eq!(
        received.lock().unwrap().len(),
        before,
        "nothing reached a provider"
    );
    // Both refusals are in the audit trail, as denials with the gateway's rule, and no number.
    let audit = gw
        .get(&gw.admin_key, "/v1/audit?limit=1000")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        audit.matches("dlp.untokenizable_card_data").count(),
        2,
        "{audit}"
    );
    for digits in &all_pans {
        assert!(!holds_digits(&audit, digits), "the audit holds {digits}");
    }

    // No trace holds any of the numbers.
    let resp = gw.get(&gw.admin_key, "/v1/traces").await;
    let body = resp.text().await.unwrap();
    for digits in &all_pans {
        assert!(
            !holds_digits(&body, digits),
            "a trace holds {digits}: {body}"
        );
    }
    gw.stop().await;
}

/// Rules over the conversation: the model's second tool call is decided on what the first one
/// returned. The same two turns through the official `openai` client, once with a lookup result
/// that carries the customer's card number (which the model then puts in an e-mail: refused,
/// `flow.card_data_then_sink`) and once without (the e-mail goes ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_is_decided_on_the_conversation_before_it() {
    let (up, received) = start_upstream().await;
    let gw = Gateway::start(config(&up), Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");

    let clean = sdk(&gw, &agent, "flow-clean", None).await;
    assert_eq!(clean["first"], "lookup_customer", "{clean}");
    assert_eq!(clean["tool_calls"][0]["name"], "send_email", "{clean}");

    let poisoned = sdk(&gw, &agent, "flow-poisoned", None).await;
    assert_eq!(poisoned["first"], "lookup_customer", "{poisoned}");
    assert_eq!(poisoned["status"], 403, "{poisoned}");
    let message = poisoned["error"]["message"].as_str().unwrap();
    assert!(message.contains("flow.card_data_then_sink"), "{message}");
    // The model saw a placeholder, never the number.
    assert!(!all_received(&received).contains("4111"));
    // The refusal is recorded with the rule, and the policy input carried the trace.
    let denied: Vec<serde_json::Value> = traces(&gw)
        .await
        .into_iter()
        .filter(|t| t["outcome"] == "tool_call_denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(
        denied[0].to_string().contains("flow.card_data_then_sink"),
        "{}",
        denied[0]
    );
    gw.stop().await;
}
