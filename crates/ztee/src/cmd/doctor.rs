//! `ztee doctor`: what ztee will run VMs with on this host, and why.

use serde::Serialize;

use crate::globals::GlobalArgs;
use crate::output;
use crate::vm;

/// Report the VMM (and why), the accelerator (and why), whether Firecracker can run here (and
/// why not), the guest assets and versions.
///
/// Examples:
///   ztee doctor
///   ztee doctor --format json
///   ztee --vmm firecracker doctor     # would Firecracker be used if forced?
///
/// Exits non-zero when ztee cannot run VMs here (no usable VMM, or missing guest assets).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

#[derive(Serialize)]
struct Report {
    ok: bool,
    /// The VMM sandboxes will run on, and why.
    backend: String,
    backend_reason: String,
    /// QEMU's version line.
    vmm: Option<String>,
    firecracker: FirecrackerReport,
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
struct FirecrackerReport {
    can_run: bool,
    /// Why Firecracker cannot run here; `None` when it can.
    why_not: Option<String>,
    #[serde(flatten)]
    readiness: ztee_vm::select::FirecrackerReadiness,
    /// Whether KVM boots guests here (`None` when not checked: guest assets missing).
    kvm: Option<String>,
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
    let firecracker_config = ztee_vm::backend::firecracker::FirecrackerConfig::from_env()?;
    let readiness = ztee_vm::select::FirecrackerReadiness::check(&firecracker_config);
    let mut kvm = None;
    let mut backend = None;
    let (accelerator, accelerator_reason) = if !assets_ok {
        (
            None,
            "guest assets are missing: run `make guest` (or scripts/guest.sh)".to_string(),
        )
    } else {
        let engine = vm::engine(globals)?;
        let (decision, choice, kvm_check) = vm::block_on(async {
            let decision = match vmm.is_some() {
                true => Some(engine.accelerator().await),
                false => None,
            };
            let choice = engine.vmm().await;
            let kvm_check = ztee_vm::select::kvm_works(&engine).await;
            Ok((decision, choice, kvm_check))
        })?;
        kvm = Some(match kvm_check {
            Ok(()) => "ok: guests boot under KVM".to_string(),
            Err(why) => format!("{KVM_NOT_USABLE}{why}"),
        });
        backend = Some(choice);
        match decision {
            Some(decision) => (Some(decision.accelerator.to_string()), decision.reason),
            None => (None, format!("{} was not found on PATH (install qemu-system-x86, or run scripts/install-deps.sh)", ztee_vm::backend::qemu::QEMU_BINARY)),
        }
    };
    let why_not = readiness.missing().or_else(|| {
        kvm.as_deref()
            .and_then(|k| k.strip_prefix(KVM_NOT_USABLE))
            .map(|why| format!("KVM does not run guests here: {why}"))
    });
    let firecracker = FirecrackerReport {
        can_run: why_not.is_none() && kvm.is_some(),
        why_not,
        readiness,
        kvm,
    };
    let (backend, backend_reason) = match backend {
        Some(decision) => (decision.vmm.to_string(), decision.reason),
        None => (
            "-".to_string(),
            "not decided: guest assets are missing".to_string(),
        ),
    };
    let backend_ok = match backend.as_str() {
        "qemu" => vmm.is_some(),
        "firecracker" => firecracker.can_run,
        _ => false,
    };
    let report = Report {
        ok: backend_ok && assets_ok,
        backend: backend.clone(),
        backend_reason: backend_reason.clone(),
        vmm: vmm.clone(),
        firecracker,
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
            ("backend", backend_line(&report.backend)),
            ("backend why", backend_reason),
            ("qemu", vmm.unwrap_or_else(|| "not found".into())),
            ("firecracker", firecracker_line(&report.firecracker)),
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

const KVM_NOT_USABLE: &str = "NOT usable: ";

fn backend_line(backend: &str) -> String {
    match backend {
        "qemu" => {
            "qemu (microvm machine, virtio-mmio, no network device, seccomp sandbox on)".into()
        }
        "firecracker" => {
            "firecracker (under its jailer: chroot, own uid, cgroup; vsock agent channel)".into()
        }
        other => other.to_string(),
    }
}

fn firecracker_line(report: &FirecrackerReport) -> String {
    let found = |version: &Option<String>, path: &std::path::Path| match version {
        Some(version) => format!("{version} at {}", path.display()),
        None => format!("not found at {}", path.display()),
    };
    let versions = format!(
        "{}; jailer: {}",
        found(
            &report.readiness.firecracker_version,
            &report.readiness.firecracker
        ),
        found(&report.readiness.jailer_version, &report.readiness.jailer),
    );
    match (&report.why_not, &report.kvm) {
        (None, Some(_)) => format!("can run: {versions}; KVM ok"),
        (Some(why), _) if report.readiness.missing().is_some() => format!("cannot run: {why}"),
        (Some(why), _) => format!("cannot run: {why} ({versions})"),
        (None, None) => format!("KVM not checked ({versions})"),
    }
}
