//! `[approvals]`: how long held requests wait, who is notified, and how much they may hold.

use std::path::PathBuf;

use serde::Deserialize;

/// `[approvals]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Seconds a request waits for its approvals before it expires (default 3600).
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Policy rule ids (e.g. `pci.raw_pan_in_code`) whose hold needs two distinct approvers.
    #[serde(default)]
    pub two_person_rules: Vec<String>,
    /// Base URL approvers and webhooks reach the gateway at, for links
    /// (default `http://<listen>`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where notifications go.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Bounds on pending held requests (count and bytes), per principal, per tenant and in
    /// total: `[approvals.hold_limits]`.
    #[serde(default)]
    pub hold_limits: HoldLimits,
    /// The key held requests are sealed under (default `approvals-seal.key` in the data
    /// directory, created on first start). Gateways that share a state database share it.
    #[serde(default)]
    pub seal_key_file: Option<std::path::PathBuf>,
}

fn default_ttl() -> u64 {
    3600
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl_s: default_ttl(),
            two_person_rules: Vec::new(),
            public_url: None,
            seal_key_file: None,
            webhooks: Vec::new(),
            hold_limits: HoldLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The JSON payload documented in docs/approvals.md.
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` plus `blocks`).
    Slack,
}

/// `[[approvals.webhooks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// The approver this webhook's signed approve/deny links act for: an API key subject
    /// (`apikey:<id>`, role `approver` or `admin` in the approval's tenant). Without it the
    /// notifications carry no decision links (only `view`).
    #[serde(default)]
    pub approver: Option<String>,
}

/// `[approvals.hold_limits]`: how much pending held requests may keep in memory.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HoldLimits {
    /// Pending held requests one principal may have (default 16).
    #[serde(default = "default_per_principal")]
    pub max_per_principal: usize,
    /// Bytes of held request content one principal may have pending (default 16 MiB).
    #[serde(default = "default_per_principal_bytes")]
    pub max_bytes_per_principal: u64,
    /// Pending held requests one tenant may have, all its principals together (default 64).
    #[serde(default = "default_per_tenant")]
    pub max_per_tenant: usize,
    /// Bytes of held request content one tenant may have pending (default 64 MiB).
    #[serde(default = "default_per_tenant_bytes")]
    pub max_bytes_per_tenant: u64,
    /// Pending held requests on this gateway, all tenants together (default 1024).
    #[serde(default = "default_total")]
    pub max_total: usize,
    /// Bytes of held request content on this gateway (default 256 MiB).
    #[serde(default = "default_total_bytes")]
    pub max_total_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

fn default_per_principal() -> usize {
    16
}
fn default_per_principal_bytes() -> u64 {
    16 * MIB
}
fn default_per_tenant() -> usize {
    64
}
fn default_per_tenant_bytes() -> u64 {
    64 * MIB
}
fn default_total() -> usize {
    1024
}
fn default_total_bytes() -> u64 {
    256 * MIB
}

impl Default for HoldLimits {
    fn default() -> Self {
        Self {
            max_per_principal: default_per_principal(),
            max_bytes_per_principal: default_per_principal_bytes(),
            max_per_tenant: default_per_tenant(),
            max_bytes_per_tenant: default_per_tenant_bytes(),
            max_total: default_total(),
            max_total_bytes: default_total_bytes(),
        }
    }
}
