//! The engine's Firecracker path up to the VMM process: what it puts in each VM's chroot and
//! how it invokes the jailer. The "jailer" here is a fake (a shell script that records its
//! arguments and the chroot it was given, then fails like a VMM that cannot start), because
//! Firecracker cannot run on these machines; nothing here boots a guest. What happens after the
//! jailer (the API calls, the vsock handshake) is tested in `firecracker_contract.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use ztee_vm::backend::firecracker::FirecrackerConfig;
use ztee_vm::{Engine, EngineConfig, GuestAssets, SandboxSpec, Vmm, VmmChoice, VmmSettings};

fn fake_jailer(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("jailer");
    let record = dir.join("records");
    std::fs::create_dir_all(&record).unwrap();
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
rec={record}/$$
for a in "$@"; do echo "ARG $a" >> "$rec"; done
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2 ;;
    --chroot-base-dir) base=$2 ;;
  esac
  shift
done
cd "$base/firecracker/$id/root" && stat -c 'FILE %n %u %a' * >> "$rec"
for f in *; do [ -L "$f" ] && echo "SYMLINK $f" >> "$rec"; done
echo "fake jailer: no firecracker on this machine" >&2
exit 3
"#,
            record = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn the_engine_jails_firecracker_with_its_files_and_cleans_up_when_it_fails() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the jailer path needs root (chown of the chroot's files)");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ztee-f")
        .tempdir_in("/tmp")
        .unwrap();
    let jailer = fake_jailer(dir.path());
    let chroots = dir.path().join("chroots");
    let firecracker = dir.path().join("firecracker");
    std::fs::write(&firecracker, b"not run").unwrap();
    let assets = GuestAssets::in_dir(&common::guest_dir()).unwrap();
    let engine = Engine::new(EngineConfig {
        assets,
        runtime_dir: dir.path().join("run"),
        cache_dir: dir.path().join("cache"),
        accelerator: ztee_vm::AccelChoice::Kvm,
        boot_timeout: Duration::from_secs(30),
        snapshots: true,
        jail: ztee_vm::JailConfig {
            lock_dir: dir.path().join("uids"),
            ..ztee_vm::JailConfig::default()
        },
        vmm: VmmSettings {
            choice: VmmChoice::Firecracker,
            firecracker: FirecrackerConfig {
                firecracker: firecracker.clone(),
                jailer,
                chroot_base: chroots.clone(),
                ..FirecrackerConfig::default()
            },
        },
    })
    .unwrap();
    assert_eq!(engine.vmm().await.vmm, Vmm::Firecracker);

    let err = engine
        .create(SandboxSpec::default())
        .await
        .err()
        .expect("a VM without Firecracker started");
    let message = err.to_string();
    assert!(message.contains("exited during boot"), "{message}");
    assert!(message.contains("fake jailer: no firecracker"), "{message}");

    // Two attempts: the snapshot template first, then (its failure logged) a cold boot.
    let records: Vec<String> = std::fs::read_dir(dir.path().join("records"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let mut ids = Vec::new();
    for record in &records {
        let args: Vec<&str> = record
            .lines()
            .filter_map(|l| l.strip_prefix("ARG "))
            .collect();
        let value = |flag: &str| {
            let at = args.iter().position(|a| *a == flag).unwrap();
            args[at + 1].to_string()
        };
        let id = value("--id");
        assert!(id.starts_with("tpl-") || id.starts_with("sbx-"), "{id}");
        assert_eq!(value("--exec-file"), firecracker.to_str().unwrap());
        assert_eq!(value("--chroot-base-dir"), chroots.to_str().unwrap());
        let uid: u32 = value("--uid").parse().unwrap();
        assert!((64000..=64999).contains(&uid), "{uid}");
        assert_eq!(value("--gid"), uid.to_string());
        assert_eq!(value("--cgroup-version"), "2");
        let memory_max = format!("memory.max={}", (256 + 64) * 1024 * 1024);
        assert!(args.contains(&memory_max.as_str()), "{args:?}");
        let tail = &args[args.iter().position(|a| *a == "--").unwrap()..];
        assert_eq!(
            tail,
            [
                "--",
                "--api-sock",
                "/run/firecracker.socket",
                "--level",
                "Warning"
            ]
        );
        // The chroot the jailer got: kernel, initramfs and image; the initramfs (it carries
        // the VM's secret) a private copy readable by the VM's uid alone; /run the VM's own.
        let files: Vec<Vec<&str>> = record
            .lines()
            .filter_map(|l| l.strip_prefix("FILE "))
            .map(|l| l.split(' ').collect())
            .collect();
        assert!(
            !record.contains("SYMLINK"),
            "symlinks point out of the chroot: {record}"
        );
        let names: Vec<&str> = files.iter().map(|f| f[0]).collect();
        assert_eq!(
            names,
            ["initrd.img", "rootfs.img", "run", "vmlinux"],
            "{record}"
        );
        let initrd = &files[0];
        assert_eq!((initrd[1], initrd[2]), (uid.to_string().as_str(), "400"));
        let run = &files[2];
        assert_eq!((run[1], run[2]), (uid.to_string().as_str(), "700"));
        ids.push(id);
    }
    ids.sort();
    assert!(
        ids[0].starts_with("sbx-") && ids[1].starts_with("tpl-"),
        "{ids:?}"
    );

    // Nothing left: no chroot, no runtime directory, no half-made snapshot.
    let left = |path: &Path| std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left(&chroots.join("firecracker")), 0);
    assert_eq!(left(&dir.path().join("run/vms")), 0);
    assert_eq!(left(&dir.path().join("cache/snapshots")), 0);
}
