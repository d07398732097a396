//! The real VM engine for gateway tests: guest assets from `ZTEE_GUEST_DIR` (or the default
//! guest directory), TCG unless `ZTEE_ACCEL` says otherwise, every VM booted from scratch.

use std::path::{Path, PathBuf};

pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZTEE_GUEST_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/ztee/guest")
}

/// A data directory with a short path: the VMs' unix sockets live under it (108-byte limit).
pub fn data_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// True when QEMU can start here; otherwise prints a loud SKIPPED line naming `what` did not run.
pub fn available(what: &str) -> bool {
    if ztee_vm::backend::qemu::version().is_some() {
        return true;
    }
    eprintln!("SKIPPED: qemu-system-x86_64 cannot start on this machine; {what} did not run");
    false
}

/// An engine whose runtime and cache live under `data_dir`. Missing guest assets fail the test:
/// `scripts/guest.sh` builds them.
pub fn engine(data_dir: &Path) -> ztee_vm::Engine {
    let assets = ztee_vm::GuestAssets::in_dir(&guest_dir())
        .unwrap_or_else(|e| panic!("{e} — run scripts/guest.sh before the tests"));
    ztee_vm::Engine::new(ztee_vm::EngineConfig {
        assets,
        runtime_dir: data_dir.join("run"),
        cache_dir: data_dir.join("cache"),
        accelerator: std::env::var("ZTEE_ACCEL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ztee_vm::AccelChoice::Tcg),
        boot_timeout: std::time::Duration::from_secs(90),
        // Every VM boots from scratch: no snapshot template to build first.
        snapshots: false,
        jail: ztee_vm::JailConfig::default(),
        vmm: ztee_vm::VmmSettings::default(),
    })
    .unwrap()
}
