//! A third-party MCP server that speaks stdio runs inside a microVM started by the guard, and
//! answers the official `mcp` client through it (real VMs, a real client).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Gateway;
use ztee_server::{ServerConfig, VmExecutor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_runs_in_a_microvm_behind_the_guard() {
    if !common::vm::available("stdio MCP in a microVM") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let python = common::venv::python(&dir.join("requirements.txt"));
    let server = std::fs::read_to_string(dir.join("stdio_server.py")).unwrap();
    let config = ServerConfig::from_toml(&format!(
        "[[mcp.upstreams]]\nname = \"stdio-records\"\ncommand = [\"python3\", \"-u\", \"-c\", {}]\npin = \"first_use\"\n",
        toml_string(&server)
    ))
    .unwrap();
    let data_dir = common::vm::data_dir("ztee-m");
    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    let gw = Gateway::start_in(config, Arc::new(executor), data_dir).await;
    let agent = gw.key("default", "agent");

    let first = client(&python, &dir, &gw.url, &agent, &[]).await;
    assert_eq!(first["server"], "stdio-records", "{first}");
    assert_eq!(
        first["tools"],
        serde_json::json!(["crash", "lookup_customer", "where"]),
        "{first}"
    );
    // It runs in the guest, on the guest's own kernel, not on this host's.
    let place = first["where"].as_str().unwrap();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(place.starts_with("kernel "), "{place}");
    assert!(
        !place.contains(&format!("kernel {};", host_kernel.trim())),
        "the server ran on the host's kernel: {place}"
    );
    // Its results pass the guard's masking.
    let lookup = first["lookup_customer"].as_str().unwrap();
    assert!(lookup.contains("Customer Ada"), "{lookup}");
    assert!(!lookup.contains("4111 1111 1111 1111"), "{lookup}");

    // A second client shares the tenant's server process, initialized once.
    let second = client(&python, &dir, &gw.url, &agent, &["crash"]).await;
    let place = second["where"].as_str().unwrap();
    assert!(place.contains("initialized 1 time(s)"), "{place}");
    // A server that ends without answering fails the request that waits, clearly...
    let crash = second["crash"].as_str().unwrap();
    assert!(crash.contains("ended before it answered"), "{crash}");
    // ...and the next request gets a new one, in a new sandbox in place of the old.
    let third = client(&python, &dir, &gw.url, &agent, &[]).await;
    let place = third["where"].as_str().unwrap();
    assert!(place.contains("initialized 1 time(s)"), "{place}");
    let process = |answer: &serde_json::Value| {
        let text = answer["where"].as_str().unwrap().to_owned();
        text.split("process ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        process(&first),
        process(&second),
        "one process for both clients"
    );
    assert_ne!(
        process(&second),
        process(&third),
        "a new process after the crash"
    );
    assert_eq!(
        gw.state.store.tenant_usage("default").unwrap().sandboxes,
        1,
        "one microVM serves the tenant's stdio server"
    );

    // Everything it was sent went through the core: recorded as `sandbox.input`.
    let audit = gw
        .get(&gw.admin_key, "/v1/audit?type=sandbox.input&limit=100")
        .await
        .text()
        .await
        .unwrap();
    assert!(audit.contains("sandbox.input"), "{audit}");
    gw.stop().await;
}

/// Runs `stdio_client.py` with `args` as the holder of `key`; returns its JSON output.
async fn client(
    python: &Path,
    dir: &Path,
    url: &str,
    key: &str,
    args: &[&str],
) -> serde_json::Value {
    let out = tokio::process::Command::new(python)
        .arg(dir.join("stdio_client.py"))
        .args(args)
        .env("ZTEE_URL", url)
        .env("ZTEE_KEY", key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "stdio_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
