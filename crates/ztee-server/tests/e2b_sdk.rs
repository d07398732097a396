//! The official E2B SDKs, unchanged, against ztee's E2B-compatible API, with real microVMs:
//! the Python `e2b` and `e2b-code-interpreter` (tests/e2b/sdk_check.py: sandboxes, commands,
//! processes, files, stateful code, masking, tenant isolation) and the JavaScript `e2b` and
//! `@e2b/code-interpreter` under node (tests/e2b/js/check.mjs), then the audit trail those calls
//! left.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Gateway;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

async fn vm_gateway() -> Option<Gateway> {
    if !common::vm::available("E2B SDK tests") {
        return None;
    }
    let data_dir = common::vm::data_dir("ztee-e2b");
    let engine = common::vm::engine(data_dir.path());
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    // The policy bundle `ztee serve` ships: every E2B call is an action it knows.
    let policy = Arc::new(ztee_server::RegoPolicy::new(
        ztee_policy::PolicyEngine::builtin().unwrap(),
        Default::default(),
    ));
    Some(
        Gateway::start_with_policy(
            ServerConfig::default(),
            Arc::new(executor),
            data_dir,
            Some(policy),
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_and_javascript_sdks_run_unchanged_against_real_vms() {
    let Some(gw) = vm_gateway().await else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b");
    let python = common::venv::python(&dir.join("requirements.txt"));
    let acme = gw.key("acme", "agent");
    let globex = gw.key("globex", "agent");
    let mut sdk_check = tokio::process::Command::new(python);
    sdk_check
        .arg(dir.join("sdk_check.py"))
        .env("E2B_API_URL", &gw.url)
        .env("E2B_SANDBOX_URL", &gw.url)
        .env("E2B_API_KEY", &acme)
        .env("OTHER_TENANT_KEY", &globex)
        .env_remove("E2B_DOMAIN");
    let report =
        common::checks::report(sdk_check, Duration::from_secs(420), "the Python SDK checks").await;
    let passed = report["passed"].as_array().unwrap();
    assert!(passed.len() >= 40, "{report}");
    eprintln!(
        "warm run_code median through the SDK: {:.1} ms",
        report["run_code_median_ms"].as_f64().unwrap()
    );

    // The JavaScript SDKs against the same gateway.
    let js = common::npm::install(
        &dir.join("js"),
        "e2b-js-fixture",
        &["package.json", "package-lock.json", "check.mjs"],
    )
    .unwrap();
    let mut js_check = tokio::process::Command::new("node");
    js_check
        .arg("check.mjs")
        .current_dir(&js)
        .env("E2B_API_URL", &gw.url)
        .env("E2B_SANDBOX_URL", &gw.url)
        .env("E2B_API_KEY", &acme)
        .env("OTHER_TENANT_KEY", &globex);
    let js_report = common::checks::report(
        js_check,
        Duration::from_secs(300),
        "the JavaScript SDK checks",
    )
    .await;
    assert_eq!(
        js_report["passed"].as_array().unwrap().len(),
        20,
        "{js_report}"
    );

    // The calls left records naming who did what, and no card number.
    let sandbox = report["sandbox"].as_str().unwrap();
    let audit = gw
        .get_json(&gw.admin_key, "/v1/audit?tenant=acme&limit=1000")
        .await
        .to_string();
    assert!(!audit.contains(&("4111".to_owned() + &"1111".repeat(3))));
    for kind in [
        "\"sandbox.create\"",
        "\"sandbox.exec\"",
        "\"sandbox.input\"",
        "\"sandbox.signal\"",
        "\"sandbox.timeout\"",
        "\"file.write\"",
        "\"file.read\"",
        "\"sandbox.close\"",
    ] {
        assert!(audit.contains(kind), "no {kind} record in the audit trail");
    }
    assert!(audit.contains(sandbox));
    gw.stop().await;
}
