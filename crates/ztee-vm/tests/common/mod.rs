//! Shared setup for tests that boot real VMs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
#![allow(dead_code)]

use std::path::PathBuf;

use ztee_vm::{Engine, EngineConfig, GuestAssets};

/// A temporary data directory with a short path (unix socket paths are limited to 107 bytes).
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
}

impl TestEnv {
    pub fn runtime_vms(&self) -> PathBuf {
        self.dir.path().join("run/vms")
    }

    /// Names left in the runtime directory: must be empty once every sandbox is destroyed.
    pub fn leftover_vm_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.runtime_vms())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The guest assets: `$ZTEE_GUEST_DIR`, else the default data dir's `guest/`.
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".local/share/ztee/guest")
}

/// An engine over a fresh data directory that restores VMs from snapshots, or `None` (after a
/// loud message) when QEMU cannot start on this machine at all. Missing guest assets are a
/// failure, not a skip: the test setup builds them.
pub fn env() -> Option<TestEnv> {
    env_with(true)
}

/// Like [`env`], choosing whether VMs come from snapshots or boot from scratch.
pub fn env_with(snapshots: bool) -> Option<TestEnv> {
    // `auto` unless ZTEE_JAIL says otherwise: jailed when the tests run as root.
    env_jailed(
        snapshots,
        ztee_vm::JailConfig::from_env().expect("ZTEE_JAIL"),
    )
}

/// Like [`env_with`], with the jail configured by the caller.
pub fn env_jailed(snapshots: bool, jail: ztee_vm::JailConfig) -> Option<TestEnv> {
    if ztee_vm::backend::qemu::version().is_none() {
        eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; VM tests did not run");
        return None;
    }
    let assets = GuestAssets::in_dir(&guest_dir()).unwrap_or_else(|err| {
        panic!("{err} — run scripts/guest.sh (or `make guest`) before the tests")
    });
    let dir = tempfile::Builder::new()
        .prefix("ztee-t")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let engine = engine_with(dir.path(), assets, snapshots, jail);
    Some(TestEnv { dir, engine })
}

/// An engine over an existing data directory (as a restarted process would make).
pub fn engine_in(dir: &std::path::Path, snapshots: bool) -> Engine {
    let assets = GuestAssets::in_dir(&guest_dir()).expect("guest assets");
    engine_with(
        dir,
        assets,
        snapshots,
        ztee_vm::JailConfig::from_env().expect("ZTEE_JAIL"),
    )
}

fn engine_with(
    dir: &std::path::Path,
    assets: GuestAssets,
    snapshots: bool,
    jail: ztee_vm::JailConfig,
) -> Engine {
    let config = EngineConfig {
        assets,
        runtime_dir: dir.join("run"),
        cache_dir: dir.join("cache"),
        accelerator: std::env::var("ZTEE_ACCEL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ztee_vm::AccelChoice::Tcg),
        boot_timeout: std::time::Duration::from_secs(90),
        snapshots,
        jail,
        // These tests run QEMU (under TCG unless ZTEE_ACCEL says otherwise).
        vmm: ztee_vm::VmmSettings {
            choice: ztee_vm::VmmChoice::Qemu,
            ..Default::default()
        },
    };
    Engine::new(config).expect("engine")
}

pub fn process_exists(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as gone only once reaped... or dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
