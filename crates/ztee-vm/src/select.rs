//! Choosing the VMM. `auto` prefers Firecracker (a smaller device model and its own jailer) where
//! it can really run: its binary and jailer are installed, ztee is root (the jailer needs it), and
//! KVM boots guests — the same evidence [`crate::accel`] uses, a guest actually booting under KVM,
//! since on some hosts `/dev/kvm` opens but guests do not boot. Otherwise QEMU, which also runs
//! without KVM.
//!
//! The decision is made once per engine, and [`backend`] turns it into the engine's one
//! [`Backend`]; nothing above this module names a concrete backend.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::firecracker::{self, FirecrackerBackend, FirecrackerConfig};
use crate::backend::qemu::QemuBackend;
use crate::backend::{
    AccelChoice, AccelDecision, Accelerator, Backend, Vmm, VmmChoice, VmmDecision,
};
use crate::config::EngineConfig;

/// Where the VMM decision learns whether KVM boots guests: the engine, which decides the
/// accelerator once (by a probe boot) and keeps the answer.
pub trait AccelSource {
    fn accelerator(&self) -> impl Future<Output = AccelDecision> + Send;
}

/// What Firecracker needs on this host, checked one by one (for `ztee doctor` and `auto`).
#[derive(Debug, Clone, Serialize)]
pub struct FirecrackerReadiness {
    pub firecracker: PathBuf,
    /// `firecracker --version`, `None` when the binary is missing or does not run.
    pub firecracker_version: Option<String>,
    pub jailer: PathBuf,
    pub jailer_version: Option<String>,
    /// The jailer must start as root (chroot, cgroups, uid change).
    pub root: bool,
}

impl FirecrackerReadiness {
    pub fn check(config: &FirecrackerConfig) -> Self {
        Self {
            firecracker: config.firecracker.clone(),
            firecracker_version: firecracker::version(&config.firecracker),
            jailer: config.jailer.clone(),
            jailer_version: firecracker::jailer_version(&config.jailer),
            // SAFETY: geteuid(2) cannot fail and touches no memory.
            root: unsafe { libc::geteuid() } == 0,
        }
    }

    /// Why Firecracker cannot run here, ignoring KVM; `None` when nothing is missing.
    pub fn missing(&self) -> Option<String> {
        if self.firecracker_version.is_none() {
            return Some(format!(
                "firecracker not found or not runnable at {} (install it, or set ZTEE_FIRECRACKER)",
                self.firecracker.display()
            ));
        }
        if self.jailer_version.is_none() {
            return Some(format!(
                "jailer not found or not runnable at {} (it ships with firecracker; or set ZTEE_JAILER)",
                self.jailer.display()
            ));
        }
        if !self.root {
            return Some("the jailer needs root and ztee is not running as root".into());
        }
        None
    }
}

/// Whether `/dev/kvm` runs guests, by the accelerator decision (a probe boot under QEMU, cached);
/// without QEMU, whether `/dev/kvm` opens read-write.
pub async fn kvm_works(engine: &impl AccelSource) -> Result<(), String> {
    if crate::backend::qemu::binary_path().is_some() {
        let decision = engine.accelerator().await;
        return match decision.accelerator {
            Accelerator::Kvm => Ok(()),
            Accelerator::Tcg => Err(decision.reason),
        };
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|err| format!("/dev/kvm is not usable ({err})"))
}

pub(crate) async fn decide(config: &EngineConfig, engine: &impl AccelSource) -> VmmDecision {
    let settings = &config.vmm;
    let qemu = |reason: String| VmmDecision {
        vmm: Vmm::Qemu,
        reason,
    };
    match settings.choice {
        VmmChoice::Qemu => qemu("forced by configuration (--vmm qemu / ZTEE_VMM=qemu)".into()),
        VmmChoice::Firecracker => VmmDecision {
            vmm: Vmm::Firecracker,
            reason: "forced by configuration (--vmm firecracker / ZTEE_VMM=firecracker)".into(),
        },
        VmmChoice::Auto => {
            if config.accelerator == AccelChoice::Tcg {
                return qemu("the accelerator is forced to TCG, and Firecracker needs KVM".into());
            }
            let readiness = FirecrackerReadiness::check(&settings.firecracker);
            if let Some(missing) = readiness.missing() {
                return qemu(format!("Firecracker cannot run: {missing}"));
            }
            match kvm_works(engine).await {
                Ok(()) => VmmDecision {
                    vmm: Vmm::Firecracker,
                    reason: "firecracker and jailer are installed and KVM boots guests".into(),
                },
                Err(why) => qemu(format!("Firecracker needs KVM: {why}")),
            }
        }
    }
}

/// The backend that runs the engine's VMs, for the VMM `decision`: Firecracker (always KVM), or
/// QEMU under the accelerator `engine` decides.
pub(crate) async fn backend(
    config: &EngineConfig,
    decision: &VmmDecision,
    engine: &impl AccelSource,
) -> Arc<dyn Backend> {
    match decision.vmm {
        Vmm::Firecracker => Arc::new(FirecrackerBackend::new(config.vmm.firecracker.clone())),
        Vmm::Qemu => Arc::new(QemuBackend::new(engine.accelerator().await.accelerator)),
    }
}
