//! What every handler shares.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::ServerConfig;
use crate::exec::SandboxHandle;
use crate::metrics::Metrics;
use crate::oidc::OidcValidator;
use crate::pipeline::Pipeline;
use crate::quota::RateLimiter;
use crate::store::Store;

pub struct AppState {
    pub config: ServerConfig,
    pub store: Store,
    pub oidc: Option<OidcValidator>,
    pub limiter: RateLimiter,
    /// Requests per source address, before authentication.
    pub source_limiter: crate::quota::SourceLimiter,
    /// File transfers in flight, per principal and in total.
    pub transfers: crate::quota::TransferLimiter,
    /// Failed authentications, recorded per address, reason and interval.
    pub auth_failures: crate::source_guard::AuthFailures,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub sandboxes: LiveSandboxes,
    /// Directory of the audit log, for `GET /v1/audit`.
    pub audit_dir: PathBuf,
    /// State of the Presidio-compatible DLP API at `/v1/dlp/`, if served.
    pub dlp_api: Option<Arc<ztee_dlp::http::DlpState>>,
    /// The secrets broker, when `[secrets]` configures a store or Vault.
    pub secrets: Option<Arc<ztee_secrets::SecretBroker>>,
    /// Requests held for a human approver.
    pub approvals: crate::approvals::Approvals,
    /// The LLM proxy (`/v1/openai`, `/v1/anthropic`) and its traces.
    pub llm: Arc<crate::llm::LlmProxy>,
    /// Each principal's recent tool calls and results through the MCP guard, for rules over
    /// sequences.
    pub tool_traces: crate::mcp::trace::ToolTraces,
    /// The stdio MCP servers the guard runs in microVMs.
    pub stdio_mcp: crate::mcp::stdio::StdioServers,
    /// The E2B-compatible API's access tokens and template names.
    pub(crate) e2b: crate::e2b::Door,
}

/// Running sandboxes by gateway id. Ownership (tenant) lives in the store; this only holds the
/// handles that reach the VMs.
#[derive(Default)]
pub struct LiveSandboxes {
    inner: Mutex<HashMap<String, Arc<LiveSandbox>>>,
}

/// A running sandbox: its VM, and the environment every command in it gets (kept in memory
/// only, since it may hold credentials).
pub struct LiveSandbox {
    pub handle: Arc<dyn SandboxHandle>,
    pub env: std::collections::BTreeMap<String, String>,
    /// Secrets injected at creation; their DLP registrations and backend leases end with the
    /// sandbox (when the last reference to it is dropped).
    pub secrets: Option<crate::secrets::InjectedSecrets>,
    /// The egress granted to it (empty: no network).
    pub egress: Vec<ztee_egress::EgressRule>,
    /// Its running processes that callers may reach while they run.
    pub processes: Arc<crate::action::process::Processes>,
    /// Its code contexts.
    pub contexts: crate::action::code::Contexts,
    /// Its filesystem helper.
    pub fs: crate::action::fs::FsHelper,
    /// When it is destroyed.
    pub expiry: Arc<Expiry>,
}

/// When a sandbox ends; a caller may move it (`sandbox.timeout`).
pub struct Expiry {
    at: Mutex<(tokio::time::Instant, std::time::SystemTime)>,
    changed: tokio::sync::Notify,
}

impl Expiry {
    pub fn after(lifetime: std::time::Duration) -> Self {
        Self {
            at: Mutex::new((
                tokio::time::Instant::now() + lifetime,
                std::time::SystemTime::now() + lifetime,
            )),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The monotonic deadline, for the task that ends the sandbox.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.at
            .lock()
            .map(|at| at.0)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// The wall-clock time it ends, for callers.
    pub fn ends_at(&self) -> std::time::SystemTime {
        self.at
            .lock()
            .map(|at| at.1)
            .unwrap_or_else(|e| e.into_inner().1)
    }

    /// Ends the sandbox `lifetime` from now instead.
    pub fn reset(&self, lifetime: std::time::Duration) {
        let at = (
            tokio::time::Instant::now() + lifetime,
            std::time::SystemTime::now() + lifetime,
        );
        match self.at.lock() {
            Ok(mut guard) => *guard = at,
            Err(e) => *e.into_inner() = at,
        }
        self.changed.notify_waiters();
    }

    /// Resolves when the deadline is moved.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

impl LiveSandboxes {
    pub fn insert(&self, id: String, sandbox: Arc<LiveSandbox>) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(id, sandbox);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.inner.lock().ok()?.get(id).cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.inner.lock().ok()?.remove(id)
    }

    pub fn drain(&self) -> Vec<Arc<LiveSandbox>> {
        self.inner
            .lock()
            .map(|mut map| map.drain().map(|(_, h)| h).collect())
            .unwrap_or_default()
    }
}
