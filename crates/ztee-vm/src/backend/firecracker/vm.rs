//! Getting a Firecracker VM for a sandbox: boot it from the kernel, or restore it from its
//! shape's snapshot. The engine's other steps (lease, sandbox, pool) are the same as for QEMU.
//!
//! Each VM gets its own chroot from the jailer, with hard links (or private copies) of the
//! kernel, initramfs, root file system and snapshot files; its own uid from the same leases
//! QEMU's jail uses; its API socket and hybrid vsock socket in the chroot's `/run`. A template
//! VM is booted, left until its agent listens, paused and snapshotted (full snapshot, memory in
//! a file); a restored VM maps that file privately and gets the same lease as any other VM
//! (fresh entropy, identifiers, channel secret and clock) before user code runs.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::process::Child;
use ztee_wire::BootSecret;

use crate::backend::firecracker::{
    self, jailer, ApiClient, BootConfig, Chroot, Controller, SnapshotFiles,
};
use crate::backend::{Accelerator, Vmm};
use crate::channel::Channel;
use crate::engine::{vmm_exited, Booted, Engine};
use crate::jail::UidLease;
use crate::runtime::RuntimeDir;
use crate::sandbox::StartKind;
use crate::{initramfs, SandboxSpec, VmError};

/// Bumped when the snapshot layout or the way templates are made changes.
const FORMAT: &str = "ztee-firecracker-snapshot-v1";

/// Where the jailed Firecracker keeps its sockets and writes snapshots.
const RUN: &str = "run";
const VSOCK: &str = "/run/agent.vsock";
const STATE: &str = "/run/state";
const MEMORY: &str = "/run/memory";

/// What a Firecracker VM holds until it is gone: its chroot and its uid.
#[derive(Debug)]
pub(crate) struct Hold {
    // Dropped in order: the chroot goes, then the uid is free again.
    pub(crate) chroot: Chroot,
    _uid: UidLease,
}

/// A started Firecracker process, not yet configured or loaded.
struct Started {
    vmm: Child,
    controller: Controller,
    vsock: PathBuf,
}

/// Starts the jailer for a new VM in `runtime`, with `files` (host path, name in the chroot)
/// provided in its chroot, and waits for the API socket.
async fn start(
    engine: &Engine,
    runtime: &mut RuntimeDir,
    spec: &SandboxSpec,
    files: &[(&Path, &str)],
    deadline: Instant,
) -> Result<(Started, Vec<String>), VmError> {
    let config = engine.config();
    let fc = &config.vmm.firecracker;
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(VmError::Firecracker(
            "the jailer needs root (chroot, cgroups, uid change): run ztee as root, or use --vmm qemu".into(),
        ));
    }
    let uid = UidLease::acquire(&config.jail.lock_dir, &config.jail.uids)?;
    let chroot = Chroot::create(fc, runtime.name())?;
    let mut inside = Vec::with_capacity(files.len());
    for (source, name) in files {
        inside.push(chroot.provide(source, name, uid.uid())?);
    }
    let run = chroot.root().join(RUN);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&run)
        .map_err(|e| VmError::io("create chroot run dir", &run, e))?;
    std::os::unix::fs::chown(&run, Some(uid.uid()), Some(uid.uid()))
        .map_err(|e| VmError::io("chown", &run, e))?;
    let api = ApiClient::new(chroot.host_path(jailer::API_SOCKET));
    let vsock = chroot.host_path(VSOCK);
    for socket in [api.socket(), vsock.as_path()] {
        // `sun_path` holds 107 bytes and a NUL.
        if socket.as_os_str().len() > 107 {
            return Err(VmError::InvalidSpec(format!(
                "the Firecracker chroot base is too long for a unix socket ({}); set a shorter ZTEE_FC_CHROOT_BASE",
                socket.display()
            )));
        }
    }
    let uid_number = uid.uid();
    // Recorded before the VMM exists, so that a crash at any later point leaves a record the
    // reaper can act on.
    runtime.set_firecracker(Hold { chroot, _uid: uid })?;
    let mut vmm = firecracker::spawn_jailed(
        fc,
        runtime.name(),
        uid_number,
        jailer::VmLimits {
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
        },
        &runtime.console_log(),
    )?;
    runtime.record_owner(vmm.id().unwrap_or(0))?;
    tokio::select! {
        ready = api.wait_ready(deadline) => ready?,
        status = vmm.wait() => return Err(vmm_exited(&mut vmm, runtime, status).await),
    }
    Ok((
        Started {
            vmm,
            controller: Controller::new(api, fc.clone()),
            vsock,
        },
        inside,
    ))
}

/// Boots a VM from the kernel, configured per Firecracker's API, and authenticates its agent.
/// Returns the controller too, for templates that pause and snapshot it.
async fn boot(
    engine: &Engine,
    runtime: &mut RuntimeDir,
    spec: &SandboxSpec,
    initramfs: &Path,
    deadline: Instant,
) -> Result<Started, VmError> {
    let config = engine.config();
    let rootfs = spec
        .image
        .as_ref()
        .map(|image| image.rootfs().to_path_buf())
        .unwrap_or_else(|| config.assets.rootfs.clone());
    let (mut started, inside) = start(
        engine,
        runtime,
        spec,
        &[
            (&config.assets.kernel, "vmlinux"),
            (initramfs, "initrd.img"),
            (&rootfs, "rootfs.img"),
        ],
        deadline,
    )
    .await?;
    let boot = BootConfig {
        kernel: inside[0].clone(),
        initramfs: inside[1].clone(),
        rootfs: inside[2].clone(),
        vsock_uds: VSOCK.to_string(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        scratch_mib: spec.scratch_mib,
    };
    let configured = async {
        started.controller.configure(&boot).await?;
        started.controller.start().await
    };
    tokio::select! {
        done = configured => done?,
        status = started.vmm.wait() => return Err(vmm_exited(&mut started.vmm, runtime, status).await),
    }
    Ok(started)
}

/// Connects to the agent through the vsock socket, unless the VMM exits first.
async fn connect(
    started: &mut Started,
    runtime: &RuntimeDir,
    secret: &BootSecret,
    deadline: Instant,
) -> Result<Channel, VmError> {
    let attempt = async {
        let stream = firecracker::connect_agent(&started.vsock, deadline).await?;
        Channel::over(stream, secret, deadline).await
    };
    tokio::select! {
        connected = attempt => connected,
        status = started.vmm.wait() => Err(vmm_exited(&mut started.vmm, runtime, status).await),
    }
}

/// A VM booted from its kernel.
pub(crate) async fn cold_boot(engine: &Engine, spec: &SandboxSpec) -> Result<Booted, VmError> {
    let deadline = Instant::now() + engine.config().boot_timeout;
    let id = crate::new_sandbox_id()?;
    let mut runtime = RuntimeDir::create(&engine.config().runtime_dir, &id, false)?;
    let secret = BootSecret::from_bytes(crate::random_bytes()?);
    initramfs::write_for_vm(engine.base_initramfs(), &secret, &runtime.initramfs())?;
    let initramfs = runtime.initramfs();
    let mut started = boot(engine, &mut runtime, spec, &initramfs, deadline).await?;
    let channel = Arc::new(connect(&mut started, &runtime, &secret, deadline).await?);
    Ok(Booted {
        runtime,
        vmm: started.vmm,
        channel,
        accelerator: Accelerator::Kvm,
        kind: StartKind::Cold,
        backend: Vmm::Firecracker,
    })
}

/// A saved VM of one shape: its device state, its memory and the secret its agent had.
pub(crate) struct Template {
    dir: PathBuf,
    secret: BootSecret,
    spec: SandboxSpec,
}

impl Template {
    /// The snapshot of `spec` from the cache, made now if there is none.
    pub(crate) async fn load_or_create(
        engine: &Engine,
        spec: &SandboxSpec,
    ) -> Result<Self, VmError> {
        let root = engine.config().cache_dir.join("snapshots");
        let dir = root.join(key(engine, spec)?);
        if let Some(template) = Self::load(&dir, spec) {
            return Ok(template);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| VmError::io("create snapshot dir", &root, e))?;
        let temp = root.join(format!(
            ".tmp-fc-{}-{}",
            std::process::id(),
            crate::hex(&crate::random_bytes::<4>()?)
        ));
        if let Err(err) = make(engine, spec, &temp).await {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(err);
        }
        // Another process may have made the same snapshot meanwhile; either copy is good.
        if std::fs::rename(&temp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&temp);
        }
        Self::load(&dir, spec)
            .ok_or_else(|| VmError::Snapshot(format!("{} is incomplete", dir.display())))
    }

    fn load(dir: &Path, spec: &SandboxSpec) -> Option<Self> {
        let secret = std::fs::read_to_string(dir.join("secret"))
            .ok()
            .and_then(|s| BootSecret::from_hex(&s))?;
        (dir.join("state").is_file() && dir.join("memory").is_file()).then(|| Self {
            dir: dir.to_path_buf(),
            secret,
            spec: spec.clone(),
        })
    }

    /// A new VM in the template's state: a fresh Firecracker loads the snapshot and resumes.
    pub(crate) async fn restore(&self, engine: &Engine) -> Result<Booted, VmError> {
        let deadline = Instant::now() + engine.config().boot_timeout;
        let id = crate::new_sandbox_id()?;
        let mut runtime = RuntimeDir::create(&engine.config().runtime_dir, &id, false)?;
        let config = engine.config();
        let rootfs = self
            .spec
            .image
            .as_ref()
            .map(|image| image.rootfs().to_path_buf())
            .unwrap_or_else(|| config.assets.rootfs.clone());
        // The snapshot names the kernel, initramfs, disk and vsock socket by their paths inside
        // the template's chroot; every clone's chroot has them at the same paths.
        let (mut started, inside) = start(
            engine,
            &mut runtime,
            &self.spec,
            &[
                (&config.assets.kernel, "vmlinux"),
                (&self.dir.join("initrd.img"), "initrd.img"),
                (&rootfs, "rootfs.img"),
                (&self.dir.join("state"), "state"),
                (&self.dir.join("memory"), "memory"),
            ],
            deadline,
        )
        .await?;
        let files = SnapshotFiles {
            state: inside[3].clone(),
            memory: inside[4].clone(),
        };
        tokio::select! {
            loaded = started.controller.load(&files) => loaded?,
            status = started.vmm.wait() => return Err(vmm_exited(&mut started.vmm, &runtime, status).await),
        }
        let channel = Arc::new(connect(&mut started, &runtime, &self.secret, deadline).await?);
        Ok(Booted {
            runtime,
            vmm: started.vmm,
            channel,
            accelerator: Accelerator::Kvm,
            kind: StartKind::Snapshot,
            backend: Vmm::Firecracker,
        })
    }
}

/// Boots a template VM, waits for its agent to listen, pauses it and saves it into `dir`.
async fn make(engine: &Engine, spec: &SandboxSpec, dir: &Path) -> Result<(), VmError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| VmError::io("create snapshot dir", dir, e))?;
    let deadline = Instant::now() + engine.config().boot_timeout;
    let secret = BootSecret::from_bytes(crate::random_bytes()?);
    let initrd = dir.join("initrd.img");
    initramfs::write_for_vm(engine.base_initramfs(), &secret, &initrd)?;
    let name = format!("tpl-{}", crate::hex(&crate::random_bytes::<8>()?));
    let mut runtime = RuntimeDir::create(&engine.config().runtime_dir, &name, false)?;
    let mut started = boot(engine, &mut runtime, spec, &initrd, deadline).await?;
    let saved = async {
        crate::snapshot::wait_for_agent_listening(&runtime, deadline).await?;
        started.controller.pause().await?;
        started
            .controller
            .snapshot(&SnapshotFiles {
                state: STATE.into(),
                memory: MEMORY.into(),
            })
            .await?;
        Ok::<_, VmError>(())
    };
    let saved = tokio::select! {
        saved = saved => saved,
        status = started.vmm.wait() => Err(vmm_exited(&mut started.vmm, &runtime, status).await),
    };
    // Its state is saved; the template itself is of no further use.
    let _ = started.vmm.start_kill();
    let _ = started.vmm.wait().await;
    saved?;
    let chroot = runtime
        .firecracker()
        .map(|hold| hold.chroot.root().to_path_buf())
        .ok_or_else(|| VmError::Snapshot("the template VM has no chroot".into()))?;
    for name in ["state", "memory"] {
        let from = chroot.join(RUN).join(name);
        let to = dir.join(name);
        if std::fs::rename(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| VmError::io("save snapshot", &to, e))?;
        }
        // Read-only for everyone, so that clones' chroots can hard-link it instead of copying
        // it: every clone starts from these bytes anyway, and the lease replaces what is
        // secret in them. The snapshot directory (0700) keeps them from other host users.
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))
            .map_err(|e| VmError::io("chmod", &to, e))?;
    }
    write_secret(&dir.join("secret"), &secret)
}

fn write_secret(path: &Path, secret: &BootSecret) -> Result<(), VmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| VmError::io("write snapshot secret", path, e))?;
    std::io::Write::write_all(&mut file, secret.to_hex().as_bytes())
        .map_err(|e| VmError::io("write snapshot secret", path, e))
}

/// Key of a snapshot: the guest assets and the Firecracker binary by identity, and the shape.
fn key(engine: &Engine, spec: &SandboxSpec) -> Result<String, VmError> {
    use sha2::{Digest, Sha256};
    let config = engine.config();
    let assets = &config.assets;
    let mut hasher = Sha256::new();
    hasher.update(FORMAT);
    let rootfs = spec
        .image
        .as_ref()
        .map(|image| image.rootfs())
        .unwrap_or(&assets.rootfs);
    for path in [
        &assets.kernel,
        &assets.agent,
        rootfs,
        &config.vmm.firecracker.firecracker,
    ] {
        hasher.update(crate::snapshot::file_identity(path)?);
    }
    hasher.update(format!(
        "{} {} {}",
        spec.memory_mib, spec.vcpus, spec.scratch_mib
    ));
    Ok(crate::hex(&hasher.finalize()[..16]))
}
