//! Assembling the gateway: state on disk, the first-start bootstrap, listeners (TLS or loopback
//! HTTP) and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use ztee_audit::{AuditConfig, AuditLog, EventType, NodeKey, Outcome};

use crate::api;
use crate::apikey;
use crate::audit::{self, AuditSink};
use crate::config::{ServerConfig, TlsConfig};
use crate::dlp::DlpEngine;
use crate::exec::Executor;
use crate::metrics::Metrics;
use crate::oidc::OidcValidator;
use crate::pipeline::Pipeline;
use crate::policy::{BuiltinPolicy, PolicyEngine};
use crate::quota::{RateLimiter, SourceLimiter};
use crate::request_id;
use crate::source_guard::{self, AuthFailures};
use crate::state::{AppState, LiveSandboxes};
use crate::store::Store;
use ztee_state::state_db_path;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("audit trail: {0}")]
    Audit(#[from] ztee_audit::AuditError),
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcConfigError),
    #[error(transparent)]
    ApiKey(#[from] apikey::ApiKeyError),
    #[error("TLS certificate {cert} / key {key}: {message}")]
    Tls {
        cert: String,
        key: String,
        message: String,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("queued audit events: {0}")]
    Outbox(String),
    #[error("LLM proxy: {0}")]
    Llm(#[from] crate::llm::LlmSetupError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("[approvals]: {0}")]
    Approvals(String),
    #[error("[secrets]: {0}")]
    Secrets(#[from] ztee_secrets::SecretError),
}

/// The secrets broker `[secrets]` asks for: the built-in store when a master key is set (a
/// wrong key stops the start with a clear error), Vault when configured, else none.
fn secret_broker(
    config: &crate::config::SecretsConfig,
    data_dir: &Path,
) -> Result<Option<Arc<ztee_secrets::SecretBroker>>, ServerError> {
    let store = match &config.master_key {
        Some(source) => {
            let key = ztee_secrets::MasterKey::load(source)?;
            let path = config
                .store
                .clone()
                .unwrap_or_else(|| data_dir.join("secrets.json"));
            Some(ztee_secrets::LocalStore::open(path, key)?)
        }
        None => None,
    };
    let vault = config
        .vault
        .clone()
        .map(ztee_secrets::VaultClient::new)
        .transpose()?;
    if store.is_none() && vault.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(ztee_secrets::SecretBroker::new(
        store, vault,
    ))))
}

/// The parts of the gateway that are chosen by whoever starts it.
pub struct Engines {
    pub executor: Arc<dyn Executor>,
    pub dlp: Arc<dyn DlpEngine>,
    /// `None`: the built-in policy configured by `[dlp] inbound`.
    pub policy: Option<Arc<dyn PolicyEngine>>,
    /// Serves the Presidio-compatible DLP API under `/v1/dlp/` when given.
    pub dlp_api: Option<Arc<ztee_dlp::http::DlpState>>,
}

/// What start-up created that the operator must see once.
pub struct Bootstrap {
    /// An admin API key created because no key existed yet. Shown once, stored only hashed.
    pub admin_key: Option<apikey::NewApiKey>,
}

/// Opens (and on first start, initialises) everything under `data_dir`.
pub async fn build(
    config: ServerConfig,
    data_dir: &Path,
    engines: Engines,
) -> Result<(Arc<AppState>, Bootstrap), ServerError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    restrict_permissions(data_dir);
    // First: a wrong master key must stop the start before anything else is touched.
    let secrets = secret_broker(&config.secrets, data_dir)?;
    let store = Store::open_for_server(&state_db_path(data_dir))?;
    // No VM outlives the process that started it, so sandbox rows from a previous run are stale.
    let stale = store.clear_sandboxes()?;
    if stale > 0 {
        tracing::info!(stale, "dropped sandbox records left by a previous run");
    }
    let admin_key = if store.active_api_key_count()? == 0 {
        Some(apikey::create(
            &store,
            "default",
            "platform-admin",
            "created at first start",
        )?)
    } else {
        None
    };
    let audit_config = AuditConfig::new(data_dir);
    let audit_dir = audit_config.dir.clone();
    let node_key = NodeKey::load_or_generate(data_dir)?;
    let content_key = Arc::new(node_key.content_key());
    let log = AuditLog::open(audit_config, node_key)?;
    // Every event passes DLP on its way to the log: caller-controlled text is masked there.
    let audit_sink: Arc<dyn AuditSink> =
        Arc::new(audit::MaskingSink::new(Arc::new(log), engines.dlp.clone()));
    let oidc = match &config.oidc {
        Some(c) => {
            let validator = OidcValidator::new(c.clone())?;
            match validator.prefetch().await {
                Ok(n) => tracing::info!(issuer = %c.issuer, keys = n, "OIDC issuer reachable"),
                // The issuer may come up after the gateway; keys are fetched again on demand.
                Err(e) => {
                    tracing::warn!(issuer = %c.issuer, error = %e, "OIDC issuer keys not available yet")
                }
            }
            Some(validator)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let policy = engines.policy.unwrap_or_else(|| {
        Arc::new(BuiltinPolicy {
            inbound: config.dlp.inbound,
        })
    });
    let pipeline = Arc::new(Pipeline {
        dlp: engines.dlp,
        policy,
        executor: engines.executor,
        audit: audit_sink,
        content_key,
        metrics: metrics.clone(),
        holds: crate::pipeline::HoldPolicy::Park,
    });
    if let Some(key) = &admin_key {
        let event = audit::event(
            EventType::ApiKeyCreate,
            Outcome::Success,
            ztee_audit::Principal::system(),
            "bootstrap",
            None,
            Some(&format!("apikey/{}", key.record.id)),
        );
        pipeline.audit.append(event).await.map_err(|e| {
            ServerError::Audit(ztee_audit::AuditError::InvalidValue {
                field: "bootstrap event",
                value: e,
                expected: "a writable audit trail",
            })
        })?;
    }
    let drained = crate::audit_outbox::drain(&store, pipeline.audit.as_ref())
        .await
        .map_err(|e| ServerError::Outbox(e.to_string()))?;
    if drained > 0 {
        tracing::info!(events = drained, "moved queued audit events into the log");
    }
    crate::audit_outbox::spawn_drainer(store.clone(), Arc::downgrade(&pipeline.audit));
    crate::mcp::pins::create_table(&store)?;
    let (approvals, stale_approvals, approved_while_down) = crate::approvals::Approvals::open(
        config.approvals.clone(),
        store.clone(),
        data_dir,
        config.listen,
        pipeline.audit.clone(),
    )
    .map_err(ServerError::Approvals)?;
    let llm = Arc::new(crate::llm::LlmProxy::new(
        config.llm.clone(),
        data_dir,
        pipeline.dlp.as_ref(),
        pipeline.policy.clone(),
    )?);
    let (limiter, source_limiter, transfers, auth_failures) = request_guards(&config);
    let state = Arc::new(AppState {
        limiter,
        source_limiter,
        transfers,
        auth_failures,
        config,
        store,
        oidc,
        pipeline,
        metrics,
        sandboxes: LiveSandboxes::default(),
        audit_dir,
        dlp_api: engines.dlp_api,
        secrets,
        approvals,
        llm,
        tool_traces: Default::default(),
        stdio_mcp: Default::default(),
        e2b: Default::default(),
    });
    for id in &stale_approvals {
        crate::approvals::record_expiry(&state, id).await;
    }
    crate::approvals::resume_approved(&state, approved_while_down);
    crate::approvals::spawn_expiry(Arc::downgrade(&state));
    source_guard::spawn_flusher(Arc::downgrade(&state), state.auth_failures.window());
    Ok((state, Bootstrap { admin_key }))
}

/// The per-principal and per-source limits `[quotas]` sets, fresh for a new host.
fn request_guards(
    config: &ServerConfig,
) -> (
    RateLimiter,
    SourceLimiter,
    crate::quota::TransferLimiter,
    AuthFailures,
) {
    let q = &config.quotas;
    (
        RateLimiter::new(q.requests_per_second, q.burst),
        SourceLimiter::new(
            q.source_requests_per_second,
            q.source_burst,
            q.max_tracked_sources,
        ),
        crate::quota::TransferLimiter::new(q.max_transfers_per_principal, q.max_transfers),
        AuthFailures::new(
            Duration::from_secs(q.auth_failure_window_s),
            q.max_tracked_sources,
        ),
    )
}

/// The parts of a host at a terminal (`ztee run`), chosen by the command line.
pub struct LocalEngines {
    pub executor: Arc<dyn Executor>,
    pub dlp: Arc<dyn DlpEngine>,
    pub policy: Arc<dyn PolicyEngine>,
    /// Where records go: the node's trail, or its queue while a gateway holds the trail. Every
    /// event passes DLP on its way there, as at the gateway.
    pub audit: Arc<dyn AuditSink>,
    /// The secrets broker, when the command asks for secrets.
    pub secrets: Option<Arc<ztee_secrets::SecretBroker>>,
}

/// The state of a host at a terminal: the same core as the gateway's ([`build`]), opened
/// without what only a server has. Nobody can approve there, so a decision that requires
/// approval is refused ([`HoldPolicy::Refuse`](crate::pipeline::HoldPolicy)); the state
/// database is shared with a gateway on the same data directory, whose sandboxes, held
/// requests and keys are left alone.
pub fn build_local(
    config: ServerConfig,
    data_dir: &Path,
    engines: LocalEngines,
) -> Result<Arc<AppState>, ServerError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let store = Store::open(&state_db_path(data_dir))?;
    let node_key = NodeKey::load_or_generate(data_dir)?;
    let metrics = Arc::new(Metrics::new());
    let pipeline = Arc::new(Pipeline {
        audit: Arc::new(audit::MaskingSink::new(engines.audit, engines.dlp.clone())),
        dlp: engines.dlp,
        policy: engines.policy,
        executor: engines.executor,
        content_key: Arc::new(node_key.content_key()),
        metrics: metrics.clone(),
        holds: crate::pipeline::HoldPolicy::Refuse,
    });
    // No model is called from a terminal: the providers (and their keys, which the operator's
    // shell need not hold) are left out.
    let mut llm_config = config.llm.clone();
    llm_config.providers.clear();
    let llm = Arc::new(crate::llm::LlmProxy::new(
        llm_config,
        data_dir,
        pipeline.dlp.as_ref(),
        pipeline.policy.clone(),
    )?);
    let approvals =
        crate::approvals::Approvals::unavailable(config.approvals.clone(), store.clone());
    let (limiter, source_limiter, transfers, auth_failures) = request_guards(&config);
    Ok(Arc::new(AppState {
        limiter,
        source_limiter,
        transfers,
        auth_failures,
        audit_dir: AuditConfig::new(data_dir).dir,
        config,
        store,
        oidc: None,
        pipeline,
        metrics,
        sandboxes: LiveSandboxes::default(),
        dlp_api: None,
        secrets: engines.secrets,
        approvals,
        llm,
        tool_traces: Default::default(),
        stdio_mcp: Default::default(),
        e2b: Default::default(),
    }))
}

/// The full HTTP application: routes plus the per-source rate limit (before authentication),
/// metrics and request-id layers.
pub fn app(state: Arc<AppState>) -> Router {
    let metrics = state.metrics.clone();
    let dlp = state.pipeline.dlp.clone();
    api::router(state.clone())
        .layer(axum::middleware::from_fn_with_state(
            state,
            source_guard::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(dlp, request_id::layer))
}

/// Serves until `shutdown` resolves, then destroys every running sandbox.
pub async fn serve(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: state.config.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Listen { addr, source })?;
    let service = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let start = audit::event(
        EventType::ServiceStart,
        Outcome::Success,
        ztee_audit::Principal::system(),
        "service",
        None,
        Some(&format!("listener/{addr}")),
    );
    if let Err(e) = state.pipeline.audit.append(start).await {
        tracing::error!(error = %e, "recording service start");
    }
    let result = match &state.config.tls {
        Some(tls) => {
            let rustls = load_tls(tls).await?;
            tokio::spawn(watch_tls(tls.clone(), rustls.clone()));
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener, rustls)
                .handle(handle)
                .serve(service)
                .await
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|source| ServerError::Listen { addr, source })?;
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    for live in state.sandboxes.drain() {
        if let Err(e) = live.handle.destroy().await {
            tracing::warn!(error = %e, "destroying a sandbox at shutdown");
        }
    }
    source_guard::flush(&state, true).await;
    let stop = audit::event(
        EventType::ServiceStop,
        Outcome::Success,
        ztee_audit::Principal::system(),
        "service",
        None,
        Some(&format!("listener/{addr}")),
    );
    if let Err(e) = state.pipeline.audit.append(stop).await {
        tracing::error!(error = %e, "recording service stop");
    }
    result.map_err(ServerError::Serve)
}

/// Binds the listener. Its connections send small writes at once (`TCP_NODELAY`, which
/// accepted sockets inherit from the listening one on Linux): an API answered in small
/// streamed pieces would otherwise wait on delayed acknowledgements, 40 ms at a time.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Listen { addr, source })?;
    socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .map_err(|source| ServerError::Listen { addr, source })?;
    Ok(listener)
}

async fn load_tls(tls: &TlsConfig) -> Result<axum_server::tls_rustls::RustlsConfig, ServerError> {
    // Several crates in the process use rustls; the first installer wins and that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(|e| ServerError::Tls {
            cert: tls.cert.display().to_string(),
            key: tls.key.display().to_string(),
            message: e.to_string(),
        })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads the certificate and key when either file changes. A broken new pair is logged and
/// the previous one stays in use, so a bad deploy does not take the gateway down.
async fn watch_tls(tls: TlsConfig, rustls: axum_server::tls_rustls::RustlsConfig) {
    let mut last = (modified(&tls.cert), modified(&tls.key));
    let mut tick = tokio::time::interval(Duration::from_secs(tls.reload_interval_s.max(1)));
    loop {
        tick.tick().await;
        let now = (modified(&tls.cert), modified(&tls.key));
        if now == last {
            continue;
        }
        match rustls.reload_from_pem_file(&tls.cert, &tls.key).await {
            Ok(()) => {
                tracing::info!(cert = %tls.cert.display(), "reloaded TLS certificate");
                last = now;
            }
            Err(e) => {
                tracing::error!(cert = %tls.cert.display(), error = %e, "new TLS certificate rejected; keeping the previous one")
            }
        }
    }
}

/// The data directory holds the node key, the state database and the audit trail: owner only.
fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not restrict data directory permissions");
    }
}
