//! `ztee serve` started and stopped as an operator would, then `ztee compliance report` over
//! the data directory it leaves: the report verifies the trail the gateway wrote and finds the
//! policy bundle it recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// The gateway checks at start that the guest assets exist (it boots no VM in this test).
fn guest_dir() -> std::path::PathBuf {
    match std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => dir.into(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".local/share/ztee/guest"),
    }
}

fn ztee(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ztee"));
    command
        .env("ZTEE_DATA_DIR", data_dir)
        .env("ZTEE_GUEST_DIR", guest_dir())
        .env_remove("ZTEE_CONFIG")
        .env_remove("ZTEE_LOG")
        .stdin(Stdio::null());
    command
}

#[test]
fn report_over_a_gateways_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let mut serve = ztee(data.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(serve.stderr.take().unwrap());
    let mut addr = None;
    let mut seen = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(rest) = line
            .trim()
            .strip_prefix("ztee gateway listening on http://")
        {
            addr = Some(rest.to_string());
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("the gateway did not start: {seen}"));
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // SIGTERM: the gateway records its stop and closes the trail with a signed checkpoint.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert!(serve.wait().unwrap().success());

    let out = ztee(data.path())
        .args(["compliance", "report", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audit = &report["evidence"]["audit"];
    assert_eq!(audit["verified"], true, "{audit}");
    assert!(audit["checkpoints"].as_u64().unwrap() >= 1, "{audit}");
    let activity = &report["evidence"]["activity"];
    assert_eq!(activity["service_starts"], 1, "{activity}");
    assert_eq!(activity["by_type"]["service.stop"], 1, "{activity}");
    // The bundle the gateway loaded is the one the report finds in force.
    let in_force = format!(
        "policy/sha256:{}",
        report["evidence"]["configuration"]["policy"]["sha256"]
            .as_str()
            .unwrap()
    );
    assert_eq!(activity["policy_bundles"][&in_force], 1, "{activity}");
    // The first-start admin key is in the state database and counted by role.
    assert_eq!(
        report["evidence"]["configuration"]["api_keys"]["by_role"]["platform-admin"],
        1
    );
    // Loopback-only plain HTTP: transport is met; no OIDC: authentication needs attention.
    let status = |prefix: &str| {
        report["controls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["requirement"].as_str().unwrap().starts_with(prefix))
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("4.2.1"), "met");
    assert_eq!(status("8.2"), "attention");
    assert_eq!(status("10.3"), "met");
}
