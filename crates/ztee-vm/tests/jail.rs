//! The VMM jail, checked from the host against real jailed VMs: credentials, capabilities,
//! seccomp, namespaces, cgroup limits, the private root, sealed template RAM and cleanup.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ztee_vm::{ExecSpec, JailInfo, SandboxSpec};

/// The engine jails VMMs only as root; anywhere else these tests cannot run.
fn jailed_env(snapshots: bool) -> Option<common::TestEnv> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: VMM jail tests need root (the jail is enabled only for root)");
        return None;
    }
    // Whatever ZTEE_JAIL says for the other tests, these test the jail.
    let jail = ztee_vm::JailConfig {
        mode: ztee_vm::JailMode::On,
        ..ztee_vm::JailConfig::default()
    };
    let env = common::env_jailed(snapshots, jail)?;
    assert!(env.engine.jailed());
    Some(env)
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn own_namespaces() -> BTreeMap<String, String> {
    ztee_vm::jail::namespaces_of(std::process::id())
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The cgroup holding `limit` (v1 keeps each controller in its own hierarchy).
fn cgroup_value(jail: &JailInfo, controller: &str, file: &str) -> String {
    let dir = jail
        .cgroups
        .iter()
        .find(|d| jail.cgroups.len() == 1 || d.starts_with(format!("/sys/fs/cgroup/{controller}")))
        .unwrap();
    read_trimmed(&dir.join(file))
}

fn assert_confined(jail: &JailInfo, spec: &SandboxSpec) {
    let pid = jail.vmm_pid;
    assert_ne!(pid, 0);
    assert_ne!(pid, jail.waiter_pid);
    assert!(
        (64000..=64999).contains(&jail.uid),
        "uid {} outside the default range",
        jail.uid
    );
    let uid = jail.uid.to_string();
    assert_eq!(status_field(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Gid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Groups"), "");
    for caps in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "QEMU's seccomp filter");
    // QEMU is pid 1 of its own pid namespace.
    assert_eq!(status_field(pid, "NSpid").split(' ').next_back(), Some("1"));

    let host = own_namespaces();
    assert_eq!(jail.namespaces, ztee_vm::jail::namespaces_of(pid));
    for kind in ztee_vm::jail::NAMESPACE_KINDS {
        let (mine, its) = (&host[kind], &jail.namespaces[kind]);
        assert!(its.starts_with(kind), "{its}");
        assert_ne!(mine, its, "{kind} namespace shared with the host");
    }

    // In its cgroup, with the limits written.
    let procs = std::fs::read_to_string(jail.cgroups[0].join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    // Guest memory plus 128 MiB, and 384 MiB more for TCG's translation cache.
    let memory = (u64::from(spec.memory_mib) + 128 + 384) << 20;
    let quota = u64::from(spec.vcpus) * 100_000;
    if jail.cgroups.len() == 1 {
        assert_eq!(cgroup_value(jail, "", "memory.max"), memory.to_string());
        assert_eq!(cgroup_value(jail, "", "pids.max"), "64");
        assert_eq!(cgroup_value(jail, "", "cpu.max"), format!("{quota} 100000"));
    } else {
        assert_eq!(
            cgroup_value(jail, "memory", "memory.limit_in_bytes"),
            memory.to_string()
        );
        assert_eq!(cgroup_value(jail, "pids", "pids.max"), "64");
        assert_eq!(
            cgroup_value(jail, "cpu", "cpu.cfs_quota_us"),
            quota.to_string()
        );
    }

    // Its root holds only what it needs.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let allowed = ["dev", "etc", "lib", "lib64", "proc", "run", "usr", "vm"];
    assert!(top.iter().all(|t| allowed.contains(&t.as_str())), "{top:?}");
    let etc: Vec<_> = std::fs::read_dir(root.join("etc")).unwrap().collect();
    assert_eq!(etc.len(), 1, "only ld.so.cache in /etc");
    assert!(!root.join("etc/passwd").exists());
    assert!(root.join("run/agent.sock").exists());
    assert!(root.join("vm/vmlinux").exists());
    assert_eq!(
        std::fs::canonicalize(root.join(".")).unwrap(),
        jail.root,
        "the root inspect reports"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_restored_vm_is_confined_and_cannot_touch_its_template() {
    let Some(env) = jailed_env(true) else { return };
    let marker = tempfile::Builder::new()
        .prefix("ztee-jail-marker")
        .tempfile_in("/tmp")
        .unwrap();
    let spec = SandboxSpec::default();
    let sandbox = env.engine.create(spec.clone()).await.unwrap();
    let info = sandbox.info().clone();
    assert_eq!(info.start.to_string(), "snapshot");
    let jail = info.jail.clone().expect("jail info");
    assert_eq!(info.vmm_pid, jail.vmm_pid);
    assert_confined(&jail, &spec);
    let pid = jail.vmm_pid;
    let marker_name = marker.path().file_name().unwrap();
    assert!(Path::new("/tmp").join(marker_name).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/tmp"))
        .join(marker_name)
        .exists());

    // The template RAM reaches QEMU only as a sealed memfd: not even root can write it.
    let mut sealed = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let path = entry.unwrap().path();
        let target = std::fs::read_link(&path).unwrap_or_default();
        let target = target.to_string_lossy();
        assert!(
            !target.ends_with("/ram"),
            "QEMU holds the RAM file {target}"
        );
        if target.starts_with("/memfd:ztee-template-ram") {
            sealed = Some(path);
        }
    }
    let sealed = sealed.expect("QEMU maps the sealed template RAM");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&sealed)
        .unwrap();
    let err = file.write_at(b"corrupt", 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // Nor the VM's own uid, which QEMU runs as.
    use std::os::unix::process::CommandExt;
    let attempt = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1", "count=1", "conv=notrunc"])
        .arg(format!("of={}", sealed.display()))
        .uid(jail.uid)
        .gid(jail.gid)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&attempt.stderr);
    assert!(!attempt.status.success(), "the VM's uid wrote the template");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");

    // The sandbox works.
    let out = sandbox
        .exec(ExecSpec::new(vec![
            "sh".into(),
            "-c".into(),
            "echo jailed; id -u".into(),
        ]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert!(out.stdout.starts_with(b"jailed\n"), "{:?}", out);
    sandbox
        .write_file("note.txt", b"inside", 0o644)
        .await
        .unwrap();
    assert_eq!(
        sandbox.read_file("note.txt", 1024).await.unwrap(),
        b"inside"
    );

    // A second clone still boots from the same, intact template.
    let second = env.engine.create(spec).await.unwrap();
    second.ping().await.unwrap();
    let second_jail = second.info().jail.clone().unwrap();
    assert_ne!(second_jail.uid, jail.uid);
    second.destroy().await.unwrap();

    sandbox.destroy().await.unwrap();
    for cgroup in &jail.cgroups {
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    }
    assert!(!common::process_exists(pid), "QEMU still running");
    assert!(!jail.root.exists(), "{} left behind", jail.root.display());
    assert!(
        env.leftover_vm_dirs().is_empty(),
        "{:?}",
        env.leftover_vm_dirs()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn cold_booted_vms_get_separate_uids_namespaces_and_cgroups() {
    let Some(env) = jailed_env(false) else { return };
    let spec = SandboxSpec {
        vcpus: 2,
        ..SandboxSpec::default()
    };
    let (a, b) = tokio::join!(
        env.engine.create(spec.clone()),
        env.engine.create(spec.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (ja, jb) = (
        a.info().jail.clone().unwrap(),
        b.info().jail.clone().unwrap(),
    );
    assert_confined(&ja, &spec);
    assert_confined(&jb, &spec);
    assert_ne!(ja.uid, jb.uid);
    assert_ne!(ja.cgroups, jb.cgroups);
    for kind in ztee_vm::jail::NAMESPACE_KINDS {
        assert_ne!(ja.namespaces[kind], jb.namespaces[kind], "{kind}");
    }
    // The per-VM initramfs (it holds the VM's secret) belongs to that VM's uid alone.
    use std::os::unix::fs::MetadataExt;
    let initrd = std::fs::metadata(ja.root.parent().unwrap().join("initrd.img")).unwrap();
    assert_eq!((initrd.uid(), initrd.mode() & 0o777), (ja.uid, 0o600));
    // Killing the waiter takes QEMU with it.
    // SAFETY: kill(2) on the waiter this test's engine spawned.
    unsafe { libc::kill(ja.waiter_pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while common::process_exists(ja.vmm_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !common::process_exists(ja.vmm_pid),
        "QEMU outlived its waiter"
    );
    b.ping().await.unwrap();
    drop(a);
    b.destroy().await.unwrap();
    for cgroup in ja.cgroups.iter().chain(&jb.cgroups) {
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    }
    assert!(
        env.leftover_vm_dirs().is_empty(),
        "{:?}",
        env.leftover_vm_dirs()
    );
}
