//! Server configuration: built-in defaults, overridden by a TOML file, overridden by environment
//! variables (`ZTEE_LISTEN`, `ZTEE_TLS_CERT`, `ZTEE_TLS_KEY`, `ZTEE_OIDC_ISSUER`,
//! `ZTEE_OIDC_AUDIENCE`, `ZTEE_ALLOW_INSECURE_HTTP`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod approvals;
mod llm;
mod mcp;
mod oidc;
mod quota;

pub use approvals::{ApprovalsConfig, HoldLimits, WebhookConfig, WebhookFormat};
pub use llm::{LlmConfig, ProviderApi, ProviderConfig, TenantTiers};
pub use mcp::{GuardUpstream, McpConfig, PinMode, Transport};
pub use oidc::OidcConfig;
pub use quota::QuotaConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TLS certificate chain and private key (PEM). Both or neither.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP on a non-loopback address. Off by default: tokens and card data would
    /// cross the network in clear text.
    #[serde(default)]
    pub allow_insecure_http: bool,
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    #[serde(default)]
    pub quotas: QuotaConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub sandbox_defaults: SandboxDefaults,
    #[serde(default)]
    pub dlp: DlpConfig,
    /// The egress proxy: non-public networks it may reach, DNS servers, timeouts.
    #[serde(default)]
    pub egress: ztee_egress::EgressConfig,
    /// The secrets broker (see docs/secrets.md). Off unless a master key or Vault is configured.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// Human approval of held requests (see docs/approvals.md).
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The LLM proxy's providers and tenant tiers (`[llm]`, see `llm.rs`).
    #[serde(default)]
    pub llm: LlmConfig,
    /// Third-party MCP servers behind the MCP guard (`[[mcp.upstreams]]`).
    #[serde(default)]
    pub mcp: McpConfig,
    /// The E2B-compatible API (`[e2b]`, see docs/e2b.md).
    #[serde(default)]
    pub e2b: E2bConfig,
}

/// `[e2b]`: the E2B-compatible API on the gateway's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2bConfig {
    /// Serve it (default true). Its calls pass the same authentication, policy, DLP and audit
    /// as the REST API's.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// E2B template names and the ztee images they boot (`"default"`: the built-in image).
    /// A template not listed here is taken as an image reference and admitted like any image.
    #[serde(default = "default_templates")]
    pub templates: std::collections::BTreeMap<String, String>,
}

impl Default for E2bConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            templates: default_templates(),
        }
    }
}

impl E2bConfig {
    /// The image a template boots: `None` for the built-in image.
    pub fn image_for(&self, template: &str) -> Option<String> {
        let image = self
            .templates
            .get(template)
            .map_or(template, String::as_str);
        (image != "default").then(|| image.to_owned())
    }
}

fn default_true() -> bool {
    true
}

/// The SDKs' default templates boot the built-in image.
fn default_templates() -> std::collections::BTreeMap<String, String> {
    ["base", "code-interpreter-v1"]
        .into_iter()
        .map(|t| (t.to_owned(), "default".to_owned()))
        .collect()
}

/// `[secrets]`: where injected secrets come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// The built-in store file (default `<data-dir>/secrets.json`).
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// The built-in store's master key: `{ file = "..." }`, `{ env = "VAR" }` or
    /// `{ command = ["prog", "arg"] }`. Without it the built-in store is off.
    #[serde(default)]
    pub master_key: Option<ztee_secrets::MasterKeySource>,
    /// HashiCorp Vault / OpenBao.
    #[serde(default)]
    pub vault: Option<ztee_secrets::VaultConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often to look for a changed certificate or key, in seconds.
    #[serde(default = "default_reload")]
    pub reload_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON request body, in bytes.
    #[serde(default = "default_max_json")]
    pub max_json_body_bytes: usize,
    /// Largest file upload, in bytes.
    #[serde(default = "default_max_file")]
    pub max_file_bytes: usize,
    /// Largest stdout or stderr kept for a non-streaming command result, per stream, in bytes.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
    /// Upper bound for any `timeout_s` a caller asks for.
    #[serde(default = "default_max_timeout")]
    pub max_timeout_s: u64,
    #[serde(default = "default_max_memory")]
    pub max_memory_mib: u32,
    #[serde(default = "default_max_vcpus")]
    pub max_vcpus: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxDefaults {
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Lifetime of a sandbox created with `POST /v1/sandboxes`, in seconds.
    #[serde(default = "default_sandbox_timeout")]
    pub timeout_s: u64,
    /// Timeout of one command, in seconds.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_s: u64,
    /// VMs of the default shape kept booted and ready, so that creating a sandbox or a one-shot
    /// run does not wait for a boot (each idle VM holds its memory). 0 disables the pool.
    #[serde(default)]
    pub warm_pool: usize,
    /// The VMM sandboxes run on: `auto` (Firecracker where it can run, else QEMU), `qemu` or
    /// `firecracker`. `--vmm` and `ZTEE_VMM` take precedence; unset means `auto`.
    #[serde(default)]
    pub vmm: Option<VmmChoice>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    /// What to do when card data or secrets are found in code, arguments, env or files going in.
    #[serde(default)]
    pub inbound: InboundAction,
}

/// What the gateway does when the inbound scan finds something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundAction {
    /// Refuse the request (422) before it reaches a VM.
    #[default]
    Block,
    /// Replace the finding with its masked form and go on.
    Redact,
    /// Hold the request for a human approver.
    RequireApproval,
}

/// Which VMM sandboxes run on (`sandbox_defaults.vmm`), as an operator writes it. The VM crate
/// has its own choice type; the binary maps this one onto it, so the schema does not pull in
/// the VM engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    /// Firecracker where it is installed and KVM boots guests, else QEMU.
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_reload() -> u64 {
    10
}
fn default_max_json() -> usize {
    1024 * 1024
}
fn default_max_file() -> usize {
    16 * 1024 * 1024
}
fn default_max_output() -> usize {
    4 * 1024 * 1024
}
fn default_max_timeout() -> u64 {
    3600
}
fn default_max_memory() -> u32 {
    2048
}
fn default_max_vcpus() -> u32 {
    4
}
fn default_memory() -> u32 {
    128
}
fn default_vcpus() -> u32 {
    1
}
fn default_sandbox_timeout() -> u64 {
    600
}
fn default_command_timeout() -> u64 {
    60
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_json_body_bytes: default_max_json(),
            max_file_bytes: default_max_file(),
            max_output_bytes: default_max_output(),
            max_timeout_s: default_max_timeout(),
            max_memory_mib: default_max_memory(),
            max_vcpus: default_max_vcpus(),
        }
    }
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        Self {
            memory_mib: default_memory(),
            vcpus: default_vcpus(),
            timeout_s: default_sandbox_timeout(),
            command_timeout_s: default_command_timeout(),
            warm_pool: 0,
            vmm: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: None,
            allow_insecure_http: false,
            oidc: None,
            quotas: QuotaConfig::default(),
            limits: Limits::default(),
            sandbox_defaults: SandboxDefaults::default(),
            dlp: DlpConfig::default(),
            egress: ztee_egress::EgressConfig::default(),
            secrets: SecretsConfig::default(),
            approvals: ApprovalsConfig::default(),
            llm: LlmConfig::default(),
            mcp: McpConfig::default(),
            e2b: E2bConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Defaults, then `file` (if given), then the environment, then validation.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|message| ConfigError::Parse {
                    path: path.display().to_string(),
                    message,
                })?
            }
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        // toml's error text names the line, column and key, which is what an operator needs.
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(value) = get("ZTEE_LISTEN") {
            self.listen =
                value
                    .parse()
                    .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                        name: "ZTEE_LISTEN",
                        value: value.clone(),
                        message: format!("{e}; expected e.g. 127.0.0.1:8443"),
                    })?;
        }
        match (get("ZTEE_TLS_CERT"), get("ZTEE_TLS_KEY")) {
            (Some(cert), Some(key)) => {
                self.tls = Some(TlsConfig {
                    cert: cert.into(),
                    key: key.into(),
                    reload_interval_s: self
                        .tls
                        .as_ref()
                        .map_or(default_reload(), |t| t.reload_interval_s),
                })
            }
            (None, None) => {}
            (Some(value), None) | (None, Some(value)) => {
                return Err(ConfigError::Env {
                    name: "ZTEE_TLS_CERT",
                    value,
                    message: "set both ZTEE_TLS_CERT and ZTEE_TLS_KEY, or neither".into(),
                })
            }
        }
        if let Some(value) = get("ZTEE_ALLOW_INSECURE_HTTP") {
            self.allow_insecure_http = match value.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                _ => {
                    return Err(ConfigError::Env {
                        name: "ZTEE_ALLOW_INSECURE_HTTP",
                        value,
                        message: "expected true or false".into(),
                    })
                }
            };
        }
        match (get("ZTEE_OIDC_ISSUER"), get("ZTEE_OIDC_AUDIENCE")) {
            (Some(issuer), Some(audience)) => {
                let base = self.oidc.take();
                let mut oidc: OidcConfig = match base {
                    Some(o) => o,
                    None => toml::from_str(&format!(
                        "issuer = {}\naudience = {}",
                        toml_string(&issuer),
                        toml_string(&audience)
                    ))
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?,
                };
                oidc.issuer = issuer;
                oidc.audience = audience;
                self.oidc = Some(oidc);
            }
            (None, None) => {}
            (Some(value), None) | (None, Some(value)) => {
                return Err(ConfigError::Env {
                    name: "ZTEE_OIDC_ISSUER",
                    value,
                    message: "set both ZTEE_OIDC_ISSUER and ZTEE_OIDC_AUDIENCE, or neither".into(),
                })
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.allow_insecure_http {
            return Err(ConfigError::Invalid(format!(
                "listen = {} is not a loopback address and no TLS certificate is configured; \
                 set [tls] cert and key, or allow_insecure_http = true if a TLS proxy sits in front",
                self.listen
            )));
        }
        let d = &self.sandbox_defaults;
        let l = &self.limits;
        if d.memory_mib > l.max_memory_mib || d.vcpus > l.max_vcpus || d.timeout_s > l.max_timeout_s
        {
            return Err(ConfigError::Invalid(
                "sandbox_defaults exceed limits (memory_mib, vcpus or timeout_s)".into(),
            ));
        }
        self.llm.validate().map_err(ConfigError::Invalid)?;
        self.mcp.validate().map_err(ConfigError::Invalid)?;
        // Approval details, signed decision links and Vault tokens never cross the network in
        // clear text: https://, or http:// to a loopback host only.
        for (i, hook) in self.approvals.webhooks.iter().enumerate() {
            ztee_secrets::check_endpoint(&format!("approvals.webhooks[{i}].url"), &hook.url)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if let Some(vault) = &self.secrets.vault {
            vault
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.quotas.requests_per_second.is_nan() || self.quotas.requests_per_second <= 0.0 {
            return Err(ConfigError::Invalid(
                "quotas.requests_per_second must be greater than 0".into(),
            ));
        }
        if self.quotas.source_requests_per_second.is_nan()
            || self.quotas.source_requests_per_second <= 0.0
        {
            return Err(ConfigError::Invalid(
                "quotas.source_requests_per_second must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn egress_section_parses_and_refuses_typos() {
        let c = ServerConfig::from_toml(
            "[egress]\nallowed_networks = [\"10.20.0.0/16\"]\ndns_servers = [\"10.20.0.53:53\"]\nmax_body_bytes = 4096",
        )
        .unwrap();
        assert_eq!(c.egress.allowed_networks[0].to_string(), "10.20.0.0/16");
        assert_eq!(c.egress.dns_servers[0].port(), 53);
        assert_eq!(c.egress.max_body_bytes, 4096);
        assert_eq!(c.egress.connect_timeout_secs, 10);
        assert!(ServerConfig::default().egress.allowed_networks.is_empty());
        let err = ServerConfig::from_toml("[egress]\nallowed_network = []").unwrap_err();
        assert!(err.contains("allowed_network"), "{err}");
        let err =
            ServerConfig::from_toml("[egress]\nallowed_networks = [\"10.0.0.0/33\"]").unwrap_err();
        assert!(
            err.contains("allowed_networks") && err.contains("invalid IP address"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named_and_env_overrides_file() {
        let err = ServerConfig::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 3").unwrap_err();
        assert!(err.contains("listen_port"), "{err}");

        let mut c = ServerConfig::from_toml("listen = \"127.0.0.1:1\"").unwrap();
        c.apply_env(|n| (n == "ZTEE_LISTEN").then(|| "127.0.0.1:2".to_string()))
            .unwrap();
        assert_eq!(c.listen.port(), 2);
        let err = c
            .apply_env(|n| (n == "ZTEE_TLS_CERT").then(|| "/x".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("ZTEE_TLS_KEY"));
    }

    #[test]
    fn the_vmm_is_a_sandbox_default() {
        let c = ServerConfig::from_toml("[sandbox_defaults]\nvmm = \"firecracker\"").unwrap();
        assert_eq!(c.sandbox_defaults.vmm, Some(VmmChoice::Firecracker));
        assert_eq!(ServerConfig::default().sandbox_defaults.vmm, None);
        let err = ServerConfig::from_toml("[sandbox_defaults]\nvmm = \"kvm\"").unwrap_err();
        assert!(err.contains("kvm") && err.contains("firecracker"), "{err}");
    }

    #[test]
    fn plain_http_off_loopback_needs_explicit_consent() {
        let mut c = ServerConfig::from_toml("listen = \"0.0.0.0:8443\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("TLS"));
        c.allow_insecure_http = true;
        assert!(c.validate().is_ok());
    }

    /// #22: approval details and Vault tokens do not travel in clear text to a remote host.
    #[test]
    fn webhook_and_vault_urls_need_https_off_loopback() {
        let hook = |url: &str| {
            ServerConfig::from_toml(&format!(
                "[[approvals.webhooks]]\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\""
            ))
            .unwrap()
        };
        let err = hook("http://alice:hunter2@example.com/hook?token=abc")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("approvals.webhooks[0].url")
                && err.contains("example.com")
                && err.contains("https://"),
            "{err}"
        );
        for secret in ["alice", "hunter2", "token", "abc", "/hook"] {
            assert!(!err.contains(secret), "{secret} in {err}");
        }
        for fine in [
            "https://example.com/hook",
            "http://127.0.0.1:9000/hook",
            "http://127.8.0.1/hook",
            "http://localhost:9000/hook",
            "http://[::1]:9000/hook",
        ] {
            assert!(hook(fine).validate().is_ok(), "{fine}");
        }
        for (bad, expect) in [
            ("ftp://example.com/hook", "ftp"),
            ("file:///etc/passwd", "https://"),
            ("not a url", "not a URL"),
            ("http://10.0.0.1/hook", "10.0.0.1"),
        ] {
            let err = hook(bad).validate().unwrap_err().to_string();
            assert!(
                err.contains("approvals.webhooks[0].url") && err.contains(expect),
                "{bad}: {err}"
            );
        }

        let vault = |address: &str| {
            ServerConfig::from_toml(&format!(
                "[secrets.vault]\naddress = \"{address}\"\nauth = {{ method = \"token\", token_env = \"VAULT_TOKEN\" }}"
            ))
            .unwrap()
        };
        let err = vault("http://vault.example.com:8200")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secrets.vault.address") && err.contains("vault.example.com"),
            "{err}"
        );
        assert!(vault("https://vault.example.com:8200").validate().is_ok());
        assert!(vault("http://127.0.0.1:8200").validate().is_ok());
    }

    #[test]
    fn oidc_from_env_gets_defaults() {
        let mut c = ServerConfig::default();
        c.apply_env(|n| match n {
            "ZTEE_OIDC_ISSUER" => Some("https://idp".into()),
            "ZTEE_OIDC_AUDIENCE" => Some("ztee".into()),
            _ => None,
        })
        .unwrap();
        let oidc = c.oidc.unwrap();
        assert_eq!(oidc.roles_claim, "realm_access.roles");
        assert_eq!(oidc.audience, "ztee");
    }
}
