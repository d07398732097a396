//! `ztee serve` end to end: configuration, engines, bootstrap, listening, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{ConfigError, ServerConfig};
use crate::dlp_engine::ZteeDlp;
use crate::exec::Executor;
use crate::rego_policy::RegoPolicy;
use crate::server::{self, Engines, ServerError};

pub struct LaunchOptions {
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Overrides `listen` from the file and `ZTEE_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// A Rego bundle directory; default `<data-dir>/policies`, else the built-in bundle.
    pub policy_dir: Option<PathBuf>,
}

/// What the operator is told at start-up.
pub enum Announcement<'a> {
    /// Created on first start; printed once, never stored in clear.
    AdminKey { id: &'a str, key: &'a str },
    Listening {
        addr: SocketAddr,
        tls: bool,
        engine: serde_json::Value,
        policy: String,
        oidc_issuer: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("policy bundle: {0}")]
    Policy(#[from] ztee_policy::PolicyError),
    #[error("DLP scanner: {0}")]
    Dlp(#[from] ztee_dlp::DlpError),
    #[error("VM engine: {0}")]
    Engine(String),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing the SIGINT and SIGTERM handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(
    options: LaunchOptions,
    make_executor: impl FnOnce(&std::path::Path, &ServerConfig) -> Result<Arc<dyn Executor>, String>,
    mut announce: impl FnMut(Announcement<'_>),
) -> Result<(), LaunchError> {
    let mut config = ServerConfig::load(options.config_file.as_deref())?;
    if let Some(listen) = options.listen {
        config.listen = listen;
        config.validate()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ztee-server")
        .build()
        .map_err(LaunchError::Runtime)?;
    runtime.block_on(async move {
        let bundle =
            ztee_policy::Bundle::resolve(options.policy_dir.as_deref(), &options.data_dir)?;
        let policy = RegoPolicy::new(
            ztee_policy::PolicyEngine::compile(&bundle)?,
            config.dlp.inbound,
        )
        .with_tenant_tiers(config.llm.tenant_tiers());
        let policy_description = policy.describe().to_owned();
        let policy_resource = format!("policy/sha256:{}", bundle.sha256());
        let executor = make_executor(&options.data_dir, &config).map_err(LaunchError::Engine)?;
        let engine_description = executor.describe();
        let dlp = ZteeDlp::new(Default::default())?;
        let dlp_api = Arc::new(ztee_dlp::http::DlpState::new(dlp.scanner()));
        let engines = Engines {
            executor,
            dlp: Arc::new(dlp),
            policy: Some(Arc::new(policy)),
            dlp_api: Some(dlp_api),
        };
        let listener = server::bind(config.listen)?;
        let addr = listener.local_addr().unwrap_or(config.listen);
        let tls = config.tls.is_some();
        let oidc_issuer = config.oidc.as_ref().map(|o| o.issuer.clone());
        let (state, bootstrap) = server::build(config, &options.data_dir, engines).await?;
        // Which bundle is in force from now on: the trail shows every change of it (11.5.2).
        let loaded = crate::audit::event(
            ztee_audit::EventType::PolicyChange,
            ztee_audit::Outcome::Success,
            ztee_audit::Principal::system(),
            "service",
            None,
            Some(&policy_resource),
        );
        if let Err(e) = state.pipeline.audit.append(loaded).await {
            tracing::error!(error = %e, "recording the policy bundle in force");
        }
        // The handlers are installed before the gateway says it listens: a supervisor that
        // stops it right after that line must get a clean shutdown, not the default action
        // of SIGTERM.
        let shutdown = shutdown_signal()?;
        if let Some(new) = &bootstrap.admin_key {
            announce(Announcement::AdminKey {
                id: &new.record.id,
                key: &new.key,
            });
        }
        announce(Announcement::Listening {
            addr,
            tls,
            engine: engine_description,
            policy: policy_description,
            oidc_issuer,
        });
        server::serve(state, listener, shutdown).await?;
        Ok(())
    })
}

/// Installs the SIGINT and SIGTERM handlers now and resolves when either arrives.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, LaunchError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(LaunchError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(LaunchError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutting down: destroying sandboxes and closing the audit trail");
    })
}
