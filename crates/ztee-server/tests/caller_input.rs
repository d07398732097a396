//! Caller-controlled strings on their way into the audit trail, and unauthenticated floods.
//!
//! Whatever a caller puts in a URL path, a guest file path or an `X-Request-ID` must never reach
//! the audit trail (or the state database) with a card number in clear; and requests that fail
//! authentication must not be able to fill the audit disk one fsynced record at a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{client, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

const PAN: &str = "4111111111111111";

async fn gateway(config: ServerConfig) -> Gateway {
    Gateway::start(config, Arc::new(EchoExecutor::default())).await
}

/// Every event of the audit trail as JSON text, read from the files (all tenants).
fn audit_events(gw: &Gateway) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    ztee_audit::read_records(&gw.state.audit_dir, &ztee_audit::Query::default(), |r| {
        if let ztee_audit::Payload::Event(e) = r.payload {
            events.push(serde_json::to_value(&e).unwrap());
        }
    })
    .unwrap();
    events
}

/// Asserts that no file under the data directory (audit segments, state database, its WAL)
/// holds `needle`.
fn assert_not_on_disk(dir: &std::path::Path, needle: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_not_on_disk(&path, needle);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!found, "{} holds {needle}", path.display());
    }
}

#[tokio::test]
async fn a_card_number_in_the_path_of_a_failed_login_is_not_in_the_audit_trail() {
    let gw = gateway(ServerConfig::default()).await;
    let r = client()
        .get(format!("{}/v1/sandboxes/{PAN}", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/v1/sandboxes/{PAN}/files?path=/x", gw.url))
        .bearer_auth("ztee_000000000000_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The failure is recorded (under the anonymous principal's tenant), without the digits.
    let read = gw
        .get(
            &gw.admin_key,
            "/v1/audit?tenant=unknown&type=auth.failure&limit=1000",
        )
        .await;
    assert_eq!(read.status(), 200);
    let text = read.text().await.unwrap();
    assert!(text.contains("auth.failure"), "{text}");
    assert!(!text.contains(PAN), "{text}");
    for event in audit_events(&gw) {
        assert!(!event.to_string().contains(PAN), "{event}");
    }
    let dir = gw.stop().await;
    assert_not_on_disk(dir.path(), PAN);
}

#[tokio::test]
async fn card_numbers_in_guest_file_paths_are_not_in_the_audit_trail() {
    let gw = gateway(ServerConfig::default()).await;
    let c = client();
    let key = gw.key("acme", "agent");
    let auditor = gw.key("acme", "auditor");
    let sbx = gw.post_json(&key, "/v1/sandboxes", &json!({})).await;
    let id = sbx["id"].as_str().unwrap();
    let files = format!("{}/v1/sandboxes/{id}/files", gw.url);
    // An upload to, and a download of, a file whose name is a card number: both denied (inbound
    // DLP scans the path), and both audited.
    let r = c
        .put(format!("{files}?path=/tmp/{PAN}.txt"))
        .bearer_auth(&key)
        .body("plain text")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{files}?path=/tmp/{PAN}.txt"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Denied upload (card data in the body) to such a path, and a download of a missing file.
    let r = c
        .put(format!("{files}?path=/tmp/card-{PAN}"))
        .bearer_auth(&key)
        .body(format!("card {PAN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{files}?path=/home/user/missing"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let read = gw.get(&auditor, "/v1/audit?limit=1000").await;
    assert_eq!(read.status(), 200);
    let body: serde_json::Value = read.json().await.unwrap();
    let events = body["events"].as_array().unwrap();
    let file_events: Vec<_> = events
        .iter()
        .map(|r| &r["event"])
        .filter(|e| e["type"] == "file.write" || e["type"] == "file.read")
        .collect();
    assert!(file_events.len() >= 3, "{events:?}");
    for e in &file_events {
        let resource = e["resource"].as_str().unwrap();
        assert!(!resource.contains(PAN), "{resource}");
        // Still useful: the sandbox and the masked path (last four digits kept).
        assert!(
            resource.starts_with(&format!("sandbox/{id}/")),
            "{resource}"
        );
    }
    assert!(!body.to_string().contains(PAN), "{body}");
    let dir = gw.stop().await;
    assert_not_on_disk(dir.path(), PAN);
}

#[tokio::test]
async fn a_request_id_that_looks_like_a_card_number_is_replaced() {
    let gw = gateway(ServerConfig::default()).await;
    let c = client();
    let key = gw.key("acme", "agent");
    for supplied in [
        PAN,
        "4111-1111-1111-1111",
        "1234567890123456",
        "ref:5500000000000004",
    ] {
        let r = c
            .post(format!("{}/v1/run", gw.url))
            .bearer_auth(&key)
            .header("x-request-id", supplied)
            .json(&json!({"cmd": ["echo", "fine"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(rid, supplied);
        let digits: String = supplied.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !rid.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .contains(&digits),
            "{rid}"
        );
        // Unauthenticated, too (an error body names the request id).
        let r = client()
            .get(format!("{}/v1/sandboxes", gw.url))
            .header("x-request-id", supplied)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body = r.text().await.unwrap();
        assert!(!body.contains(supplied), "{body}");
    }
    // A sane id is still echoed.
    let r = gw.get(&key, "/v1/sandboxes").await;
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/v1/sandboxes", gw.url))
        .bearer_auth(&key)
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    for event in audit_events(&gw) {
        let text = event.to_string();
        assert!(!text.contains(PAN), "{text}");
        assert!(!text.contains("5500000000000004"), "{text}");
        assert!(!text.contains("1234567890123456"), "{text}");
    }
    let dir = gw.stop().await;
    assert_not_on_disk(dir.path(), PAN);
}
