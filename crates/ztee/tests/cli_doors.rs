//! `ztee run` and `POST /v1/run` are two doors on one core: the same command through each, on
//! the same node, leaves records of the same shape, with the same policy decision, the same
//! masking and the same digest of what was sent in (real microVMs, a real `ztee serve`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{qemu_available, text, ztee, Serve};

/// The command both doors run: a card number in its output (masked on the way out), none in
/// what is sent in.
const SCRIPT: &str = "x=4111; echo card $x 1111 1111 1111; echo done";

fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn a_cli_run_and_a_rest_run_leave_the_same_record() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ztee-d")
        .tempdir_in("/tmp")
        .unwrap();
    let serve = Serve::start(dir.path());
    let o = ztee(
        dir.path(),
        &["apikey", "create", "--tenant", "acme", "--role", "agent"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let agent = String::from_utf8(o.stdout).unwrap().trim().to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer: serde_json::Value = runtime.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/run", serve.url()))
            .bearer_auth(&agent)
            .json(&serde_json::json!({"cmd": ["sh", "-c", SCRIPT]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    });
    assert_eq!(
        answer["stdout"], "card 4111 1111 **** 1111\ndone\n",
        "{answer}"
    );
    // The gateway lets go of the trail; the command line then writes to it itself.
    drop(serve);

    let out = ztee(dir.path(), &["run", "--", "sh", "-c", SCRIPT])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "card 4111 1111 **** 1111\ndone\n"
    );

    let found = ztee(
        dir.path(),
        &["--format", "json", "audit", "search", "--type", "run"],
    )
    .output()
    .unwrap();
    assert!(found.status.success(), "{}", text(&found));
    let records: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let events: Vec<&serde_json::Value> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["event"])
        .collect();
    assert_eq!(events.len(), 2, "{records}");
    let (rest, cli) = (events[0], events[1]);
    assert_eq!(rest["principal"]["tenant"], "acme", "{rest}");
    assert!(
        cli["principal"]["subject"]
            .as_str()
            .unwrap()
            .starts_with("local:"),
        "{cli}"
    );
    // The same fields, the same decision, the same masking, and the same digest of what was
    // sent in: the core saw the same action through both doors.
    // Only a network caller has an origin address.
    let mut rest_keys = keys(rest);
    assert!(rest_keys.remove("origin_ip"), "{rest}");
    assert_eq!(rest_keys, keys(cli), "{rest}\n{cli}");
    assert_eq!(keys(&rest["principal"]), keys(&cli["principal"]));
    for field in ["type", "outcome", "decision", "redactions", "code_sha256"] {
        assert!(!rest[field].is_null(), "{field}: {rest}");
        assert_eq!(rest[field], cli[field], "{field}: {rest}\n{cli}");
    }
    assert_eq!(rest["redactions"]["CREDIT_CARD"], 1, "{rest}");
    for event in [rest, cli] {
        assert!(
            event["resource"].as_str().unwrap().starts_with("run/"),
            "{event}"
        );
    }
    let verify = ztee(dir.path(), &["audit", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}
