//! The warm pool: restored, never-used VMs of one shape, ready to lease.
//!
//! A VM leaves the pool exactly once, when [`WarmPool::take`] hands it to a new sandbox; a
//! background task gets replacements from its [`VmSource`] (the engine's restore-or-boot) and
//! warms each up before parking it. Pooled VMs belong to the engine; dropping the engine's last
//! reference kills them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::backend::{Booted, BoxFuture};
use crate::config::SandboxSpec;
use crate::exec::{ExecSpec, Execution};
use crate::VmError;

/// Where a pool gets new VMs: a VM nobody has used, of the shape it is given.
pub(crate) type VmSource =
    Arc<dyn Fn(SandboxSpec) -> BoxFuture<'static, Result<Booted, VmError>> + Send + Sync>;

pub struct WarmPool {
    spec: SandboxSpec,
    target: AtomicUsize,
    ready: Mutex<VecDeque<Booted>>,
    refill: Notify,
    served: AtomicUsize,
    misses: AtomicUsize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStats {
    pub memory_mib: u32,
    pub vcpus: u8,
    pub target: usize,
    pub ready: usize,
    pub served: usize,
    /// Requests that found the pool empty and waited for a restore.
    pub misses: usize,
}

impl WarmPool {
    pub(crate) fn start(source: VmSource, spec: SandboxSpec, size: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            spec,
            target: AtomicUsize::new(size),
            ready: Mutex::new(VecDeque::new()),
            refill: Notify::new(),
            served: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        });
        // The task holds only a weak reference, so dropping the pool stops it.
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            loop {
                let Some(pool) = weak.upgrade() else { return };
                if pool.len() >= pool.target.load(Ordering::SeqCst) {
                    // Wake periodically too, to notice a dropped pool.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), pool.refill.notified()).await;
                    continue;
                }
                let spec = pool.spec.clone();
                drop(pool);
                match source(spec).await {
                    Ok(vm) => {
                        warm_up(&vm).await;
                        match weak.upgrade() {
                            Some(pool) => pool.lock().push_back(vm),
                            None => return,
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "warm pool refill failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Booted>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// A ready VM, or `None` when the pool is empty. VMs whose VMM died while waiting are
    /// discarded.
    pub(crate) fn take(&self) -> Option<Booted> {
        let vm = loop {
            match self.lock().pop_front() {
                Some(vm) if vm.channel.is_closed() => continue,
                other => break other,
            }
        };
        self.refill.notify_one();
        match &vm {
            Some(_) => self.served.fetch_add(1, Ordering::SeqCst),
            None => self.misses.fetch_add(1, Ordering::SeqCst),
        };
        vm
    }

    pub fn resize(&self, size: usize) {
        self.target.store(size, Ordering::SeqCst);
        let mut ready = self.lock();
        while ready.len() > size {
            ready.pop_back();
        }
        drop(ready);
        self.refill.notify_one();
    }

    /// Waits until `count` VMs are ready (or `timeout` passes); returns how many are.
    pub async fn wait_ready(&self, count: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.len()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            memory_mib: self.spec.memory_mib,
            vcpus: self.spec.vcpus,
            target: self.target.load(Ordering::SeqCst),
            ready: self.len(),
            served: self.served.load(Ordering::SeqCst),
            misses: self.misses.load(Ordering::SeqCst),
        }
    }
}

/// Runs `true` from the image once in a VM bound for the warm pool. A freshly restored QEMU
/// starts with an empty TCG translation cache, so the first command in it pays for translating
/// the whole exec path (guest kernel, loader, libc); doing that here keeps it off the request
/// path. It runs before the lease, as the sandbox user, and only the image's own program runs;
/// an image without `true` simply skips the warm-up.
async fn warm_up(booted: &Booted) {
    let spec = ExecSpec::new(vec!["true".into()]);
    if let Ok(execution) = Execution::start(booted.channel.clone(), spec).await {
        let _ = execution.output().await;
    }
}
