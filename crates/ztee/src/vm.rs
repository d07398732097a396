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
    /// Default: 128, at most the memory less 64.
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u32>,

    /// Most processes the sandbox user may run at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_processes: u32,
}

impl ShapeArgs {
    /// The scratch space when `--disk` is not given: it is held in guest memory, so smaller
    /// VMs get less (as at the gateway).
    pub fn default_disk(&self) -> u32 {
        128u32.min(self.memory.saturating_sub(64)).max(8)
    }

    pub fn spec(&self) -> ztee_vm::SandboxSpec {
        ztee_vm::SandboxSpec {
            memory_mib: self.memory,
            vcpus: self.vcpus,
            scratch_mib: self.disk.unwrap_or_else(|| self.default_disk()),
            max_processes: self.max_processes,
            image: None,
        }
    }
}

/// Egress flags shared by `run` and `sandbox create`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EgressArgs {
    /// Let the sandbox reach HOST:PORT through ztee's egress proxy (repeatable). `*.example.com:443`
    /// allows every name below example.com. Without this flag the VM has no network at all.
    #[arg(long = "allow-egress", value_name = "HOST:PORT")]
    pub allow_egress: Vec<ztee_egress::EgressRule>,

    /// Non-public network the egress proxy may still connect to, e.g. an internal mirror's
    /// 10.20.0.0/16 (repeatable; by default only public addresses are reachable).
    #[arg(
        long = "egress-allow-network",
        value_name = "CIDR",
        env = "ZTEE_EGRESS_ALLOW_NETWORKS",
        value_delimiter = ','
    )]
    pub allow_networks: Vec<ipnet::IpNet>,

    /// DNS server the egress proxy asks instead of the host's resolver: IP:PORT (repeatable).
    #[arg(
        long = "egress-dns",
        value_name = "IP:PORT",
        env = "ZTEE_EGRESS_DNS",
        value_delimiter = ','
    )]
    pub dns: Vec<std::net::SocketAddr>,
}

impl EgressArgs {
    /// The proxy and allowlist, when `--allow-egress` was given.
    pub fn proxy(
        &self,
    ) -> anyhow::Result<
        Option<(
            std::sync::Arc<ztee_egress::EgressProxy>,
            ztee_egress::Allowlist,
        )>,
    > {
        if self.allow_egress.is_empty() {
            return Ok(None);
        }
        let proxy = ztee_egress::EgressProxy::from_config(self.config())
            .context("cannot set up the egress proxy")?;
        Ok(Some((
            std::sync::Arc::new(proxy),
            ztee_egress::Allowlist::new(self.allow_egress.clone()),
        )))
    }

    /// The egress proxy's settings from these flags.
    pub fn config(&self) -> ztee_egress::EgressConfig {
        ztee_egress::EgressConfig {
            allowed_networks: self.allow_networks.clone(),
            dns_servers: self.dns.clone(),
            ..ztee_egress::EgressConfig::default()
        }
    }

    /// The same flags for a child `ztee` process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for rule in &self.allow_egress {
            args.push("--allow-egress".to_string());
            args.push(rule.to_string());
        }
        for net in &self.allow_networks {
            args.push("--egress-allow-network".to_string());
            args.push(net.to_string());
        }
        for dns in &self.dns {
            args.push("--egress-dns".to_string());
            args.push(dns.to_string());
        }
        args
    }
}

/// Which image to boot, for `run` and `sandbox create`.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// Boot this image from the local store (e.g. `python:1`) instead of the default guest
    /// image. It must pass the admission policy: signature, attestations, vulnerability gate.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,

    /// Admission policy (Kyverno `verifyImages` shape) for `--image`.
    /// Default: `<data dir>/admission.yaml`.
    #[arg(long, value_name = "FILE", requires = "image")]
    pub policy: Option<std::path::PathBuf>,
}

/// The outcome of checking `--image` against the admission policy.
pub enum Admission {
    /// No `--image`: the operator's default guest image.
    Default,
    Admitted(ztee_vm::BootImage),
    /// The policy said no; the text names the image, the rule and the reason.
    Refused(String),
}

/// Admits `--image`, if given. What boots is the root file system of exactly the digest that
/// passed.
pub fn admit(globals: &GlobalArgs, args: &ImageArgs) -> anyhow::Result<Admission> {
    use ztee_supply::admission::{admit_from_data_dir, DataDirAdmissionError as E};
    let Some(reference) = &args.image else {
        return Ok(Admission::Default);
    };
    let builder = crate::rootfs_helper::builder()?;
    match admit_from_data_dir(
        &globals.data_dir,
        args.policy.as_deref(),
        reference,
        Some(&builder),
        ztee_supply::now(),
    ) {
        Ok(verified) => {
            tracing::info!(image = %reference, digest = %verified.digest(), "image admitted");
            Ok(Admission::Admitted(ztee_vm::BootImage::from(&verified)))
        }
        Err(E::Denied(denial)) => Ok(Admission::Refused(denial.to_string())),
        Err(E::Reference { reference, source }) => {
            Err(anyhow::Error::new(source).context(format!("--image {reference}")))
        }
        Err(E::NoPolicy { path }) => anyhow::bail!(
            "no admission policy at {}: ztee boots an image only when a policy admits it (pass --policy FILE; see docs/supply-chain.md)",
            path.display()
        ),
        Err(E::Policy(err) | E::Store(err) | E::Failed(err)) => Err(err.into()),
        Err(err @ E::NoBuilder) => Err(err.into()),
    }
}

/// The VM executor for a command's `--image`: admission with the data directory's policy (or
/// `--policy`), the image's root filesystem built by the jailed helper.
pub fn executor(
    globals: &GlobalArgs,
    image: &ImageArgs,
) -> anyhow::Result<ztee_server::VmExecutor> {
    let mut executor =
        ztee_server::VmExecutor::new(engine(globals)?).with_admission(&globals.data_dir);
    if let Some(policy) = &image.policy {
        executor = executor.with_admission_policy(policy.clone());
    }
    if image.image.is_some() {
        executor = executor.with_rootfs_builder(crate::rootfs_helper::builder()?);
    }
    Ok(executor)
}

/// Exit code of a command whose image was refused (as `ztee image verify`).
pub const EXIT_REFUSED: u8 = 3;

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
    Ok(ztee_vm::Engine::new(engine_config(
        globals,
        &globals.data_dir,
    )?)?)
}

/// The engine's settings for `data_dir`: the environment's, with `--vmm` applied.
pub fn engine_config(
    globals: &GlobalArgs,
    data_dir: &std::path::Path,
) -> Result<ztee_vm::EngineConfig, ztee_vm::VmError> {
    let mut config = ztee_vm::EngineConfig::from_env_and_defaults(data_dir)?;
    if let Some(vmm) = globals.vmm {
        config.vmm.choice = vmm.into();
    }
    Ok(config)
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
