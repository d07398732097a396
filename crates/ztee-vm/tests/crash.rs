//! Crash safety: when the process that owns sandboxes and warm-pool VMs is killed with SIGKILL,
//! nothing keeps running unsupervised, and the next engine start cleans up what was left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ztee_vm::SandboxSpec;

const CHILD_ENV: &str = "ZTEE_CRASH_TEST_DATA_DIR";

/// Run as a child process by `sigkill_takes_every_vm_along`: holds a sandbox and a warm pool,
/// says "ready", and waits to be killed. A no-op when run directly.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = common::engine_in(std::path::Path::new(&dir), true);
        let sandbox = engine.create(SandboxSpec::default()).await.unwrap();
        let pool = engine.start_pool(SandboxSpec::default(), 2).unwrap();
        assert_eq!(pool.wait_ready(2, Duration::from_secs(120)).await, 2);
        println!("ready {}", sandbox.id());
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// Live QEMU processes running one of the named VMs (QEMU's `-name` is the VM's runtime
/// directory name; a jailed QEMU's paths are jail-side, so match the name).
fn qemu_processes_under(names: &[String]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                return false;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("qemu-system")
                && names.iter().any(|name| cmdline.contains(name.as_str()))
        })
        .filter(|entry| {
            let pid = entry.file_name().to_string_lossy().parse().unwrap_or(0);
            common::process_exists(pid)
        })
        .count()
}

fn vm_names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("run/vms"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_takes_every_vm_along() {
    let Some(env) = common::env() else { return };
    let dir = env.dir.path().to_path_buf();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            // libtest may print "test crash_child ... " on the same line first.
            Some(Ok(line)) if line.contains("ready sbx-") => break,
            Some(Ok(_)) => continue,
            other => panic!("the child ended before it was ready: {other:?}"),
        }
    }
    // The sandbox and two pool VMs (at least) run under that data directory.
    let names = vm_names(&dir);
    assert!(
        qemu_processes_under(&names) >= 3,
        "the child's VMs are not running"
    );

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemu_processes_under(&names) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        qemu_processes_under(&names),
        0,
        "VMs outlived their supervisor"
    );

    // Their runtime directories are still there; the next engine start reaps them.
    let left: Vec<_> = std::fs::read_dir(dir.join("run/vms"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!left.is_empty());
    let _engine = common::engine_in(&dir, true);
    let after: Vec<_> = std::fs::read_dir(dir.join("run/vms"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        after.is_empty(),
        "{} runtime dirs left after restart",
        after.len()
    );
}
