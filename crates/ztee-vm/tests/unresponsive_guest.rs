//! A guest that stops answering does not hold its VM: the host's own bounds end the wait and
//! kill the VMM (docs/execution.md, "Every wait is bounded"). Its own test binary: it boots a VM
//! and counts on nothing else running in the process (tests/hostile.rs counts host processes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use ztee_vm::{ExecSpec, SandboxSpec};

fn sh(script: &str, timeout_s: u64) -> ExecSpec {
    let mut spec = ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()]);
    spec.timeout = Some(Duration::from_secs(timeout_s));
    spec
}

/// A guest that stops answering in the middle of a command (here: its VMM is frozen with
/// SIGSTOP, which no guest code can undo) does not hold its VM: the host gives up at the
/// command's limit plus the grace, the caller gets an error saying so, and the VMM is killed.
#[tokio::test(flavor = "current_thread")]
async fn a_guest_that_never_reports_an_exit_loses_its_vm() {
    let Some(env) = common::env() else { return };
    let sandbox = env.engine.create(SandboxSpec::default()).await.unwrap();
    let vmm_pid = sandbox.info().vmm_pid;
    let mut execution = sandbox.exec(sh("sleep 600", 1)).await.unwrap();
    // SAFETY: kill(2) with a pid this test's engine started and has not reaped.
    assert_eq!(unsafe { libc::kill(vmm_pid as i32, libc::SIGSTOP) }, 0);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(120), execution.next_event())
        .await
        .expect("the host must stop waiting at the command's limit plus the grace")
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        err.to_string()
            .contains("did not end a command within its time limit"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(1)
            && waited < Duration::from_secs(1) + ztee_vm::exec::EXIT_GRACE * 3,
        "{waited:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::process_exists(vmm_pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !common::process_exists(vmm_pid),
        "the unresponsive guest's VMM is still running"
    );
    assert!(!sandbox.is_alive());
    sandbox.destroy().await.unwrap();
    assert!(env.leftover_vm_dirs().is_empty());
}
