//! Snapshots: boot each VM shape once, save it, restore every new VM from it.
//!
//! A template VM boots with its RAM in a shared file mapping; once its agent listens, it is
//! paused and its device state migrated (with `x-ignore-shared`, so RAM is not copied: the file
//! already holds it). A restored VM maps that RAM file privately — copy-on-write, so untouched
//! pages stay shared in the host page cache across every clone — and loads the device state.
//!
//! Every clone starts with the template's RNG state, identifiers and channel secret; the lease
//! (see [`crate::engine`]) replaces all of them before any user code runs.
//!
//! Snapshots are cached by content under `<cache dir>/snapshots/<key>/`, where the key covers the
//! kernel, agent and root file system, the QEMU version, the VM shape and the accelerator: when any
//! of them changes, a new snapshot is made.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use ztee_wire::BootSecret;

use crate::backend::{qemu, Accelerator, MemoryBacking};
use crate::engine::{connect_or_exit, vmm_exited, Booted, Engine};
use crate::jail::SealedRam;
use crate::qmp::Qmp;
use crate::runtime::RuntimeDir;
use crate::sandbox::StartKind;
use crate::{initramfs, SandboxSpec, VmError};

/// Bumped when the snapshot layout or the way templates are made changes.
const FORMAT: &str = "ztee-snapshot-v1";

pub struct Template {
    dir: PathBuf,
    /// The RAM, sealed against writes, for jailed restores (see [`crate::jail`]).
    sealed_ram: Option<SealedRam>,
    secret: BootSecret,
    spec: SandboxSpec,
    accelerator: Accelerator,
}

impl Template {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) async fn load_or_create(
        engine: &Engine,
        spec: &SandboxSpec,
        accelerator: Accelerator,
    ) -> Result<Self, VmError> {
        let root = engine.config().cache_dir.join("snapshots");
        let dir = root.join(key(engine, spec, accelerator)?);
        let jailed = engine.jailed();
        if let Some(template) = Self::load(&dir, spec, accelerator, jailed)? {
            return Ok(template);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| VmError::io("create snapshot dir", &root, e))?;
        let started = Instant::now();
        let temp = root.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            crate::hex(&crate::random_bytes::<4>()?)
        ));
        let made = make(engine, spec, accelerator, &temp).await;
        if let Err(err) = made {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(err);
        }
        // Another process may have made the same snapshot meanwhile; either copy is good.
        if std::fs::rename(&temp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&temp);
        }
        tracing::info!(dir = %dir.display(), ms = started.elapsed().as_millis() as u64, "made a VM snapshot");
        Self::load(&dir, spec, accelerator, jailed)?
            .ok_or_else(|| VmError::Snapshot(format!("{} is incomplete", dir.display())))
    }

    /// The snapshot in `dir`, `None` when there is none (or only part of one).
    fn load(
        dir: &Path,
        spec: &SandboxSpec,
        accelerator: Accelerator,
        jailed: bool,
    ) -> Result<Option<Self>, VmError> {
        let Some(secret) = std::fs::read_to_string(dir.join("secret"))
            .ok()
            .and_then(|s| BootSecret::from_hex(&s))
        else {
            return Ok(None);
        };
        let ram = dir.join("ram");
        if !(ram.is_file() && dir.join("state").is_file()) {
            return Ok(None);
        }
        let sealed_ram = if jailed {
            // Every clone's jailed VMM reads the template's initramfs. Its secret is no secret
            // to them (it is in the template RAM each clone starts from, and every lease
            // replaces it); the snapshot directory (0700) keeps it from other host users.
            let initrd = dir.join("initrd.img");
            std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o444))
                .map_err(|e| VmError::io("chmod", &initrd, e))?;
            Some(SealedRam::load(&ram)?)
        } else {
            None
        };
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            sealed_ram,
            secret,
            spec: spec.clone(),
            accelerator,
        }))
    }

    /// A new VM in the template's state, with an authenticated agent channel.
    pub(crate) async fn restore(&self, engine: &Engine) -> Result<Booted, VmError> {
        let deadline = Instant::now() + engine.config().boot_timeout;
        let id = crate::new_sandbox_id()?;
        let mut runtime = engine.runtime_dir(&id)?;
        let (plan, mut vmm) = engine.launch(
            &mut runtime,
            &self.spec,
            self.accelerator,
            self.dir.join("initrd.img"),
            MemoryBacking::PrivateFile(self.dir.join("ram")),
            true,
            self.sealed_ram.as_ref(),
        )?;
        let state = self.dir.join("state");
        let loaded = tokio::select! {
            loaded = bounded(deadline, "loading the snapshot", load_state(&runtime, &state, deadline)) => loaded,
            status = vmm.wait() => Err(vmm_exited(&mut vmm, &runtime, status).await),
        };
        loaded?;
        let channel =
            Arc::new(connect_or_exit(&mut vmm, &runtime, &plan, &self.secret, deadline).await?);
        Ok(Booted {
            runtime,
            vmm,
            channel,
            accelerator: self.accelerator,
            kind: StartKind::Snapshot,
            backend: crate::backend::Vmm::Qemu,
        })
    }
}

/// Streams the saved device state into a VMM started with `-incoming defer`, and waits until
/// the VM runs.
async fn load_state(runtime: &RuntimeDir, state: &Path, deadline: Instant) -> Result<(), VmError> {
    let mut qmp = Qmp::connect(&runtime.qmp_socket(), deadline).await?;
    qmp.execute("migrate-set-capabilities", ignore_shared())
        .await?;
    let socket = runtime.migration_socket();
    qmp.execute(
        "migrate-incoming",
        json!({ "uri": format!("unix:{}", runtime.vmm_view(&socket).display()) }),
    )
    .await?;
    let bytes = tokio::fs::read(state)
        .await
        .map_err(|e| VmError::io("read snapshot state", state, e))?;
    let mut stream = UnixStream::connect(&socket)
        .await
        .map_err(|e| VmError::io("connect to migration socket", &socket, e))?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| VmError::Snapshot(format!("stream state: {e}")))?;
    stream
        .shutdown()
        .await
        .map_err(|e| VmError::Snapshot(format!("stream state: {e}")))?;
    qmp.wait_migration(deadline).await?;
    // The template was paused when it was saved, and a restored VM keeps that run state.
    qmp.execute("cont", json!({})).await?;
    qmp.wait_running(deadline).await
}

fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [ { "capability": "x-ignore-shared", "state": true } ] })
}

/// Boots a template VM into `dir` and saves it there.
async fn make(
    engine: &Engine,
    spec: &SandboxSpec,
    accelerator: Accelerator,
    dir: &Path,
) -> Result<(), VmError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| VmError::io("create snapshot dir", dir, e))?;
    let deadline = Instant::now() + engine.config().boot_timeout;
    let secret = BootSecret::from_bytes(crate::random_bytes()?);
    initramfs::write_for_vm(engine.base_initramfs(), &secret, &dir.join("initrd.img"))?;
    let name = format!("tpl-{}", crate::hex(&crate::random_bytes::<8>()?));
    let mut runtime = engine.runtime_dir(&name)?;
    let (_plan, mut vmm) = engine.launch(
        &mut runtime,
        spec,
        accelerator,
        dir.join("initrd.img"),
        MemoryBacking::SharedFile(dir.join("ram")),
        false,
        None,
    )?;
    let state = dir.join("state");
    let saved = tokio::select! {
        saved = bounded(deadline, "saving the snapshot", save_when_listening(&runtime, &state, deadline)) => saved,
        status = vmm.wait() => Err(vmm_exited(&mut vmm, &runtime, status).await),
    };
    let _ = vmm.start_kill();
    let _ = vmm.wait().await;
    saved?;
    let secret_path = dir.join("secret");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .map_err(|e| VmError::io("write snapshot secret", &secret_path, e))?;
    std::io::Write::write_all(&mut file, secret.to_hex().as_bytes())
        .map_err(|e| VmError::io("write snapshot secret", &secret_path, e))
}

/// `work`, or an error naming `what` once `deadline` passes: the migration socket's accept and
/// copy wait on QEMU, which may never connect or finish.
async fn bounded<T>(
    deadline: Instant,
    what: &'static str,
    work: impl std::future::Future<Output = Result<T, VmError>>,
) -> Result<T, VmError> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work)
        .await
        .map_err(|_| VmError::Snapshot(format!("{what} did not finish before the deadline")))?
}

/// Waits for the agent's "listening" line on the console, then pauses the VM and saves its
/// device state to `state`.
async fn save_when_listening(
    runtime: &RuntimeDir,
    state: &Path,
    deadline: Instant,
) -> Result<(), VmError> {
    wait_for_agent_listening(runtime, deadline).await?;
    let mut qmp = Qmp::connect(&runtime.qmp_socket(), deadline).await?;
    qmp.execute("stop", json!({})).await?;
    qmp.execute("migrate-set-capabilities", ignore_shared())
        .await?;
    let socket = runtime.migration_socket();
    let listener = UnixListener::bind(&socket)
        .map_err(|e| VmError::io("bind migration socket", &socket, e))?;
    runtime.hand_to_vmm(&socket)?;
    qmp.execute(
        "migrate",
        json!({ "uri": format!("unix:{}", runtime.vmm_view(&socket).display()) }),
    )
    .await?;
    let (mut stream, _) = listener
        .accept()
        .await
        .map_err(|e| VmError::io("accept migration", &socket, e))?;
    let mut file = tokio::fs::File::create(state)
        .await
        .map_err(|e| VmError::io("create snapshot state", state, e))?;
    tokio::io::copy(&mut stream, &mut file)
        .await
        .map_err(|e| VmError::Snapshot(format!("save state: {e}")))?;
    file.sync_all()
        .await
        .map_err(|e| VmError::io("sync snapshot state", state, e))?;
    qmp.wait_migration(deadline).await
}

/// Waits for the agent's "listening" line on the VM's console (any VMM).
pub(crate) async fn wait_for_agent_listening(
    runtime: &RuntimeDir,
    deadline: Instant,
) -> Result<(), VmError> {
    // The marker the agent prints once it waits on its port (see ztee-agent's transport).
    const MARKER: &[u8] = b"ztee-agent: listening";
    loop {
        let console = std::fs::read(runtime.console_log()).unwrap_or_default();
        if console.windows(MARKER.len()).any(|w| w == MARKER) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(VmError::BootTimeout(std::time::Duration::ZERO));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Key of a snapshot: the identity (path, device, inode, size, modification time) of the kernel,
/// agent, root file system and QEMU binary, the VM shape and the accelerator. Guest assets
/// are build outputs written once and never modified in place, so their identity stands for their
/// content without hashing hundreds of MiB on every start.
fn key(engine: &Engine, spec: &SandboxSpec, accelerator: Accelerator) -> Result<String, VmError> {
    let assets = &engine.config().assets;
    let mut hasher = Sha256::new();
    hasher.update(FORMAT);
    let rootfs = spec
        .image
        .as_ref()
        .map(|image| image.rootfs())
        .unwrap_or(&assets.rootfs);
    for path in [&assets.kernel, &assets.agent, rootfs] {
        hasher.update(file_identity(path)?);
    }
    // The QEMU binary by identity too: asking it for its version costs a process start.
    let qemu = qemu::binary_path()
        .ok_or_else(|| VmError::Snapshot("the QEMU binary was not found on PATH".into()))?;
    hasher.update(file_identity(&qemu)?);
    hasher.update(format!(
        "{} {} {} {accelerator}",
        spec.memory_mib, spec.vcpus, spec.scratch_mib
    ));
    Ok(crate::hex(&hasher.finalize()[..16]))
}

pub(crate) fn file_identity(path: &Path) -> Result<String, VmError> {
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(path).map_err(|e| VmError::io("resolve", path, e))?;
    let meta = std::fs::metadata(&canonical).map_err(|e| VmError::io("stat", path, e))?;
    Ok(format!(
        "{}:{}:{}:{}:{}.{}",
        canonical.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}
