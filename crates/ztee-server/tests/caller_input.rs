//! Caller-controlled strings on their way into the audit trail, and unauthenticated floods.
//!
//! Whatever a caller puts in a URL path, a guest file path or an `X-Request-ID` must never reach
//! the audit trail (or the state database) with a card number in clear; and requests that fail
//! authentication must not be able to fill the audit disk one fsynced record at a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
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

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is loopback on Linux).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
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
    // The route template is recorded, not the path the caller sent.
    let failures: Vec<_> = audit_events(&gw)
        .into_iter()
        .filter(|e| e["type"] == "auth.failure")
        .collect();
    assert!(!failures.is_empty());
    assert!(
        failures
            .iter()
            .any(|e| e["resource"] == "/v1/sandboxes/{id}"),
        "{failures:?}"
    );
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

#[tokio::test]
async fn an_unauthenticated_flood_is_rate_limited_per_address_and_not_audited_per_request() {
    let mut config = ServerConfig::default();
    config.quotas.source_requests_per_second = 2.0;
    config.quotas.source_burst = 50;
    let gw = gateway(config).await;
    let attacker = client_from("127.0.0.2");
    let before = audit_events(&gw).len();
    let (mut refused, mut limited) = (0, 0);
    for _ in 0..200 {
        let r = attacker
            .get(format!("{}/v1/sandboxes/sbx_x", gw.url))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => refused += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        limited > 0,
        "no request was rate limited ({refused} refused)"
    );
    // Later requests from that address are still refused before authentication.
    let r = attacker
        .get(format!("{}/v1/sandboxes", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let added: Vec<_> = audit_events(&gw)
        .into_iter()
        .skip(before)
        .filter(|e| e["origin_ip"] == "127.0.0.2")
        .collect();
    assert!(
        added.len() <= 3,
        "{} audit records for {refused} failed logins: {added:?}",
        added.len()
    );
    // Another caller, from another address, is not affected.
    let r = client_from("127.0.0.1")
        .get(format!("{}/v1/sandboxes", gw.url))
        .bearer_auth(&gw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = gw.stop().await;
}

/// The `count=N` of an aggregated `auth.failure` event.
fn failure_count(event: &serde_json::Value) -> u64 {
    event["decision"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r.as_str()?.strip_prefix("count=")?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn failed_logins_are_recorded_per_address_and_reason_with_a_count() {
    let mut config = ServerConfig::default();
    config.quotas.auth_failure_window_s = 1;
    let gw = gateway(config).await;
    let attacker = client_from("127.0.0.3");
    for _ in 0..30 {
        let r = attacker
            .get(format!("{}/v1/sandboxes/{PAN}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    for _ in 0..5 {
        let r = attacker
            .post(format!("{}/v1/run", gw.url))
            .bearer_auth("ztee_000000000000_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
            .json(&json!({"cmd": ["true"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // The interval ends; its summary is written within half an interval.
    let mut failures = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        failures = audit_events(&gw)
            .into_iter()
            .filter(|e| e["type"] == "auth.failure" && e["origin_ip"] == "127.0.0.3")
            .collect();
        if failures.iter().map(failure_count).sum::<u64>() == 35 {
            break;
        }
    }
    assert_eq!(
        failures.iter().map(failure_count).sum::<u64>(),
        35,
        "{failures:?}"
    );
    // One event when each (address, reason) first failed, one summary each after the interval.
    assert!(failures.len() <= 4, "{failures:?}");
    let rules: std::collections::BTreeSet<_> = failures
        .iter()
        .map(|e| e["decision"]["rule_ids"][0].as_str().unwrap().to_owned())
        .collect();
    assert!(rules.contains("auth.missing_credentials"), "{rules:?}");
    assert!(rules.contains("auth.unknown_api_key"), "{rules:?}");
    for e in &failures {
        let resource = e["resource"].as_str().unwrap();
        assert!(
            resource == "/v1/sandboxes/{id}" || resource == "/v1/run",
            "{resource}"
        );
    }
    let dir = gw.stop().await;
    assert_not_on_disk(dir.path(), PAN);
}

#[tokio::test]
async fn card_numbers_in_sandbox_metadata_are_not_stored_in_clear() {
    for inbound in [
        ztee_server::InboundAction::Block,
        ztee_server::InboundAction::Redact,
    ] {
        let mut config = ServerConfig::default();
        config.dlp.inbound = inbound;
        let gw = gateway(config).await;
        let key = gw.key("acme", "agent");
        // A card number as a metadata key (keys were not scanned) and as a value.
        for metadata in [json!({ PAN: "x" }), json!({"note": format!("card {PAN}")})] {
            let r = gw
                .post(&key, "/v1/sandboxes", &json!({"metadata": metadata}))
                .await;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!(status == 201 || status == 403, "{status} {body}");
            assert!(!body.contains(PAN), "{inbound:?}: {body}");
        }
        let listed = gw.get(&key, "/v1/sandboxes").await.text().await.unwrap();
        assert!(!listed.contains(PAN), "{inbound:?}: {listed}");
        let dir = gw.stop().await;
        assert_not_on_disk(dir.path(), PAN);
    }
}

#[tokio::test]
async fn failures_still_being_counted_are_recorded_at_shutdown() {
    let gw = gateway(ServerConfig::default()).await;
    let attacker = client_from("127.0.0.4");
    for _ in 0..5 {
        let r = attacker
            .get(format!("{}/v1/audit", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let audit_dir = gw.state.audit_dir.clone();
    let _dir = gw.stop().await;
    let mut total = 0;
    ztee_audit::read_records(&audit_dir, &ztee_audit::Query::default(), |r| {
        if let ztee_audit::Payload::Event(e) = r.payload {
            let e = serde_json::to_value(&e).unwrap();
            if e["type"] == "auth.failure" && e["origin_ip"] == "127.0.0.4" {
                total += failure_count(&e);
            }
        }
    })
    .unwrap();
    assert_eq!(total, 5);
}
