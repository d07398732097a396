//! Getting a VM for a sandbox: from the warm pool, by restoring a snapshot, or by booting from
//! scratch; then leasing it (fresh entropy, identifiers, channel secret and clock) to exactly one
//! sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ztee_wire::{GuestMessage, HostMessage};

use crate::backend::{Backend, Booted, Host, VmmDecision};
use crate::pool::{VmSource, WarmPool};
use crate::sandbox::{Sandbox, SandboxInfo};
use crate::select::AccelSource;
use crate::templates::Templates;
use crate::{accel, error, initramfs, runtime, AccelDecision, EngineConfig, SandboxSpec, VmError};

/// Boots sandboxes. Cheap to clone; safe to share across tasks.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    host: Host,
    accel: tokio::sync::OnceCell<AccelDecision>,
    vmm: tokio::sync::OnceCell<VmmDecision>,
    /// The one backend every VM of this engine runs on, picked on first use.
    backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
    templates: Templates,
    pools: Mutex<HashMap<SandboxSpec, Arc<WarmPool>>>,
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
                host: Host {
                    config,
                    jailed,
                    base_initramfs,
                },
                accel: tokio::sync::OnceCell::new(),
                vmm: tokio::sync::OnceCell::new(),
                backend: tokio::sync::OnceCell::new(),
                templates: Templates::default(),
                pools: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.host.config
    }

    /// Whether VMMs run in a jail (see [`crate::jail`]).
    pub fn jailed(&self) -> bool {
        self.inner.host.jailed
    }

    /// Which accelerator VMs use and why; probes (by booting a VM under KVM) on first call.
    pub async fn accelerator(&self) -> AccelDecision {
        self.inner
            .accel
            .get_or_init(|| accel::decide(&self.inner.host))
            .await
            .clone()
    }

    /// Which VMM runs guests and why; decided on first call (see [`crate::select`]).
    pub async fn vmm(&self) -> VmmDecision {
        self.inner
            .vmm
            .get_or_init(|| crate::select::decide(self.config(), self))
            .await
            .clone()
    }

    /// The backend for this engine's VMs, picked once from the VMM decision.
    async fn backend(&self) -> Arc<dyn Backend> {
        self.inner
            .backend
            .get_or_init(|| async {
                let decision = self.vmm().await;
                let backend = crate::select::backend(self.config(), &decision, self).await;
                tracing::info!(backend = %backend.describe(), reason = %decision.reason, "VMM backend");
                backend
            })
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
        lease(booted, self.backend().await, &spec, started).await
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
        let engine = self.clone();
        let source: VmSource = Arc::new(move |spec: SandboxSpec| {
            let engine = engine.clone();
            Box::pin(async move { engine.fresh_vm(&spec).await })
        });
        let pool = WarmPool::start(source, spec.clone(), size);
        pools.insert(spec, pool.clone());
        Ok(pool)
    }

    fn pool(&self, spec: &SandboxSpec) -> Option<Arc<WarmPool>> {
        lock(&self.inner.pools).get(spec).cloned()
    }

    /// A VM that nobody has used: restored from the shape's template when snapshots work here,
    /// booted from scratch otherwise.
    async fn fresh_vm(&self, spec: &SandboxSpec) -> Result<Booted, VmError> {
        let backend = self.backend().await;
        let host = &self.inner.host;
        if host.config.snapshots {
            if let Some(template) = self.inner.templates.get(host, backend.as_ref(), spec).await {
                let deadline = Instant::now() + host.config.boot_timeout;
                return backend.restore(host, &template, deadline).await;
            }
        }
        let deadline = Instant::now() + host.config.boot_timeout;
        backend.boot(host, spec, deadline).await
    }
}

impl AccelSource for Engine {
    fn accelerator(&self) -> impl std::future::Future<Output = AccelDecision> + Send {
        Engine::accelerator(self)
    }
}

/// Hands a VM to its one sandbox: fresh entropy, hostname, machine id, channel secret and the
/// current time (a restored VM's clock stands at the moment of its snapshot).
async fn lease(
    booted: Booted,
    backend: Arc<dyn Backend>,
    spec: &SandboxSpec,
    started: Instant,
) -> Result<Sandbox, VmError> {
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
    Ok(Sandbox::new(info, channel, vmm, runtime, backend))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
