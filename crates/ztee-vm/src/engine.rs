//! Getting a VM for a sandbox: from the warm pool, by restoring a snapshot, or by booting from
//! scratch; then leasing it (fresh entropy, identifiers, channel secret and clock) to exactly one
//! sandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::Child;
use ztee_wire::{BootSecret, GuestMessage, HostMessage};

use crate::backend::{self, Accelerator, LaunchPlan, MemoryBacking, Vmm, VmmDecision};
use crate::channel::Channel;
use crate::jail::{SealedRam, VmJail};
use crate::pool::WarmPool;
use crate::runtime::RuntimeDir;
use crate::sandbox::{Sandbox, SandboxInfo, StartKind};
use crate::snapshot::Template;
use crate::{accel, error, initramfs, runtime, AccelDecision, EngineConfig, SandboxSpec, VmError};

/// Boots sandboxes. Cheap to clone; safe to share across tasks.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

type TemplateSlot = Arc<tokio::sync::OnceCell<Result<Arc<Template>, String>>>;
type FcTemplateSlot =
    Arc<tokio::sync::OnceCell<Result<Arc<crate::firecracker_vm::Template>, String>>>;

struct EngineInner {
    config: EngineConfig,
    /// Whether VMMs run jailed (decided once, at engine start).
    jailed: bool,
    base_initramfs: PathBuf,
    accel: tokio::sync::OnceCell<AccelDecision>,
    vmm: tokio::sync::OnceCell<VmmDecision>,
    fc_templates: Mutex<HashMap<SandboxSpec, FcTemplateSlot>>,
    templates: Mutex<HashMap<(SandboxSpec, Accelerator), TemplateSlot>>,
    pools: Mutex<HashMap<SandboxSpec, Arc<WarmPool>>>,
}

/// A running VM whose agent is authenticated but which no sandbox has yet.
pub(crate) struct Booted {
    pub runtime: RuntimeDir,
    pub vmm: Child,
    pub channel: Arc<Channel>,
    pub accelerator: Accelerator,
    pub kind: StartKind,
    pub backend: Vmm,
}

impl Engine {
    /// Checks the assets, reaps VMs orphaned by a crashed supervisor and prepares the initramfs.
    pub fn new(config: EngineConfig) -> Result<Self, VmError> {
        config.assets.check()?;
        let jailed = config.jail.enabled()?;
        if !jailed {
            tracing::warn!(
                mode = ?config.jail.mode,
                "VMMs run unjailed (no namespaces, private root, own uid or cgroup): ztee is not root or ZTEE_JAIL=off"
            );
        }
        let reaped = runtime::reap_orphans(&config.runtime_dir);
        if reaped > 0 {
            tracing::warn!(reaped, "killed VMs left behind by a previous ztee process");
        }
        let base_initramfs = initramfs::base_for_agent(&config.assets.agent, &config.cache_dir)?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                config,
                jailed,
                base_initramfs,
                accel: tokio::sync::OnceCell::new(),
                vmm: tokio::sync::OnceCell::new(),
                fc_templates: Mutex::default(),
                templates: Mutex::default(),
                pools: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether VMMs run in a jail (see [`crate::jail`]).
    pub fn jailed(&self) -> bool {
        self.inner.jailed
    }

    /// A runtime directory for a new VM, laid out for a jail when VMMs are jailed.
    pub(crate) fn runtime_dir(&self, name: &str) -> Result<RuntimeDir, VmError> {
        RuntimeDir::create(&self.inner.config.runtime_dir, name, self.inner.jailed)
    }

    pub(crate) fn base_initramfs(&self) -> &std::path::Path {
        &self.inner.base_initramfs
    }

    /// Which accelerator VMs use and why; probes (by booting a VM under KVM) on first call.
    pub async fn accelerator(&self) -> AccelDecision {
        self.inner
            .accel
            .get_or_init(|| accel::decide(self))
            .await
            .clone()
    }

    /// Which VMM runs guests and why; decided on first call (see [`crate::select`]).
    pub async fn vmm(&self) -> VmmDecision {
        self.inner
            .vmm
            .get_or_init(|| crate::select::decide(self))
            .await
            .clone()
    }

    /// A new sandbox, from the pool when one is warm for `spec`.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, VmError> {
        spec.validate()?;
        let started = Instant::now();
        let pooled = self.pool(&spec).and_then(|pool| pool.take());
        let booted = match pooled {
            Some(vm) => vm,
            None => self.fresh_vm(&spec).await?,
        };
        lease(booted, &spec, started).await
    }

    /// Keeps `size` restored, never-used VMs of shape `spec` ready, refilled in the background.
    /// Calling it again for the same shape changes the size.
    pub fn start_pool(&self, spec: SandboxSpec, size: usize) -> Result<Arc<WarmPool>, VmError> {
        spec.validate()?;
        let mut pools = lock(&self.inner.pools);
        if let Some(pool) = pools.get(&spec) {
            pool.resize(size);
            return Ok(pool.clone());
        }
        let pool = WarmPool::start(self.clone(), spec.clone(), size);
        pools.insert(spec, pool.clone());
        Ok(pool)
    }

    fn pool(&self, spec: &SandboxSpec) -> Option<Arc<WarmPool>> {
        lock(&self.inner.pools).get(spec).cloned()
    }

    /// A VM that nobody has used: restored from the shape's snapshot when snapshots work here,
    /// booted from scratch otherwise.
    pub(crate) async fn fresh_vm(&self, spec: &SandboxSpec) -> Result<Booted, VmError> {
        if self.vmm().await.vmm == Vmm::Firecracker {
            return self.fresh_firecracker_vm(spec).await;
        }
        let accelerator = self.accelerator().await.accelerator;
        if self.inner.config.snapshots {
            if let Some(template) = self.template(spec, accelerator).await {
                return template.restore(self).await;
            }
        }
        self.cold_boot(spec, accelerator, self.inner.config.boot_timeout)
            .await
    }

    async fn fresh_firecracker_vm(&self, spec: &SandboxSpec) -> Result<Booted, VmError> {
        if self.inner.config.snapshots {
            let slot = lock(&self.inner.fc_templates)
                .entry(spec.clone())
                .or_default()
                .clone();
            let template = slot
                .get_or_init(|| async {
                    crate::firecracker_vm::Template::load_or_create(self, spec)
                        .await
                        .map(Arc::new)
                        .map_err(|err| {
                            tracing::warn!(%err, "cannot snapshot this VM shape under Firecracker; booting from scratch instead");
                            err.to_string()
                        })
                })
                .await;
            if let Ok(template) = template {
                return template.restore(self).await;
            }
        }
        crate::firecracker_vm::cold_boot(self, spec).await
    }

    /// The snapshot of `spec`, made on first use. `None` when one cannot be made here (the
    /// reason is logged once), in which case VMs boot from scratch.
    async fn template(
        &self,
        spec: &SandboxSpec,
        accelerator: Accelerator,
    ) -> Option<Arc<Template>> {
        let slot = lock(&self.inner.templates)
            .entry((spec.clone(), accelerator))
            .or_default()
            .clone();
        let result = slot
            .get_or_init(|| async {
                Template::load_or_create(self, spec, accelerator)
                    .await
                    .map(Arc::new)
                    .map_err(|err| {
                        tracing::warn!(%err, "cannot snapshot this VM shape; booting from scratch instead");
                        err.to_string()
                    })
            })
            .await;
        result.as_ref().ok().cloned()
    }

    /// Starts a VMM for a new VM in `runtime`, jailed when VMMs are. A jailed restore
    /// (`MemoryBacking::PrivateFile`) maps `sealed_ram` instead of the file.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        &self,
        runtime: &mut RuntimeDir,
        spec: &SandboxSpec,
        accelerator: Accelerator,
        initramfs: PathBuf,
        memory: MemoryBacking,
        incoming: bool,
        sealed_ram: Option<&SealedRam>,
    ) -> Result<(LaunchPlan, Child), VmError> {
        let config = &self.inner.config;
        let mut plan = LaunchPlan {
            name: runtime.name().to_string(),
            kernel: config.assets.kernel.clone(),
            initramfs,
            rootfs: spec
                .image
                .as_ref()
                .map(|image| image.rootfs().to_path_buf())
                .unwrap_or_else(|| config.assets.rootfs.clone()),
            agent_socket: runtime.agent_socket(),
            console_log: runtime.console_log(),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            scratch_mib: spec.scratch_mib,
            accelerator,
            qmp_socket: (!matches!(memory, MemoryBacking::Anonymous)).then(|| runtime.qmp_socket()),
            memory,
            incoming,
            jail: None,
        };
        let mut spawner = None;
        if self.inner.jailed {
            let root = runtime.path().join("root");
            let jail = VmJail::create(
                &config.jail,
                runtime.name(),
                &root,
                spec.memory_mib,
                spec.vcpus,
                accelerator,
            )?;
            let (paths, prepared) = jail.prepare(&plan, sealed_ram.map(SealedRam::raw_fd))?;
            runtime.set_jail(jail)?;
            plan.jail = Some(paths);
            spawner = Some(prepared);
        }
        let vmm = backend::qemu::launch(&plan, spawner)?;
        runtime.record_owner(vmm.id().unwrap_or(0))?;
        Ok((plan, vmm))
    }

    /// Boots a VM from its kernel.
    pub(crate) async fn cold_boot(
        &self,
        spec: &SandboxSpec,
        accelerator: Accelerator,
        boot_timeout: Duration,
    ) -> Result<Booted, VmError> {
        let deadline = Instant::now() + boot_timeout;
        let id = crate::new_sandbox_id()?;
        let mut runtime = self.runtime_dir(&id)?;
        let secret = BootSecret::from_bytes(crate::random_bytes()?);
        initramfs::write_for_vm(&self.inner.base_initramfs, &secret, &runtime.initramfs())?;
        let initramfs = runtime.initramfs();
        let (plan, mut vmm) = self.launch(
            &mut runtime,
            spec,
            accelerator,
            initramfs,
            MemoryBacking::Anonymous,
            false,
            None,
        )?;
        let channel =
            Arc::new(connect_or_exit(&mut vmm, &runtime, &plan, &secret, deadline).await?);
        Ok(Booted {
            runtime,
            vmm,
            channel,
            accelerator,
            kind: StartKind::Cold,
            backend: Vmm::Qemu,
        })
    }
}

/// Runs `true` from the image once in a VM bound for the warm pool. A freshly restored QEMU
/// starts with an empty TCG translation cache, so the first command in it pays for translating
/// the whole exec path (guest kernel, loader, libc); doing that here keeps it off the request
/// path. It runs before the lease, as the sandbox user, and only the image's own program runs;
/// an image without `true` simply skips the warm-up.
pub(crate) async fn warm_up(booted: &Booted) {
    let spec = crate::ExecSpec::new(vec!["true".into()]);
    if let Ok(execution) = crate::Execution::start(booted.channel.clone(), spec).await {
        let _ = execution.output().await;
    }
}

/// Connects to the agent, unless the VMM exits first (then its stderr and the console say why).
pub(crate) async fn connect_or_exit(
    vmm: &mut Child,
    runtime: &RuntimeDir,
    plan: &LaunchPlan,
    secret: &BootSecret,
    deadline: Instant,
) -> Result<Channel, VmError> {
    tokio::select! {
        connected = Channel::connect(&plan.agent_socket, secret, deadline) => connected,
        status = vmm.wait() => Err(vmm_exited(vmm, runtime, status).await),
    }
}

pub(crate) async fn vmm_exited(
    vmm: &mut Child,
    runtime: &RuntimeDir,
    status: std::io::Result<std::process::ExitStatus>,
) -> VmError {
    let mut stderr = String::new();
    if let Some(pipe) = vmm.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = pipe.take(2048).read_to_string(&mut stderr).await;
    }
    VmError::VmmExited {
        status: status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string()),
        console: format!(
            "{} {}",
            error::sanitize_guest_text(stderr.trim()),
            runtime.console_tail()
        ),
    }
}

/// Hands a VM to its one sandbox: fresh entropy, hostname, machine id, channel secret and the
/// current time (a restored VM's clock stands at the moment of its snapshot).
async fn lease(booted: Booted, spec: &SandboxSpec, started: Instant) -> Result<Sandbox, VmError> {
    let Booted {
        runtime,
        vmm,
        channel,
        accelerator,
        kind,
        backend: vmm_kind,
    } = booted;
    let id = runtime.name().to_string();
    let (request, mut replies) = channel.open_request()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    channel
        .send(&HostMessage::Lease {
            id: request,
            entropy: crate::random_bytes::<64>()?.to_vec(),
            hostname: id.clone(),
            machine_id: crate::hex(&crate::random_bytes::<16>()?),
            next_secret: crate::random_bytes()?,
            unix_time_ns: now.as_nanos() as u64,
            max_processes: spec.max_processes,
        })
        .await?;
    let result = match channel.reply(&mut replies, "accept its lease").await {
        Ok(GuestMessage::Done { .. }) => Ok(()),
        Ok(GuestMessage::Failed { message, .. }) => Err(VmError::Guest(format!(
            "lease refused: {}",
            error::sanitize_guest_text(&message)
        ))),
        Ok(other) => Err(VmError::Guest(format!(
            "unexpected {} to a lease",
            other.name()
        ))),
        Err(err) => Err(err),
    };
    channel.close_request(request);
    result?;
    let spawned = vmm.id().unwrap_or(0);
    let jail = runtime.jail().map(|jail| jail.info(spawned));
    let info = SandboxInfo {
        id,
        backend: vmm_kind.as_str(),
        accelerator,
        vmm_pid: jail.as_ref().map_or(spawned, |j| j.vmm_pid),
        jail,
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        scratch_mib: spec.scratch_mib,
        guest_kernel: channel.kernel_release.clone(),
        agent_version: channel.agent_version.clone(),
        created_at: now.as_secs(),
        start: kind,
        ready_ms: started.elapsed().as_millis() as u64,
        image: spec
            .image
            .as_ref()
            .map(|image| image.digest().to_string())
            .unwrap_or_else(|| "default".to_string()),
    };
    Ok(Sandbox::new(info, channel, vmm, runtime))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
