//! `[llm]` in the server configuration: the upstream model endpoints and each tenant's tier.
//!
//! ```toml
//! [llm]
//! default_tier = "standard"
//! tenant_tiers = { payments = "pci" }
//!
//! [[llm.providers]]
//! name = "local"                 # the name policy sees (data.json: tier_providers)
//! api = "openai"                 # which request shape it speaks: openai | anthropic
//! base_url = "http://10.0.0.5:8000/v1"
//! external = false               # inside the operator's infrastructure
//!
//! [[llm.providers]]
//! name = "anthropic"
//! api = "anthropic"
//! base_url = "https://api.anthropic.com"
//! external = true
//! api_key_env = "ANTHROPIC_API_KEY"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The request shape a provider speaks, which is also the gateway route that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderApi {
    /// `POST {base_url}/chat/completions` with `Authorization: Bearer <key>`.
    Openai,
    /// `POST {base_url}/v1/messages` with `x-api-key: <key>`.
    Anthropic,
}

impl ProviderApi {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The provider's name as policy sees it (`input.request.provider.name`).
    pub name: String,
    pub api: ProviderApi,
    /// e.g. `https://api.openai.com/v1` or `https://api.anthropic.com`.
    pub base_url: String,
    /// True for endpoints outside the operator's infrastructure. Policy never lets raw card data
    /// reach one, and a PCI tier may not use one at all.
    pub external: bool,
    /// Environment variable holding the upstream API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the upstream API key (trailing whitespace ignored).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Upper bound for one upstream exchange, streaming included, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Tier of tenants not listed in `tenant_tiers`.
    #[serde(default = "default_tier")]
    pub default_tier: String,
    /// Tenant name -> tier (e.g. `pci`); the policy bundle routes providers by tier.
    #[serde(default)]
    pub tenant_tiers: BTreeMap<String, String>,
    /// Upstreams, in order of preference: a request goes to the first one of its API shape that
    /// policy allows for the caller's tier.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Largest chat request body, in bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
    /// Largest non-streaming upstream response body, in bytes.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
}

fn default_tier() -> String {
    "standard".into()
}
fn default_timeout() -> u64 {
    300
}
fn default_max_request() -> usize {
    8 * 1024 * 1024
}
fn default_max_response() -> usize {
    16 * 1024 * 1024
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            default_tier: default_tier(),
            tenant_tiers: BTreeMap::new(),
            providers: Vec::new(),
            max_request_bytes: default_max_request(),
            max_response_bytes: default_max_response(),
        }
    }
}

impl LlmConfig {
    pub fn tier_of(&self, tenant: &str) -> &str {
        self.tenant_tiers
            .get(tenant)
            .map_or(self.default_tier.as_str(), String::as_str)
    }

    /// The tiers for the policy engine, so every action is decided with the same tier.
    pub fn tenant_tiers(&self) -> TenantTiers {
        TenantTiers::new(self.default_tier.clone(), self.tenant_tiers.clone())
    }

    /// Checks what serde cannot: unique names, usable URLs, one key source at most.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("llm.providers[{i}] ({})", p.name);
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(format!("{at}: name must be 1 or more of A-Z a-z 0-9 - _ ."));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(format!("{at}: the name is used twice"));
            }
            let url = url::Url::parse(&p.base_url)
                .map_err(|e| format!("{at}: base_url {:?} is not a URL: {e}", p.base_url))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{at}: base_url must be http:// or https://"));
            }
            if p.external && url.scheme() != "https" && !is_loopback(&url) {
                return Err(format!(
                    "{at}: an external provider must be reached over https"
                ));
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err(format!("{at}: set api_key_env or api_key_file, not both"));
            }
            if p.timeout_s == 0 {
                return Err(format!("{at}: timeout_s must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Which tier each tenant is in (`[llm] default_tier` and `tenant_tiers`); the bundle routes
/// providers, and may route anything else, by tier.
#[derive(Debug, Clone)]
pub struct TenantTiers {
    default: String,
    tenants: BTreeMap<String, String>,
}

impl TenantTiers {
    pub fn new(default: String, tenants: BTreeMap<String, String>) -> Self {
        Self { default, tenants }
    }

    pub fn tier_of(&self, tenant: &str) -> &str {
        self.tenants
            .get(tenant)
            .map_or(self.default.as_str(), String::as_str)
    }
}

impl Default for TenantTiers {
    /// Every tenant in the tier `standard`.
    fn default() -> Self {
        Self::new("standard".into(), BTreeMap::new())
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LlmConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn tiers_default_and_providers_are_checked() {
        let c = parse(
            "tenant_tiers = { pay = \"pci\" }\n[[providers]]\nname = \"local\"\napi = \"openai\"\nbase_url = \"http://10.0.0.1/v1\"\nexternal = false\n",
        );
        assert_eq!(c.tier_of("pay"), "pci");
        assert_eq!(c.tier_of("other"), "standard");
        c.validate().unwrap();

        let external_http = parse(
            "[[providers]]\nname = \"x\"\napi = \"anthropic\"\nbase_url = \"http://api.example.com\"\nexternal = true\n",
        );
        assert!(external_http.validate().unwrap_err().contains("https"));
        let twice = parse(
            "[[providers]]\nname = \"x\"\napi = \"openai\"\nbase_url = \"https://a/v1\"\nexternal = true\n[[providers]]\nname = \"x\"\napi = \"openai\"\nbase_url = \"https://b/v1\"\nexternal = true\n",
        );
        assert!(twice.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn a_tenant_without_a_tier_has_the_default() {
        let tiers = TenantTiers::new(
            "standard".into(),
            [("pay".to_string(), "pci".to_string())].into(),
        );
        assert_eq!(tiers.tier_of("pay"), "pci");
        assert_eq!(tiers.tier_of("other"), "standard");
    }
}
