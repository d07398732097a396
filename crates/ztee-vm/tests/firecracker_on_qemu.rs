//! ztee's Firecracker backend end to end with a real guest, on a host whose KVM cannot boot one.
//!
//! The engine runs exactly as on a KVM host: it prepares the VM's chroot, starts the "jailer",
//! configures the VMM over Firecracker's API, and reaches the agent through the hybrid vsock
//! socket. Two parts stand in: the jailer is a script that enters the chroot directory and
//! starts the VMM without changing uid, cgroups or namespaces, and the VMM is
//! `support/firecracker_on_qemu.py`, which serves Firecracker's API and boots the configured
//! kernel, initramfs and drive under QEMU (TCG) with a virtio vsock device backed by
//! vhost-device-vsock. The guest kernel and agent are the ones every VM runs; the agent talks over
//! virtio-vsock, and the host side is Firecracker's `CONNECT <port>` / `OK <port>` protocol on a
//! Unix socket. Needs root (the chroot's files are chowned) and vhost-device-vsock
//! (`scripts/test-tools.sh` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ztee_vm::backend::firecracker::FirecrackerConfig;
use ztee_vm::{
    Engine, EngineConfig, ExecSpec, ExitStatus, GuestAssets, SandboxSpec, Vmm, VmmChoice,
    VmmSettings,
};

/// The jailer's interface, none of its isolation: enter `<base>/<exec name>/<id>/root` and run
/// the VMM with the arguments after `--`.
fn pass_through_jailer(dir: &Path) -> PathBuf {
    let script = dir.join("jailer");
    std::fs::write(
        &script,
        r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    --id) id=$2 ;;
    --exec-file) exe=$2 ;;
    --chroot-base-dir) base=$2 ;;
  esac
  shift 2
done
cd "$base/$(basename "$exe")/$id/root" || exit 1
exec "$exe" "$@"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// vhost-device-vsock: `$ZTEE_VHOST_DEVICE_VSOCK`, else where `scripts/test-tools.sh` puts it.
fn vhost_device_vsock() -> PathBuf {
    if let Some(path) = std::env::var_os("ZTEE_VHOST_DEVICE_VSOCK").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("ZTEE_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ztee"));
    cache.join("tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock")
}

/// Processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent pid is the second field after the command name, which ends with ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec::new(vec!["sh".into(), "-c".into(), script.into()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_firecracker_backend_runs_the_agent_over_vsock_in_a_real_guest() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the Firecracker backend needs root (chown of the chroot's files)");
        return;
    }
    if ztee_vm::backend::qemu::version().is_none() {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine");
        return;
    }
    let vsock_device = vhost_device_vsock();
    assert!(
        vsock_device.exists(),
        "{} is missing: run scripts/test-tools.sh",
        vsock_device.display()
    );
    std::env::set_var("ZTEE_VHOST_DEVICE_VSOCK", &vsock_device);
    let dir = tempfile::Builder::new()
        .prefix("ztee-q")
        .tempdir_in("/tmp")
        .unwrap();
    let firecracker =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/firecracker_on_qemu.py");
    let chroots = dir.path().join("chroots");
    let engine = Engine::new(EngineConfig {
        assets: GuestAssets::in_dir(&common::guest_dir()).unwrap(),
        runtime_dir: dir.path().join("run"),
        cache_dir: dir.path().join("cache"),
        accelerator: ztee_vm::AccelChoice::Kvm,
        boot_timeout: Duration::from_secs(120),
        // The stand-in does not pause or snapshot: VMs boot from the kernel.
        snapshots: false,
        jail: ztee_vm::JailConfig {
            lock_dir: dir.path().join("uids"),
            ..ztee_vm::JailConfig::default()
        },
        vmm: VmmSettings {
            choice: VmmChoice::Firecracker,
            firecracker: FirecrackerConfig {
                firecracker: firecracker.clone(),
                jailer: pass_through_jailer(dir.path()),
                chroot_base: chroots.clone(),
                ..FirecrackerConfig::default()
            },
        },
    })
    .unwrap();
    assert_eq!(engine.vmm().await.vmm, Vmm::Firecracker);

    let sandbox = engine.create(SandboxSpec::default()).await.unwrap();
    assert_eq!(sandbox.info().backend, "firecracker");
    // The guest was told to use vsock; its VMM has a vsock device and no virtio-serial port; the
    // agent answered through the hybrid vsock socket in the chroot.
    let out = sandbox
        .exec(sh(
            "grep -o 'ztee.transport=vsock' /proc/cmdline; python3 -c 'print(6 * 7)'",
        ))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ztee.transport=vsock\n42\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qemu = children(sandbox.info().vmm_pid)
        .into_iter()
        .map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .find(|c| c.contains("qemu-system"))
        .expect("the VMM's QEMU");
    assert!(qemu.contains("vhost-user-vsock-device"), "{qemu}");
    assert!(!qemu.contains("virtserialport"), "{qemu}");
    let hybrid = chroots
        .join("firecracker_on_qemu.py")
        .join(&sandbox.info().id)
        .join("root/run/agent.vsock");
    assert!(hybrid.exists(), "{}", hybrid.display());
    assert_eq!(out.status, ExitStatus::Code(0));
    // Input, files and concurrent commands over the same vsock connection.
    let mut spec = ExecSpec::new(vec!["tr".into(), "a-z".into(), "A-Z".into()]);
    spec.stdin = true;
    let (upper, wc) = tokio::join!(
        async {
            let execution = sandbox.exec(spec).await.unwrap();
            execution.write_stdin(b"over vsock").await.unwrap();
            execution.close_stdin().await.unwrap();
            execution.output().await.unwrap()
        },
        async {
            sandbox
                .exec(sh("head -c 3000000 /dev/zero | wc -c"))
                .await
                .unwrap()
                .output()
                .await
                .unwrap()
        }
    );
    assert_eq!(upper.stdout, b"OVER VSOCK");
    assert_eq!(String::from_utf8_lossy(&wc.stdout).trim(), "3000000");

    let vm_dirs = || {
        std::fs::read_dir(chroots.join("firecracker_on_qemu.py"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(vm_dirs(), 1, "the VM's chroot");
    sandbox.destroy().await.unwrap();
    assert_eq!(vm_dirs(), 0, "the chroot is removed with the VM");
}
