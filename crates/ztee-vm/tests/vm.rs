//! End-to-end tests of the VM engine with real microVMs (QEMU; TCG on machines without usable KVM).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ztee_vm::{ExecEvent, ExecSpec, ExitStatus, SandboxSpec, VmError};

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec::new(argv(&["sh", "-c", script]))
}

#[tokio::test(flavor = "current_thread")]
async fn commands_exit_codes_streams_stdin_and_errors() {
    let Some(env) = common::env() else { return };
    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();
    let vmm_pid = sandbox.info().vmm_pid;
    assert!(common::process_exists(vmm_pid));

    // Exit code and separate streams.
    let out = sandbox
        .exec(sh("echo out; echo err >&2; exit 7"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, ExitStatus::Code(7));

    // python3 from the image, as the unprivileged user, in the home directory.
    let out = sandbox
        .exec(ExecSpec::new(argv(&[
            "python3",
            "-c",
            "import os; print(6*7, os.getuid(), os.getcwd())",
        ])))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42 1000 /home/user\n");

    // stdin reaches the command and EOF ends it.
    let mut spec = ExecSpec::new(argv(&["tr", "a-z", "A-Z"]));
    spec.stdin = true;
    let execution = sandbox.exec(spec).await.unwrap();
    execution.write_stdin(b"hello ").await.unwrap();
    execution.write_stdin(b"sandbox").await.unwrap();
    execution.close_stdin().await.unwrap();
    let out = execution.output().await.unwrap();
    assert_eq!(out.stdout, b"HELLO SANDBOX");

    // A command that does not exist.
    match sandbox
        .exec(ExecSpec::new(argv(&["no-such-program-xyz"])))
        .await
    {
        Err(VmError::CommandNotFound(name)) => assert_eq!(name, "no-such-program-xyz"),
        Err(other) => panic!("expected CommandNotFound, got {other}"),
        Ok(_) => panic!("a missing program started"),
    }

    // A working directory that does not exist.
    let mut spec = sh("pwd");
    spec.cwd = Some("/no/such/dir".into());
    assert!(matches!(
        sandbox.exec(spec).await,
        Err(VmError::InvalidRequest(_))
    ));

    // Signals reach the command's process group.
    let execution = sandbox.exec(sh("sleep 30")).await.unwrap();
    execution.signal(15).await.unwrap();
    assert_eq!(
        execution.output().await.unwrap().status,
        ExitStatus::Signal(15)
    );

    sandbox.destroy().await.unwrap();
    assert!(!common::process_exists(vmm_pid), "VMM still running");
    assert!(env.leftover_vm_dirs().is_empty(), "runtime dir left behind");
}

#[tokio::test(flavor = "current_thread")]
async fn output_streams_before_the_command_ends_and_timeouts_kill() {
    let Some(env) = common::env() else { return };
    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();

    let started = Instant::now();
    let mut execution = sandbox
        .exec(sh("echo first; sleep 3; echo second"))
        .await
        .unwrap();
    let first = execution.next_event().await.unwrap();
    let first_at = started.elapsed();
    assert_eq!(first, Some(ExecEvent::Stdout(b"first\n".to_vec())));
    assert!(
        first_at < Duration::from_millis(2500),
        "first line took {first_at:?}: output is not streamed"
    );
    let rest = execution.output().await.unwrap();
    assert_eq!(rest.stdout, b"second\n");
    assert!(started.elapsed() >= Duration::from_secs(3));

    let started = Instant::now();
    let mut spec = sh("sleep 30");
    spec.timeout = Some(Duration::from_secs(1));
    let out = sandbox.exec(spec).await.unwrap().output().await.unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Background children die with the command's process group.
    let out = sandbox
        .exec(sh("sleep 100 & echo $!"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
    let out = sandbox
        .exec(sh(&format!(
            "test -d /proc/{pid} && echo ALIVE || echo GONE"
        )))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.stdout, b"GONE\n",
        "a background child outlived its command"
    );

    // Output past the limit kills the command.
    let mut spec = sh("yes flood");
    spec.max_output_bytes = 1024 * 1024;
    let out = sandbox.exec(spec).await.unwrap().output().await.unwrap();
    assert_eq!(out.status, ExitStatus::OutputLimit);
    assert!(out.stdout.len() <= 1024 * 1024);

    sandbox.destroy().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn large_output_and_binary_files_arrive_intact() {
    let Some(env) = common::env() else { return };
    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();

    // 10 MiB of a known pattern through stdout.
    let expected: Vec<u8> = (0..=255u8).cycle().take(10 * 1024 * 1024).collect();
    let out = sandbox
        .exec(ExecSpec::new(argv(&[
            "python3",
            "-c",
            "import sys; sys.stdout.buffer.write(bytes(range(256)) * 40960)",
        ])))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected, "10 MiB of output was corrupted");

    // Binary file round trip, checked inside the guest too.
    let mut data = vec![0u8; 3 * 1024 * 1024 + 17];
    getrandom::getrandom(&mut data).unwrap();
    sandbox.write_file("data.bin", &data, 0o600).await.unwrap();
    let back = sandbox
        .read_file("/home/user/data.bin", u64::MAX)
        .await
        .unwrap();
    assert!(back == data, "file changed in the round trip");
    let digest: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = sandbox
        .exec(sh("sha256sum data.bin; stat -c %a data.bin"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&digest), "{text}");
    assert!(text.ends_with("600\n"), "{text}");

    // Read limits, missing files, and files the sandbox user may not touch.
    assert!(matches!(
        sandbox.read_file("data.bin", 1024).await,
        Err(VmError::FileTooLarge { .. })
    ));
    assert!(matches!(
        sandbox.read_file("/no/such/file", u64::MAX).await,
        Err(VmError::FileNotFound(_))
    ));
    assert!(matches!(
        sandbox.write_file("/etc/passwd", b"x", 0o644).await,
        Err(VmError::PermissionDenied(_))
    ));
    assert!(matches!(
        sandbox.read_file("/etc/shadow", u64::MAX).await,
        Err(VmError::PermissionDenied(_))
    ));

    sandbox.destroy().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn the_guest_is_isolated_from_the_host() {
    // Booted from the kernel, so the cold path is covered too.
    let Some(env) = common::env_with(false) else {
        return;
    };
    let marker = env.dir.path().join("host-marker");
    std::fs::write(&marker, "host secret").unwrap();
    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();
    assert_eq!(sandbox.info().start, ztee_vm::sandbox::StartKind::Cold);
    let script = format!(
        "test -e {marker} && echo SEEN; test -e /tmp/{name} && echo SEEN; \
         uname -r; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
         touch /usr/bin/x 2>/dev/null && echo WROTE_IMAGE; \
         cat /proc/cmdline >/dev/null; id -u",
        marker = marker.display(),
        name = marker.file_name().unwrap().to_string_lossy()
    );
    let out = sandbox
        .exec(sh(&script))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("SEEN"), "the guest saw a host file: {text}");
    assert!(!text.contains("WROTE_IMAGE"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(lines[0], host_release.trim(), "guest runs the host kernel");
    assert_eq!(lines[0], sandbox.info().guest_kernel);
    // Only loopback: no network device at all.
    assert_eq!(&lines[1..lines.len() - 1], &["lo"], "{text}");
    assert_eq!(lines.last(), Some(&"1000"));

    // Even root in the sandbox's file system view cannot reach the agent's secret or devices.
    let out = sandbox
        .exec(sh("ls /dev; ls /ztee 2>&1; ls /dev/vda 2>&1"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("vport"), "{text}");
    assert!(text.contains("No such file"), "{text}");

    // Writes land in the scratch layer and die with the VM.
    sandbox
        .exec(sh("echo persisted > /tmp/state"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    sandbox.destroy().await.unwrap();
    let fresh = env.engine.create(SandboxSpec::default()).await.unwrap();
    let out = fresh
        .exec(sh("cat /tmp/state 2>&1; cat /etc/machine-id; hostname"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("No such file"),
        "state survived a sandbox: {text}"
    );
    assert!(
        text.contains(&fresh.id().to_string()),
        "hostname is not the sandbox id: {text}"
    );
    fresh.destroy().await.unwrap();
    assert!(env.leftover_vm_dirs().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn clones_of_one_snapshot_are_reseeded_and_renamed() {
    let Some(env) = common::env() else { return };
    let probe = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; cat /etc/machine-id; date +%s";
    let mut seen = Vec::new();
    for _ in 0..2 {
        let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();
        assert_eq!(sandbox.info().start, ztee_vm::sandbox::StartKind::Snapshot);
        let out = sandbox
            .exec(sh(probe))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0].len(), 64, "{text}");
        assert_eq!(lines[1], sandbox.id());
        // The clock was set at lease, not left at the snapshot's moment.
        let guest_now: u64 = lines[3].parse().unwrap();
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            host_now.abs_diff(guest_now) <= 5,
            "guest clock {guest_now}, host {host_now}"
        );
        seen.push(lines);
        sandbox.destroy().await.unwrap();
    }
    assert_ne!(
        seen[0][0], seen[1][0],
        "two clones produced the same /dev/urandom output"
    );
    assert_ne!(seen[0][1], seen[1][1], "two clones share a hostname");
    assert_ne!(seen[0][2], seen[1][2], "two clones share a machine id");
    assert!(env.leftover_vm_dirs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_pool_serves_each_vm_once() {
    let Some(env) = common::env() else { return };
    let spec = SandboxSpec::default();
    let pool = env.engine.start_pool(spec.clone(), 2).unwrap();
    assert_eq!(pool.wait_ready(2, Duration::from_secs(120)).await, 2);
    let mut ids = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let sandbox = env.engine.create(spec.clone()).await.unwrap();
        ids.push(sandbox.id().to_string());
        pids.push(sandbox.info().vmm_pid);
        let out = sandbox
            .exec(sh("echo hi"))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        sandbox.destroy().await.unwrap();
    }
    let stats = pool.stats();
    assert!(stats.served >= 2, "{stats:?}");
    ids.sort();
    ids.dedup();
    pids.sort();
    pids.dedup();
    assert_eq!(ids.len(), 3, "a VM was served twice");
    assert_eq!(pids.len(), 3, "a VMM was served twice");
    for pid in pids {
        assert!(
            !common::process_exists(pid),
            "a leased VM outlived its sandbox"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_all_succeed() {
    let Some(env) = common::env() else { return };
    let creates = (0..4).map(|_| {
        let engine = env.engine.clone();
        tokio::spawn(async move { engine.create(SandboxSpec::default()).await })
    });
    let mut sandboxes = Vec::new();
    for create in creates {
        sandboxes.push(create.await.unwrap().unwrap());
    }
    for sandbox in &sandboxes {
        let out = sandbox
            .exec(sh("echo alive"))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.stdout, b"alive\n");
    }
    for sandbox in sandboxes {
        sandbox.destroy().await.unwrap();
    }
    assert!(env.leftover_vm_dirs().is_empty());
}
