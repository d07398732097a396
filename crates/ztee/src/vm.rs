//! Glue between CLI commands and the VM engine: one runtime, the engine from the data dir, the
//! sandbox shape flags, and signal handling.

use std::future::Future;

use anyhow::Context;

use crate::globals::GlobalArgs;

/// VM size flags shared by `run` and `sandbox create`.
#[derive(clap::Args, Debug, Clone)]
pub struct ShapeArgs {
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub memory: u32,

    /// Virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,

    /// Size of the writable scratch space (tmpfs, held in guest memory) in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub disk: u32,

    /// Most processes the sandbox user may run at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_processes: u32,
}

impl ShapeArgs {
    pub fn spec(&self) -> ztee_vm::SandboxSpec {
        ztee_vm::SandboxSpec {
            memory_mib: self.memory,
            vcpus: self.vcpus,
            scratch_mib: self.disk,
            max_processes: self.max_processes,
        }
    }
}

/// Runs `future` on a single-threaded runtime on this thread. VMMs are started with
/// `PR_SET_PDEATHSIG`, which follows the spawning *thread*; keeping every spawn on the main
/// thread ties each VM's life to the process's.
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

pub fn engine(globals: &GlobalArgs) -> anyhow::Result<ztee_vm::Engine> {
    let config = ztee_vm::EngineConfig::from_env_and_defaults(&globals.data_dir)?;
    Ok(ztee_vm::Engine::new(config)?)
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
