//! The E2B-compatible API's latency, side by side with the REST API doing the same work, with
//! real microVMs (TCG on machines whose KVM cannot run guests) and a warm pool of two.
//!
//!   make guest && cargo bench -p ztee-server --bench e2b
//!
//! Measures, through the official `e2b-code-interpreter` Python SDK (installed into a cached
//! venv): `Sandbox.create()` and `kill()`, `commands.run("true")` and `run_code("6*7")` on a warm
//! context; and through the REST API: create and delete, and the same command. Prints a table
//! of medians and 95th percentiles, and each E2B row's ratio to its REST twin.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/venv.rs"]
mod venv;
#[path = "../tests/common/vm.rs"]
mod vm;

use std::path::Path;
use std::sync::Arc;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

fn pct(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !vm::available("the E2B benchmark") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data_dir = vm::data_dir("ztee-e2b-bench");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let key = runtime.block_on(async {
        let mut engine_config = vm::engine(data_dir.path()).config().clone();
        // As `ztee serve` runs: VMs restored from a snapshot, two kept warm.
        engine_config.snapshots = true;
        let engine = ztee_vm::Engine::new(engine_config).unwrap();
        let executor = VmExecutor::new(engine).with_admission(data_dir.path());
        let d = &config.sandbox_defaults;
        executor.start_pool(d.memory_mib, d.vcpus, 2).unwrap();
        let policy = Arc::new(ztee_server::RegoPolicy::new(
            ztee_policy::PolicyEngine::builtin().unwrap(),
            Default::default(),
        ));
        let dlp = ztee_server::ZteeDlp::new(Default::default()).unwrap();
        let engines = ztee_server::Engines {
            executor: Arc::new(executor),
            dlp: Arc::new(dlp),
            policy: Some(policy),
            dlp_api: None,
        };
        let listener = ztee_server::bind(config.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = ztee_server::build(config, data_dir.path(), engines)
            .await
            .unwrap();
        let key = ztee_server::apikey::create(&state.store, "bench", "agent", "bench")
            .unwrap()
            .key;
        tokio::spawn(ztee_server::serve(state, listener, std::future::pending()));
        // Let the pool fill before anything is timed.
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        (format!("http://{addr}"), key)
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b");
    let python = venv::python(&dir.join("requirements.txt"));
    let output = std::process::Command::new(python)
        .arg(dir.join("bench.py"))
        .env("E2B_API_URL", &key.0)
        .env("E2B_SANDBOX_URL", &key.0)
        .env("E2B_API_KEY", &key.1)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bench.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: std::collections::BTreeMap<String, Vec<f64>> =
        serde_json::from_slice(&output.stdout).unwrap();
    let twin = |name: &str| -> Option<&'static str> {
        match name {
            "e2b: Sandbox.create()" => Some("rest: POST /v1/sandboxes"),
            "e2b: sandbox.kill()" => Some("rest: DELETE /v1/sandboxes/{id}"),
            "e2b: commands.run(\"true\")" => Some("rest: commands bash -l -c true"),
            _ => None,
        }
    };
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "call",
        "n",
        "median ms",
        "p95 ms",
        "vs REST (median)",
    ]);
    for (name, values) in &samples {
        let median = pct(values, 0.5);
        let ratio = twin(name)
            .and_then(|t| samples.get(t))
            .map(|rest| format!("{:.2}x", median / pct(rest, 0.5)))
            .unwrap_or_default();
        table.add_row([
            name.clone(),
            values.len().to_string(),
            format!("{median:.1}"),
            format!("{:.1}", pct(values, 0.95)),
            ratio,
        ]);
    }
    println!("{table}");
    runtime.shutdown_background();
}
