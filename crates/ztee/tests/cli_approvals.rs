//! `ztee approvals` against a real `ztee serve` (real microVMs): an approver lists, inspects
//! and approves a held run with the CLI; the run's result comes back through `show --wait`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{qemu_available, text, ztee, Serve};

#[test]
fn an_approver_decides_with_the_cli_and_the_requester_gets_the_result() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ztee-p")
        .tempdir_in("/tmp")
        .unwrap();
    let serve = Serve::start(dir.path());
    let key = |role: &str| {
        let o = ztee(
            dir.path(),
            &["apikey", "create", "--tenant", "acme", "--role", role],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    let agent = key("agent");
    let approver = key("approver");
    let gateway = serve.url();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held: serde_json::Value = runtime.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{gateway}/v1/run"))
            .bearer_auth(&agent)
            .json(&serde_json::json!({"cmd": "echo 4111111111111111 | tr -d '\\n' | wc -c"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json().await.unwrap()
    });
    let id = held["approval"]["id"].as_str().unwrap().to_owned();

    let cli = |key: &str, args: &[&str]| {
        ztee(dir.path(), args)
            .env("ZTEE_GATEWAY", &gateway)
            .env("ZTEE_API_KEY", key)
            .output()
            .unwrap()
    };
    let o = cli(&approver, &["approvals", "ls"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&id),
        "{}",
        text(&o)
    );
    let o = cli(&approver, &["approvals", "show", &id]);
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains("raw card number") && !shown.contains("4111111111111111"),
        "{shown}"
    );

    let o = cli(&agent, &["approvals", "approve", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("403"), "{}", text(&o));
    let o = cli(
        &approver,
        &["approvals", "approve", &id, "--comment", "reviewed"],
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = cli(
        &agent,
        &["--format", "json", "approvals", "show", &id, "--wait", "60"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let done: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["result"]["stdout"], "16\n", "{done}");
    assert_eq!(done["decisions"][0]["comment"], "reviewed");
    drop(serve);
}
