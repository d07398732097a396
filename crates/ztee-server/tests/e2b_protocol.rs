//! The E2B-compatible API's edges, over real HTTP on a gateway with the engine's test double:
//! malformed Connect envelopes, unknown RPCs, missing or wrong access tokens, another tenant's
//! sandbox, and the control plane's errors. Each is a Connect or JSON error with a precise
//! message, never a panic, and nothing is created or run by a refused call.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{client, EchoExecutor, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;

struct Sandbox {
    id: String,
    token: String,
}

async fn gateway() -> (Gateway, Arc<EchoExecutor>) {
    let executor = Arc::new(EchoExecutor::default());
    let gw = Gateway::start(ServerConfig::default(), executor.clone()).await;
    (gw, executor)
}

async fn create(gw: &Gateway, key: &str) -> Sandbox {
    let r = client()
        .post(format!("{}/v2/sandboxes", gw.url))
        .header("X-API-KEY", key)
        .json(&json!({"templateID": "base", "timeout": 60, "metadata": {"team": "risk"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["templateID"], "base");
    assert_eq!(body["envdVersion"], ztee_envd_version());
    Sandbox {
        id: body["sandboxID"].as_str().unwrap().to_owned(),
        token: body["envdAccessToken"].as_str().unwrap().to_owned(),
    }
}

fn ztee_envd_version() -> &'static str {
    "0.5.7"
}

/// One enveloped Connect message.
fn envelope(flags: u8, json: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// The end-of-stream error of a Connect server stream (HTTP 200, error in the last frame).
fn stream_error(body: &[u8]) -> serde_json::Value {
    let mut rest = body;
    let mut last = None;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        last = Some((rest[0], rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    let (flags, json) = last.expect("no frame");
    assert_eq!(flags, 2, "the last frame ends the stream");
    serde_json::from_slice::<serde_json::Value>(&json).unwrap()["error"].clone()
}

async fn rpc(
    gw: &Gateway,
    sandbox: &Sandbox,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gw.url))
        .header("E2b-Sandbox-Id", &sandbox.id)
        .header("X-Access-Token", &sandbox.token)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_connect_calls_get_connect_errors() {
    let (gw, executor) = gateway().await;
    let acme = gw.key("acme", "agent");
    let sbx = create(&gw, &acme).await;
    let start = json!({"process": {"cmd": "/bin/echo", "args": ["hi"]}}).to_string();

    // A well-formed Start streams start, data and end, then ends cleanly.
    let r = rpc(
        &gw,
        &sbx,
        "/process.Process/Start",
        "application/connect+json",
        envelope(0, start.as_bytes()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert!(body.windows(5).any(|w| w == b"start"), "{body:?}");
    assert!(body.windows(3).any(|w| w == b"end"), "{body:?}");
    let ran = executor.executed.lock().unwrap().len();

    // Envelopes that announce more than they carry, compressed ones, two messages, no envelope.
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            vec![0, 0, 0, 1, 0, b'{'],
            "invalid_argument",
            "announces 256 bytes",
        ),
        (envelope(1, start.as_bytes()), "unimplemented", "compressed"),
        (
            [envelope(0, start.as_bytes()), envelope(0, start.as_bytes())].concat(),
            "invalid_argument",
            "exactly one",
        ),
        (b"{}".to_vec(), "invalid_argument", "at least 5"),
        (
            envelope(0, b"{not json"),
            "invalid_argument",
            "not a valid message",
        ),
        (
            envelope(
                0,
                br#"{"process": {"cmd": "/bin/sh"}, "pty": {"size": {"cols": 0, "rows": 24}}}"#,
            ),
            "invalid_argument",
            "out of range",
        ),
    ];
    for (body, code, says) in cases {
        let r = rpc(
            &gw,
            &sbx,
            "/process.Process/Start",
            "application/connect+json",
            body,
        )
        .await;
        assert_eq!(r.status(), 200, "streams carry errors in their end frame");
        let error = stream_error(&r.bytes().await.unwrap());
        assert_eq!(error["code"], code, "{error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    // The binary codec is not spoken.
    let r = rpc(
        &gw,
        &sbx,
        "/process.Process/Start",
        "application/connect+proto",
        envelope(0, b""),
    )
    .await;
    assert_eq!(
        stream_error(&r.bytes().await.unwrap())["code"],
        "unimplemented"
    );
    assert_eq!(
        executor.executed.lock().unwrap().len(),
        ran,
        "a malformed call ran nothing"
    );

    // Unknown methods and services.
    let r = rpc(
        &gw,
        &sbx,
        "/process.Process/Frobnicate",
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 501);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unimplemented");
    let r = rpc(
        &gw,
        &sbx,
        "/filesystem.Filesystem/Format",
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 501);

    // Unary calls: a body that is not JSON, a selector naming neither pid nor tag, a signal
    // that is not one of the protocol's, stdin that is not base64.
    for (path, body, says) in [
        ("/process.Process/List", "nope", "not a valid message"),
        (
            "/process.Process/SendSignal",
            r#"{"process": {}, "signal": "SIGNAL_SIGKILL"}"#,
            "exactly one of pid or tag",
        ),
        (
            "/process.Process/SendSignal",
            r#"{"process": {"pid": 1}, "signal": "SIGNAL_SIGHUP"}"#,
            "SIGNAL_SIGKILL or SIGNAL_SIGTERM",
        ),
        (
            "/process.Process/SendInput",
            r#"{"process": {"pid": 1}, "input": {"stdin": "%%%"}}"#,
            "not base64",
        ),
        (
            "/filesystem.Filesystem/Stat",
            r#"{"path": ""}"#,
            "path is required",
        ),
        (
            "/filesystem.Filesystem/ListDir",
            r#"{"path": "/tmp", "depth": 99}"#,
            "depth = 99",
        ),
        (
            "/filesystem.Filesystem/Stat",
            r#"{"path": "/home/user/../../etc/shadow"}"#,
            "must not contain `..`",
        ),
    ] {
        let r = rpc(
            &gw,
            &sbx,
            path,
            "application/json",
            body.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(r.status(), 400, "{path} {body}");
        let error: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error["code"], "invalid_argument", "{error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    // A process that does not exist.
    let r = rpc(
        &gw,
        &sbx,
        "/process.Process/SendSignal",
        "application/json",
        br#"{"process": {"pid": 4242}, "signal": "SIGNAL_SIGKILL"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    gw.stop().await;
}

#[tokio::test]
async fn access_tokens_open_only_their_own_sandbox() {
    let (gw, executor) = gateway().await;
    let acme = gw.key("acme", "agent");
    let globex = gw.key("globex", "agent");
    let mine = create(&gw, &acme).await;
    let theirs = create(&gw, &globex).await;
    let list = b"{}".to_vec();

    // No token, a wrong one, another sandbox's, a malformed sandbox id.
    let call = |sandbox: &str, token: Option<&str>| {
        let mut request = client()
            .post(format!("{}/process.Process/List", gw.url))
            .header("E2b-Sandbox-Id", sandbox)
            .header("Content-Type", "application/json")
            .body(list.clone());
        if let Some(token) = token {
            request = request.header("X-Access-Token", token);
        }
        request.send()
    };
    let r = call(&mine.id, None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("missing X-Access-Token"));
    let r = call(&mine.id, Some("ztee_sbx_guessed")).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = call(&theirs.id, Some(&mine.token)).await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "a token opens only the sandbox it was issued for"
    );
    let r = call("sbx_../../etc", Some(&mine.token)).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = call(&mine.id, Some(&mine.token)).await.unwrap();
    assert_eq!(r.status(), 200);

    // A token lives no longer than its API key: revoked, the key's tokens stop working too.
    let revoked = ztee_server::apikey::create(&gw.state.store, "acme", "agent", "test").unwrap();
    let short_lived = create(&gw, &revoked.key).await;
    let r = call(&short_lived.id, Some(&short_lived.token))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ztee_server::apikey::revoke(&gw.state.store, &revoked.record.id).unwrap();
    let r = call(&short_lived.id, Some(&short_lived.token))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("no longer valid"));

    // The control plane: another tenant's key finds nothing.
    for (method, path) in [
        ("GET", format!("/sandboxes/{}", mine.id)),
        ("DELETE", format!("/sandboxes/{}", mine.id)),
        ("POST", format!("/v2/sandboxes/{}/connect", mine.id)),
        ("POST", format!("/sandboxes/{}/timeout", mine.id)),
    ] {
        let r = client()
            .request(method.parse().unwrap(), format!("{}{path}", gw.url))
            .header("X-API-KEY", &globex)
            .json(&json!({"timeout": 30}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 404, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("no sandbox"),
            "{body}"
        );
    }
    let listed: serde_json::Value = client()
        .get(format!("{}/v2/sandboxes", gw.url))
        .header("X-API-KEY", &globex)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandboxID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [theirs.id.as_str()]);
    assert_eq!(*executor.destroyed.lock().unwrap(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn the_control_plane_refuses_bad_requests_clearly() {
    let (gw, executor) = gateway().await;
    let acme = gw.key("acme", "agent");
    let post = |body: &'static str, key: Option<&str>| {
        let mut request = client()
            .post(format!("{}/v2/sandboxes", gw.url))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("X-API-KEY", key);
        }
        request.send()
    };
    let r = post(r#"{"templateID": "base"}"#, None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("X-API-KEY"));
    let r = post(r#"{"templateID": "base"}"#, Some("ztee_wrong"))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (body, says) in [
        ("{", "not valid JSON"),
        (r#"{"timeout": 5}"#, "templateID"),
        (r#"{"templateID": "base", "autoPause": true}"#, "autoPause"),
        (
            r#"{"templateID": "base", "volumeMounts": [{"name": "v"}]}"#,
            "volumeMounts",
        ),
        (
            r#"{"templateID": "base", "timeout": 999999999}"#,
            "out of range",
        ),
        (
            r#"{"templateID": "base", "envVars": {"1BAD": "x"}}"#,
            "not valid",
        ),
    ] {
        let r = post(body, Some(&acme)).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let error: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error["code"], 400);
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    // A template that is not an admitted image is refused by admission, naming the rule.
    let r = post(r#"{"templateID": "someone/else:latest"}"#, Some(&acme))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no-policy"));
    assert!(
        executor.created.lock().unwrap().is_empty(),
        "nothing was created"
    );

    // Paging: one at a time, by x-next-token.
    let a = create(&gw, &acme).await;
    let b = create(&gw, &acme).await;
    let page = |token: Option<String>| {
        let mut url = format!("{}/v2/sandboxes?limit=1", gw.url);
        if let Some(token) = token {
            url.push_str(&format!("&nextToken={token}"));
        }
        client().get(url).header("X-API-KEY", &acme).send()
    };
    let first = page(None).await.unwrap();
    let next = first.headers()["x-next-token"].to_str().unwrap().to_owned();
    let first: serde_json::Value = first.json().await.unwrap();
    let second = page(Some(next)).await.unwrap();
    assert!(second.headers().get("x-next-token").is_none());
    let second: serde_json::Value = second.json().await.unwrap();
    let mut seen = vec![
        first[0]["sandboxID"].as_str().unwrap().to_owned(),
        second[0]["sandboxID"].as_str().unwrap().to_owned(),
    ];
    seen.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(seen, want);
    let r = client()
        .get(format!("{}/v2/sandboxes?limit=0", gw.url))
        .header("X-API-KEY", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Metadata is filtered on, and returned.
    let r: serde_json::Value = client()
        .get(format!("{}/v2/sandboxes?metadata=team%3Dfraud", gw.url))
        .header("X-API-KEY", &acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!([]));
    let r: serde_json::Value = client()
        .get(format!("{}/v2/sandboxes?metadata=team%3Drisk", gw.url))
        .header("X-API-KEY", &acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(r[0]["metadata"]["team"], "risk");

    // Kill: 204, then 404.
    for status in [204, 404] {
        let r = client()
            .delete(format!("{}/sandboxes/{}", gw.url, a.id))
            .header("X-API-KEY", &acme)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    // Killed through the E2B API, its token goes with it.
    let list = |sandbox: &Sandbox| {
        client()
            .post(format!("{}/process.Process/List", gw.url))
            .header("E2b-Sandbox-Id", &sandbox.id)
            .header("X-Access-Token", &sandbox.token)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
    };
    assert_eq!(list(&a).await.unwrap().status(), 401);
    // Deleted another way (the REST API, its timeout), a call into it answers as E2B's edge
    // does for a dead sandbox, once; then its token is gone too.
    let r = gw.delete(&acme, &format!("/v1/sandboxes/{}", b.id)).await;
    assert_eq!(r.status(), 204);
    let r = list(&b).await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("was not found"));
    assert_eq!(list(&b).await.unwrap().status(), 401);
    // The health check says whether the named sandbox runs.
    let c = create(&gw, &acme).await;
    for (sandbox, status) in [(&a, 502), (&b, 502), (&c, 204)] {
        let r = client()
            .get(format!("{}/health", gw.url))
            .header("E2b-Sandbox-Id", &sandbox.id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    gw.stop().await;
}

#[tokio::test]
async fn code_that_cannot_start_its_context_is_recorded_as_a_failure() {
    // The engine's test double keeps no handle on its commands, so no context can start: the
    // run was admitted, then failed, and the trail says both.
    let (gw, _) = gateway().await;
    let acme = gw.key("acme", "agent");
    let sbx = create(&gw, &acme).await;
    let r = client()
        .post(format!("{}/execute", gw.url))
        .header("E2b-Sandbox-Id", &sbx.id)
        .header("X-Access-Token", &sbx.token)
        .json(&json!({"code": "6*7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 503, "{body}");
    let audit = gw
        .get_json(&gw.admin_key, "/v1/audit?tenant=acme&limit=1000")
        .await;
    let failed: Vec<&serde_json::Value> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["event"]["type"] == "sandbox.exec"
                && e["event"]["outcome"] == "failure"
                && e["event"]["resource"]
                    .as_str()
                    .is_some_and(|r| r.contains("/context/default-python"))
        })
        .collect();
    assert_eq!(failed.len(), 1, "{audit}");
    gw.stop().await;
}
