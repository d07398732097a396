//! The `ztee run`, `ztee sandbox` and `ztee doctor` commands as a user runs them: the real
//! binary, real microVMs, a fresh data directory per test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Cli {
    data_dir: tempfile::TempDir,
}

impl Cli {
    /// `None` (after a loud message) only when QEMU cannot start here at all.
    fn new() -> Option<Self> {
        let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
        if !qemu.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run"
            );
            return None;
        }
        let data_dir = tempfile::Builder::new()
            .prefix("ztee-c")
            .tempdir_in("/tmp")
            .unwrap();
        Some(Self { data_dir })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ztee"));
        command
            .args(args)
            .env("ZTEE_DATA_DIR", self.data_dir.path())
            .env("ZTEE_GUEST_DIR", guest_dir())
            .env_remove("ZTEE_LOG")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `ztee ARGS` with `input` piped to its stdin.
    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    fn vm_dirs_left(&self) -> usize {
        std::fs::read_dir(self.data_dir.path().join("run/vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn guest_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".local/share/ztee/guest")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Live QEMU processes belonging to `dir`: an unjailed QEMU names paths under it on its command
/// line; a jailed one has its root directory under it.
fn qemu_processes_for(dir: &std::path::Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let root = std::fs::read_link(e.path().join("root")).unwrap_or_default();
            let zombie = std::fs::read_to_string(e.path().join("stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            cmdline.contains("qemu")
                && !zombie
                && (cmdline.contains(&needle) || root.starts_with(dir))
        })
        .count()
}

#[test]
fn run_prints_output_and_returns_the_commands_exit_code() {
    let Some(cli) = Cli::new() else { return };
    let out = cli.run(&["run", "--", "python3", "-c", "print(6*7)"]);
    assert_eq!(text(&out.stdout), "42\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    let out = cli.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(cli.vm_dirs_left(), 0);
    assert_eq!(qemu_processes_for(cli.data_dir.path()), 0);
}

/// `ztee run` passes the gateway's stages: the data directory's policy decides (a card number
/// in the command is held for approval, which a terminal cannot give, so it is refused and
/// nothing runs), card numbers in the output are masked, and each run is one record of the
/// node's audit trail in the operator's name, which `ztee audit verify` checks.
#[test]
fn run_is_decided_by_policy_masked_and_audited() {
    let Some(cli) = Cli::new() else { return };
    let masked = cli.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "x=4111; echo card $x 1111 1111 1111 >&2; echo ok",
    ]);
    assert_eq!(masked.status.code(), Some(0), "{}", text(&masked.stderr));
    assert_eq!(text(&masked.stdout), "ok\n");
    assert!(
        !text(&masked.stderr).contains("4111 1111 1111 1111"),
        "{}",
        text(&masked.stderr)
    );
    assert!(
        text(&masked.stderr).contains("card 4111 1111 **** 1111"),
        "{}",
        text(&masked.stderr)
    );

    let held = cli.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo 4111111111111111 > /tmp/ran; cat /tmp/ran",
    ]);
    assert_eq!(held.status.code(), Some(4), "{}", text(&held.stderr));
    assert!(
        held.stdout.is_empty(),
        "nothing ran: {}",
        text(&held.stdout)
    );
    assert!(
        text(&held.stderr).contains("pci.raw_pan_in_code"),
        "{}",
        text(&held.stderr)
    );

    let verify = cli.run(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    let found = cli.run(&["--format", "json", "audit", "search", "--type", "run"]);
    assert_eq!(found.status.code(), Some(0), "{}", text(&found.stderr));
    let records: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let events: Vec<&serde_json::Value> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["event"])
        .collect();
    assert_eq!(events.len(), 2, "{records}");
    for e in &events {
        assert!(
            e["principal"]["subject"]
                .as_str()
                .unwrap()
                .starts_with("local:"),
            "{e}"
        );
        assert!(
            e["code_sha256"].as_str().unwrap().starts_with("sha256:"),
            "{e}"
        );
    }
    assert_eq!(events[0]["outcome"], "success");
    assert_eq!(
        events[0]["decision"]["rule_ids"],
        serde_json::json!(["risk.code_execution"])
    );
    assert!(events[0]["output_sha256"].is_string(), "{}", events[0]);
    assert_eq!(events[0]["redactions"]["CREDIT_CARD"], 1, "{}", events[0]);
    assert_eq!(events[1]["outcome"], "denied");
    assert_eq!(
        events[1]["decision"]["rule_ids"],
        serde_json::json!(["pci.raw_pan_in_code", "approval.unavailable"])
    );
    // The raw card number is nowhere in the trail.
    for entry in std::fs::read_dir(cli.data_dir.path().join("audit")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("4111111111111111"));
    }
}

/// The gateway's configuration serves the command line too, but a terminal calls no model: a
/// provider whose API key only the gateway's environment holds does not stop `ztee run`.
#[test]
fn run_needs_no_model_provider_key() {
    let Some(cli) = Cli::new() else { return };
    let config = cli.data_dir.path().join("ztee.toml");
    std::fs::write(
        &config,
        "[[llm.providers]]\nname = \"openai\"\napi = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\nexternal = true\napi_key_env = \"ZTEE_TEST_KEY_ONLY_THE_GATEWAY_HAS\"\n",
    )
    .unwrap();
    let out = cli
        .command(&["run", "--", "echo", "ok"])
        .env("ZTEE_CONFIG", &config)
        .env_remove("ZTEE_TEST_KEY_ONLY_THE_GATEWAY_HAS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
}

#[test]
fn run_stops_at_the_timeout_with_a_clear_message() {
    let Some(cli) = Cli::new() else { return };
    let started = Instant::now();
    let out = cli.run(&["run", "--timeout", "2", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("timed out after 2s"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[test]
fn run_copies_files_in_and_forwards_stdin() {
    let Some(cli) = Cli::new() else { return };
    let job = cli.data_dir.path().join("job.py");
    std::fs::write(
        &job,
        "import sys\nprint('job read', sys.stdin.read().upper())\n",
    )
    .unwrap();
    let out = cli.run_with_stdin(
        &[
            "run",
            "--file",
            &format!("{}:/home/user/job.py", job.display()),
            "--",
            "python3",
            "/home/user/job.py",
        ],
        b"card data stays here",
    );
    assert_eq!(
        text(&out.stdout),
        "job read CARD DATA STAYS HERE\n",
        "{}",
        text(&out.stderr)
    );

    // Stdin is input like any other: scanned and decided before anything runs, so a card
    // number piped in is held for an approver a terminal cannot give, and nothing runs.
    let out = cli.run_with_stdin(
        &["run", "--", "sh", "-c", "cat > /tmp/got; wc -c < /tmp/got"],
        b"pay 4111111111111111 now",
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("pci.raw_pan_in_code"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_input_is_one_line_and_non_zero() {
    let Some(cli) = Cli::new() else { return };
    let started = Instant::now();
    let out = cli.run(&["run", "--file", "/no/such/file:/home/user/x", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: --file /no/such/file") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a missing file must fail before booting"
    );

    let out = cli.run(&["run", "--no-such-flag", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));

    let out = cli.run(&["sandbox", "exec", "sbx-0000000000000000", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: invalid request: no such sandbox: sbx-0000000000000000"
    );

    let out = cli.run(&["sandbox", "rm", "../../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no such sandbox"));

    let out = cli.run(&["run", "--", "no-such-program"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: command not found in the sandbox: no-such-program"
    );
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn sandbox_lifecycle_create_exec_cp_ls_inspect_rm() {
    let Some(cli) = Cli::new() else { return };
    let out = cli.run(&["sandbox", "create", "--timeout", "300"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(id.starts_with("sbx-"), "{id}");

    let out = cli.run(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo hi > note; ls /home/user",
    ]);
    assert_eq!(text(&out.stdout), "note\n", "{}", text(&out.stderr));

    // Files in and out, binary-safe.
    let local = cli.data_dir.path().join("data.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let out = cli.run(&[
        "sandbox",
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/home/user/data.bin"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let back = cli.data_dir.path().join("back.bin");
    let out = cli.run(&[
        "sandbox",
        "cp",
        &format!("{id}:data.bin"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == data);
    let out = cli.run(&[
        "sandbox",
        "cp",
        &format!("{id}:/etc/shadow"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "a failed copy touched the destination"
    );

    let out = cli.run(&["sandbox", "ls", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    let out = cli.run(&["sandbox", "inspect", &id, "--format", "json"]);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vmm_pid = record["vm"]["vmm_pid"].as_u64().unwrap();
    assert_eq!(
        record["egress"],
        serde_json::json!([]),
        "no network: {record}"
    );
    assert!(std::path::Path::new(&format!("/proc/{vmm_pid}")).exists());

    let out = cli.run(&["sandbox", "rm", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = cli.run(&["sandbox", "ls", "--format", "json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
    let deadline = Instant::now() + Duration::from_secs(5);
    while qemu_processes_for(cli.data_dir.path()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        qemu_processes_for(cli.data_dir.path()),
        0,
        "VMM left running"
    );
    // `rm` returns once the supervisor has destroyed the VM and removed its directory.
    assert_eq!(cli.vm_dirs_left(), 0);
}

/// `ztee sandbox` commands pass the gateway's stages too: the creation, each command and each
/// copy is decided by the data directory's policy, masked on the way out, and recorded in the
/// node's trail in the operator's name.
#[test]
fn sandbox_commands_are_decided_masked_and_audited() {
    let Some(cli) = Cli::new() else { return };
    let out = cli.run(&["sandbox", "create", "--timeout", "120"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();

    let out = cli.run(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "x=4111; echo $x 1111 1111 1111 | tee /home/user/card.txt",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "4111 1111 **** 1111\n");
    let out = cli.run(&["sandbox", "exec", &id, "--", "echo", "5500000000000004"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    // Piped stdin is input like the command: scanned and decided before anything runs.
    let out = cli.run_with_stdin(
        &["sandbox", "exec", &id, "--", "tr", "a-z", "A-Z"],
        b"shipped",
    );
    assert_eq!(text(&out.stdout), "SHIPPED", "{}", text(&out.stderr));
    let out = cli.run_with_stdin(
        &["sandbox", "exec", &id, "--", "tee", "/home/user/in.txt"],
        b"pay 5500000000000004",
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let copied = cli.data_dir.path().join("card.txt");
    let out = cli.run(&[
        "sandbox",
        "cp",
        &format!("{id}:/home/user/card.txt"),
        copied.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "4111 1111 **** 1111\n"
    );
    assert_eq!(cli.run(&["sandbox", "rm", &id]).status.code(), Some(0));

    let found = cli.run(&["--format", "json", "audit", "search", "--since", "1h"]);
    assert_eq!(found.status.code(), Some(0), "{}", text(&found.stderr));
    let records: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let seen: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["event"])
        .filter(|e| {
            e["principal"]["subject"]
                .as_str()
                .unwrap()
                .starts_with("local:")
        })
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("sandbox.create", "success"),
        ("sandbox.exec", "success"),
        ("sandbox.exec", "denied"),
        ("sandbox.exec", "success"),
        ("sandbox.exec", "denied"),
        ("file.read", "success"),
        ("sandbox.close", "success"),
    ]
    .iter()
    .map(|(t, o)| ((*t).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(seen, expected, "{records}");
    assert_eq!(cli.run(&["audit", "verify"]).status.code(), Some(0));
}

#[test]
fn killing_the_supervisor_takes_its_vm_along() {
    let Some(cli) = Cli::new() else { return };
    let out = cli.run(&["sandbox", "create"]);
    let id = text(&out.stdout).trim().to_string();
    let out = cli.run(&["sandbox", "inspect", &id, "--format", "json"]);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let supervisor = record["supervisor_pid"].as_i64().unwrap() as i32;
    // SAFETY: signalling a child process of this test by pid.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while qemu_processes_for(cli.data_dir.path()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        qemu_processes_for(cli.data_dir.path()),
        0,
        "VMM outlived its supervisor"
    );
    // The stale record disappears from listings, and its runtime dir is reaped on next start.
    let out = cli.run(&["sandbox", "ls", "--format", "json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = cli.run(&["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(cli.vm_dirs_left(), 0);
}

#[test]
fn doctor_reports_backend_accelerator_and_assets() {
    let Some(cli) = Cli::new() else { return };
    let out = cli.run(&["doctor", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["vmm"].as_str().unwrap().contains("QEMU"));
    let accel = report["accelerator"].as_str().unwrap();
    assert!(accel == "kvm" || accel == "tcg");
    assert!(!report["accelerator_reason"].as_str().unwrap().is_empty());

    let empty = tempfile::tempdir().unwrap();
    let out = cli
        .command(&["doctor"])
        .env("ZTEE_GUEST_DIR", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("MISSING"));
}

#[test]
fn compliance_report_sees_running_sandboxes_without_a_network() {
    let Some(cli) = Cli::new() else { return };
    let out = cli.run(&["sandbox", "create", "--timeout", "120"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();

    let out = cli.run(&["compliance", "report", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vms = report["evidence"]["isolation"]["running_vmms"]
        .as_array()
        .unwrap();
    // Other tests' VMs may be running too: every one of them must be without a network.
    assert!(!vms.is_empty(), "the sandbox's VMM was not found: {report}");
    for vm in vms {
        assert_eq!(vm["network_devices"], serde_json::json!([]), "{vm}");
        if vm["own_network_namespace"] == true {
            assert_eq!(
                vm["namespace_interfaces"],
                serde_json::json!(["lo"]),
                "{vm}"
            );
        }
    }
    let segmentation = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["requirement"].as_str().unwrap().starts_with("1.3"))
        .unwrap();
    assert_eq!(segmentation["status"], "met");

    // Markdown by default (also spelled --format md), with the verdict table.
    let out = cli.run(&["compliance", "report", "--format", "md", "--since", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let md = text(&out.stdout);
    assert!(
        md.starts_with("# ztee compliance evidence — PCI DSS v4.0.1"),
        "{md}"
    );
    assert!(md.contains("| requirement | control | status |"));

    let out = cli.run(&["compliance", "report", "--since", "last tuesday"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--since last tuesday"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = cli.run(&["sandbox", "rm", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Firecracker cannot run on these machines. `doctor` must say why, `auto` must pick QEMU, and
/// forcing Firecracker must fail with one clear line and leave nothing behind.
#[test]
fn doctor_explains_firecracker_and_a_forced_firecracker_fails_cleanly() {
    let Some(cli) = Cli::new() else { return };
    let missing = cli.data_dir.path().join("no/firecracker");
    let chroots = cli.data_dir.path().join("jailer");
    let firecracker = |args: &[&str]| {
        let mut command = cli.command(args);
        command
            .env("ZTEE_FIRECRACKER", &missing)
            .env("ZTEE_JAILER", cli.data_dir.path().join("no/jailer"))
            .env("ZTEE_FC_CHROOT_BASE", &chroots)
            .env_remove("ZTEE_VMM");
        command.output().unwrap()
    };
    let out = firecracker(&["doctor", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backend"], "qemu");
    assert_eq!(report["firecracker"]["can_run"], false);
    let why = report["firecracker"]["why_not"].as_str().unwrap();
    assert!(why.contains("firecracker not found"), "{why}");
    assert!(why.contains(missing.to_str().unwrap()), "{why}");
    assert!(report["backend_reason"]
        .as_str()
        .unwrap()
        .starts_with("Firecracker cannot run"));

    let out = firecracker(&["--vmm", "firecracker", "doctor", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backend"], "firecracker");
    assert_eq!(report["ok"], false);

    let out = firecracker(&["--vmm", "firecracker", "run", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("no/jailer"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{err}"
    );
    assert_eq!(cli.vm_dirs_left(), 0);
    let left: Vec<_> = std::fs::read_dir(chroots.join("firecracker"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "chroots left behind: {left:?}");

    // `sandbox create` hands the choice to its supervisor process.
    let out = firecracker(&["--vmm", "firecracker", "sandbox", "create"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("no/jailer"), "{err}");
    assert_eq!(cli.vm_dirs_left(), 0);

    let out = cli.run(&["--vmm", "kvm", "doctor"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: auto, qemu, firecracker"));
}
