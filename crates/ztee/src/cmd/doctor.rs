//! `ztee doctor`: what ztee will run VMs with on this host, and why.

use serde::Serialize;

use crate::globals::GlobalArgs;
use crate::output;
use crate::vm;

/// Report the VMM, the accelerator (and why), the guest assets and versions.
///
/// Examples:
///   ztee doctor
///   ztee doctor --format json
///
/// Exits non-zero when ztee cannot run VMs here (no QEMU, or missing guest assets).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

#[derive(Serialize)]
struct Report {
    ok: bool,
    backend: &'static str,
    vmm: Option<String>,
    accelerator: Option<String>,
    accelerator_reason: String,
    jail: String,
    guest_kernel: Check,
    rootfs: Check,
    agent: Check,
    data_dir: String,
    ztee_version: &'static str,
}

#[derive(Serialize)]
struct Check {
    path: String,
    present: bool,
    size_bytes: Option<u64>,
}

fn check(path: &std::path::Path) -> Check {
    let meta = std::fs::metadata(path).ok();
    Check {
        path: std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string(),
        present: meta.as_ref().is_some_and(|m| m.is_file()),
        size_bytes: meta.map(|m| m.len()),
    }
}

pub fn run(_args: Args, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let guest_dir = std::env::var_os("ZTEE_GUEST_DIR")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| globals.data_dir.join("guest"));
    let vmm = ztee_vm::backend::qemu::version();
    let (kernel, rootfs, agent) = (
        check(&guest_dir.join("vmlinux")),
        check(&guest_dir.join("rootfs.img")),
        check(&guest_dir.join("ztee-agent")),
    );
    let assets_ok = kernel.present && rootfs.present && agent.present;
    let (accelerator, accelerator_reason) = if vmm.is_none() {
        (None, format!("{} was not found on PATH (install qemu-system-x86, or run scripts/install-deps.sh)", ztee_vm::backend::qemu::QEMU_BINARY))
    } else if !assets_ok {
        (
            None,
            "guest assets are missing: run `make guest` (or scripts/guest.sh)".to_string(),
        )
    } else {
        let decision = vm::block_on(async { Ok(vm::engine(globals)?.accelerator().await) })?;
        (Some(decision.accelerator.to_string()), decision.reason)
    };
    let report = Report {
        ok: vmm.is_some() && assets_ok,
        backend: "qemu (microvm machine, virtio-mmio, no network device, seccomp sandbox on)",
        vmm: vmm.clone(),
        accelerator: accelerator.clone(),
        accelerator_reason: accelerator_reason.clone(),
        jail: ztee_vm::JailConfig::from_env()
            .map(|config| config.describe())
            .unwrap_or_else(|err| err.to_string()),
        guest_kernel: kernel,
        rootfs,
        agent,
        data_dir: globals.data_dir.display().to_string(),
        ztee_version: env!("CARGO_PKG_VERSION"),
    };
    let present = |c: &Check| {
        if c.present {
            format!("ok  {} ({} KiB)", c.path, c.size_bytes.unwrap_or(0) / 1024)
        } else {
            format!("MISSING  {}", c.path)
        }
    };
    output::print_object(
        globals.format,
        &report,
        &[
            (
                "status",
                if report.ok {
                    "ready".into()
                } else {
                    "NOT READY".into()
                },
            ),
            ("backend", report.backend.to_string()),
            ("vmm", vmm.unwrap_or_else(|| "not found".into())),
            ("accelerator", accelerator.unwrap_or_else(|| "-".into())),
            ("why", accelerator_reason),
            ("vmm jail", report.jail.clone()),
            ("guest kernel", present(&report.guest_kernel)),
            ("root file system", present(&report.rootfs)),
            ("guest agent", present(&report.agent)),
            ("data dir", report.data_dir.clone()),
            ("ztee", report.ztee_version.to_string()),
        ],
    )?;
    Ok(if report.ok { 0 } else { 1 })
}
