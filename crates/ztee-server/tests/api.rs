//! The gateway over real HTTP: authentication, tenancy, quotas, error bodies, the DLP and policy
//! stages and the audit trail. The VM engine is the echo test double from `common` (these tests
//! are about the gateway); `vm_e2e.rs` boots real VMs.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{client, error_body, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

const PAN: &str = "4111111111111111";

async fn gateway() -> (Gateway, Arc<EchoExecutor>) {
    let exec = Arc::new(EchoExecutor::default());
    let gw = Gateway::start(ServerConfig::default(), exec.clone()).await;
    (gw, exec)
}

#[tokio::test]
async fn every_error_is_json_with_the_request_id_and_never_a_500() {
    let (gw, exec) = gateway().await;
    let c = client();
    let key = gw.key("acme", "agent");

    // Missing auth.
    let r = c
        .get(format!("{}/v1/sandboxes", gw.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("www-authenticate").is_some());
    error_body(r, 401, "unauthenticated").await;
    // Wrong scheme, garbage key, garbage JWT.
    for auth in [
        "Basic Zm9vOmJhcg==",
        "Bearer ztee_nothex_x",
        "Bearer not.a.jwt",
    ] {
        let r = c
            .get(format!("{}/v1/sandboxes", gw.url))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        error_body(r, 401, "unauthenticated").await;
    }
    // Caller-supplied request ids are echoed back.
    let r = c
        .get(format!("{}/v1/sandboxes", gw.url))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let body = error_body(r, 401, "unauthenticated").await;
    assert_eq!(body["error"]["request_id"], "trace-42");

    let post = |path: &str| c.post(format!("{}{path}", gw.url)).bearer_auth(&key);
    // Malformed JSON.
    let r = post("/v1/run")
        .header("content-type", "application/json")
        .body("{\"cmd\": [")
        .send()
        .await
        .unwrap();
    error_body(r, 400, "malformed_json").await;
    // Unknown field: named in the message.
    let r = post("/v1/run")
        .json(&json!({"cmd": ["echo"], "tiemout_s": 3}))
        .send()
        .await
        .unwrap();
    let body = error_body(r, 422, "invalid_body").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tiemout_s"),
        "{body}"
    );
    // Wrong type.
    let r = post("/v1/sandboxes")
        .json(&json!({"memory_mib": "lots"}))
        .send()
        .await
        .unwrap();
    error_body(r, 422, "invalid_body").await;
    // Not JSON at all.
    let r = post("/v1/run").body("cmd=echo").send().await.unwrap();
    error_body(r, 415, "unsupported_media_type").await;
    // Oversized body (default limit 1 MiB).
    let big = json!({"cmd": ["echo", "x".repeat(2 * 1024 * 1024)]});
    let r = post("/v1/run").json(&big).send().await.unwrap();
    error_body(r, 413, "payload_too_large").await;
    // Out-of-range values name the field and the range.
    let r = post("/v1/sandboxes")
        .json(&json!({"memory_mib": 999999}))
        .send()
        .await
        .unwrap();
    let body = error_body(r, 400, "bad_request").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory_mib"),
        "{body}"
    );
    let r = post("/v1/run")
        .json(&json!({"cmd": []}))
        .send()
        .await
        .unwrap();
    error_body(r, 400, "bad_request").await;
    let r = post("/v1/run")
        .json(&json!({"language": "cobol", "code": "x"}))
        .send()
        .await
        .unwrap();
    error_body(r, 400, "bad_request").await;
    let r = post("/v1/run")
        .json(&json!({"cmd": ["env"], "env": {"1BAD": "x"}}))
        .send()
        .await
        .unwrap();
    error_body(r, 400, "bad_request").await;
    // Unknown route and wrong method.
    let r = c
        .get(format!("{}/v2/nothing", gw.url))
        .send()
        .await
        .unwrap();
    error_body(r, 404, "not_found").await;
    let r = c
        .patch(format!("{}/v1/run", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    error_body(r, 405, "method_not_allowed").await;
    // Nothing of the above reached the VM engine.
    assert!(exec.executed.lock().unwrap().is_empty());
    assert!(exec.created.lock().unwrap().is_empty());
    let _ = gw.stop().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_sandboxes_and_roles_limit_actions() {
    let (gw, _exec) = gateway().await;
    let acme = gw.key("acme", "agent");
    let acme2 = gw.key("acme", "agent");
    let acme_dev = gw.key("acme", "developer");
    let globex = gw.key("globex", "agent");
    let auditor = gw.key("acme", "auditor");

    let r = gw
        .post(
            &acme,
            "/v1/sandboxes",
            &json!({"metadata": {"purpose": "test"}, "memory_mib": 64}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let sbx: serde_json::Value = r.json().await.unwrap();
    let id = sbx["id"].as_str().unwrap().to_owned();
    assert_eq!(sbx["tenant"], "acme");
    assert_eq!(sbx["metadata"]["purpose"], "test");

    // Another tenant, and another agent of the same tenant: 404, as if it did not exist.
    for key in [&globex, &acme2] {
        let r = gw.get(key, &format!("/v1/sandboxes/{id}")).await;
        error_body(r, 404, "not_found").await;
        let r = gw.exec(key, &id, &["echo", "hi"]).await;
        error_body(r, 404, "not_found").await;
        let r = gw.delete(key, &format!("/v1/sandboxes/{id}")).await;
        error_body(r, 404, "not_found").await;
        let list: serde_json::Value = gw.get_json(key, "/v1/sandboxes").await;
        assert_eq!(list["sandboxes"].as_array().unwrap().len(), 0);
    }
    // A developer (sandbox:admin) of the tenant sees it.
    let r = gw.get(&acme_dev, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status(), 200);
    // An auditor may not run code.
    let r = gw
        .post(&auditor, "/v1/run", &json!({"cmd": ["echo"]}))
        .await;
    let body = error_body(r, 403, "forbidden").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sandbox:run"));
    // ... and an agent may not read the audit trail.
    let r = gw.get(&acme, "/v1/audit").await;
    error_body(r, 403, "forbidden").await;

    // The owner runs a command; output is returned.
    let r: serde_json::Value = gw.exec_json(&acme, &id, &["echo", "hello"]).await;
    assert_eq!(r["stdout"], "hello");
    assert_eq!(r["exit_code"], 0);
    // Delete, then it is gone.
    let r = gw.delete(&acme, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status(), 204);
    let r = gw.get(&acme, &format!("/v1/sandboxes/{id}")).await;
    error_body(r, 404, "not_found").await;
    let _ = gw.stop().await;
}

#[tokio::test]
async fn revoked_keys_stop_working_immediately() {
    let (gw, _exec) = gateway().await;
    let new = ztee_server::apikey::create(&gw.state.store, "acme", "agent", "").unwrap();
    let r = gw.get(&new.key, "/v1/sandboxes").await;
    assert_eq!(r.status(), 200);
    ztee_server::apikey::revoke(&gw.state.store, &new.record.id).unwrap();
    let r = gw.get(&new.key, "/v1/sandboxes").await;
    error_body(r, 401, "unauthenticated").await;
    let _ = gw.stop().await;
}

#[tokio::test]
async fn tenant_quotas_and_rate_limits_answer_429_with_retry_after() {
    let mut config = ServerConfig::default();
    config.quotas.max_sandboxes_per_tenant = 2;
    config.quotas.max_memory_mib_per_tenant = 200;
    config.quotas.requests_per_second = 0.2;
    config.quotas.burst = 6;
    let exec = Arc::new(EchoExecutor::default());
    let gw = Gateway::start(config, exec.clone()).await;
    let c = client();
    let acme = gw.key("acme", "agent");
    let globex = gw.key("globex", "agent");
    let create = |key: &str, mem: u32| {
        c.post(format!("{}/v1/sandboxes", gw.url))
            .bearer_auth(key.to_owned())
            .json(&json!({"memory_mib": mem}))
            .send()
    };
    assert_eq!(create(&acme, 64).await.unwrap().status(), 201);
    // Memory: 64 + 150 > 200.
    let r = create(&acme, 150).await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    let body = error_body(r, 429, "quota_exceeded").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("MiB"),
        "{body}"
    );
    assert_eq!(create(&acme, 64).await.unwrap().status(), 201);
    // Count: a third sandbox.
    error_body(create(&acme, 64).await.unwrap(), 429, "quota_exceeded").await;
    // Another tenant has its own quota.
    assert_eq!(create(&globex, 64).await.unwrap().status(), 201);
    // acme has now made 4 requests of its burst of 6; the 7th is rate limited.
    let _ = gw.get(&acme, "/v1/sandboxes").await;
    let _ = gw.get(&acme, "/v1/sandboxes").await;
    let r = gw.get(&acme, "/v1/sandboxes").await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    error_body(r, 429, "rate_limited").await;
    // globex is not affected by acme's rate.
    let r = gw.get(&globex, "/v1/sandboxes").await;
    assert_eq!(r.status(), 200);
    let _ = gw.stop().await;
}

#[tokio::test]
async fn card_data_in_input_is_blocked_before_any_vm_and_output_is_masked() {
    let (gw, exec) = gateway().await;
    let key = gw.key("acme", "agent");
    // Inbound: PAN in code -> policy denies (default inbound action: block); no VM is created.
    let r = gw
        .post(
            &key,
            "/v1/run",
            &json!({"language": "python", "code": format!("print('{PAN}')")}),
        )
        .await;
    let body = error_body(r, 403, "policy_denied").await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("CREDIT_CARD"), "{msg}");
    assert!(!msg.contains(PAN), "the error never echoes the PAN: {msg}");
    for field in [
        json!({"cmd": ["echo", PAN]}),
        json!({"cmd": ["echo"], "env": {"C": PAN}}),
        json!({"cmd": ["cat"], "stdin": PAN}),
    ] {
        let r = gw.post(&key, "/v1/run", &field).await;
        error_body(r, 403, "policy_denied").await;
    }
    assert!(
        exec.created.lock().unwrap().is_empty(),
        "no VM for denied requests"
    );

    // Outbound: the "program" prints a PAN it computed (here: from two halves).
    let r: serde_json::Value = gw
        .post_json(
            &key,
            "/v1/run",
            &json!({"cmd": ["x", "41111111"], "stdin": "11111111", "env": {"ERR": "warn"}}),
        )
        .await;
    // The echo double prints args then stdin: the PAN assembles only in the output.
    let stdout = r["stdout"].as_str().unwrap();
    let stderr = r["stderr"].as_str().unwrap();
    assert_eq!(stderr, "stderr: warn");
    assert!(!stdout.contains(PAN), "{stdout}");
    assert!(stdout.ends_with("1111"), "last four stay: {stdout}");
    assert_eq!(r["redactions"]["CREDIT_CARD"], 1, "{r}");
    assert_eq!(*exec.destroyed.lock().unwrap(), 1, "one-shot VM destroyed");
    let _ = gw.stop().await;
}

#[tokio::test]
async fn redact_mode_masks_input_before_the_vm_sees_it() {
    let mut config = ServerConfig::default();
    config.dlp.inbound = ztee_server::InboundAction::Redact;
    let exec = Arc::new(EchoExecutor::default());
    let gw = Gateway::start(config, exec.clone()).await;
    let key = gw.key("acme", "agent");
    let r: serde_json::Value = gw
        .post_json(
            &key,
            "/v1/run",
            &json!({"cmd": ["echo", format!("card {PAN}")]}),
        )
        .await;
    let seen = exec.executed.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].argv[1].contains(PAN),
        "the VM got {:?}",
        seen[0].argv
    );
    assert!(seen[0].argv[1].starts_with("card ") && seen[0].argv[1].ends_with("1111"));
    let stdout = r["stdout"].as_str().unwrap();
    assert!(!stdout.contains(PAN), "{stdout}");
    assert!(stdout.contains("1111"), "{stdout}");
    assert!(r["redactions"]["CREDIT_CARD"].as_u64().unwrap() >= 1, "{r}");
    let _ = gw.stop().await;
}

#[tokio::test]
async fn streaming_output_is_masked_across_chunks_and_ends_with_exit() {
    let (gw, _exec) = gateway().await;
    let key = gw.key("acme", "agent");
    let text = client()
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(&key)
        .header("accept", "application/x-ndjson")
        .header("x-request-id", "req-stream")
        .json(&json!({"cmd": ["x", "pan=4111", "1111"], "stdin": " 1111 1111 end"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{text}");
    let out: String = lines
        .iter()
        .filter(|l| l["type"] == "stdout")
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert!(!out.contains("4111 1111 1111 1111"), "{out}");
    assert!(out.ends_with("1111 end"), "{out}");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "exit", "{text}");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(last["redactions"]["CREDIT_CARD"], 1);
    // The audit event counts what was masked (evidence for PCI DSS 3.4.1), never the value.
    let auditor = gw.key("acme", "auditor");
    let events: serde_json::Value = gw
        .get_json(&auditor, "/v1/audit?request_id=req-stream")
        .await;
    let event = &events["events"][0]["event"];
    assert_eq!(event["redactions"]["CREDIT_CARD"], 1, "{events}");
    assert!(!events.to_string().contains("4111111111111111"));
    let _ = gw.stop().await;
}

#[tokio::test]
async fn files_are_scanned_both_ways() {
    let (gw, _exec) = gateway().await;
    let c = client();
    let key = gw.key("acme", "agent");
    let sbx: serde_json::Value = gw.post_json(&key, "/v1/sandboxes", &json!({})).await;
    let id = sbx["id"].as_str().unwrap();
    let files = format!("{}/v1/sandboxes/{id}/files", gw.url);
    let r = c
        .put(format!("{files}?path=/tmp/a.txt"))
        .bearer_auth(&key)
        .body("plain text")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = c
        .get(format!("{files}?path=/tmp/a.txt"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "plain text");
    // Card data going in is blocked by default.
    let r = c
        .put(format!("{files}?path=/tmp/b.txt"))
        .bearer_auth(&key)
        .body(format!("card {PAN}"))
        .send()
        .await
        .unwrap();
    error_body(r, 403, "policy_denied").await;
    // Bad paths.
    let r = c
        .put(format!("{files}?path=relative.txt"))
        .bearer_auth(&key)
        .body("x")
        .send()
        .await
        .unwrap();
    error_body(r, 400, "bad_request").await;
    let r = c.get(&files).bearer_auth(&key).send().await.unwrap();
    error_body(r, 400, "bad_request").await;
    let r = c
        .get(format!("{files}?path=/nope"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    error_body(r, 404, "not_found").await;
    // Card data a program wrote comes out masked: the double's sandbox holds files in memory,
    // so put one there behind the gateway's back, as a program in the VM would.
    let live = gw.state.sandboxes.get(id).unwrap();
    live.handle
        .write_file(
            "/tmp/out.csv",
            bytes::Bytes::from(format!("id,pan\n1,{PAN}\n")),
            0o644,
        )
        .await
        .unwrap();
    let got = c
        .get(format!("{files}?path=/tmp/out.csv"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["x-ztee-redactions"], "CREDIT_CARD=1");
    let text = got.text().await.unwrap();
    assert!(!text.contains(PAN) && text.contains("1111"), "{text}");
    let _ = gw.stop().await;
}

#[tokio::test]
async fn the_audit_trail_records_decisions_verifies_and_audits_its_readers() {
    let (gw, _exec) = gateway().await;
    let c = client();
    let agent = gw.key("acme", "agent");
    let auditor = gw.key("acme", "auditor");
    let other_auditor = gw.key("globex", "auditor");
    let r = c
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(&agent)
        .header("x-request-id", "req-ok")
        .json(&json!({"cmd": ["echo", "fine"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(&agent)
        .header("x-request-id", "req-denied")
        .json(&json!({"cmd": ["echo", PAN]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let _ = gw
        .get(
            "ztee_000000000000_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "/v1/sandboxes",
        )
        .await;

    let events: serde_json::Value = gw
        .get_json(&auditor, "/v1/audit?request_id=req-denied")
        .await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0]["event"];
    assert!(events[0]["hash"].is_string() && events[0]["seq"].is_u64());
    assert_eq!(e["type"], "run");
    assert_eq!(e["outcome"], "denied");
    assert_eq!(e["principal"]["tenant"], "acme");
    assert_eq!(e["origin_ip"], "127.0.0.1");
    assert_eq!(e["decision"]["decision"], "deny");
    assert!(e["code_sha256"].as_str().unwrap().starts_with("sha256:"));
    let ok: serde_json::Value = gw.get_json(&auditor, "/v1/audit?request_id=req-ok").await;
    assert_eq!(ok["events"][0]["event"]["outcome"], "success");
    assert!(ok["events"][0]["event"]["output_sha256"].is_string());
    // Another tenant's auditor sees none of it.
    let theirs: serde_json::Value = gw
        .get_json(&other_auditor, "/v1/audit?request_id=req-denied")
        .await;
    assert_eq!(theirs["events"].as_array().unwrap().len(), 0);
    // Bad filters are 400s.
    let r = gw.get(&auditor, "/v1/audit?since=yesterday").await;
    error_body(r, 400, "bad_request").await;
    let r = gw.get(&auditor, "/v1/audit?tenant=globex").await;
    error_body(r, 403, "forbidden").await;

    let audit_dir = gw.state.audit_dir.clone();
    let data_dir = gw.stop().await;
    let data_dir = data_dir.path();
    // The raw log never holds the PAN, and the chain verifies.
    for entry in std::fs::read_dir(&audit_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        assert!(!text.contains(PAN));
    }
    let key = ztee_audit::PublicKey::from_data_dir(data_dir).unwrap();
    // The writer thread writes its final checkpoint after the last handle is dropped.
    let mut report = ztee_audit::verify(&audit_dir, &key).unwrap();
    for _ in 0..200 {
        if report.checkpoints >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        report = ztee_audit::verify(&audit_dir, &key).unwrap();
    }
    assert!(report.failure.is_none(), "{report:?}");
    assert!(
        report.checkpoints >= 1,
        "the log closes with a signed checkpoint: {report:?}"
    );
    // Reads were audited, and so was the failed login.
    let mut types = Vec::new();
    ztee_audit::read_records(&audit_dir, &ztee_audit::Query::default(), |r| {
        if let ztee_audit::Payload::Event(e) = r.payload {
            types.push(e.event_type.as_str().to_owned());
        }
    })
    .unwrap();
    assert!(
        types.iter().filter(|t| *t == "audit.access").count() >= 3,
        "{types:?}"
    );
    assert!(types.contains(&"auth.failure".to_owned()), "{types:?}");
}

#[tokio::test]
async fn health_readiness_and_openapi_need_no_auth_and_readiness_says_nothing_more() {
    let (gw, _exec) = gateway().await;
    let c = client();
    let r = c.get(format!("{}/healthz", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some());
    // Review #17: readiness is a status, no engine description and no host path.
    let r: serde_json::Value = c
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"status": "ready"}));
    let doc: serde_json::Value = c
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let _ = gw.stop().await;
}

/// Review #17: the metrics carry per-tenant counts; only a caller with `metrics:read` (role
/// `metrics`, for a scraper's API key, or `platform-admin`) reads them.
#[tokio::test]
async fn metrics_need_the_metrics_read_permission() {
    let (gw, _exec) = gateway().await;
    let c = client();
    let _ = c
        .get(format!("{}/v1/sandboxes", gw.url))
        .send()
        .await
        .unwrap();
    let r = c.get(format!("{}/metrics", gw.url)).send().await.unwrap();
    error_body(r, 401, "unauthenticated").await;
    for role in ["agent", "admin"] {
        let key = gw.key("acme", role);
        let r = gw.get(&key, "/metrics").await;
        let body = error_body(r, 403, "forbidden").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("metrics:read"),
            "{body}"
        );
    }
    for role in ["metrics", "platform-admin"] {
        let key = gw.key("default", role);
        let r = gw.get(&key, "/metrics").await;
        assert_eq!(r.status(), 200, "{role}");
        let metrics = r.text().await.unwrap();
        assert!(metrics.contains("ztee_http_requests_total"), "{metrics}");
        assert!(
            metrics.contains("reason=\"missing_credentials\""),
            "{metrics}"
        );
        assert!(metrics.contains("route=\"/v1/sandboxes\""), "{metrics}");
    }
    let _ = gw.stop().await;
}

/// PCI DSS 10.2.1.4: a refused permission is an invalid access attempt, recorded as an
/// `authz.denied` event naming the caller and the permission (never the request's content).
#[tokio::test]
async fn a_refused_permission_is_recorded_as_authz_denied() {
    let (gw, _exec) = gateway().await;
    let agent = gw.key("acme", "agent");
    error_body(gw.get(&agent, "/v1/audit").await, 403, "forbidden").await;
    error_body(gw.get(&agent, "/metrics").await, 403, "forbidden").await;
    let mut denied = Vec::new();
    for _ in 0..50 {
        let found = gw
            .get_json(&gw.admin_key, "/v1/audit?tenant=acme&type=authz.denied")
            .await;
        denied = found["events"].as_array().unwrap().clone();
        if denied.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resources: Vec<&str> = denied
        .iter()
        .map(|e| e["event"]["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        ["permission/audit:read", "permission/metrics:read"],
        "{denied:?}"
    );
    for e in &denied {
        assert_eq!(e["event"]["outcome"], "denied");
        assert!(e["event"]["principal"]["subject"]
            .as_str()
            .unwrap()
            .starts_with("apikey:"));
    }
    let _ = gw.stop().await;
}

/// Review #12: role `admin` is its own tenant's admin; seeing other tenants takes
/// `platform:admin`, which only an API key with role `platform-admin` carries.
#[tokio::test]
async fn a_tenant_admin_does_not_reach_other_tenants_and_a_platform_admin_does() {
    let (gw, _exec) = gateway().await;
    let globex = gw.key("globex", "agent");
    let r = gw.post(&globex, "/v1/sandboxes", &json!({})).await;
    assert_eq!(r.status(), 201);
    let sbx: serde_json::Value = r.json().await.unwrap();
    let id = sbx["id"].as_str().unwrap().to_owned();

    let acme_admin = gw.key("acme", "admin");
    let list = gw.get_json(&acme_admin, "/v1/sandboxes").await;
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 0, "{list}");
    let r = gw.get(&acme_admin, &format!("/v1/sandboxes/{id}")).await;
    error_body(r, 404, "not_found").await;
    let r = gw.delete(&acme_admin, &format!("/v1/sandboxes/{id}")).await;
    error_body(r, 404, "not_found").await;
    let r = gw.get(&acme_admin, "/v1/audit?tenant=globex").await;
    let body = error_body(r, 403, "forbidden").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("platform:admin"),
        "{body}"
    );
    let r = gw.get(&acme_admin, "/v1/secrets").await;
    error_body(r, 403, "forbidden").await;
    // Its own tenant's audit it reads.
    let r = gw.get(&acme_admin, "/v1/audit").await;
    assert_eq!(r.status(), 200);

    let platform = gw.key("default", "platform-admin");
    let list = gw.get_json(&platform, "/v1/sandboxes").await;
    assert!(list.to_string().contains(&id), "{list}");
    let r = gw.get(&platform, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status(), 200);
    let r = gw.get(&platform, "/v1/audit?tenant=globex").await;
    assert_eq!(r.status(), 200);
    let _ = gw.stop().await;
}

/// Review #17: a sandbox view shows the VMM's jail (host uid, cgroup and chroot paths) and host
/// pid to platform admins only; tenants get the VM facts without host internals.
#[tokio::test]
async fn sandbox_views_show_host_internals_to_platform_admins_only() {
    let (gw, _exec) = gateway().await;
    let dev = gw.key("acme", "developer");
    let r = gw.post(&dev, "/v1/sandboxes", &json!({})).await;
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let admin = gw.key("acme", "admin");
    for (key, who) in [(&dev, "developer"), (&admin, "tenant admin")] {
        let shown = gw.get_json(key, &format!("/v1/sandboxes/{id}")).await;
        let listed = gw.get_json(key, "/v1/sandboxes").await;
        for view in [&created, &shown, &listed["sandboxes"][0]] {
            assert_eq!(view["vm"]["backend"], "echo", "{who}: {view}");
            assert!(view["vm"].get("jail").is_none(), "{who}: {view}");
            assert!(view["vm"].get("vmm_pid").is_none(), "{who}: {view}");
            assert!(!view.to_string().contains("/srv/jail"), "{who}: {view}");
        }
    }
    let platform = gw.key("default", "platform-admin");
    let shown = gw.get_json(&platform, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(shown["vm"]["jail"]["uid"], 64_000, "{shown}");
    assert!(shown["vm"]["vmm_pid"].is_number(), "{shown}");
    let _ = gw.stop().await;
}

#[tokio::test]
async fn a_failing_vm_engine_is_a_503_and_frees_the_quota() {
    let mut config = ServerConfig::default();
    config.quotas.max_sandboxes_per_tenant = 1;
    let exec = Arc::new(EchoExecutor::default());
    *exec.fail_create.lock().unwrap() = Some("qemu exited with status 1".into());
    let gw = Gateway::start(config, exec.clone()).await;
    let key = gw.key("acme", "agent");
    for _ in 0..2 {
        let r = gw.post(&key, "/v1/sandboxes", &json!({})).await;
        let body = error_body(r, 503, "unavailable").await;
        assert!(
            !body["error"]["message"].as_str().unwrap().contains("qemu"),
            "engine detail stays in the log"
        );
    }
    assert_eq!(gw.state.store.tenant_usage("acme").unwrap().sandboxes, 0);
    let _ = gw.stop().await;
}

#[tokio::test]
async fn the_presidio_compatible_dlp_api_is_mounted_behind_authentication() {
    let (gw, _exec) = gateway().await;
    let c = client();
    let body = json!({"text": format!("card {PAN}"), "language": "en"});
    let r = c
        .post(format!("{}/v1/dlp/analyze", gw.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    error_body(r, 401, "unauthenticated").await;
    let key = gw.key("acme", "agent");
    let r = gw.post(&key, "/v1/dlp/analyze", &body).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some());
    let findings: serde_json::Value = r.json().await.unwrap();
    assert_eq!(findings[0]["entity_type"], "CREDIT_CARD", "{findings}");
    assert!(!findings.to_string().contains(PAN));
    let _ = gw.stop().await;
}

#[tokio::test]
async fn sandboxes_are_destroyed_when_their_lifetime_ends() {
    let (gw, exec) = gateway().await;
    let key = gw.key("acme", "agent");
    let sbx: serde_json::Value = gw
        .post_json(&key, "/v1/sandboxes", &json!({"timeout_s": 1}))
        .await;
    let id = sbx["id"].as_str().unwrap();
    assert_eq!(gw.state.store.tenant_usage("acme").unwrap().sandboxes, 1);
    // Its one-second lifetime ends; the expiry timer may run late on a busy host.
    let mut r = gw.get(&key, &format!("/v1/sandboxes/{id}")).await;
    for _ in 0..100 {
        if r.status() == 404 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        r = gw.get(&key, &format!("/v1/sandboxes/{id}")).await;
    }
    error_body(r, 404, "not_found").await;
    assert_eq!(gw.state.store.tenant_usage("acme").unwrap().sandboxes, 0);
    assert_eq!(*exec.destroyed.lock().unwrap(), 1);
    let _ = gw.stop().await;
}

/// The code digest of a run, as its audit event records it.
async fn code_digest(gw: &Gateway, request_id: &str, cmd: &[&str]) -> String {
    let c = client();
    let r = c
        .post(format!("{}/v1/run", gw.url))
        .bearer_auth(gw.key("acme", "agent"))
        .header("x-request-id", request_id)
        .json(&json!({ "cmd": cmd }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events: serde_json::Value = gw
        .get_json(
            &gw.key("acme", "auditor"),
            &format!("/v1/audit?request_id={request_id}"),
        )
        .await;
    events["events"][0]["event"]["code_sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn content_digests_are_keyed_per_installation() {
    // A short input hashed without a key could be recovered by guessing; keyed digests agree
    // within one installation and differ across installations.
    let (one, _) = gateway().await;
    let (two, _) = gateway().await;
    let cmd = ["echo", "1234"];
    let first = code_digest(&one, "req-d1", &cmd).await;
    assert_eq!(first, code_digest(&one, "req-d2", &cmd).await);
    assert_ne!(first, code_digest(&two, "req-d3", &cmd).await);
    let _ = one.stop().await;
    let _ = two.stop().await;
}
