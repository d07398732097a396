//! [`FirecrackerBackend`]: getting a Firecracker VM for a sandbox, booted from the kernel or
//! restored from its shape's template. The engine's other steps (template cache, lease,
//! sandbox, pool) are the same as for QEMU.
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

use super::api::ApiClient;
use super::config::FirecrackerConfig;
use super::controller::{BootConfig, Controller, SnapshotFiles};
use super::jailer::{self, Chroot};
use crate::backend::{
    connect_or_exit, vmm_exited, Accelerator, Backend, Booted, BoxFuture, Host, StartKind,
    TemplateInputs, Vmm,
};
use crate::channel::Channel;
use crate::config::SandboxSpec;
use crate::jail::UidLease;
use crate::runtime::RuntimeDir;
use crate::snapshot::{self, Template, TemplateState};
use crate::{initramfs, VmError};

/// Bumped when the snapshot layout or the way templates are made changes.
const FORMAT: &str = "ztee-firecracker-snapshot-v1";

/// Where the jailed Firecracker keeps its sockets and writes snapshots.
const RUN: &str = "run";
const VSOCK: &str = "/run/agent.vsock";
const STATE: &str = "/run/state";
const MEMORY: &str = "/run/memory";

/// Firecracker, always under its jailer, always with KVM.
pub(crate) struct FirecrackerBackend {
    config: FirecrackerConfig,
}

/// What a Firecracker VM holds until it is gone: its chroot and its uid.
#[derive(Debug)]
struct Hold {
    // Dropped in order: the chroot goes, then the uid is free again.
    _chroot: Chroot,
    _uid: UidLease,
}

/// A started Firecracker process, not yet configured or loaded.
struct Started {
    vmm: Child,
    controller: Controller,
    vsock: PathBuf,
    /// The chroot's root, where the jailed Firecracker writes its snapshot files.
    root: PathBuf,
}

/// Firecracker's part of a template: nothing beyond its files.
struct FirecrackerTemplate;

/// Starts the jailer for a new VM in `runtime`, with `files` (host path, name in the chroot)
/// provided in its chroot, and waits for the API socket.
async fn start(
    host: &Host,
    fc: &FirecrackerConfig,
    runtime: &mut RuntimeDir,
    spec: &SandboxSpec,
    files: &[(&Path, &str)],
    deadline: Instant,
) -> Result<(Started, Vec<String>), VmError> {
    let config = &host.config;
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
    let root = chroot.root().to_path_buf();
    // Recorded before the VMM exists, so that a crash at any later point leaves a record the
    // reaper can act on.
    let vm_dir = chroot.vm_dir().to_path_buf();
    runtime.set_chroot(
        &vm_dir,
        Box::new(Hold {
            _chroot: chroot,
            _uid: uid,
        }),
    )?;
    let mut vmm = jailer::spawn_jailed(
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
            root,
        },
        inside,
    ))
}

/// Boots a VM from the kernel, configured per Firecracker's API, and authenticates its agent.
/// Returns the controller too, for templates that pause and snapshot it.
async fn boot(
    host: &Host,
    fc: &FirecrackerConfig,
    runtime: &mut RuntimeDir,
    spec: &SandboxSpec,
    initramfs: &Path,
    deadline: Instant,
) -> Result<Started, VmError> {
    let config = &host.config;
    let rootfs = host.rootfs(spec);
    let (mut started, inside) = start(
        host,
        fc,
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

/// Connects to the agent's vsock port through the VM's hybrid vsock socket, and authenticates it.
async fn connect(
    socket: &Path,
    secret: &BootSecret,
    deadline: Instant,
) -> Result<Channel, VmError> {
    let stream = super::connect_agent(socket, deadline).await?;
    Channel::over(stream, secret, deadline).await
}

impl FirecrackerBackend {
    pub(crate) fn new(config: FirecrackerConfig) -> Self {
        Self { config }
    }

    /// A VM booted from its kernel.
    async fn cold_boot(
        &self,
        host: &Host,
        spec: &SandboxSpec,
        deadline: Instant,
    ) -> Result<Booted, VmError> {
        let id = crate::new_sandbox_id()?;
        let mut runtime = RuntimeDir::create(&host.config.runtime_dir, &id, false)?;
        let secret = BootSecret::from_bytes(crate::random_bytes()?);
        initramfs::write_for_vm(&host.base_initramfs, &secret, &runtime.initramfs())?;
        let initramfs = runtime.initramfs();
        let mut started =
            boot(host, &self.config, &mut runtime, spec, &initramfs, deadline).await?;
        let channel = connect_or_exit(
            self,
            &mut started.vmm,
            &runtime,
            &started.vsock,
            &secret,
            deadline,
        )
        .await?;
        Ok(Booted {
            runtime,
            vmm: started.vmm,
            channel: Arc::new(channel),
            accelerator: Accelerator::Kvm,
            kind: StartKind::Cold,
            backend: Vmm::Firecracker,
        })
    }

    /// A new VM in the template's state: a fresh Firecracker loads the snapshot and resumes.
    async fn restore_from(
        &self,
        host: &Host,
        template: &Template,
        deadline: Instant,
    ) -> Result<Booted, VmError> {
        let _: &FirecrackerTemplate = template.state()?;
        let id = crate::new_sandbox_id()?;
        let mut runtime = RuntimeDir::create(&host.config.runtime_dir, &id, false)?;
        let config = &host.config;
        let rootfs = host.rootfs(template.spec());
        let dir = template.dir();
        // The snapshot names the kernel, initramfs, disk and vsock socket by their paths inside
        // the template's chroot; every clone's chroot has them at the same paths.
        let (mut started, inside) = start(
            host,
            &self.config,
            &mut runtime,
            template.spec(),
            &[
                (&config.assets.kernel, "vmlinux"),
                (&dir.join("initrd.img"), "initrd.img"),
                (&rootfs, "rootfs.img"),
                (&dir.join("state"), "state"),
                (&dir.join("memory"), "memory"),
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
        let channel = connect_or_exit(
            self,
            &mut started.vmm,
            &runtime,
            &started.vsock,
            template.secret(),
            deadline,
        )
        .await?;
        Ok(Booted {
            runtime,
            vmm: started.vmm,
            channel: Arc::new(channel),
            accelerator: Accelerator::Kvm,
            kind: StartKind::Snapshot,
            backend: Vmm::Firecracker,
        })
    }

    /// Boots a template VM from `dir/initrd.img`, waits for its agent to listen, pauses it and
    /// saves it into `dir`.
    async fn save(
        &self,
        host: &Host,
        spec: &SandboxSpec,
        dir: &Path,
        deadline: Instant,
    ) -> Result<(), VmError> {
        let initrd = dir.join("initrd.img");
        let name = format!("tpl-{}", crate::hex(&crate::random_bytes::<8>()?));
        let mut runtime = RuntimeDir::create(&host.config.runtime_dir, &name, false)?;
        let mut started = boot(host, &self.config, &mut runtime, spec, &initrd, deadline).await?;
        let saved = async {
            snapshot::wait_for_agent_listening(&runtime, deadline).await?;
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
        for name in ["state", "memory"] {
            let from = started.root.join(RUN).join(name);
            let to = dir.join(name);
            if std::fs::rename(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(|e| VmError::io("save snapshot", &to, e))?;
            }
            // Read-only for everyone, so that clones' chroots can hard-link it instead of
            // copying it: every clone starts from these bytes anyway, and the lease replaces
            // what is secret in them. The snapshot directory (0700) keeps them from other host
            // users.
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))
                .map_err(|e| VmError::io("chmod", &to, e))?;
        }
        Ok(())
    }
}

impl Backend for FirecrackerBackend {
    fn vmm(&self) -> Vmm {
        Vmm::Firecracker
    }

    fn describe(&self) -> String {
        format!(
            "firecracker ({}) under its jailer ({}), kvm",
            self.config.firecracker.display(),
            self.config.jailer.display()
        )
    }

    fn template_inputs(&self) -> Result<TemplateInputs, VmError> {
        Ok(TemplateInputs {
            format: FORMAT,
            vmm_binary: self.config.firecracker.clone(),
            shape_suffix: String::new(),
        })
    }

    fn boot<'a>(
        &'a self,
        host: &'a Host,
        spec: &'a SandboxSpec,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Booted, VmError>> {
        Box::pin(self.cold_boot(host, spec, deadline))
    }

    fn save_template<'a>(
        &'a self,
        host: &'a Host,
        spec: &'a SandboxSpec,
        dir: &'a Path,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), VmError>> {
        Box::pin(self.save(host, spec, dir, deadline))
    }

    fn load_template(&self, _host: &Host, dir: &Path) -> Result<Option<TemplateState>, VmError> {
        let complete = dir.join("state").is_file() && dir.join("memory").is_file();
        Ok(complete.then(|| Box::new(FirecrackerTemplate) as TemplateState))
    }

    fn restore<'a>(
        &'a self,
        host: &'a Host,
        template: &'a Template,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Booted, VmError>> {
        Box::pin(self.restore_from(host, template, deadline))
    }

    fn connect_agent<'a>(
        &'a self,
        socket: &'a Path,
        secret: &'a BootSecret,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Channel, VmError>> {
        Box::pin(connect(socket, secret, deadline))
    }
}
