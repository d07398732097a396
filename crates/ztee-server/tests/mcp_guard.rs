//! The MCP guard in front of a real third-party MCP server (Python `mcp` MCPServer on
//! loopback), driven by the official `mcp` client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{EchoExecutor, Gateway};
use ztee_server::ServerConfig;

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
    let mut upstream = tokio::process::Command::new(&python)
        .arg(dir.join("upstream.py"))
        .arg(port.to_string())
        .arg(&calls)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the upstream MCP server did not start");

    let config = ServerConfig::from_toml(&format!(
        "[[mcp.upstreams]]\nname = \"records\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n"
    ))
    .unwrap();
    let gw = Gateway::start(config, Arc::new(EchoExecutor::default())).await;
    let agent = gw.key("default", "agent");
    let out = tokio::process::Command::new(&python)
        .arg(dir.join("guard_client.py"))
        .env("ZTEE_URL", &gw.url)
        .env("ZTEE_KEY", &agent)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "guard_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["tools"],
        serde_json::json!(["delete_file", "fetch_page", "lookup_customer"])
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
        ["lookup_customer", "fetch_page"],
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
    gw.stop().await;
    upstream.kill().await.unwrap();
}
