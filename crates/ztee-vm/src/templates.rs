//! The template cache: one [`Template`] per VM shape, whichever backend runs the engine, made on
//! first use and kept on disk under `<cache dir>/snapshots/<key>/`. What is common to every
//! backend lives here (the key, the directory, the secret and its initramfs, making a template
//! in a temporary directory and renaming it into place); saving and restoring the VM itself is
//! the backend's ([`Backend::save_template`], [`Backend::load_template`]).

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use ztee_wire::BootSecret;

use crate::backend::{Backend, Host};
use crate::config::SandboxSpec;
use crate::snapshot::{self, Template};
use crate::{initramfs, VmError};

type Slot = Arc<tokio::sync::OnceCell<Result<Arc<Template>, String>>>;

/// The engine's templates, by shape. An engine has one backend, so the shape is key enough in
/// memory; on disk the key also covers the backend's inputs.
#[derive(Default)]
pub(crate) struct Templates {
    slots: Mutex<HashMap<SandboxSpec, Slot>>,
}

impl Templates {
    /// The template of `spec`, made on first use. `None` when one cannot be made here (the
    /// reason is logged once), in which case VMs boot from scratch.
    pub(crate) async fn get(
        &self,
        host: &Host,
        backend: &dyn Backend,
        spec: &SandboxSpec,
    ) -> Option<Arc<Template>> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(spec.clone())
            .or_default()
            .clone();
        let result = slot
            .get_or_init(|| async {
                load_or_create(host, backend, spec)
                    .await
                    .map(Arc::new)
                    .map_err(|err| {
                        tracing::warn!(%err, vmm = %backend.vmm(), "cannot snapshot this VM shape; booting from scratch instead");
                        err.to_string()
                    })
            })
            .await;
        result.as_ref().ok().cloned()
    }
}

/// The template of `spec` from the cache, made now if there is none.
async fn load_or_create(
    host: &Host,
    backend: &dyn Backend,
    spec: &SandboxSpec,
) -> Result<Template, VmError> {
    let root = host.config.cache_dir.join("snapshots");
    let dir = root.join(key(host, backend, spec)?);
    if let Some(template) = load(host, backend, &dir, spec)? {
        return Ok(template);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| VmError::io("create snapshot dir", &root, e))?;
    let started = Instant::now();
    let temp = root.join(format!(
        ".tmp-{}-{}-{}",
        backend.vmm(),
        std::process::id(),
        crate::hex(&crate::random_bytes::<4>()?)
    ));
    if let Err(err) = make(host, backend, spec, &temp).await {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(err);
    }
    // Another process may have made the same snapshot meanwhile; either copy is good.
    if std::fs::rename(&temp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    tracing::info!(dir = %dir.display(), vmm = %backend.vmm(), ms = started.elapsed().as_millis() as u64, "made a VM snapshot");
    load(host, backend, &dir, spec)?
        .ok_or_else(|| VmError::Snapshot(format!("{} is incomplete", dir.display())))
}

/// The template in `dir`, `None` when there is none (or only part of one).
fn load(
    host: &Host,
    backend: &dyn Backend,
    dir: &Path,
    spec: &SandboxSpec,
) -> Result<Option<Template>, VmError> {
    let Some(secret) = snapshot::read_secret(dir) else {
        return Ok(None);
    };
    let Some(state) = backend.load_template(host, dir)? else {
        return Ok(None);
    };
    Ok(Some(Template::new(
        dir.to_path_buf(),
        secret,
        spec.clone(),
        state,
    )))
}

/// Makes a template in `dir`: its secret and the initramfs that carries it, then the VM, booted
/// and saved by the backend.
async fn make(
    host: &Host,
    backend: &dyn Backend,
    spec: &SandboxSpec,
    dir: &Path,
) -> Result<(), VmError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| VmError::io("create snapshot dir", dir, e))?;
    let deadline = Instant::now() + host.config.boot_timeout;
    let secret = BootSecret::from_bytes(crate::random_bytes()?);
    initramfs::write_for_vm(&host.base_initramfs, &secret, &dir.join("initrd.img"))?;
    backend.save_template(host, spec, dir, deadline).await?;
    snapshot::write_secret(&dir.join("secret"), &secret)
}

/// Key of a template: the identity of the kernel, agent and root file system and of the VMM
/// binary, the VM shape, and the backend's other inputs (see [`crate::backend::TemplateInputs`]).
fn key(host: &Host, backend: &dyn Backend, spec: &SandboxSpec) -> Result<String, VmError> {
    let assets = &host.config.assets;
    let inputs = backend.template_inputs()?;
    let mut hasher = Sha256::new();
    hasher.update(inputs.format);
    let rootfs = spec
        .image
        .as_ref()
        .map(|image| image.rootfs())
        .unwrap_or(&assets.rootfs);
    for path in [&assets.kernel, &assets.agent, rootfs, &inputs.vmm_binary] {
        hasher.update(snapshot::file_identity(path)?);
    }
    hasher.update(format!(
        "{} {} {}{}",
        spec.memory_mib, spec.vcpus, spec.scratch_mib, inputs.shape_suffix
    ));
    Ok(crate::hex(&hasher.finalize()[..16]))
}
