//! `ztee traces export` over a data directory with traces of two tenants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn trace(request_id: &str, tenant: &str, time: &str) -> String {
    format!(
        r#"{{"request_id":"{request_id}","time":"{time}","tenant":"{tenant}","subject":"apikey:1","kind":"llm.chat","api":"openai","provider":"local","model":"m","stream":false,"outcome":"success","duration_ms":3,"messages":[{{"role":"user","content":"pay <CREDIT_CARD_1>"}}],"decisions":[],"injection":{{"score":0.0,"rules":[],"field":null}},"redactions":{{"inbound":{{"CREDIT_CARD":1}},"outbound":{{}}}}}}"#
    )
}

fn export(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ztee"))
        .env("ZTEE_DATA_DIR", data_dir)
        .args(["traces", "export"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exports_filtered_json_lines() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("traces");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("acme.jsonl"),
        format!(
            "{}\n{}\n",
            trace("r1", "acme", "2026-11-01T10:00:00.000Z"),
            trace("r2", "acme", "2026-11-20T10:00:00.000Z")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pay.jsonl"),
        format!("{}\n", trace("r3", "pay", "2026-11-21T10:00:00.000Z")),
    )
    .unwrap();

    let (ok, all, err) = export(data.path(), &[]);
    assert!(ok, "{err}");
    let ids: Vec<String> = all
        .lines()
        .map(|l| l.split("\"request_id\":\"").nth(1).unwrap()[..2].to_string())
        .collect();
    assert_eq!(ids, ["r1", "r2", "r3"]);

    let (ok, out, _) = export(
        data.path(),
        &["--tenant", "acme", "--since", "2026-11-10T00:00:00Z"],
    );
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("\"r2\""));

    let (ok, out, _) = export(data.path(), &["--request-id", "r3"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("\"tenant\":\"pay\""));

    let (ok, _, err) = export(data.path(), &["--tenant", "../etc"]);
    assert!(!ok);
    assert!(err.contains("tenant"), "{err}");
    let (ok, _, err) = export(data.path(), &["--since", "yesterday-ish"]);
    assert!(!ok);
    assert!(err.contains("since"), "{err}");
}
