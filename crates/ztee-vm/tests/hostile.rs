//! Hostile code in real VMs: each attack ends contained (the sandbox still answers) or with the
//! sandbox destroyed, with a clear status, while the host and a bystander sandbox are unaffected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use ztee_vm::{ExecSpec, ExitStatus, Output, Sandbox, SandboxSpec};

fn sh(script: &str, timeout_s: u64) -> ExecSpec {
    let mut spec = ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
    spec.timeout = Some(Duration::from_secs(timeout_s));
    spec
}

async fn run(sandbox: &Sandbox, script: &str, timeout_s: u64) -> Output {
    let started = sandbox
        .exec(sh(script, timeout_s))
        .await
        .unwrap_or_else(|err| panic!("{script}: cannot start: {err}"));
    started
        .output()
        .await
        .unwrap_or_else(|err| panic!("{script}: {err}"))
}

async fn answers(sandbox: &Sandbox) {
    let out = run(sandbox, "echo alive", 30).await;
    assert_eq!(
        out.stdout,
        b"alive\n",
        "sandbox {} stopped answering",
        sandbox.id()
    );
}

fn host_process_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count()
}

fn vmm_peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

fn host_available_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_code_is_contained() {
    let Some(env) = common::env() else { return };
    let spec = SandboxSpec {
        max_processes: 64,
        ..SandboxSpec::default()
    };
    // Make the snapshot first, so the baseline below does not count it.
    env.engine
        .create(SandboxSpec::default())
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();
    let processes_before = host_process_count();
    let memory_before = host_available_mib();
    let bystander = env.engine.create(SandboxSpec::default()).await.unwrap();
    let victim = env.engine.create(spec).await.unwrap();

    // Fork bomb: the process limit stops it, the timeout ends it, its group dies with it.
    let out = run(&victim, "b() { b | b & }; b; sleep 60", 5).await;
    assert_eq!(
        out.status,
        ExitStatus::TimedOut,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    answers(&victim).await;
    let out = run(&victim, "ls /proc | grep -c '^[0-9]'", 30).await;
    let remaining: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        remaining < 40,
        "{remaining} processes survived the fork bomb"
    );

    // Memory exhaustion: the guest kernel kills the hog, never the agent.
    let out = run(
        &victim,
        "exec python3 -c 'a = []\nwhile True: a.append(bytearray(8 << 20))'",
        60,
    )
    .await;
    assert_eq!(
        out.status,
        ExitStatus::Signal(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    answers(&victim).await;

    // Filling the scratch disk: writes fail with ENOSPC, the VM goes on.
    let out = run(
        &victim,
        "dd if=/dev/zero of=/tmp/fill bs=1M 2>&1; rm -f /tmp/fill",
        120,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No space left on device"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    answers(&victim).await;

    // An infinite loop: the timeout ends it.
    let out = run(&victim, "while :; do :; done", 2).await;
    assert_eq!(out.status, ExitStatus::TimedOut);

    // Flooding stdout: the output limit ends it.
    let mut flood = sh("yes flood", 60);
    flood.max_output_bytes = 4 << 20;
    let out = victim.exec(flood).await.unwrap().output().await.unwrap();
    assert_eq!(out.status, ExitStatus::OutputLimit);
    assert!(out.stdout.len() <= 4 << 20);

    // Killing PID 1 and writing to the read-only image are refused.
    let out = run(&victim, "kill -9 1; echo kill=$?; kill -9 -1; true", 10).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kill=1"),
        "{out:?}"
    );
    let out = run(
        &victim,
        "touch /usr/bin/evil 2>/dev/null && echo WROTE; echo x >> /etc/passwd 2>/dev/null && echo WROTE; echo done",
        10,
    )
    .await;
    assert_eq!(out.stdout, b"done\n");
    answers(&victim).await;
    answers(&bystander).await;

    // The memory bomb filled the guest's RAM, not the host's: the VMM's peak resident size stays
    // within guest memory plus QEMU's own (TCG) overhead.
    let victim_pid = victim.info().vmm_pid;
    let peak_mib = vmm_peak_rss_mib(victim_pid);
    assert!(
        peak_mib <= u64::from(victim.info().memory_mib) + 512,
        "the victim's VMM peaked at {peak_mib} MiB"
    );
    victim.destroy().await.unwrap();
    bystander.destroy().await.unwrap();
    assert!(!common::process_exists(victim_pid));
    assert!(env.leftover_vm_dirs().is_empty());

    // The host: what the attacks took was the VMs' own memory, and it is back; no process of
    // theirs remains.
    let processes_after = host_process_count();
    assert!(
        processes_after <= processes_before + 2,
        "host processes grew from {processes_before} to {processes_after}"
    );
    // Other work on a shared machine moves this too; the tolerance covers that, not a VM.
    let memory_after = host_available_mib();
    assert!(
        memory_after + 1024 >= memory_before,
        "host memory available fell from {memory_before} MiB to {memory_after} MiB"
    );
}
