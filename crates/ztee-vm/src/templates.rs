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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::backend::{Booted, BoxFuture, TemplateInputs, Vmm};
    use crate::channel::Channel;
    use crate::config::{EngineConfig, VmmSettings};
    use crate::snapshot::TemplateState;
    use crate::{GuestAssets, JailConfig};

    /// A backend whose "VM" is one file: enough to drive the cache, which never boots anything
    /// itself.
    struct FilesOnly {
        saves: AtomicUsize,
        fail: bool,
        suffix: &'static str,
        binary: PathBuf,
    }

    struct SavedFile(String);

    fn refused<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, VmError>> {
        Box::pin(async { Err(VmError::Guest("this test boots no VM".into())) })
    }

    impl Backend for FilesOnly {
        fn vmm(&self) -> Vmm {
            Vmm::Qemu
        }

        fn describe(&self) -> String {
            "files only".into()
        }

        fn template_inputs(&self) -> Result<TemplateInputs, VmError> {
            Ok(TemplateInputs {
                format: "files-only-v1",
                vmm_binary: self.binary.clone(),
                shape_suffix: self.suffix.into(),
            })
        }

        fn boot<'a>(
            &'a self,
            _: &'a Host,
            _: &'a SandboxSpec,
            _: Instant,
        ) -> BoxFuture<'a, Result<Booted, VmError>> {
            refused()
        }

        fn save_template<'a>(
            &'a self,
            _: &'a Host,
            _: &'a SandboxSpec,
            dir: &'a Path,
            _: Instant,
        ) -> BoxFuture<'a, Result<(), VmError>> {
            Box::pin(async move {
                self.saves.fetch_add(1, Ordering::SeqCst);
                // The cache has written the secret-bearing initramfs before the VM boots.
                assert!(dir.join("initrd.img").is_file());
                if self.fail {
                    return Err(VmError::Snapshot("the template VM did not boot".into()));
                }
                std::fs::write(dir.join("vm"), "saved").map_err(|e| VmError::io("save", dir, e))
            })
        }

        fn load_template(&self, _: &Host, dir: &Path) -> Result<Option<TemplateState>, VmError> {
            Ok(std::fs::read_to_string(dir.join("vm"))
                .ok()
                .map(|text| Box::new(SavedFile(text)) as TemplateState))
        }

        fn restore<'a>(
            &'a self,
            _: &'a Host,
            _: &'a Template,
            _: Instant,
        ) -> BoxFuture<'a, Result<Booted, VmError>> {
            refused()
        }

        fn connect_agent<'a>(
            &'a self,
            _: &'a Path,
            _: &'a ztee_wire::BootSecret,
            _: Instant,
        ) -> BoxFuture<'a, Result<Channel, VmError>> {
            refused()
        }
    }

    fn host(dir: &Path) -> Host {
        for name in ["vmlinux", "rootfs.img", "ztee-agent", "initrd.base", "vmm"] {
            std::fs::write(dir.join(name), name).expect("write a stand-in file");
        }
        Host {
            config: EngineConfig {
                assets: GuestAssets {
                    kernel: dir.join("vmlinux"),
                    rootfs: dir.join("rootfs.img"),
                    agent: dir.join("ztee-agent"),
                },
                runtime_dir: dir.join("run"),
                cache_dir: dir.join("cache"),
                accelerator: crate::AccelChoice::Tcg,
                boot_timeout: Duration::from_secs(5),
                snapshots: true,
                jail: JailConfig::default(),
                vmm: VmmSettings::default(),
            },
            jailed: false,
            base_initramfs: dir.join("initrd.base"),
        }
    }

    fn backend(dir: &Path, fail: bool, suffix: &'static str) -> FilesOnly {
        FilesOnly {
            saves: AtomicUsize::new(0),
            fail,
            suffix,
            binary: dir.join("vmm"),
        }
    }

    #[tokio::test]
    async fn a_template_is_made_once_and_found_again_by_the_next_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = host(dir.path());
        let backend = backend(dir.path(), false, " tcg");
        let spec = SandboxSpec::default();
        let cache = Templates::default();
        let template = cache.get(&host, &backend, &spec).await.expect("a template");
        assert_eq!(backend.saves.load(Ordering::SeqCst), 1);
        assert!(template
            .dir()
            .starts_with(dir.path().join("cache/snapshots")));
        let secret = std::fs::metadata(template.dir().join("secret")).expect("secret saved");
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
        let saved: &SavedFile = template.state().expect("this backend's state");
        assert_eq!(saved.0, "saved");
        assert!(template.state::<u32>().is_err(), "another backend's state");

        let again = cache.get(&host, &backend, &spec).await.expect("a template");
        assert!(Arc::ptr_eq(&template, &again));
        let next_engine = Templates::default();
        let loaded = next_engine
            .get(&host, &backend, &spec)
            .await
            .expect("loaded from disk");
        assert_eq!(backend.saves.load(Ordering::SeqCst), 1, "made again");
        assert_eq!(loaded.dir(), template.dir());
        assert_eq!(loaded.secret().to_hex(), template.secret().to_hex());
    }

    #[tokio::test]
    async fn a_template_that_cannot_be_made_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = host(dir.path());
        let backend = backend(dir.path(), true, "");
        let cache = Templates::default();
        let spec = SandboxSpec::default();
        assert!(cache.get(&host, &backend, &spec).await.is_none());
        // The failure is remembered: the engine boots from scratch without trying again.
        assert!(cache.get(&host, &backend, &spec).await.is_none());
        assert_eq!(backend.saves.load(Ordering::SeqCst), 1);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache/snapshots"))
            .expect("snapshot dir")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn the_key_covers_the_shape_the_vmm_binary_and_the_backends_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = host(dir.path());
        let spec = SandboxSpec::default();
        let tcg = key(&host, &backend(dir.path(), false, " tcg"), &spec).expect("key");
        let kvm = key(&host, &backend(dir.path(), false, " kvm"), &spec).expect("key");
        assert_ne!(tcg, kvm);
        let bigger = SandboxSpec {
            memory_mib: spec.memory_mib * 2,
            ..spec.clone()
        };
        assert_ne!(
            tcg,
            key(&host, &backend(dir.path(), false, " tcg"), &bigger).expect("key")
        );
        std::fs::write(dir.path().join("vmm"), "a new VMM binary").expect("rewrite");
        assert_ne!(
            tcg,
            key(&host, &backend(dir.path(), false, " tcg"), &spec).expect("key")
        );
    }
}
