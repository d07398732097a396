//! An LLM exchange that cannot happen because no provider is configured for its API is still
//! one `llm.chat` record (outcome `failure`), like an exchange whose provider failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{client, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

#[tokio::test]
async fn an_exchange_with_no_provider_is_recorded_as_a_failure() {
    let gw = Gateway::start(ServerConfig::default(), Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("acme", "agent");
    let r = client()
        .post(format!("{}/v1/openai/chat/completions", gw.url))
        .bearer_auth(&agent)
        .header("x-request-id", "llm-none")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let found = gw
        .get_json(
            &gw.admin_key,
            "/v1/audit?tenant=acme&request_id=llm-none&type=llm.chat",
        )
        .await;
    let events = found["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{found}");
    assert_eq!(events[0]["event"]["outcome"], "failure");
}
