//! ztee's MCP server (`/v1/mcp`) with the official `mcp` Python client, against real microVMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Gateway;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

async fn vm_gateway() -> Option<Gateway> {
    if !common::vm::available("MCP VM test") {
        return None;
    }
    let data_dir = common::vm::data_dir("ztee-m");
    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    Some(Gateway::start_in(ServerConfig::default(), Arc::new(executor), data_dir).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_run_in_microvms_through_the_gateway() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp");
    let python = common::venv::python(&dir.join("requirements.txt"));
    let Some(gw) = vm_gateway().await else { return };
    let agent = gw.key("default", "agent");
    let out = tokio::process::Command::new(python)
        .arg(dir.join("client.py"))
        .env("ZTEE_URL", &gw.url)
        .env("ZTEE_KEY", &agent)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools: Vec<&str> = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "read_file",
            "run_code",
            "run_command",
            "sandbox_close",
            "sandbox_create",
            "sandbox_exec",
            "write_file"
        ]
    );
    let denied = &r["pan_in_input"];
    assert_eq!(denied["error"], true, "{denied}");
    assert!(
        denied["text"].as_str().unwrap().contains("policy_denied"),
        "{denied}"
    );
    // Outbound DLP as on the REST API: the card number printed in the VM comes back masked.
    let run = &r["run_command"];
    assert_eq!(run["error"], false, "{run}");
    let result: serde_json::Value = serde_json::from_str(run["text"].as_str().unwrap()).unwrap();
    assert_eq!(result["exit_code"], 0, "{result}");
    let stdout = result["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("done") && !stdout.contains("4111 1111 1111 1111"),
        "{stdout}"
    );
    assert!(
        r["run_code"]["text"].as_str().unwrap().contains("42"),
        "{}",
        r["run_code"]
    );
    assert_eq!(r["write_file"]["error"], false, "{}", r["write_file"]);
    assert!(
        r["read_file"]["text"]
            .as_str()
            .unwrap()
            .contains("hello from mcp"),
        "{}",
        r["read_file"]
    );
    assert!(
        r["sandbox_exec"]["text"].as_str().unwrap().contains("15"),
        "{}",
        r["sandbox_exec"]
    );
    // The REST layer's validation reaches the MCP caller as a tool error.
    assert_eq!(r["bad_args"]["error"], true, "{}", r["bad_args"]);
    assert!(
        r["bad_args"]["text"].as_str().unwrap().contains("bogus"),
        "{}",
        r["bad_args"]
    );
    assert_eq!(r["sandbox_close"]["error"], false, "{}", r["sandbox_close"]);
    assert_eq!(r["after_close"]["error"], true, "{}", r["after_close"]);
    assert_eq!(r["anonymous_status"], 401);

    // The same audit trail as REST: the tool calls are there as run and sandbox events.
    let audit = gw
        .get(&gw.admin_key, "/v1/audit?limit=1000")
        .await
        .text()
        .await
        .unwrap();
    for event in [
        "\"run\"",
        "sandbox.create",
        "sandbox.exec",
        "file.write",
        "file.read",
        "sandbox.close",
    ] {
        assert!(audit.contains(event), "audit lacks {event}");
    }
    gw.stop().await;
}
