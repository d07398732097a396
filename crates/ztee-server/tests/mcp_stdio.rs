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

    let run = || async {
        let out = tokio::process::Command::new(&python)
            .arg(dir.join("stdio_client.py"))
            .env("ZTEE_URL", &gw.url)
            .env("ZTEE_KEY", &agent)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "stdio_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run().await;
    assert_eq!(first["server"], "stdio-records", "{first}");
    assert_eq!(
        first["tools"],
        serde_json::json!(["lookup_customer", "where"]),
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
    let second = run().await;
    let place = second["where"].as_str().unwrap();
    assert!(place.contains("initialized 1 time(s)"), "{place}");
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
