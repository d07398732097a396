//! Choosing the accelerator. `/dev/kvm` existing is not enough: on some hosts (nested or
//! paravirtualized) it opens but ordinary guest kernels do not boot under it. So `auto` boots a
//! real VM under KVM once, with a short deadline, and falls back to TCG when that fails. The
//! verdict is cached per (guest kernel, host kernel, QEMU version).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::backend::qemu::{self, QemuBackend};
use crate::backend::{Accelerator, Backend, Host};
use crate::config::SandboxSpec;

pub use crate::backend::types::{AccelChoice, AccelDecision};

const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

pub(crate) async fn decide(host: &Host) -> AccelDecision {
    match host.config.accelerator {
        AccelChoice::Kvm => AccelDecision {
            accelerator: Accelerator::Kvm,
            reason: "forced by configuration (ZTEE_ACCEL=kvm)".into(),
        },
        AccelChoice::Tcg => AccelDecision {
            accelerator: Accelerator::Tcg,
            reason: "forced by configuration (ZTEE_ACCEL=tcg)".into(),
        },
        AccelChoice::Auto => probe(host).await,
    }
}

async fn probe(host: &Host) -> AccelDecision {
    let tcg = |reason: String| AccelDecision {
        accelerator: Accelerator::Tcg,
        reason,
    };
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm is not usable ({err}); TCG keeps isolation but runs guests several times slower"));
    }
    let cache = cache_path(host);
    if let Some(decision) = cache
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<AccelDecision>(&b).ok())
    {
        return decision;
    }
    let spec = SandboxSpec {
        memory_mib: 128,
        scratch_mib: 32,
        ..SandboxSpec::default()
    };
    let probe = QemuBackend::new(Accelerator::Kvm);
    let decision = match probe
        .boot(host, &spec, Instant::now() + PROBE_TIMEOUT)
        .await
    {
        // Dropping the VM kills it: the probe only needed to see it boot.
        Ok(_booted) => {
            AccelDecision {
                accelerator: Accelerator::Kvm,
                reason: "a probe guest booted under KVM".into(),
            }
        }
        Err(err) => tcg(format!(
            "/dev/kvm opens but a probe guest did not boot under it ({err}); using TCG, which keeps isolation but runs guests several times slower"
        )),
    };
    if let Some(path) = cache {
        if let Ok(json) = serde_json::to_vec(&decision) {
            let temp = path.with_extension("tmp");
            if std::fs::write(&temp, json).is_ok() {
                let _ = std::fs::rename(&temp, &path);
            }
        }
    }
    decision
}

fn cache_path(host: &Host) -> Option<PathBuf> {
    let config = &host.config;
    let mut hasher = Sha256::new();
    hasher.update(crate::snapshot::file_identity(&config.assets.kernel).ok()?);
    hasher.update(host_kernel_release().as_bytes());
    hasher.update(crate::snapshot::file_identity(&qemu::binary_path()?).ok()?);
    let key = crate::hex(&hasher.finalize()[..12]);
    std::fs::create_dir_all(&config.cache_dir).ok()?;
    Some(config.cache_dir.join(format!("accel-probe-{key}.json")))
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}
