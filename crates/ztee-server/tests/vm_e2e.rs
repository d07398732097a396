//! End to end over real HTTP with real microVMs (QEMU, TCG on machines without usable KVM).
//! Two VMs boot in this file: one long-lived sandbox shared by the API assertions, and one
//! one-shot `POST /v1/run`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{client, error_body, Gateway};
use serde_json::json;
use ztee_server::ServerConfig;
use ztee_server::VmExecutor;

/// A gateway over the real VM engine, or `None` (after a loud SKIPPED line) when QEMU cannot
/// start here. Missing guest assets fail the test: `scripts/guest.sh` builds them.
async fn vm_gateway() -> Option<Gateway> {
    if !common::vm::available("gateway VM tests") {
        return None;
    }
    let data_dir = common::vm::data_dir("ztee-g");
    let engine = common::vm::engine(data_dir.path());
    let config = ServerConfig::default();
    let executor = VmExecutor::new(engine).with_admission(data_dir.path());
    Some(Gateway::start_in(config, Arc::new(executor), data_dir).await)
}

fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_commands_files_and_one_shot_runs_in_real_vms() {
    let Some(gw) = vm_gateway().await else { return };
    let c = client();
    let acme = gw.key("acme", "agent");
    let globex = gw.key("globex", "agent");

    // An image that no admission policy admits boots nothing: 403, naming the rule.
    let r = gw
        .post(&acme, "/v1/sandboxes", &json!({"image": "python:1"}))
        .await;
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("no-policy"), "{body}");

    // A long-lived sandbox.
    let r = gw
        .post(
            &acme,
            "/v1/sandboxes",
            &json!({"memory_mib": 128, "env": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let sbx: serde_json::Value = r.json().await.unwrap();
    let id = sbx["id"].as_str().unwrap().to_owned();
    // The VMM's host pid and jail are host internals: the tenant does not see them, a platform
    // admin does.
    assert!(sbx["vm"].get("vmm_pid").is_none(), "{sbx}");
    assert!(sbx["vm"].get("jail").is_none(), "{sbx}");
    let platform_view = gw
        .get_json(&gw.admin_key, &format!("/v1/sandboxes/{id}"))
        .await;
    let vmm_pid = platform_view["vm"]["vmm_pid"].as_u64().unwrap();
    assert!(process_alive(vmm_pid));
    assert_eq!(sbx["vm"]["backend"], "qemu");
    let cmd_url = format!("{}/v1/sandboxes/{id}/commands", gw.url);

    // A command whose output holds a card number it computed: masked on the way out.
    let r: serde_json::Value = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .json(&json!({"cmd": ["python3", "-c", "import os; print(os.environ['GREETING'], 6*7); print('4111' + '1111'*3)"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["exit_code"], 0, "{r}");
    let stdout = r["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("hi 42\n"), "{stdout}");
    assert!(!stdout.contains("4111111111111111"), "{stdout}");
    assert!(stdout.contains("1111\n"), "{stdout}");
    assert_eq!(r["redactions"]["CREDIT_CARD"], 1);

    // Exit codes, stderr, stdin and cwd come through.
    let r: serde_json::Value = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .json(&json!({"cmd": "cat; pwd; echo oops >&2; exit 3", "stdin": "from stdin\n", "cwd": "/tmp"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["exit_code"], 3, "{r}");
    assert_eq!(r["stdout"], "from stdin\n/tmp\n");
    assert_eq!(r["stderr"], "oops\n");

    // Timeouts are enforced.
    let r: serde_json::Value = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .json(&json!({"cmd": ["sleep", "30"], "timeout_s": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["timed_out"], true, "{r}");

    // Streaming: output lines then an exit line.
    let text = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .header("accept", "application/x-ndjson")
        .json(&json!({"cmd": "echo one; echo two >&2"}))
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
    assert_eq!(lines.last().unwrap()["type"], "exit", "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "stdout" && l["data"] == "one\n"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "stderr" && l["data"] == "two\n"),
        "{text}"
    );

    // Files: upload, run on it, download a file with card data (masked).
    let files = format!("{}/v1/sandboxes/{id}/files", gw.url);
    let r = c
        .put(format!("{files}?path=/tmp/in.txt"))
        .bearer_auth(&acme)
        .body("abc\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: serde_json::Value = c
        .post(&cmd_url)
        .bearer_auth(&acme)
        .json(
            &json!({"cmd": "wc -c < /tmp/in.txt; printf '5500%s0004\\n' 00000000 > /tmp/out.txt"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["stdout"], "4\n", "{r}");
    let got = c
        .get(format!("{files}?path=/tmp/out.txt"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["x-ztee-redactions"], "CREDIT_CARD=1");
    let body = got.text().await.unwrap();
    assert!(
        !body.contains("5500000000000004") && body.ends_with("0004\n"),
        "{body}"
    );
    let r = c
        .get(format!("{files}?path=/tmp/missing"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    error_body(r, 404, "not_found").await;

    // Another tenant cannot reach it.
    let r = c
        .post(&cmd_url)
        .bearer_auth(&globex)
        .json(&json!({"cmd": ["true"]}))
        .send()
        .await
        .unwrap();
    error_body(r, 404, "not_found").await;

    // Delete: the VMM process is gone.
    let r = gw.delete(&acme, &format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status(), 204);
    assert!(
        !process_alive(vmm_pid),
        "VMM {vmm_pid} still running after delete"
    );

    // One-shot run: code in, result out, VM destroyed, quota released.
    let r: serde_json::Value = gw.post_json(&acme, "/v1/run", &json!({"language": "python", "code": "import sys\nprint(sum(range(10)))\nprint(open('/tmp/data.txt').read())", "files": [{"path": "/tmp/data.txt", "content": "payload"}]})).await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "45\npayload\n");
    // The working directory, a file's mode and the VM's scratch and process limits, as the
    // command line sends them.
    let r: serde_json::Value = gw
        .post_json(
            &acme,
            "/v1/run",
            &json!({"cmd": ["sh", "-c", "pwd; stat -c %a job.sh; ./job.sh; python3 -c 'import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[0])'; df -m /tmp | tail -1 | tr -s ' ' | cut -d' ' -f2"],
                    "cwd": "/tmp", "disk_mib": 32, "max_processes": 64,
                    "files": [{"path": "/tmp/job.sh", "content": "#!/bin/sh\necho ran", "mode": 493}]}),
        )
        .await;
    assert_eq!(r["stdout"], "/tmp\n755\nran\n64\n32\n", "{r}");
    for (body, field) in [
        (
            json!({"cmd": ["true"], "files": [{"path": "/tmp/x", "content": "", "mode": 4096}]}),
            "mode",
        ),
        (json!({"cmd": ["true"], "cwd": "tmp"}), "cwd"),
        (
            json!({"cmd": ["true"], "memory_mib": 128, "disk_mib": 100}),
            "disk_mib",
        ),
        (
            json!({"cmd": ["true"], "max_processes": 1}),
            "max_processes",
        ),
    ] {
        let body = error_body(gw.post(&acme, "/v1/run", &body).await, 400, "bad_request").await;
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    assert_eq!(gw.state.store.tenant_usage("acme").unwrap().sandboxes, 0);
    let data_dir = gw.stop().await;
    let leftover: Vec<_> = std::fs::read_dir(data_dir.path().join("run/vms"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftover.is_empty(),
        "VM runtime directories left: {leftover:?}"
    );
}
