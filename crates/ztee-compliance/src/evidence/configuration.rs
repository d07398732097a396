//! The gateway's configuration as it would be loaded, the API keys it would accept, and the
//! policy bundle it would enforce (with its own unit tests run).

use std::path::Path;

use serde::Serialize;
use ztee_policy::{run_tests, Bundle, BundleSource, TestStatus};
use ztee_state::config::InboundAction;
use ztee_state::Store;

use crate::{ComplianceError, Installation};

#[derive(Debug, Clone, Serialize)]
pub struct ConfigurationEvidence {
    pub config_file: Option<String>,
    pub listen: String,
    /// The gateway listens on a loopback address only.
    pub loopback_only: bool,
    pub tls: bool,
    pub allow_insecure_http: bool,
    pub oidc: Option<OidcEvidence>,
    pub dlp_inbound: String,
    pub requests_per_second: f64,
    pub max_sandboxes_per_tenant: u32,
    pub max_timeout_s: u64,
    pub default_sandbox_timeout_s: u64,
    pub api_keys: ApiKeyEvidence,
    pub policy: PolicyEvidence,
    /// LLM providers behind the proxy: where card-derived content may travel.
    pub llm_providers: Vec<LlmProviderEvidence>,
    /// Tenants mapped to a tier (e.g. `pci`), which policy uses to route providers.
    pub tenant_tiers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LlmProviderEvidence {
    pub name: String,
    pub external: bool,
    /// The endpoint is reached over TLS (`https://`).
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct OidcEvidence {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    /// `amr` values of which every token must show one (multi-factor evidence); empty: none.
    pub required_amr: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiKeyEvidence {
    pub active: u64,
    pub revoked: u64,
    /// Active keys by role.
    pub by_role: std::collections::BTreeMap<String, u64>,
    /// Active keys created more than 90 days ago (PCI DSS 8.3.9 / 8.6.3 ask for periodic change).
    pub older_than_90_days: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyEvidence {
    /// Where the bundle comes from (a directory or the built-in default).
    pub source: String,
    pub builtin: bool,
    /// SHA-256 over the bundle's file names, sources and data, in order: changes show up here.
    pub sha256: String,
    pub files: usize,
    pub tests_passed: usize,
    pub tests_failed: usize,
}

pub fn gather(installation: &Installation) -> Result<ConfigurationEvidence, ComplianceError> {
    let config = &installation.config;
    Ok(ConfigurationEvidence {
        config_file: installation
            .config_file
            .as_ref()
            .map(|p| p.display().to_string()),
        listen: config.listen.to_string(),
        loopback_only: config.listen.ip().is_loopback(),
        tls: config.tls.is_some(),
        allow_insecure_http: config.allow_insecure_http,
        oidc: config.oidc.as_ref().map(|o| OidcEvidence {
            issuer: o.issuer.clone(),
            audience: o.audience.clone(),
            algorithms: o.algorithms.clone(),
            required_amr: o.required_amr.clone(),
        }),
        dlp_inbound: match config.dlp.inbound {
            InboundAction::Block => "block",
            InboundAction::Redact => "redact",
            InboundAction::RequireApproval => "require_approval",
        }
        .to_string(),
        requests_per_second: config.quotas.requests_per_second,
        max_sandboxes_per_tenant: config.quotas.max_sandboxes_per_tenant,
        max_timeout_s: config.limits.max_timeout_s,
        default_sandbox_timeout_s: config.sandbox_defaults.timeout_s,
        api_keys: api_keys(&installation.data_dir)?,
        policy: policy(installation)?,
        llm_providers: config
            .llm
            .providers
            .iter()
            .map(|p| LlmProviderEvidence {
                name: p.name.clone(),
                external: p.external,
                tls: p.base_url.starts_with("https://"),
            })
            .collect(),
        tenant_tiers: config.llm.tenant_tiers.clone(),
    })
}

fn api_keys(data_dir: &Path) -> Result<ApiKeyEvidence, ComplianceError> {
    let path = ztee_state::state_db_path(data_dir);
    let mut evidence = ApiKeyEvidence::default();
    if !path.is_file() {
        return Ok(evidence);
    }
    let store = Store::open(&path).map_err(|e| ComplianceError::State(e.to_string()))?;
    let keys = store
        .api_keys()
        .map_err(|e| ComplianceError::State(e.to_string()))?;
    let cutoff =
        std::time::SystemTime::now().checked_sub(std::time::Duration::from_secs(90 * 86_400));
    for key in keys {
        if key.revoked_at.is_some() {
            evidence.revoked += 1;
            continue;
        }
        evidence.active += 1;
        *evidence.by_role.entry(key.role.clone()).or_insert(0) += 1;
        let created = humantime::parse_rfc3339(&key.created_at).ok();
        if matches!((created, cutoff), (Some(created), Some(cutoff)) if created < cutoff) {
            evidence.older_than_90_days.push(key.id);
        }
    }
    Ok(evidence)
}

fn policy(installation: &Installation) -> Result<PolicyEvidence, ComplianceError> {
    let bundle = Bundle::resolve(installation.policy_dir.as_deref(), &installation.data_dir)?;
    let results = run_tests(&bundle)?;
    let passed = results
        .iter()
        .filter(|r| r.status == TestStatus::Pass)
        .count();
    Ok(PolicyEvidence {
        source: bundle.describe(),
        builtin: bundle.source == BundleSource::Builtin,
        sha256: bundle.sha256(),
        files: bundle.files.len(),
        tests_passed: passed,
        tests_failed: results.len() - passed,
    })
}
