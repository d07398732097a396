//! `ztee approvals` against a real `ztee serve` (real microVMs): an approver lists, inspects
//! and approves a held run with the CLI; the run's result comes back through `show --wait`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/ztee/guest")
}

fn ztee(data_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ztee"));
    command
        .args(args)
        .env("ZTEE_DATA_DIR", data_dir)
        .env("ZTEE_GUEST_DIR", guest_dir())
        .env_remove("ZTEE_LOG")
        .env_remove("ZTEE_API_KEY_FILE")
        .env_remove("ZTEE_CONFIG")
        .stdin(Stdio::null());
    command
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn an_approver_decides_with_the_cli_and_the_requester_gets_the_result() {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ztee-p")
        .tempdir_in("/tmp")
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = ztee(dir.path(), &["serve", "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let serve = Serve(child);
    let admin_key = BufReader::new(stdout).lines().next().unwrap().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("serve ended before listening").unwrap();
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(admin_key.starts_with("ztee_"), "{admin_key}");
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
    let gateway = format!("http://{listen}");

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
